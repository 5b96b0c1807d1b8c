import Dispatch
import Strata
import StrataDisks
import Synchronization
import Testing

/// Completion: deliver, the standard done (first error wins, completed summed, parent
/// delivered exactly once), the replicated-write rule, and a class's own done routine.
@Suite struct CompletionTests {
    /// A bottom geom that fails the requests whose 4 KiB block index is listed, with the
    /// errno listed for it, and completes the rest.
    static func failingDisk(in topology: Topology, failures: [Int: BioError]) throws -> ProbeGeom {
        try ProbeGeom.install(in: topology, name: "failing-\(failures.keys.sorted())") { bio in
            if let error = failures[Int(bio.offset / 4096)] {
                bio.deliver(error)
            } else {
                bio.deliverAll()
            }
        }
    }

    @Test(arguments: [
        ([:], nil),
        ([0: BioError.io], BioError.io),
        ([7: BioError.noSpace], BioError.noSpace),
        ([3: BioError.io, 5: BioError.noSpace], BioError.io),
        ([2: BioError.invalid, 6: BioError.io], BioError.invalid),
        (Dictionary(uniqueKeysWithValues: (0..<8).map { ($0, BioError.noDevice) }), BioError.noDevice),
    ] as [([Int: BioError], BioError?)])
    func standardDoneKeepsTheFirstErrorAndSumsCompletedBytes(failures: [Int: BioError], expected: BioError?) throws {
        let topology = Topology()
        let bottom = try Self.failingDisk(in: topology, failures: failures)
        let fan = try FanOutGeom.stack(on: bottom.providers[0], in: topology, name: "fan8", pieces: 8)
        try topology.access(fan.consumers[0], read: 1, write: 1, exclusive: 0)
        let issuer = try TestIssuer(on: fan.providers[0], in: topology)
        let outcome = Self.issueOnce(.write, length: 8 * 4096, on: issuer.consumer)
        let completedBytes = (8 - failures.count) * 4096
        #expect(outcome.summary == "\(expected?.name ?? "ok") \(completedBytes) 8/8")
        #expect(outcome.deliveries == 1)
    }

    /// Issues one request of `length` bytes and waits for it. Returns how it completed
    /// ("error completed children/inbed") and how many times its done routine ran,
    /// counted a moment after the first, so that a second delivery would be seen.
    static func issueOnce(_ command: BioCommand, length: Int, on consumer: Consumer) -> (summary: String, deliveries: Int) {
        let buffer = PatternBuffer(count: length)
        let finished = Gate()
        let result = ProbeRecord()
        let deliveries = Atomic<Int>(0)
        let bio = AnyBioSet.shared.alloc()
        bio.command = command
        bio.length = Int64(length)
        bio.setData(buffer.bytes)
        bio.done = .closure { done in
            deliveries.wrappingAdd(1, ordering: .relaxed)
            result.text = "\(done.error?.name ?? "ok") \(done.completed) \(done.children)/\(done.inbed)"
            done.destroy()
            finished.open()
        }
        consumer.request(bio)
        guard finished.wait(seconds: 30) else { return ("never delivered", 0) }
        sleepBriefly(milliseconds: 20)
        return (result.text, deliveries.load(ordering: .relaxed))
    }

    @Test(arguments: [0, 1, 2, 3])
    func replicatedWritesSucceedWhileAnyCopySucceeds(failedCopies: Int) throws {
        let topology = Topology()
        let attempt = Atomic<Int>(0)
        let bottom = try ProbeGeom.install(in: topology, name: "copies-\(failedCopies)") { bio in
            let index = attempt.wrappingAdd(1, ordering: .relaxed).oldValue
            if index < failedCopies { bio.deliver(.io) } else { bio.deliverAll() }
        }
        let mirror = try FanOutGeom.stack(on: bottom.providers[0], in: topology, name: "mirror-\(failedCopies)",
                                          pieces: 3, combine: .anySuccess, sameRange: true)
        try topology.access(mirror.consumers[0], read: 1, write: 1, exclusive: 0)
        let issuer = try TestIssuer(on: mirror.providers[0], in: topology)
        let buffer = PatternBuffer(count: 4096)
        let outcome = issuer.consumer.outcome(.write, offset: 0, length: 4096, buffer: buffer.bytes)
        if failedCopies == 3 {
            #expect(outcome.error == .io)
        } else {
            #expect(outcome.error == nil)
            #expect(outcome.completed == 4096, "completed is one copy's, not the sum")
        }
    }

