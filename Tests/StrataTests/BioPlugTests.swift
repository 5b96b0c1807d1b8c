import Strata
import StrataDisks
import Synchronization
import Testing

/// BioPlug: work a provider puts off runs when the outermost plug ends, in order,
/// exactly once, and never makes a waiting thread wait forever.
@Suite struct BioPlugTests {
    /// A memory disk of 1 MiB and an issuer on it. The fixture keeps the topology alive
    /// as long as requests may be sent into it.
    final class Fixture: @unchecked Sendable {
        let topology = Topology()
        let consumer: Consumer

        /// Holding `PatternBuffer`'s pattern (seed 3) when `patterned`, else never written.
        init(patterned: Bool = true) throws {
            let disk = patterned
                ? try MemoryDisk.create(in: topology, name: "plugged", contents: PatternBuffer.pattern(count: 1 << 20, at: 0, seed: 3))
                : try MemoryDisk.create(in: topology, name: "plugged", size: 1 << 20)
            consumer = try TestIssuer(on: disk.provider, in: topology).consumer
        }
    }

    /// Completions in the order they came, by the number in `caller1`.
    final class Arrivals: @unchecked Sendable {
        private let order = Mutex<[Int]>([])
        func append(_ number: Int) { order.withLock { $0.append(number) } }
        var all: [Int] { order.withLock { $0 } }
    }

    /// Sends a 4 KiB `command` of block `number` from `set`, with `data`; its done expects
    /// success, records `number`, then calls `next`.
    private static func send(_ command: BioCommand, _ number: Int, data: UnsafeMutableRawBufferPointer,
                             on consumer: Consumer, from set: AnyBioSet = .shared, arrivals: Arrivals,
                             then next: (@Sendable (Int) -> Void)? = nil) {
        let bio = set.alloc(segments: 1)
        bio.command = command
        bio.offset = Int64(number) * 4096
        bio.length = 4096
        bio.setData(data)
        bio.done = .closure { done in
            #expect(done.error == nil)
            arrivals.append(number)
            done.destroy()
            next?(number)
        }
        consumer.request(bio)
    }

