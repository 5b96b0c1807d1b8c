import Strata
import StrataDisks
import Synchronization
import Testing

/// A provider going away while many threads submit: no request is lost, none completes
/// twice, and every request after the loss fails with ENXIO.
@Suite struct OrphanConcurrency {
    @Test(arguments: ["memory", "queued"])
    func orphaningWhileThreadsSubmitLosesNothingAndCompletesNothingTwice(bottom: String) throws {
        let topology = Topology()
        let provider: Provider
        let disk: Geom
        if bottom == "memory" {
            let memory = try MemoryDisk.create(in: topology, name: "orphan-race-md", size: 1 << 24)
            disk = memory
            provider = memory.provider
        } else {
            let probe = ProbeGeom(name: "orphan-race-queued", dispatch: .queued) { bio in bio.deliverAll() }
            try topology.add(probe)
            provider = try topology.createProvider(for: probe, name: "orphan-race-queued", mediaSize: 1 << 24, sectorSize: 512)
            disk = probe
        }
        let pass = try PassThroughGeom.stack(on: provider, in: topology, name: "orphan-race-pass-\(bottom)")
        let threads = 4
        let perThread = 3000
        let ledger = CompletionLedger(capacity: threads * perThread)
        let orphaned = Atomic<Bool>(false)
        let lateSuccesses = Atomic<Int>(0)
        let finished = Atomic<Int>(0)
        let allDone = Gate()
        let issuers = try (0..<threads).map { try TestIssuer(on: pass.providers[0], in: topology, name: "racer-\(bottom)-\($0)") }
        for thread in 0..<threads {
            let consumer = issuers[thread].consumer
            startWorkerThread {
                let inFlight = Atomic<Int>(0)
                for index in 0..<perThread {
                    while inFlight.load(ordering: .acquiring) >= 16 { sched_yield() }
                    let id = thread * perThread + index
                    let submittedAfterOrphan = orphaned.load(ordering: .acquiring)
                    inFlight.wrappingAdd(1, ordering: .relaxed)
                    let bio = AnyBioSet.shared.alloc()
                    bio.command = .delete
                    bio.offset = Int64(id % 4096) * 4096
                    bio.length = 4096
                    bio.caller1 = UnsafeMutableRawPointer(bitPattern: id + 1)
                    bio.done = .closure { done in
                        let error = done.error
                        ledger.record(Int(bitPattern: done.caller1) - 1, error: error)
                        if submittedAfterOrphan && error == nil { lateSuccesses.wrappingAdd(1, ordering: .relaxed) }
                        done.destroy()
                        inFlight.wrappingSubtract(1, ordering: .releasing)
                    }
                    consumer.request(bio)
                }
                while inFlight.load(ordering: .acquiring) > 0 { sched_yield() }
                if finished.wrappingAdd(1, ordering: .relaxed).newValue == threads { allDone.open() }
            }
        }
        while ledger.successes.load(ordering: .relaxed) < 2000 { sched_yield() }
        topology.wither(disk)
        orphaned.store(true, ordering: .releasing)
        #expect(allDone.wait(seconds: 60))
        let total = threads * perThread
        #expect(ledger.anomalies(issued: total).isEmpty, "every request completed exactly once")
        let successes = ledger.successes.load(ordering: .relaxed)
        let errors = ledger.errors.load(ordering: .relaxed)
        #expect(successes + errors == total)
        #expect(successes >= 2000 && errors > 0)
        let late = lateSuccesses.load(ordering: .relaxed)
        #expect(late == 0, "nothing submitted after the loss succeeded")
        // The issuers' own geoms withered with the loss (the default reaction) and
        // closed what they held.
        for issuer in issuers { #expect(topology.waitUntilGone(issuer.geom)) }
        #expect(topology.waitUntilGone(pass))
        #expect(topology.waitUntilGone(disk))
    }
}
