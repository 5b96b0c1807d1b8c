import Strata
import StrataDisks
import Synchronization
import Testing

/// The rescuer: requests queued on a thread that is about to wait for the same set are
/// handed to a worker that submits them, so stacked drivers allocating from small sets
/// never deadlock.
@Suite struct RescuerConcurrency {
    @Test func aWaitingAllocationHandsTheQueuedRequestToTheRescuer() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "rescue-md", size: 1 << 20)
        // Capacity 1: the second half cannot be allocated until the first, still queued
        // on this thread, has been submitted and completed. Only the rescuer can do it.
        let splitter = try SplitterGeom.stack(on: disk.provider, in: topology, name: "rescue-split", reserve: 1)
        try topology.access(splitter.consumers[0], read: 1, write: 1, exclusive: 0)
        let issuer = try TestIssuer(on: splitter.providers[0], in: topology)
        let buffer = PatternBuffer(count: 8192, seed: 4)
        let outcome = issuer.consumer.outcome(.write, offset: 0, length: 8192, buffer: buffer.bytes)
        #expect(outcome.error == nil)
        #expect(outcome.completed == 8192)
        #expect(splitter.set.statistics.rescued >= 1)
        #expect(try issuer.consumer.readSync(at: 0, count: 8192) == Array(buffer.bytes))
    }

    /// The manual page's deadlock: a class splitting each request into two children
    /// allocated from one small set, stacked several deep, many submitters, the reserve
    /// exhausted. Every request completes, exactly once, with its data in place.
    @Test(.timeLimit(.minutes(2)))
    func stackedSplittersUnderManySubmittersCompleteEveryRequest() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "deadlock-md", size: 1 << 24)
        var below = disk.provider
        var splitters: [SplitterGeom] = []
        for level in 0..<4 {
            let splitter = try SplitterGeom.stack(on: below, in: topology, name: "deadlock-\(level)", reserve: 2)
            try topology.access(splitter.consumers[0], read: 1, write: 1, exclusive: 0)
            splitters.append(splitter)
            below = splitter.providers[0]
        }
        let top = below
        let threads = 8
        let perThread = 150
        let ledger = CompletionLedger(capacity: threads * perThread)
        let finished = Atomic<Int>(0)
        let allDone = Gate()
        for thread in 0..<threads {
            let issuer = try TestIssuer(on: top, in: topology, name: "submitter-\(thread)")
            startWorkerThread {
                let region = Int64(thread) * (1 << 21)
                for index in 0..<perThread {
                    let id = thread * perThread + index
                    let offset = region + Int64(index % 32) * 65536
                    let buffer = PatternBuffer(count: 65536, seed: UInt8(truncatingIfNeeded: id))
                    let written = issuer.consumer.outcome(.write, offset: offset, length: 65536, buffer: buffer.bytes)
                    var intact = written.error == nil && written.completed == 65536
                    if intact, let back = try? issuer.consumer.readSync(at: offset, count: 65536) {
                        intact = back == Array(buffer.bytes)
                    } else {
                        intact = false
                    }
                    ledger.record(id, error: intact ? nil : .io)
                }
                if finished.wrappingAdd(1, ordering: .relaxed).newValue == threads { allDone.open() }
            }
        }
        #expect(allDone.wait(seconds: 110))
        #expect(ledger.anomalies(issued: threads * perThread).isEmpty)
        let failures = ledger.errors.load(ordering: .relaxed)
        #expect(failures == 0)
        let pressure = splitters.map { $0.set.statistics.waits + $0.set.statistics.rescued }.reduce(0, +)
        #expect(pressure > 0, "the reserve was exhausted at some point, or the test proved nothing")
    }
}