    /// Sends a read of block `number` into the same block of `buffer`.
    private static func read(_ number: Int, on consumer: Consumer, into buffer: PatternBuffer, arrivals: Arrivals,
                             then next: (@Sendable (Int) -> Void)? = nil) {
        send(.read, number, data: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[(number * 4096)..<((number + 1) * 4096)]),
             on: consumer, arrivals: arrivals, then: next)
    }

    @Test func aPluggedDiskDoesItsReadsWhenThePlugEndsInTheOrderTheyCame() throws {
        let fixture = try Fixture()
        let buffer = PatternBuffer(count: 8 * 4096)
        let arrivals = Arrivals()
        BioPlug.withPlug {
            #expect(BioPlug.isPlugged)
            for number in [5, 1, 7, 0, 3, 6, 2, 4] {
                Self.read(number, on: fixture.consumer, into: buffer, arrivals: arrivals)
            }
            #expect(arrivals.all.isEmpty, "put off until the plug ends")
        }
        #expect(!BioPlug.isPlugged)
        #expect(arrivals.all == [5, 1, 7, 0, 3, 6, 2, 4])
        #expect(Array(buffer.bytes) == PatternBuffer.pattern(count: 8 * 4096, at: 0, seed: 3))
    }

    @Test func unpluggedTheDiskCopiesBeforeTheRequestReturns() throws {
        let fixture = try Fixture()
        let buffer = PatternBuffer(count: 4096)
        let arrivals = Arrivals()
        Self.read(0, on: fixture.consumer, into: buffer, arrivals: arrivals)
        #expect(arrivals.all == [0])
    }

    @Test func plugsNestAndOnlyTheOutermostEndRunsTheWork() throws {
        let fixture = try Fixture()
        let buffer = PatternBuffer(count: 2 * 4096)
        let arrivals = Arrivals()
        BioPlug.withPlug {
            Self.read(0, on: fixture.consumer, into: buffer, arrivals: arrivals)
            BioPlug.withPlug { Self.read(1, on: fixture.consumer, into: buffer, arrivals: arrivals) }
            #expect(arrivals.all.isEmpty, "the inner plug's end runs nothing")
            #expect(BioPlug.isPlugged)
        }
        #expect(arrivals.all == [0, 1])
    }

    @Test func requestsIssuedByCompletionsAtThePlugsEndRunInTheSameLoop() throws {
        let fixture = try Fixture()
        let buffer = PatternBuffer(count: 8 * 4096)
        let arrivals = Arrivals()
        // Each completion issues the next block, as an issuer keeping its queue depth
        // does: all of them are put off in turn and done before the plug's end returns.
        @Sendable func next(_ number: Int) {
            guard number + 2 < 8 else { return }
            #expect(BioPlug.isPlugged, "the plug is held while its work runs")
            Self.read(number + 2, on: fixture.consumer, into: buffer, arrivals: arrivals, then: next)
        }
        BioPlug.withPlug {
            Self.read(0, on: fixture.consumer, into: buffer, arrivals: arrivals, then: next)
            Self.read(1, on: fixture.consumer, into: buffer, arrivals: arrivals, then: next)
        }
        #expect(arrivals.all == [0, 1, 2, 3, 4, 5, 6, 7])
        #expect(Array(buffer.bytes) == PatternBuffer.pattern(count: 8 * 4096, at: 0, seed: 3))
    }

    @Test func underAPlugAWriteIsDoneAtOnceAndAReadAfterItSeesIt() throws {
        let fixture = try Fixture(patterned: false)
        let source = PatternBuffer(count: 4096, seed: 9)
        let readBack = PatternBuffer(count: 4096, seed: 1)
        let arrivals = Arrivals()
        BioPlug.withPlug {
            Self.send(.write, 0, data: source.bytes, on: fixture.consumer, arrivals: arrivals)
            #expect(arrivals.all == [0], "a write is not put off")
            Self.send(.read, 0, data: readBack.bytes, on: fixture.consumer, arrivals: arrivals)
            #expect(arrivals.all == [0], "a read is")
        }
        #expect(arrivals.all == [0, 0])
        #expect(Array(readBack.bytes) == Array(source.bytes))
    }

    @Test func aSynchronousRequestUnderAPlugDoesTheWorkPutOffBeforeItWaits() throws {
        let fixture = try Fixture()
        let buffer = PatternBuffer(count: 4096)
        let arrivals = Arrivals()
        let finished = Gate()
        let sawData = Atomic<Bool>(false)
        let sawEarlierRead = Atomic<Bool>(false)
        startWorkerThread {
            BioPlug.withPlug {
                Self.read(0, on: fixture.consumer, into: buffer, arrivals: arrivals)
                // Put off too, and waited for: the wait must do the work first.
                let bytes = try? fixture.consumer.readSync(at: 4096, count: 4096)
                sawData.store(bytes == PatternBuffer.pattern(count: 4096, at: 4096, seed: 3), ordering: .relaxed)
                sawEarlierRead.store(arrivals.all == [0], ordering: .relaxed)
            }
            finished.open()
        }
        #expect(finished.wait(), "a synchronous read under a plug waited forever")
        let (data, earlier) = (sawData.load(ordering: .relaxed), sawEarlierRead.load(ordering: .relaxed))
        #expect(data)
        #expect(earlier, "the work put off before the wait ran first")
    }

    @Test func aReserveWaitUnderAPlugDoesTheWorkPutOffFirst() throws {
        let fixture = try Fixture()
        // One request in all: the second allocation can only have the first back.
        let set = BioSet(name: "plug-reserve", reserve: 1, capacity: 1, segments: 1)
        let buffer = PatternBuffer(count: 4096)
        let finished = Gate()
        let arrivals = Arrivals()
        let gotSecond = Atomic<Bool>(false)
        startWorkerThread {
            BioPlug.withPlug {
                Self.send(.read, 0, data: buffer.bytes, on: fixture.consumer, from: set, arrivals: arrivals)
                // Waits for the set's only request, which the plug holds.
                let second = set.alloc(segments: 1)
                gotSecond.store(true, ordering: .relaxed)
                second.destroy()
            }
            finished.open()
        }
        #expect(finished.wait(), "an allocation under a plug waited for the request the plug held")
        let second = gotSecond.load(ordering: .relaxed)
        #expect(arrivals.all == [0], "the read the plug held was done first")
        #expect(second)
    }

    /// A geom that puts every request off under a plug and, resuming each, notes what
    /// `BioPlug.nextDeferred` says of the next one.
    final class NextNoting: Geom, @unchecked Sendable {
        final class Notes: Sendable {
            private let lines = Mutex<[String]>([])
            func append(_ line: String) { lines.withLock { $0.append(line) } }
            var all: [String] { lines.withLock { $0 } }
        }
        let notes: Notes

        init(name: String, notes: Notes) {
            self.notes = notes
            super.init(name: name, className: "NEXTNOTING")
        }

        override func start(_ bio: consuming ProviderBio) { bio.deferToPlug() }

        override func resume(_ bio: consuming ProviderBio) {
            let next = BioPlug.nextDeferred().map { "\($0.geom.takeUnretainedValue().name)@\($0.offset)" } ?? "none"
            notes.append("\(name)@\(bio.offset) then \(next)")
            bio.deliverAll()
        }
    }

    @Test func aGeomResumingARequestIsToldTheGeomAndOffsetOfTheNext() throws {
        let topology = Topology()
        let notes = NextNoting.Notes()
        var consumers: [Consumer] = []
        for name in ["a", "b"] {
            let geom = NextNoting(name: name, notes: notes)
            try topology.add(geom)
            let provider = try topology.createProvider(for: geom, name: name, mediaSize: 1 << 20, sectorSize: 512, announce: false)
            consumers.append(try TestIssuer(on: provider, in: topology, name: "issuer-\(name)").consumer)
        }
        let buffer = PatternBuffer(count: 4 * 4096)
        let arrivals = Arrivals()
        BioPlug.withPlug {
            #expect(BioPlug.nextDeferred() == nil, "nothing is put off yet")
            for (number, consumer) in [(0, consumers[0]), (1, consumers[1]), (3, consumers[0]), (2, consumers[0])] {
                Self.read(number, on: consumer, into: buffer, arrivals: arrivals)
            }
        }
        #expect(arrivals.all == [0, 1, 3, 2])
        #expect(notes.all == ["a@0 then b@4096", "b@4096 then a@12288", "a@12288 then a@8192", "a@8192 then none"])
        #expect(BioPlug.nextDeferred() == nil)
    }

    @Test func puttingARequestOffWithoutAPlugStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            let topology = Topology()
            let probe = try ProbeGeom.install(in: topology, name: "unplugged-defer") { bio in bio.deferToPlug() }
            let issuer = try TestIssuer(on: probe.providers[0], in: topology)
            _ = issuer.consumer.outcome(.flush, offset: 0, length: 0)
        }
    }
}
