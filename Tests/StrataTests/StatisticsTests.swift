import Dispatch
import Strata
import StrataDisks
import Synchronization
import Testing

/// Provider statistics counted per thread (each thread its own shard, the threads
/// beyond the owned shards on the shared one) add up to exactly what was done.
@Suite struct StatisticsConcurrency {
    @Test func countsFromMoreThreadsThanShardsAddUpExactly() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "shards-md", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "shards-pass")
        let user = try TestIssuer(on: pass.providers[0], in: topology)
        // More threads than owned shards, all alive at once, so that some count on the
        // shared shard while others own theirs.
        let threads = 40
        let writesPerThread = 200
        let finished = Atomic<Int>(0)
        let allDone = Gate()
        let mayExit = Gate()
        for thread in 0..<threads {
            startWorkerThread {
                let buffer = PatternBuffer(count: 4096)
                for write in 0..<writesPerThread {
                    let offset = Int64((thread * writesPerThread + write) % 256) * 4096
                    _ = user.consumer.outcome(.write, offset: offset, length: 4096, buffer: buffer.bytes)
                }
                if finished.wrappingAdd(1, ordering: .relaxed).newValue == threads { allDone.open() }
                mayExit.wait(seconds: 60)
            }
        }
        // A reader sums the shards while they are written: totals never go down.
        var lastSeen = 0
        while finished.load(ordering: .relaxed) < threads {
            let seen = pass.providers[0].statistics.snapshot.operations(.write)
            #expect(seen >= lastSeen)
            lastSeen = seen
        }
        #expect(allDone.wait(seconds: 60))
        mayExit.open()
        for provider in [pass.providers[0], disk.provider] {
            let stats = provider.statistics.snapshot
            #expect(stats.operations(.write) == threads * writesPerThread, "\(provider.name)")
            #expect(stats.bytes(.write) == threads * writesPerThread * 4096, "\(provider.name)")
            #expect(stats.errors(.write) == 0)
            #expect(stats.latencyBuckets(.write).reduce(0, +) == threads * writesPerThread, "\(provider.name)")
            #expect(stats.inFlight == 0)
        }
    }
}

/// One clock reading serves a request through the geoms that only pass it on; a start
/// that may work (a disk's) is timed from readings of its own.
@Suite struct StatisticsClockSharingTests {
    /// A geom whose start waits `delay` before passing the request on, declaring (or
    /// not) that its start only passes requests on.
    final class WaitingGeom: Geom, @unchecked Sendable {
        let delay: Int
        init(name: String, delay: Int, onlyPassesOn: Bool) {
            self.delay = delay
            super.init(name: name, className: "WAIT", startOnlyPassesOn: onlyPassesOn)
        }
        override func start(_ bio: consuming ProviderBio) {
            if delay > 0 { sleepBriefly(milliseconds: delay) }
            requestOnFirstConsumer(bio.clone()!)
            bio.awaitChildren()
        }
    }

    /// Milliseconds of reads, per provider, after one read through `waitMs` of waiting in
    /// a geom over a disk that works `diskMs` inside its start.
    func readTimes(waitMs: Int, diskMs: Int, onlyPassesOn: Bool) throws -> (geom: Double, disk: Double) {
        let topology = Topology()
        let name = "clock-\(waitMs)-\(diskMs)-\(onlyPassesOn)"
        let disk = try ProbeGeom.install(in: topology, name: name + "-disk") { bio in
            if diskMs > 0 { sleepBriefly(milliseconds: diskMs) }
            bio.deliverAll()
        }
        let geom = WaitingGeom(name: name, delay: waitMs, onlyPassesOn: onlyPassesOn)
        try topology.add(geom)
        try topology.attach(topology.createConsumer(for: geom), to: disk.providers[0])
        try topology.access(geom.consumers[0], read: 1, write: 1, exclusive: 0)
        try topology.createProvider(for: geom, name: name, mediaSize: 1 << 20, sectorSize: 512, announce: false)
        let issuer = try TestIssuer(on: geom.providers[0], in: topology)
        let buffer = PatternBuffer(count: 4096)
        #expect(issuer.consumer.outcome(.read, offset: 0, length: 4096, buffer: buffer.bytes).error == nil)
        let milliseconds = { (provider: Provider) in Double(provider.statistics.snapshot.nanoseconds(.read)) / 1e6 }
        return (milliseconds(geom.providers[0]), milliseconds(disk.providers[0]))
    }

    @Test func aDiskWorkingInsideItsStartIsTimedFromItsOwnReadings() throws {
        // Under a pass-through geom the reading taken at entry is shared with the disk's
        // entry, but not with its delivery: the disk's own 20 ms count.
        let times = try readTimes(waitMs: 0, diskMs: 20, onlyPassesOn: true)
        #expect(times.disk >= 19 && times.geom >= 19, "\(times)")
    }

