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
