import Dispatch
import Strata
import StrataDisks
import Synchronization
import Testing

/// The life-cycle functions of g_bio(9) and bio_alloc_bioset(9): new, alloc, clone,
/// duplicate, destroy, reset, print, plus split, segments and the front pad.
@Suite struct BioLifecycleTests {
    @Test func newReturnsAnEmptyRequest() throws {
        let set = BioSet(name: "new-empty", reserve: 2)
        let made = unmanaged(set.new())
        let bio = try #require(made).takeBio()
        let command = bio.command
        let numbers = [bio.offset, bio.length, bio.completed, Int64(bio.children), Int64(bio.inbed)]
        let empty = bio.error == nil && bio.flags.isEmpty && bio.attribute == nil && !bio.hasParent
            && bio.from == nil && bio.to == nil && bio.caller1 == nil && bio.caller2 == nil
            && bio.consumerFlags == 0 && bio.data.isEmpty
        bio.destroy()
        #expect(command == .read)
        #expect(numbers == [0, 0, 0, 0, 0])
        #expect(empty)
    }

    @Test func newReturnsNilWhenTheSetCannotServeAtOnce() throws {
        let set = BioSet(name: "new-nil", reserve: 1, capacity: 1)
        let first = unmanaged(set.new())
        let held = try #require(first)
        let second = unmanaged(set.new())
        #expect(second == nil)
        #expect(set.statistics.failures == 1)
        held.takeBio().destroy()
        let third = unmanaged(set.new())
        try #require(third).takeBio().destroy()
    }

    @Test func allocWaitsForARequestToComeBackToTheReserve() async throws {
        let set = BioSet(name: "alloc-waits", reserve: 1, capacity: 1)
        let held = set.alloc().unmanaged()
        let got = Atomic<Bool>(false)
        startWorkerThread {
            let bio = set.alloc()
            got.store(true, ordering: .releasing)
            bio.destroy()
        }
        try await Task.sleep(for: .milliseconds(50))
        let early = got.load(ordering: .acquiring)
        #expect(!early, "alloc returned while the only request was held")
        held.takeBio().destroy()
        let deadline = ContinuousClock.now + .seconds(10)
        while !got.load(ordering: .acquiring) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        let served = got.load(ordering: .acquiring)
        #expect(served)
        #expect(set.statistics.waits >= 1)
    }

    @Test func cloneCopiesTheFieldsAndLinksTheParent() throws {
        let topology = Topology()
        let seen = ProbeRecord()
        let probe = try ProbeGeom.install(in: topology, name: "clone-probe") { bio in
            let clone = bio.clone()!
            seen.set("command", clone.command == bio.command)
            seen.set("offset", clone.offset == bio.offset)
            seen.set("length", clone.length == bio.length)
            seen.set("data", clone.data.count == bio.data.count)
            seen.set("attribute", clone.attribute == bio.attribute)
            seen.set("flags", clone.flags == bio.flags.intersection(BioFlags.requestFlags))
            seen.set("parent", clone.hasParent)
            seen.set("children", bio.children == 1)
            clone.destroy()
            seen.set("children-after-destroy", bio.children == 0)
            bio.deliverAll()
        }
        let issuer = try TestIssuer(on: probe.providers[0], in: topology)
        let buffer = PatternBuffer(count: 4096)
        let result = issuer.consumer.outcome(.write, offset: 8192, length: 4096, buffer: buffer.bytes, flags: .fua)
        #expect(result.error == nil)
        #expect(seen.all == ["attribute", "children", "children-after-destroy", "command", "data", "flags", "length", "offset", "parent"])
    }

    @Test func cloneFailureIsDeliveredAsENOMEMLikeTheManualPageExample() throws {
        let topology = Topology()
        let tiny = BioSet(name: "clone-fails", reserve: 1, capacity: 1)
        let hog = tiny.new()!.unmanaged()
        let probe = try ProbeGeom.install(in: topology, name: "clone-enomem") { bio in
            guard let clone = bio.clone(using: tiny) else {
                bio.deliver(.noMemory)
                return
            }
            clone.destroy()
            bio.deliverAll()
        }
        let issuer = try TestIssuer(on: probe.providers[0], in: topology)
        #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == .noMemory)
        hog.takeBio().destroy()
        #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
    }

    @Test func duplicateAlwaysSucceedsByWaiting() throws {
        let topology = Topology()
        let tiny = BioSet(name: "duplicate", reserve: 1, capacity: 1)
        let probe = try ProbeGeom.install(in: topology, name: "dup-probe") { bio in
            let copy = bio.duplicate(using: tiny)
            copy.destroy()
            bio.deliverAll()
        }
        let hog = tiny.new()!.unmanaged()
        startWorkerThread {
            sleepBriefly()
            hog.takeBio().destroy()
        }
        let issuer = try TestIssuer(on: probe.providers[0], in: topology)
        #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
        #expect(tiny.statistics.waits >= 1)
    }

