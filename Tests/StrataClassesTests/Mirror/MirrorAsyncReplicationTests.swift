import Foundation
import Strata
import StrataClasses
import StrataDisks
import Synchronization
import Testing

/// `replication: async`: writes are acknowledged once the local component has them; the
/// remote one gets them in the background, in order, never more than the lag behind, and
/// a mirror closed or a remote component taken back waits for them.
@Suite(.timeLimit(.minutes(3)))
struct MirrorAsyncReplicationTests {
    /// A mirror of a local memory disk under a nop (to fail it) and a "remote" one: a
    /// memory disk under a nop (to slow or fail it) under a stand-in that answers
    /// "STRATA::link".
    struct Setup {
        let topology: Topology
        let local: MemoryDisk
        let localNop: NopGeom
        let far: MemoryDisk
        let farNop: NopGeom
        let remote: LinkStandIn
        let mirror: MirrorGeom

        init(_ tag: String, lag: Int64 = MirrorReplication.defaultLag, size: Int64 = 32 << 20,
             log: LogLines? = nil) throws {
            topology = log.map { log in Topology(log: { _, message in log.append(message) }) } ?? Topology()
            local = try MemoryDisk.create(in: topology, name: "\(tag)-local", size: size)
            localNop = try NopGeom.create(in: topology, name: "\(tag)-local-nop", over: local.provider)
            far = try MemoryDisk.create(in: topology, name: "\(tag)-far", size: size)
            farNop = try NopGeom.create(in: topology, name: "\(tag)-nop", over: far.provider)
            remote = try LinkStandIn.create(in: topology, name: "\(tag)-remote", over: farNop.providers[0])
            mirror = try MirrorGeom.create(in: topology, name: "m\(tag)", over: [localNop.providers[0], remote.providers[0]],
                                           balance: .preferLocal, replication: .async(lag: lag))
        }

        /// Bytes of the far copy, read under the mirror.
        func farBytes(at offset: Int64, count: Int) async throws -> [UInt8] {
            let device = try BlockDevice(opening: far.provider, in: topology, writable: false)
            defer { device.close() }
            return try await device.read(at: offset, count: count)
        }