    @Test func aClassOwnDoneRoutineRunsForEachCloneThenFoldsIt() throws {
        final class CountingGeom: Geom, @unchecked Sendable {
            let seen = Atomic<Int>(0)
            override func start(_ bio: consuming ProviderBio) {
                let clone = bio.clone()!
                clone.done = .handler(self)
                consumers[0].request(clone)
                bio.awaitChildren()
            }
            override func bioDone(_ bio: consuming Bio) {
                seen.wrappingAdd(1, ordering: .relaxed)
                bio.finishClone()
            }
        }
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "own-done-md", size: 1 << 20)
        let geom = CountingGeom(name: "counting", className: "COUNT")
        try topology.add(geom)
        try topology.attach(topology.createConsumer(for: geom), to: disk.provider)
        try topology.createProvider(for: geom, name: "counting", mediaSize: 1 << 20, sectorSize: 512)
        let issuer = try TestIssuer(on: geom.providers[0], in: topology)
        for block in 0..<10 {
            let buffer = PatternBuffer(count: 512, seed: UInt8(block))
            #expect(issuer.consumer.outcome(.write, offset: Int64(block) * 512, length: 512, buffer: buffer.bytes).error == nil)
        }
        let seen = geom.seen.load(ordering: .relaxed)
        #expect(seen == 10)
    }

    /// The only clone of a request is folded in without locked instructions once its
    /// provider has let go (`awaitChildren` first), and with them when it completes
    /// first: either way the parent is delivered once with the clone's error and bytes.
    @Test(arguments: [(false, nil), (false, BioError.io), (true, nil), (true, BioError.noSpace)] as [(Bool, BioError?)])
    func anOnlyCloneDeliversItsParentOnceWhicheverFinishesFirst(cloneFirst: Bool, error: BioError?) throws {
        /// Passes each request on from another thread, as a nop with a delay does. There
        /// the clone starts at once, not after `start` returns.
        final class HandingOnGeom: Geom, @unchecked Sendable {
            override func start(_ bio: consuming ProviderBio) {
                let request = bio.unmanaged()
                DispatchQueue.global().async { [self] in
                    let bio = request.takeProviderBio()
                    requestOnFirstConsumer(bio.clone()!)
                    bio.awaitChildren()
                }
            }
        }
        let name = "hand-on-\(cloneFirst)-\(error?.name ?? "ok")"
        // With cloneFirst the clone completes inside the request, before the provider's
        // awaitChildren.
        let outcome = try Self.readThroughOnlyClone(of: HandingOnGeom(name: name, className: "HANDON"),
                                                    cloneAtOnce: cloneFirst, error: error, completed: 1024)
        #expect(outcome.summary == "\(error?.name ?? "ok") 1024 1/1")
        #expect(outcome.deliveries == 1)
    }

    /// Stacks `geom` (a class passing each request on as one clone) on a disk that
    /// completes each request with `completed` bytes and `error`, inside the request when
    /// `cloneAtOnce`, else 20 ms later on another thread; then issues one 4 KiB read
    /// through `geom` (see `issueOnce`).
    static func readThroughOnlyClone(of geom: Geom, cloneAtOnce: Bool, error: BioError?,
                                     completed: Int64) throws -> (summary: String, deliveries: Int) {
        let topology = Topology()
        let bottom = try ProbeGeom.install(in: topology, name: geom.name + "-bottom") { bio in
            bio.completed = completed
            if cloneAtOnce {
                bio.deliver(error)
                return
            }
            let request = bio.unmanaged()
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(20)) {
                request.takeProviderBio().deliver(error)
            }
        }
        try topology.add(geom)
        try topology.attach(topology.createConsumer(for: geom), to: bottom.providers[0])
        try topology.access(geom.consumers[0], read: 1, write: 1, exclusive: 0)
        try topology.createProvider(for: geom, name: geom.name, mediaSize: 1 << 20, sectorSize: 512, announce: false)
        let issuer = try TestIssuer(on: geom.providers[0], in: topology)
        return Self.issueOnce(.read, length: 4096, on: issuer.consumer)
    }

    /// `passOn` gives the request to its only clone before the clone goes out: the parent
    /// is delivered once, with the clone's error and bytes, whether the clone completes
    /// inside the request or later on another thread, and whether the class passes it on
    /// from `start` or from a thread of its own.
    @Test(arguments: [false, true], [(false, nil), (false, BioError.io), (true, nil), (true, BioError.noSpace)] as [(Bool, BioError?)])
    func passOnDeliversTheParentOnceWhereverTheCloneCompletes(fromAnotherThread: Bool, completion: (Bool, BioError?)) throws {
        let (cloneAtOnce, error) = completion
        final class PassingOnGeom: Geom, @unchecked Sendable {
            let fromAnotherThread: Bool
            init(name: String, fromAnotherThread: Bool) {
                self.fromAnotherThread = fromAnotherThread
                super.init(name: name, className: "PASSON")
            }
            override func start(_ bio: consuming ProviderBio) {
                guard fromAnotherThread else {
                    passOnToFirstConsumer(bio, bio.clone()!)
                    return
                }
                let request = bio.unmanaged()
                DispatchQueue.global().async { [self] in
                    let bio = request.takeProviderBio()
                    let clone = bio.clone()!
                    bio.passOn(clone, to: consumers[0])
                }
            }
        }
        let name = "pass-on-\(fromAnotherThread)-\(cloneAtOnce)-\(error?.name ?? "ok")"
        let outcome = try Self.readThroughOnlyClone(of: PassingOnGeom(name: name, fromAnotherThread: fromAnotherThread),
                                                    cloneAtOnce: cloneAtOnce, error: error, completed: 2048)
        #expect(outcome.summary == "\(error?.name ?? "ok") 2048 1/1")
        #expect(outcome.deliveries == 1)
    }

    @Test func childrenCompletingOnManyThreadsDeliverEachParentOnce() throws {
        let topology = Topology()
        let bottom = ProbeGeom(name: "threaded-bottom", dispatch: .queued) { bio in bio.deliverAll() }
        try topology.add(bottom)
        try topology.createProvider(for: bottom, name: "threaded-bottom", mediaSize: 1 << 24, sectorSize: 512)
        let fan = try FanOutGeom.stack(on: bottom.providers[0], in: topology, name: "fan16", pieces: 16)
        try topology.access(fan.consumers[0], read: 1, write: 1, exclusive: 0)
        let issuer = try TestIssuer(on: fan.providers[0], in: topology)
        let total = 500
        let ledger = CompletionLedger(capacity: total)
        let allDone = Gate()
        let remaining = Atomic<Int>(total)
        for id in 0..<total {
            let bio = AnyBioSet.shared.alloc()
            bio.command = .delete
            bio.offset = Int64(id % 64) * 65536
            bio.length = 65536
            bio.caller1 = UnsafeMutableRawPointer(bitPattern: id + 1)
            bio.done = .closure { done in
                let id = Int(bitPattern: done.caller1) - 1
                ledger.record(id, error: done.error)
                let completed = done.completed
                done.destroy()
                if completed != 65536 { ledger.errors.wrappingAdd(1, ordering: .relaxed) }
                if remaining.wrappingSubtract(1, ordering: .relaxed).newValue == 0 { allDone.open() }
            }
            issuer.consumer.request(bio)
        }
        #expect(allDone.wait())
        #expect(ledger.anomalies(issued: total).isEmpty)
        let errors = ledger.errors.load(ordering: .relaxed)
        #expect(errors == 0)
    }

    // MARK: Exactly once, enforced

    /// Sends one GETATTR to a probe whose start does `onStart`: for the exit tests.
    static func sendOne(through onStart: @escaping @Sendable (consuming ProviderBio) -> Void) throws {
        let topology = Topology()
        let probe = try ProbeGeom.install(in: topology, name: "exit-probe", onStart: onStart)
        let issuer = try TestIssuer(on: probe.providers[0], in: topology)
        _ = issuer.consumer.outcome(.getattr, offset: 0, length: 0, attribute: .ident)
    }

    @Test func deliveringARequestTwiceStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            try CompletionTests.sendOne { bio in
                let again = bio.unmanaged()
                again.takeProviderBio().deliverAll()
                again.takeProviderBio().deliverAll()
            }
        }
    }

    @Test func droppingAnIssuedRequestWithoutFinishingItStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            let bio = AnyBioSet.shared.alloc()
            bio.offset = 512
        }
    }

    @Test func droppingAnIncomingRequestWithoutDeliveringItStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            try CompletionTests.sendOne { bio in _ = bio.offset }
        }
    }

    @Test func deliveringAParentWithClonesOutstandingStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            try CompletionTests.sendOne { bio in
                let clone = bio.clone()!
                _ = clone.unmanaged()
                bio.deliverAll()
            }
        }
    }

    @Test func awaitingChildrenWithoutAnyCloneStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            try CompletionTests.sendOne { bio in bio.awaitChildren() }
        }
    }

    @Test func passingOnARequestThatHasTwoClonesStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            try CompletionTests.sendOne { bio in
                let first = bio.clone()!
                let second = bio.clone()!
                _ = second.unmanaged()
                let below = bio.from!
                bio.passOn(first, to: below)
            }
        }
    }

    @Test func aCorrectProbeExitsCleanlySoTheExitTestsAboveProveSomething() async {
        await #expect(processExitsWith: .success) {
            try CompletionTests.sendOne { bio in bio.deliverAll() }
        }
    }

    @Test func requestingARequestThatHasNoDoneRoutineStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            let topology = Topology()
            let disk = try MemoryDisk.create(in: topology, name: "no-done", size: 4096)
            let issuer = Geom(name: "issuer", className: "TEST")
            try topology.add(issuer)
            let consumer = topology.createConsumer(for: issuer)
            try topology.attach(consumer, to: disk.provider)
            try topology.access(consumer, read: 1, write: 0, exclusive: 0)
            let bio = AnyBioSet.shared.alloc()
            bio.command = .flush
            consumer.request(bio)
        }
    }
}