    @Test func callerTagsAreReadBackAsTheTypeThatKeptThem() {
        struct Shift: BioCallerTag, Equatable {
            let bytes: Int64
            init(_ bytes: Int64) { self.bytes = bytes }
            init(rawBits: UInt) { bytes = Int64(Int(bitPattern: rawBits)) }
            var rawBits: UInt { UInt(bitPattern: Int(bytes)) }
        }
        let bio = AnyBioSet.shared.alloc()
        let untagged = bio.callerTag(.caller1, as: Shift.self)
        bio.setCallerTag(Shift(-4096), in: .caller1)
        bio.setCallerTag(Shift(1 << 40), in: .caller2)
        let kept = [bio.callerTag(.caller1, as: Shift.self), bio.callerTag(.caller2, as: Shift.self)]
        let words = (bio.caller1, bio.caller2)
        bio.reset()
        let afterReset = [bio.callerTag(.caller1, as: Shift.self), bio.callerTag(.caller2, as: Shift.self)]
        bio.destroy()
        #expect(untagged == Shift(0), "a word never set reads as the bits 0")
        #expect(kept == [Shift(-4096), Shift(1 << 40)])
        #expect(words.0 == UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: -4096))
                && words.1 == UnsafeMutableRawPointer(bitPattern: 1 << 40), "each tag in its own word")
        #expect(afterReset == [Shift(0), Shift(0)])
    }

    @Test func resetReturnsToTheInitialStateAndKeepsTheAllocation() throws {
        let set = BioSet(name: "reset", reserve: 1, segments: 4, initialPad: UInt64(0xfeed))
        let bio = set.alloc(segments: 4)
        let buffer = PatternBuffer(count: 512)
        bio.command = .write
        bio.offset = 4096
        bio.length = 512
        bio.flags = [.fua, .preflush]
        bio.attribute = .ident
        bio.caller1 = UnsafeMutableRawPointer(bitPattern: 0x1000)
        bio.consumerFlags = 7
        bio.setData(buffer.bytes)
        set.pad(of: bio).pointee = 42
        let identity = bio.unmanaged()
        let again = identity.takeBio()
        again.reset()
        let initial = again.command == .read && again.offset == 0 && again.length == 0 && again.flags.isEmpty
            && again.attribute == nil && again.caller1 == nil && again.consumerFlags == 0 && again.data.isEmpty
        let slots = again.segmentCapacity
        let pad = set.pad(of: again).pointee
        again.destroy()
        #expect(initial)
        #expect(slots == 4, "reset keeps the segment slots")
        #expect(pad == 42, "reset keeps the front pad, as bio_reset does")
    }

    /// A closure done routine is held by the request while set, and let go of when it is
    /// replaced, when the request is reset, and when it is freed: the request's storage
    /// itself is plain memory, so these are the only places that release it.
    @Test func aClosureDoneRoutineIsLetGoOfWhenReplacedResetOrFreed() {
        final class Witness: Sendable {}
        func routine(holding witness: Witness) -> BioDone {
            .closure { done in
                _ = witness
                done.destroy()
            }
        }
        let bio = AnyBioSet.shared.alloc()
        weak var replaced: Witness?
        weak var reset: Witness?
        weak var freed: Witness?
        do {
            let first = Witness()
            replaced = first
            bio.done = routine(holding: first)
        }
        #expect(replaced != nil, "the request holds its done routine")
        do {
            let second = Witness()
            reset = second
            bio.done = routine(holding: second)
        }
        #expect(replaced == nil && reset != nil)
        bio.reset()
        #expect(reset == nil)
        do {
            let third = Witness()
            freed = third
            bio.done = routine(holding: third)
        }
        let kept = freed != nil
        #expect(kept)
        bio.destroy()
        #expect(freed == nil)
    }

    /// A done routine that frees its own request (and the box holding the routine with
    /// it) runs to its end.
    @Test func aClosureDoneRoutineMayFreeItsRequestWhileItRuns() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "self-free-md", size: 1 << 20)
        let issuer = try TestIssuer(on: disk.provider, in: topology)
        let record = ProbeRecord()
        let finished = Gate()
        let buffer = PatternBuffer(count: 4096)
        let bio = AnyBioSet.shared.alloc()
        bio.command = .write
        bio.length = 4096
        bio.setData(buffer.bytes)
        let marker = "captured after the request was freed"
        bio.done = .closure { done in
            let error = done.error
            done.destroy()
            record.text = "\(error?.name ?? "ok"): \(marker)"
            finished.open()
        }
        issuer.consumer.request(bio)
        #expect(finished.wait())
        #expect(record.text == "ok: captured after the request was freed")
    }

    /// Attributes are carried by number: one name, one number, from any thread, and the
    /// name comes back from the number.
    @Test func attributesWithTheSameNameAreEqualWhereverTheyAreMade() {
        let names = (0..<8).map { "TEST::interned-\($0)" }
        let made = Mutex<[[BioAttribute]]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            let attributes = names.shuffled().sorted().map { BioAttribute($0) }
            made.withLock { $0.append(attributes) }
        }
        let all = made.withLock { $0 }
        #expect(all.count == 8)
        #expect(Set(all).count == 1, "every thread got the same attributes")
        #expect(all[0].map(\.name) == names)
        #expect(Set(all[0]).count == names.count, "different names stay different")
        // The constants, numbered in advance, are the attributes their names make.
        let constants: [(BioAttribute, String)] = [(.canDelete, "GEOM::candelete"), (.ident, "GEOM::ident"),
                                                   (.extents, "STRATA::extents")]
        for (constant, name) in constants {
            #expect(BioAttribute(name) == constant, "\(name)")
            #expect(constant.name == name)
        }
        #expect(Set(constants.map(\.0)).count == 3)
        #expect(!all[0].contains(.ident) && !all[0].contains(.extents))
    }

    @Test func printGivesOneLineWithCommandRangeProviderAndError() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "print-md", size: 1 << 20)
        let issuer = try TestIssuer(on: disk.provider, in: topology, write: 0)
        let line = ProbeRecord()
        let bio = AnyBioSet.shared.alloc()
        bio.command = .write
        bio.offset = 1024
        bio.length = 512
        let buffer = PatternBuffer(count: 512)
        bio.setData(buffer.bytes)
        let finished = Gate()
        bio.done = .closure { done in
            line.text = done.summary
            done.destroy()
            finished.open()
        }
        issuer.consumer.request(bio)
        finished.wait()
        #expect(line.text == "WRITE offset=1024 length=512 provider=print-md flags=ERROR|DONE error=1 (EPERM)")
    }

    @Test func scatterGatherSegmentsCarryOneRequest() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "sg-md", size: 1 << 20)
        let issuer = try TestIssuer(on: disk.provider, in: topology)
        let pieces = [PatternBuffer(count: 1024, seed: 1), PatternBuffer(count: 512, seed: 2), PatternBuffer(count: 2560, seed: 3)]
        let bio = AnyBioSet.shared.alloc(segments: 3)
        bio.command = .write
        bio.offset = 65536
        for piece in pieces { bio.appendSegment(piece.bytes) }
        bio.length = Int64(bio.data.count)
        let length = bio.length
        #expect(length == 4096)
        let finished = Gate()
        let failed = ProbeRecord()
        bio.done = .closure { done in
            failed.text = done.error.map { "\($0)" } ?? ""
            done.destroy()
            finished.open()
        }
        issuer.consumer.request(bio)
        finished.wait()
        #expect(failed.text == "")
        let back = try issuer.consumer.readSync(at: 65536, count: 4096)
        let expected = pieces.flatMap { Array($0.bytes) }
        #expect(back == expected)
    }

    @Test func theFirstSegmentOfASliceStartsAtItsOffsetAndEndsWithItsPiece() {
        let pieces = [PatternBuffer(count: 1024, seed: 1), PatternBuffer(count: 0, seed: 2), PatternBuffer(count: 2560, seed: 3)]
        let bio = AnyBioSet.shared.alloc(segments: 3)
        for piece in pieces { bio.appendSegment(piece.bytes) }
        let data = bio.data
        let first = pieces[0].bytes.baseAddress!, third = pieces[2].bytes.baseAddress!
        #expect(data.firstSegment.baseAddress == first && data.firstSegment.count == 1024)
        let inFirst = data.slice(offset: 1000, count: 100).firstSegment
        #expect(inFirst.baseAddress == first + 1000 && inFirst.count == 24)
        // At the end of the first piece: the empty second piece is passed over.
        let atBoundary = data.slice(offset: 1024, count: 2560).firstSegment
        #expect(atBoundary.baseAddress == third && atBoundary.count == 2560)
        let inThird = data.slice(offset: 1536, count: 512).firstSegment
        #expect(inThird.baseAddress == third + 512 && inThird.count == 512)
        #expect(BioData.none.firstSegment.count == 0)
        bio.destroy()
    }

    @Test func appendingMoreSegmentsThanAllocatedStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            let bio = AnyBioSet.shared.alloc(segments: 1)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 512)
            bio.appendSegment(buffer)
            bio.appendSegment(buffer)
            bio.destroy()
        }
    }

    @Test func frontPadIsTypedPerRequestSpaceThatTheDoneRoutineSees() throws {
        struct Tracking: BitwiseCopyable { var sequence: Int; var component: Int32 }
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "pad-md", size: 1 << 20)
        let set = BioSet(name: "pad", reserve: 4, segments: 1, initialPad: Tracking(sequence: -1, component: -1))
        let issuer = try TestIssuer(on: disk.provider, in: topology)
        let seen = ProbeRecord()
        let finished = Gate()
        let bio = set.alloc()
        let initialSequence = set.pad(of: bio).pointee.sequence
        #expect(initialSequence == -1, "a new request's pad starts at the set's initial value")
        set.pad(of: bio).pointee = Tracking(sequence: 99, component: 3)
        bio.command = .flush
        bio.done = .closure { done in
            seen.text = "\(set.pad(of: done).pointee.sequence)/\(set.pad(of: done).pointee.component)"
            done.destroy()
            finished.open()
        }
        issuer.consumer.request(bio)
        finished.wait()
        #expect(seen.text == "99/3")
    }

    @Test func padOfARequestFromAnotherSetStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            let mine = BioSet(name: "pad-a", reserve: 1, initialPad: Int(0))
            let other = BioSet(name: "pad-b", reserve: 1, initialPad: Int(0))
            let bio = other.alloc(segments: 0)
            _ = mine.pad(of: bio)
            bio.destroy()
        }
    }

    @Test func splitAtAnOffsetMakesTwoClonesCoveringBothSides() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "split-md", size: 1 << 20)
        let seen = ProbeRecord()
        let splitter = ProbeGeom(name: "split-probe") { bio in
            let consumer = seen.consumer!
            guard let halves = bio.split(at: 1536) else {
                bio.deliver(.noMemory)
                return
            }
            seen.set("first \(halves.first.offset)+\(halves.first.length)", true)
            seen.set("second \(halves.second.offset)+\(halves.second.length)", true)
            seen.set("children \(bio.children)", true)
            consumer.request(halves.first)
            consumer.request(halves.second)
            bio.awaitChildren()
        }
        try topology.add(splitter)
        seen.consumer = topology.createConsumer(for: splitter)
        try topology.attach(seen.consumer!, to: disk.provider)
        try topology.access(seen.consumer!, read: 1, write: 1, exclusive: 0)
        try topology.createProvider(for: splitter, name: "split-probe", mediaSize: 1 << 20, sectorSize: 512)
        let issuer = try TestIssuer(on: splitter.providers[0], in: topology)
        let buffer = PatternBuffer(count: 4096, seed: 9)
        #expect(issuer.consumer.outcome(.write, offset: 4096, length: 4096, buffer: buffer.bytes).completed == 4096)
        #expect(seen.all == ["children 2", "first 4096+1536", "second 5632+2560"])
        #expect(try issuer.consumer.readSync(at: 4096, count: 4096) == Array(buffer.bytes))
    }

    @Test func unpooledSetAllocatesPlainlyAndNeverRunsOut() throws {
        var held: [UnmanagedBio] = []
        for _ in 0..<1000 {
            let made = unmanaged(AnyBioSet.unpooled.new())
            held.append(try #require(made))
        }
        #expect(Set(held).count == 1000)
        for bio in held { bio.takeBio().destroy() }
        #expect(AnyBioSet.unpooled.statistics == BioSetStatistics())
    }

    @Test func callerAndDriverFieldsStayOnTheirOwnSide() throws {
        let topology = Topology()
        let seen = ProbeRecord()
        let probe = try ProbeGeom.install(in: topology, name: "private-probe") { bio in
            bio.driver1 = UnsafeMutableRawPointer(bitPattern: 0xd1)
            bio.driver2 = UnsafeMutableRawPointer(bitPattern: 0xd2)
            bio.providerFlags = 0x55
            seen.set("driver set", bio.driver1 != nil && bio.providerFlags == 0x55)
            bio.deliverAll()
        }
        let issuer = try TestIssuer(on: probe.providers[0], in: topology)
        let finished = Gate()
        let bio = AnyBioSet.shared.alloc()
        bio.command = .flush
        bio.caller1 = UnsafeMutableRawPointer(bitPattern: 0xc1)
        bio.caller2 = UnsafeMutableRawPointer(bitPattern: 0xc2)
        bio.consumerFlags = 0xaa
        bio.done = .closure { done in
            seen.set("caller kept", done.caller1 == UnsafeMutableRawPointer(bitPattern: 0xc1)
                     && done.caller2 == UnsafeMutableRawPointer(bitPattern: 0xc2) && done.consumerFlags == 0xaa)
            done.destroy()
            finished.open()
        }
        issuer.consumer.request(bio)
        finished.wait()
        #expect(seen.all == ["caller kept", "driver set"])
    }
}