    @Test func theRequestsAPassThroughGeomPassesOnShareTheReadingItEnteredWith() throws {
        // Declared to only pass requests on, a geom's wait is not read anew: the disk's
        // request is timed from the geom's entry. Not declared, the disk's is not.
        let shared = try readTimes(waitMs: 20, diskMs: 0, onlyPassesOn: true)
        #expect(shared.disk >= 19 && shared.geom >= 19, "\(shared)")
        let apart = try readTimes(waitMs: 20, diskMs: 0, onlyPassesOn: false)
        #expect(apart.disk < 10 && apart.geom >= 19, "\(apart)")
    }

    @Test func theIOClockAnswersTheRunsReadingInsideADoneRoutine() throws {
        let topology = Topology()
        let disk = try ProbeGeom.install(in: topology, name: "ioclock-disk") { bio in bio.deliverAll() }
        let issuer = try TestIssuer(on: disk.providers[0], in: topology)
        let seen = ProbeRecord()
        let finished = Gate()
        let buffer = PatternBuffer(count: 4096)
        let before = IOClock.nanoseconds()
        let bio = AnyBioSet.shared.alloc()
        bio.command = .read
        bio.length = 4096
        bio.setData(buffer.bytes)
        bio.done = .closure { done in
            // Two answers in one done routine are the same shared reading.
            let first = IOClock.nanoseconds()
            sleepBriefly(milliseconds: 5)
            let second = IOClock.nanoseconds()
            seen.text = first == second && first >= before ? "shared" : "\(before) \(first) \(second)"
            done.destroy()
            finished.open()
        }
        issuer.consumer.request(bio)
        #expect(finished.wait(seconds: 10))
        #expect(seen.text == "shared")
        // Outside a run it reads the clock.
        let outside = IOClock.nanoseconds()
        sleepBriefly(milliseconds: 2)
        #expect(IOClock.nanoseconds() >= outside + 1_000_000)
    }

    @Test func durationsConvertToWholeNanosecondsAndTheFreshClockAgreesWithSeconds() {
        #expect(Duration.microseconds(50).wholeNanoseconds == 50_000)
        #expect(Duration.seconds(3).wholeNanoseconds == 3_000_000_000)
        #expect(Duration.nanoseconds(1500).wholeNanoseconds == 1500)
        #expect(Duration.zero.wholeNanoseconds == 0)
        #expect(Duration.microseconds(-5).wholeNanoseconds == 0)
        let before = monotonicNanoseconds()
        let seconds = monotonicSeconds()
        let after = monotonicNanoseconds()
        #expect(after >= before)
        #expect(UInt64(seconds * 1e9) + 1_000_000 >= before && UInt64(seconds * 1e9) <= after + 1_000_000)
    }

    /// The I/O clock reads the time-stamp counter where the kernel keeps time by it, scaled
    /// against the monotonic clock when the process started: over 200 ms it agrees with the
    /// monotonic clock to a part in a thousand, and readings on one thread never go back.
    @Test func theIOClockKeepsTheMonotonicClocksTime() {
        // Dispatch's time is CLOCK_MONOTONIC on Linux.
        func monotonic() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
        /// Both clocks read as nearly at once as this thread manages: a reading of the
        /// I/O clock between two monotonic ones less than 20 µs apart (a thread preempted
        /// between two plain readings put 400 µs between them on a loaded machine).
        func readTogether() -> (clock: UInt64, monotonic: UInt64) {
            var best: (clock: UInt64, monotonic: UInt64, spread: UInt64) = (0, 0, .max)
            for _ in 0..<1000 where best.spread >= 20_000 {
                let before = monotonic(), clock = IOClock.nanoseconds(), after = monotonic()
                if after - before < best.spread { best = (clock, before + (after - before) / 2, after - before) }
            }
            return (best.clock, best.monotonic)
        }
        let (clockStart, monotonicStart) = readTogether()
        var previous = clockStart
        var wentBack = 0
        let until = monotonicStart + 200_000_000
        while monotonic() < until {
            let now = IOClock.nanoseconds()
            if now < previous { wentBack += 1 }
            previous = now
        }
        let (clockEnd, monotonicEnd) = readTogether()
        let clockElapsed = Double(clockEnd - clockStart), monotonicElapsed = Double(monotonicEnd - monotonicStart)
        #expect(wentBack == 0)
        #expect(abs(clockElapsed - monotonicElapsed) < monotonicElapsed / 1000 + 50_000,
                "I/O clock \(clockElapsed) ns against monotonic \(monotonicElapsed) ns")
        // Both are on the monotonic clock's time line, not only at its rate.
        let gap = Int64(bitPattern: IOClock.nanoseconds() &- monotonic())
        #expect(abs(gap) < 50_000_000, "the I/O clock is \(gap) ns off the monotonic clock")
    }
}

/// Requests in flight are counted per thread: begun on one thread and ended on another,
/// they still add up, and a consumer's count includes a request until its done routine
/// has returned. Busy time, accounted once per quantum, counts a request held for a long
/// time whole and idle time not at all.
@Suite struct InFlightConcurrency {
    /// Requests a disk holds until the test lets them go.
    final class HeldRequests: @unchecked Sendable {
        private let lock = ConditionLock()
        private var requests: [UnmanagedBio] = []

        func hold(_ bio: consuming ProviderBio) {
            let request = bio.unmanaged()
            lock.withLock { requests.append(request) }
        }