        /// Waits up to `seconds` for the remote component to have every write.
        func waitForNoLag(seconds: Double = 20) async throws -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while mirror.replicationLag > 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
            return mirror.replicationLag == 0
        }
    }

    @Test func aWriteIsAcknowledgedBeforeTheRemoteComponentHasIt() async throws {
        let setup = try Setup("aa")
        defer { setup.topology.shutdown() }
        let device = try BlockDevice(opening: setup.mirror.providers[0], in: setup.topology, writable: true)
        defer { device.close() }
        try setup.farNop.configure(.init(delayMilliseconds: 400))
        let data = MirrorTests.pattern(65536, seed: 11)
        try await device.write(data, at: 1 << 20)
        // Acknowledged; the remote copy is still on its way, and counted as lag.
        #expect(setup.mirror.replicationLag == 65536)
        #expect(try await setup.farBytes(at: 1 << 20, count: 65536) != data)
        let status = try #require(MirrorDefinition.status(of: setup.mirror))
        #expect(status.figures == ["replication_lag_bytes": 65536])
        #expect(status.state == "COMPLETE")
        // Reads meanwhile find the new data (on the local copy).
        #expect(try await device.read(at: 1 << 20, count: 65536) == data)
        #expect(try await setup.waitForNoLag())
        #expect(try await setup.farBytes(at: 1 << 20, count: 65536) == data)
        #expect(MirrorDefinition.status(of: setup.mirror)?.figures == ["replication_lag_bytes": 0])
    }

    @Test func writesWaitWhileTheRemoteComponentIsTheWholeLagBehind() async throws {
        let setup = try Setup("ab", lag: 1 << 20)
        defer { setup.topology.shutdown() }
        let device = try BlockDevice(opening: setup.mirror.providers[0], in: setup.topology, writable: true)
        defer { device.close() }
        try setup.farNop.configure(.init(delayMilliseconds: 100))
        for block in 0..<8 {
            try await device.write(MirrorTests.pattern(512 << 10, seed: block), at: Int64(block) << 20)
            #expect(setup.mirror.replicationLag <= 1 << 20)
            if block >= 2 {
                // Two blocks fill the lag: this one waited for the remote to take one.
                #expect(setup.farNop.statistics.writes >= block - 1, "block \(block)")
            }
        }
        #expect(try await setup.waitForNoLag())
        #expect(try await MirrorTests.identical(setup.local.provider, setup.far.provider, in: setup.topology,
                                                size: setup.mirror.mirrorSize))
    }

    @Test func overlappingWritesReachTheRemoteComponentInTheirOrder() async throws {
        let setup = try Setup("ac")
        defer { setup.topology.shutdown() }
        let device = try BlockDevice(opening: setup.mirror.providers[0], in: setup.topology, writable: true)
        defer { device.close() }
        setup.remote.jitterMilliseconds.store(20, ordering: .relaxed)
        // Each write overlaps the last, acknowledged long before the remote has it; many
        // are waiting at once, and a flush among them. Sent together, the remote would
        // apply them in any order.
        for round in 0..<200 {
            try await device.write(MirrorTests.pattern(16384, seed: round), at: Int64(round % 7) * 4096)
            if round % 50 == 49 { try await device.flush() }
        }
        #expect(try await setup.waitForNoLag())
        #expect(try await MirrorTests.identical(setup.local.provider, setup.far.provider, in: setup.topology,
                                                size: setup.mirror.mirrorSize))
        #expect(setup.farNop.statistics.writes >= 200)
    }

    @Test func aRemoteComponentFailingInTheBackgroundIsEjectedAndTakenBackWithWhatItMissed() async throws {
        let log = LogLines()
        let setup = try Setup("ad", log: log)
        defer { setup.topology.shutdown() }
        let device = try BlockDevice(opening: setup.mirror.providers[0], in: setup.topology, writable: true)
        defer { device.close() }
        for block in 0..<16 { try await device.write(MirrorTests.pattern(65536, seed: block), at: Int64(block) << 20) }
        #expect(try await setup.waitForNoLag())
        setup.remote.answer.withLock { $0 = "FAILED 1" }
        try setup.farNop.configure(.init(writeFailPercent: 100))
        // Acknowledged from the local copy; the remote one fails it afterwards.
        try await device.write(MirrorTests.pattern(65536, seed: 100), at: 3 << 20)
        try await device.write(MirrorTests.pattern(65536, seed: 101), at: 9 << 20)
        #expect(try await setup.waitForNoLag())
        #expect(setup.mirror.status.state == "DEGRADED")
        #expect(setup.mirror.status.components.map(\.state) == ["ACTIVE", "BROKEN"])
        try setup.farNop.configure(.init())
        let before = setup.farNop.statistics.bytesWritten
        setup.remote.answer.withLock { $0 = "CONNECTED 2" }
        #expect(try await MirrorTests.waitFor(setup.mirror, state: "COMPLETE", seconds: 90), "\(setup.mirror.status)")
        #expect(try await MirrorTests.identical(setup.local.provider, setup.far.provider, in: setup.topology,
                                                size: setup.mirror.mirrorSize))
        let copied = setup.farNop.statistics.bytesWritten - before
        #expect(copied < 3 << 20, "\(copied) bytes copied for two regions")
        #expect(log.lines.contains { $0.contains("component ad-remote failed") }, "\(log.lines)")
    }

    @Test func closingTheMirrorWaitsForTheRemoteComponent() async throws {
        let setup = try Setup("ae")
        defer { setup.topology.shutdown() }
        let device = try BlockDevice(opening: setup.mirror.providers[0], in: setup.topology, writable: true)
        try setup.farNop.configure(.init(delayMilliseconds: 300))
        let data = MirrorTests.pattern(256 << 10, seed: 5)
        try await device.write(data, at: 4 << 20)
        #expect(setup.mirror.replicationLag > 0)
        // The last writer leaves: the mirror is marked clean only once both copies agree.
        device.close()
        #expect(setup.mirror.replicationLag == 0)
        #expect(try await setup.farBytes(at: 4 << 20, count: data.count) == data)
    }

    @Test func withTheLocalComponentOutTheRemoteOneTakesWritesAsTheyCome() async throws {
        let setup = try Setup("af")
        defer { setup.topology.shutdown() }
        let device = try BlockDevice(opening: setup.mirror.providers[0], in: setup.topology, writable: true)
        defer { device.close() }
        try setup.farNop.configure(.init(delayMilliseconds: 300))
        try await device.write(MirrorTests.pattern(65536, seed: 1), at: 0)
        #expect(setup.mirror.replicationLag == 65536)
        // The local copy fails a write while the last one is still on its way to the
        // remote one: that write is reported failed (its only acknowledging copy failed).
        try setup.localNop.configure(.init(readFailPercent: 100, writeFailPercent: 100))
        await #expect(throws: (any Error).self) { try await device.write(MirrorTests.pattern(65536, seed: 2), at: 0) }
        #expect(setup.mirror.status.components.map(\.state) == ["BROKEN", "ACTIVE"])
        // What comes next waits for the remote copy to have the earlier writes, then goes
        // to it directly.
        let data = MirrorTests.pattern(65536, seed: 3)
        try await device.write(data, at: 0)
        #expect(setup.mirror.replicationLag == 0)
        #expect(try await device.read(at: 0, count: 65536) == data)
        #expect(try await setup.farBytes(at: 0, count: 65536) == data)
    }
}

/// Writers, flushes and readers from many threads against an async mirror whose remote
/// component reorders what it gets and whose backlog is small (so writes park and are let
/// go while others complete); run under ThreadSanitizer by `scripts/check`.
@Suite(.timeLimit(.minutes(3)))
struct MirrorAsyncReplicationConcurrency {
    @Test func writersReadersAndFlushesEndWithIdenticalCopies() async throws {
        let setup = try MirrorAsyncReplicationTests.Setup("ca", lag: 1 << 20, size: 8 << 20)
        defer { setup.topology.shutdown() }
        setup.remote.jitterMilliseconds.store(3, ordering: .relaxed)
        let device = try BlockDevice(opening: setup.mirror.providers[0], in: setup.topology, writable: true)
        defer { device.close() }
        final class Highest: Sendable { let value = Atomic<Int64>(0) }
        let highestLag = Highest()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<6 {
                group.addTask {
                    var random = SystemRandomNumberGenerator()
                    for round in 0..<150 {
                        // Blocks of 4 to 64 KiB anywhere in the writer's own 320 KiB: each
                        // overlaps earlier ones whose remote copies may still be on their
                        // way. (Two writers' blocks never overlap: writes in flight together
                        // to the same bytes race in the memory disk itself.)
                        let length = 4096 << Int.random(in: 0...4, using: &random)
                        let region = Int64(writer) * 327_680
                        let offset = region + Int64(Int.random(in: 0...(327_680 - length) / 4096, using: &random) * 4096)
                        try await device.write(MirrorTests.pattern(length, seed: writer * 1000 + round), at: offset)
                        // Sampled here too, not only by the reader: a write is acknowledged
                        // by the local copy while its remote one is delayed, so the lag is
                        // seen however the threads are scheduled on a loaded machine.
                        highestLag.value.max(setup.mirror.replicationLag, ordering: .relaxed)
                        if round % 40 == 39 { try await device.flush() }
                    }
                }
            }
            group.addTask {
                for round in 0..<300 {
                    _ = try await device.read(at: Int64(round % 32) * 65536, count: 65536)
                    highestLag.value.max(setup.mirror.replicationLag, ordering: .relaxed)
                }
            }
            try await group.waitForAll()
        }
        // The remote copy fell behind, and never by more than the bound plus the writes
        // that passed the check together (six writers, 64 KiB at most each).
        let highest = highestLag.value.load(ordering: .relaxed)
        #expect(highest > 0 && highest <= (1 << 20) + 6 * 65536, "highest lag \(highest)")
        #expect(try await setup.waitForNoLag())
        #expect(setup.mirror.status.state == "COMPLETE")
        #expect(try await MirrorTests.identical(setup.local.provider, setup.far.provider, in: setup.topology,
                                                size: setup.mirror.mirrorSize))
    }
}