        var count: Int { lock.withLock { requests.count } }

        func takeAll() -> [UnmanagedBio] {
            lock.withLock {
                defer { requests = [] }
                return requests
            }
        }

        /// Waits until `count` requests are held; false after 10 s.
        func wait(for count: Int) -> Bool {
            let deadline = ContinuousClock.now + .seconds(10)
            while self.count < count && ContinuousClock.now < deadline { sleepBriefly(milliseconds: 1) }
            return self.count >= count
        }
    }

    /// Sends a read on `consumer` without waiting; `onDone` runs in its done routine.
    func sendRead(on consumer: Consumer, buffer: PatternBuffer, onDone: @escaping @Sendable () -> Void) {
        let bio = AnyBioSet.shared.alloc()
        bio.command = .read
        bio.length = Int64(buffer.bytes.count)
        bio.setData(buffer.bytes)
        bio.done = .closure { done in
            onDone()
            done.destroy()
        }
        consumer.request(bio)
    }

    @Test func requestsBegunOnSomeThreadsAndEndedOnOthersAreCountedUntilTheirDoneRoutinesReturn() throws {
        let topology = Topology()
        let held = HeldRequests()
        let disk = try ProbeGeom.install(in: topology, name: "inflight-disk") { bio in held.hold(bio) }
        let pass = try PassThroughGeom.stack(on: disk.providers[0], in: topology, name: "inflight-pass")
        let user = try TestIssuer(on: pass.providers[0], in: topology)
        let buffer = PatternBuffer(count: 4096)
        let threads = 4
        let perThread = 16
        let total = threads * perThread
        let countsSeenInDone = CompletionLedger(capacity: total)
        let issued = Gate()
        let issuers = Atomic<Int>(0)
        for thread in 0..<threads {
            startWorkerThread {
                for index in 0..<perThread {
                    let id = thread * perThread + index
                    sendRead(on: user.consumer, buffer: buffer) {
                        // Its own request still counts while its done routine runs.
                        countsSeenInDone.record(id, error: user.consumer.requestsInFlight >= 1 ? nil : .io)
                    }
                }
                if issuers.wrappingAdd(1, ordering: .relaxed).newValue == threads { issued.open() }
            }
        }
        #expect(issued.wait(seconds: 10))
        #expect(held.wait(for: total))
        #expect(user.consumer.requestsInFlight == total)
        #expect(pass.consumers[0].requestsInFlight == total)
        #expect(pass.providers[0].statistics.snapshot.inFlight == total)
        #expect(disk.providers[0].statistics.snapshot.inFlight == total)

        // Ended on threads other than those that began them.
        let requests = held.takeAll()
        DispatchQueue.concurrentPerform(iterations: requests.count) { index in
            requests[index].takeProviderBio().deliverAll()
        }
        #expect(countsSeenInDone.anomalies(issued: total).isEmpty)
        #expect(countsSeenInDone.errors.load(ordering: .relaxed) == 0, "a done routine saw its own request uncounted")
        let deadline = ContinuousClock.now + .seconds(10)
        while user.consumer.requestsInFlight != 0 && ContinuousClock.now < deadline { sched_yield() }
        #expect(user.consumer.requestsInFlight == 0)
        #expect(pass.consumers[0].requestsInFlight == 0)
        #expect(pass.providers[0].statistics.snapshot.inFlight == 0)
        #expect(disk.providers[0].statistics.snapshot.inFlight == 0)
    }

    @Test func aHeldRequestCountsWholeInBusyTimeAndIdleTimeNotAtAll() throws {
        let topology = Topology()
        let held = HeldRequests()
        let holdNext = Atomic<Bool>(true)
        let disk = try ProbeGeom.install(in: topology, name: "busy-disk") { bio in
            if holdNext.exchange(false, ordering: .relaxed) {
                held.hold(bio)
            } else {
                bio.deliverAll()
            }
        }
        let user = try TestIssuer(on: disk.providers[0], in: topology)
        let buffer = PatternBuffer(count: 4096)
        let statistics = disk.providers[0].statistics
        let milliseconds = { Double(statistics.snapshot.busyNanoseconds) / 1e6 }

        let finished = Gate()
        sendRead(on: user.consumer, buffer: buffer) { finished.open() }
        #expect(held.wait(for: 1))
        sleepBriefly(milliseconds: 30)
        // Busy while it is held, before it finishes.
        #expect(statistics.snapshot.inFlight == 1)
        #expect(milliseconds() >= 29)
        let request = held.takeAll()[0]
        DispatchQueue.global().async { request.takeProviderBio().deliverAll() }
        #expect(finished.wait(seconds: 10))
        let afterHeld = milliseconds()
        #expect(afterHeld >= 30)

        // Idle for 50 ms, then a quick read: the idle time is not busy time.
        sleepBriefly(milliseconds: 50)
        #expect(user.consumer.outcome(.read, offset: 0, length: 4096, buffer: buffer.bytes).error == nil)
        let afterIdle = milliseconds()
        #expect(afterIdle >= afterHeld && afterIdle - afterHeld < 10, "\(afterHeld) ms, then \(afterIdle) ms")
    }
}
