import Foundation
import Strata
import StrataClasses
import StrataDisks
import Synchronization
import Testing

/// MIRROR: replication, ejection, read retry, balance, online rebuild, restart and resync.
@Suite(.timeLimit(.minutes(2)))
struct MirrorTests {
    static func pattern(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 97 &+ seed &* 13) }
    }

    /// Compares two components byte for byte outside their metadata sector.
    static func identical(_ a: Provider, _ b: Provider, in topology: Topology, size: Int64) async throws -> Bool {
        let left = try BlockDevice(opening: a, in: topology, writable: false)
        let right = try BlockDevice(opening: b, in: topology, writable: false)
        defer { left.close(); right.close() }
        var offset: Int64 = 0
        while offset < size {
            let count = Int(min(1 << 20, size - offset))
            if try await left.read(at: offset, count: count) != right.read(at: offset, count: count) { return false }
            offset += Int64(count)
        }
        return true
    }

    static func waitFor(_ mirror: MirrorGeom, state: String, seconds: Double = 60) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if mirror.status.state == state { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    @Test func writesLandOnEveryComponent() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<3).map { try MemoryDisk.create(in: topology, name: "mw\($0)", size: 4 << 20) }
        let mirror = try MirrorGeom.create(in: topology, name: "m0", over: disks.map(\.provider))
        #expect(mirror.providers[0].mediaSize == (4 << 20) - 512)
        #expect(mirror.status.state == "COMPLETE")
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        try await device.write(Self.pattern(65536, seed: 1), at: 8192)
        device.close()
        for disk in disks {
            let direct = try BlockDevice(opening: disk.provider, in: topology, writable: false)
            #expect(try await direct.read(at: 8192, count: 65536) == Self.pattern(65536, seed: 1))
            direct.close()
        }
    }

    @Test func aComponentThatFailsAWriteIsEjectedAndTheWriteStillSucceeds() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "fw\($0)", size: 4 << 20) }
        let nop = try NopGeom.create(in: topology, name: "fw-nop", over: disks[0].provider)
        let mirror = try MirrorGeom.create(in: topology, name: "m1", over: [nop.providers[0], disks[1].provider])
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try nop.configure(.init(writeFailPercent: 100))
        try await device.write(Self.pattern(4096, seed: 2), at: 0)
        #expect(mirror.status.state == "DEGRADED")
        #expect(mirror.status.components.map(\.state) == ["BROKEN", "ACTIVE"])
        try nop.configure(.init())
        let before = nop.statistics.writes
        try await device.write(Self.pattern(4096, seed: 3), at: 4096)
        #expect(nop.statistics.writes == before, "an ejected component gets no more writes")
        #expect(try await device.read(at: 0, count: 8192) == Self.pattern(4096, seed: 2) + Self.pattern(4096, seed: 3))
    }

    @Test func aFailedReadIsRetriedOnAnotherComponent() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "fr\($0)", size: 4 << 20) }
        let nop = try NopGeom.create(in: topology, name: "fr-nop", over: disks[0].provider)
        let mirror = try MirrorGeom.create(in: topology, name: "m2", over: [nop.providers[0], disks[1].provider],
                                           balance: .roundRobin)
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await device.write(Self.pattern(8192, seed: 4), at: 0)
        try nop.configure(.init(readFailPercent: 100))
        for _ in 0..<4 {
            #expect(try await device.read(at: 0, count: 8192) == Self.pattern(8192, seed: 4))
        }
        #expect(mirror.status.components.first?.state == "BROKEN")
    }

    /// The retry sends the same clone again, after it went down through geoms that
    /// cloned it in turn: the second trip starts with no clones of its own.
    @Test func aReadThatFailedBelowAGeomThatClonesIsRetriedThroughAnother() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "rc\($0)", size: 4 << 20) }
        let failing = try NopGeom.create(in: topology, name: "rc-fail", over: disks[0].provider)
        let legs = [try NopGeom.create(in: topology, name: "rc-leg0", over: failing.providers[0]),
                    try NopGeom.create(in: topology, name: "rc-leg1", over: disks[1].provider)]
        let mirror = try MirrorGeom.create(in: topology, name: "m-rc", over: legs.map { $0.providers[0] }, balance: .roundRobin)
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await device.write(Self.pattern(8192, seed: 6), at: 4096)
        try failing.configure(.init(readFailPercent: 100))
        for _ in 0..<4 {
            #expect(try await device.read(at: 4096, count: 8192) == Self.pattern(8192, seed: 6))
        }
        #expect(mirror.status.components.first?.state == "BROKEN")
    }

    @Test(arguments: [MirrorBalance.roundRobin, .load, .split])
    func readsAreSpreadByTheBalanceAlgorithm(balance: MirrorBalance) async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "b\($0)-\(balance.name)", size: 8 << 20) }
        let nops = try disks.map { try NopGeom.create(in: topology, name: "bn-\($0.name)", over: $0.provider) }
        let mirror = try MirrorGeom.create(in: topology, name: "mb-\(balance.name)", over: nops.map { $0.providers[0] },
                                           balance: balance, slice: 65536)
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await device.write(Self.pattern(1 << 20, seed: 5), at: 0)
        for _ in 0..<8 { #expect(try await device.read(at: 0, count: 1 << 20) == Self.pattern(1 << 20, seed: 5)) }
        let reads = nops.map(\.statistics.reads)
        if balance == .load {
            #expect(reads.reduce(0, +) >= 8)
        } else {
            #expect(reads.allSatisfy { $0 > 0 }, "\(balance.name) used both components: \(reads)")
        }
    }

    @Test(arguments: [(2048, "slice 2048"), (3 << 12, "slice 12288"), (2 << 30, "slice 2147483648")])
    func aSliceOutOfRangeIsRefusedByTheClassItself(slice: Int, prefix: String) throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "sl\($0)", size: 1 << 20) }
        #expect {
            try MirrorGeom.create(in: topology, name: "ms", over: disks.map(\.provider), slice: slice)
        } throws: { error in
            "\(error)".contains("\(prefix) must be a power of two from 4KiB to 1GiB")
        }
        #expect(topology.geom(named: "ms") == nil)
    }

    @Test func aPreferredComponentTakesTheReads() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "pf\($0)", size: 4 << 20) }
        let nops = try disks.map { try NopGeom.create(in: topology, name: "pn-\($0.name)", over: $0.provider) }
        let mirror = try MirrorGeom.create(in: topology, name: "mp", over: nops.map { $0.providers[0] }, balance: .prefer)
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: false)
        defer { device.close() }
        let before = nops.map(\.statistics.reads)
        for _ in 0..<10 { _ = try await device.read(at: 0, count: 4096) }
        let reads = zip(nops.map(\.statistics.reads), before).map { $0 - $1 }
        #expect(reads.contains(10) && reads.contains(0), "\(reads)")
    }

    @Test func aMirrorClosedCleanlyComesBackCompleteAndOneThatCrashedIsResynchronized() async throws {
        let directory = NSTemporaryDirectory() + "strata-mirror-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = (0..<2).map { "\(directory)/c\($0).img" }
        do {
            let topology = Topology()
            let disks = try paths.enumerated().map { try FileDisk.create(in: topology, name: "c\($0)", path: $1, size: 8 << 20) }
            let mirror = try MirrorGeom.create(in: topology, name: "persist", over: disks.map(\.provider))
            let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
            try await device.write(Self.pattern(1 << 20, seed: 6), at: 1 << 20)
            device.close()
            #expect(topology.shutdown())
        }
        do {
            let topology = Topology()
            topology.register(MirrorClass())
            for (index, path) in paths.enumerated() { _ = try FileDisk.create(in: topology, name: "c\(index)", path: path) }
            topology.settle()
            let mirror = try #require(topology.geom(named: "persist") as? MirrorGeom)
            #expect(mirror.status.state == "COMPLETE", "closed cleanly: no resync")
            // Now "crash": open for writing, write, and never close.
            let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
            try await device.write(Self.pattern(1 << 20, seed: 7), at: 3 << 20)
            // Make one copy differ, as a crash between two component writes would.
            let raw = try FileHandle(forUpdating: URL(fileURLWithPath: paths[1]))
            try raw.seek(toOffset: 5 << 20)
            try raw.write(contentsOf: Data(repeating: 0xEE, count: 4096))
            try raw.close()
            // A crash never closes the device: keep it open for good.
            _ = Unmanaged.passRetained(device)
        }
        // A crash leaves the files as they are now. The crashed topology still holds
        // them, locks and all, so the next start opens copies.
        let crashed = try paths.map { path in
            try FileManager.default.copyItem(atPath: path, toPath: path + ".crashed")
            return path + ".crashed"
        }
        let topology = Topology()
        defer { topology.shutdown() }
        topology.register(MirrorClass())
        for (index, path) in crashed.enumerated() { _ = try FileDisk.create(in: topology, name: "c\(index)", path: path) }
        topology.settle()
        let mirror = try #require(topology.geom(named: "persist") as? MirrorGeom)
        #expect(try await Self.waitFor(mirror, state: "COMPLETE"), "\(mirror.status)")
        let disks = try (0..<2).map { try #require(topology.provider(named: "c\($0)")) }
        #expect(try await Self.identical(disks[0], disks[1], in: topology, size: mirror.mirrorSize), "resynchronized after the crash")
    }

    @Test func aComponentThatWasAbsentIsStaleAndRebuiltWhenItReturns() async throws {
        let directory = NSTemporaryDirectory() + "strata-stale-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = (0..<2).map { "\(directory)/s\($0).img" }
        do {
            let topology = Topology()
            let disks = try paths.enumerated().map { try FileDisk.create(in: topology, name: "s\($0)", path: $1, size: 8 << 20) }
            try MirrorGeom.create(in: topology, name: "stale", over: disks.map(\.provider))
            #expect(topology.shutdown())
        }
        do {
            // s1 is away: the mirror starts degraded with s0 and takes writes s1 misses.
            let topology = Topology()
            topology.register(MirrorClass(wait: 0.2))
            _ = try FileDisk.create(in: topology, name: "s0", path: paths[0])
            topology.settle()
            var mirror: MirrorGeom?
            for _ in 0..<100 where mirror?.providers.isEmpty ?? true {
                mirror = topology.geom(named: "stale") as? MirrorGeom
                try await Task.sleep(for: .milliseconds(20))
            }
            let degraded = try #require(mirror)
            #expect(degraded.status.state == "DEGRADED")
            let device = try BlockDevice(opening: degraded.providers[0], in: topology, writable: true)
            try await device.write(Self.pattern(65536, seed: 8), at: 0)
            device.close()
            #expect(topology.shutdown())
        }
        let topology = Topology()
        defer { topology.shutdown() }
        topology.register(MirrorClass())
        for (index, path) in paths.enumerated() { _ = try FileDisk.create(in: topology, name: "s\(index)", path: path) }
        topology.settle()
        let mirror = try #require(topology.geom(named: "stale") as? MirrorGeom)
        #expect(try await Self.waitFor(mirror, state: "COMPLETE"), "\(mirror.status)")
        let disks = try (0..<2).map { try #require(topology.provider(named: "s\($0)")) }
        #expect(try await Self.identical(disks[0], disks[1], in: topology, size: mirror.mirrorSize), "s1 caught up")
    }

    @Test func anEjectedComponentIsNotTakenBackByItself() async throws {
        let directory = NSTemporaryDirectory() + "strata-eject-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = (0..<2).map { "\(directory)/e\($0).img" }
        do {
            let topology = Topology()
            let disks = try paths.enumerated().map { try FileDisk.create(in: topology, name: "e\($0)", path: $1, size: 8 << 20) }
            let nop = try NopGeom.create(in: topology, name: "e-nop", over: disks[1].provider)
            let mirror = try MirrorGeom.create(in: topology, name: "ejected", over: [disks[0].provider, nop.providers[0]])
            let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
            try nop.configure(.init(writeFailPercent: 100))
            try await device.write(Self.pattern(65536, seed: 9), at: 0)
            device.close()
            #expect(topology.shutdown())
        }
        let topology = Topology()
        defer { topology.shutdown() }
        topology.register(MirrorClass(wait: 0.2))
        for (index, path) in paths.enumerated() { _ = try FileDisk.create(in: topology, name: "e\(index)", path: path) }
        topology.settle()
        var mirror: MirrorGeom?
        for _ in 0..<100 where mirror?.providers.isEmpty ?? true {
            mirror = topology.geom(named: "ejected") as? MirrorGeom
            try await Task.sleep(for: .milliseconds(20))
        }
        let running = try #require(mirror)
        #expect(running.status.state == "DEGRADED")
        #expect(running.status.components.map(\.name) == ["e0", "-"], "the ejected copy is never read")
        let device = try BlockDevice(opening: running.providers[0], in: topology, writable: false)
        defer { device.close() }
        #expect(try await device.read(at: 0, count: 65536) == Self.pattern(65536, seed: 9))
    }

    /// The ejection of a copy that failed a write is on the surviving copy's disk
    /// before the write is acknowledged: a crash right after the acknowledgement must
    /// not find the stale copy still in sync.
    @Test func aFailedCopyIsRecordedAsEjectedBeforeTheWriteIsAcknowledged() async throws {
        let directory = NSTemporaryDirectory() + "strata-eject-ack-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try FileDisk.create(in: topology, name: "k\($0)", path: "\(directory)/k\($0).img", size: 8 << 20) }
        let nop = try NopGeom.create(in: topology, name: "k-nop", over: disks[1].provider)
        let mirror = try MirrorGeom.create(in: topology, name: "eject-ack", over: [disks[0].provider, nop.providers[0]])
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        func genid(_ index: Int) throws -> UInt32? {
            let file = try #require(FileHandle(forReadingAtPath: "\(directory)/k\(index).img"))
            defer { try? file.close() }
            try file.seek(toOffset: UInt64((8 << 20) - 512))
            return MirrorMetadata.decode(Array(try file.read(upToCount: 512) ?? Data()))?.genid
        }
        let before = try #require(try genid(0))
        try nop.configure(.init(writeFailPercent: 100))
        for round in 0..<20 {
            try await device.write(Self.pattern(4096, seed: round), at: Int64(round) * 4096)
            // Read straight after the acknowledgement, with nothing else waited for.
            let after = try #require(try genid(0))
            #expect(after > before, "round \(round): the surviving copy's metadata still has genid \(after)")
            #expect(try genid(1) == before, "the failed copy keeps the old generation")
        }
    }

    @Test func metadataRoundTripsAndRejectsDamage() {
        let metadata = MirrorMetadata(name: "m", mirrorID: 1, diskID: 2, components: 2, genid: 3, syncid: 4, priority: 5,
                                      balance: .split, slice: 65536, mediaSize: 1 << 20, syncOffset: 4096, flags: [.dirty, .synchronizing])
        var sector = metadata.encoded(sectorSize: 512)
        #expect(MirrorMetadata.decode(sector) == metadata)
        sector[30] ^= 0x40
        #expect(MirrorMetadata.decode(sector) == nil)
    }
}

/// The online rebuild against concurrent writes, also run under ThreadSanitizer.
@Suite(.timeLimit(.minutes(3)))
struct MirrorConcurrency {
    @Test func aNewComponentIsRebuiltOnlineUnderConcurrentWrites() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let size: Int64 = 24 << 20
        let disks = try (0..<3).map { try MemoryDisk.create(in: topology, name: "rb\($0)", size: size) }
        let nop = try NopGeom.create(in: topology, name: "rb-nop", over: disks[1].provider)
        let mirror = try MirrorGeom.create(in: topology, name: "mr", over: [disks[0].provider, nop.providers[0]])
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        for block in 0..<64 { try await device.write(MirrorTests.pattern(65536, seed: block), at: Int64(block) * 262144) }
        try nop.configure(.init(writeFailPercent: 100))
        try await device.write(MirrorTests.pattern(4096, seed: 99), at: 0)
        #expect(mirror.status.state == "DEGRADED")
        mirror.rebuildRate.store(16 << 20, ordering: .relaxed)
        try mirror.insert(disks[2].provider, in: topology)
        // Writes keep coming while the new copy is built, some into what is not copied yet.
        var offsets: [Int64] = []
        for round in 0..<40 {
            let offset = Int64((round * 7919) % 90) * 262144 + 131072
            try await device.write(MirrorTests.pattern(65536, seed: 1000 + round), at: offset)
            offsets.append(offset)
            try await Task.sleep(for: .milliseconds(10))
        }
        // The new disk took the broken one's place.
        #expect(try await MirrorTests.waitFor(mirror, state: "COMPLETE", seconds: 60), "\(mirror.status)")
        #expect(mirror.status.components.map(\.name) == ["rb0", "rb2"])
        #expect(try await MirrorTests.identical(disks[0].provider, disks[2].provider, in: topology, size: mirror.mirrorSize))
    }

    /// A write that began before the rebuild is not tracked by its gate: the rebuild waits
    /// for it. Copying at once would read the source before the write reached it, and
    /// put the old data over what the write left on the target.
    @Test func aRebuildWaitsForAWriteThatBeganBeforeIt() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "wb\($0)", size: 4 << 20) }
        let slow = try NopGeom.create(in: topology, name: "wb-slow", over: disks[0].provider)
        let mirror = try MirrorGeom.create(in: topology, name: "mw", over: [slow.providers[0], disks[1].provider])
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await device.write(MirrorTests.pattern(65536, seed: 1), at: 0)
        // The write reaches wb1 at once and the source, wb0, 400 ms later; the rebuild's
        // reads of wb0 are not held.
        try slow.configure(.init(delayMilliseconds: 400))
        let write = Task { try await device.write(MirrorTests.pattern(65536, seed: 2), at: 0) }
        let copy = try BlockDevice(opening: disks[1].provider, in: topology, writable: false)
        defer { copy.close() }
        // Once wb1 has it, the write is in flight to wb0.
        let deadline = ContinuousClock.now + .seconds(10)
        while try await copy.read(at: 0, count: 65536) != MirrorTests.pattern(65536, seed: 2), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(1))
        }
        try slow.configure(.init())
        try mirror.rebuild("wb1", in: topology)
        try await write.value
        #expect(try await MirrorTests.waitFor(mirror, state: "COMPLETE"), "\(mirror.status)")
        #expect(try await copy.read(at: 0, count: 65536) == MirrorTests.pattern(65536, seed: 2))
        #expect(try await MirrorTests.identical(disks[0].provider, disks[1].provider, in: topology, size: mirror.mirrorSize))
    }
}

/// The mirror operations and a rebuild that resumes.
@Suite(.timeLimit(.minutes(3)))
struct MirrorOperationTests {
    @Test func rebuildCopiesAComponentAgainAndForgetFreesBrokenPlaces() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<3).map { try MemoryDisk.create(in: topology, name: "op\($0)", size: 8 << 20) }
        let nop = try NopGeom.create(in: topology, name: "op-nop", over: disks[1].provider)
        let mirror = try MirrorGeom.create(in: topology, name: "ops", over: [disks[0].provider, nop.providers[0]])
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await device.write(MirrorTests.pattern(1 << 20, seed: 11), at: 0)
        try mirror.rebuild("op-nop", in: topology)
        #expect(try await MirrorTests.waitFor(mirror, state: "COMPLETE"), "\(mirror.status)")
        #expect(try await MirrorTests.identical(disks[0].provider, disks[1].provider, in: topology, size: mirror.mirrorSize))
        #expect(throws: StrataError.self) { try mirror.rebuild("nope", in: topology) }
        try nop.configure(.init(writeFailPercent: 100))
        try await device.write(MirrorTests.pattern(4096, seed: 12), at: 0)
        #expect(mirror.status.components.map(\.state) == ["ACTIVE", "BROKEN"])
        mirror.forget(in: topology)
        #expect(mirror.status.components.map(\.state) == ["ACTIVE", "EMPTY"])
        try mirror.insert(disks[2].provider, in: topology)
        #expect(try await MirrorTests.waitFor(mirror, state: "COMPLETE"), "\(mirror.status)")
        #expect(throws: StrataError.self, "the last up-to-date copy stays") {
            try mirror.remove("op0", in: topology)
            try mirror.remove("op2", in: topology)
        }
    }

    @Test func aProviderOfAnotherMirrorIsRefused() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<3).map { try MemoryDisk.create(in: topology, name: "own\($0)", size: 4 << 20) }
        let first = try MirrorGeom.create(in: topology, name: "first", over: [disks[0].provider, disks[1].provider])
        topology.wither(first)
        #expect(topology.waitUntilGone(first))
        do {
            try MirrorGeom.create(in: topology, name: "second", over: [disks[1].provider, disks[2].provider])
            Issue.record("a component of another mirror was taken")
        } catch let error as StrataError {
            #expect(error.message.contains("own1 carries the metadata of mirror first"), "\(error)")
        }
    }

    @Test func aRebuildInterruptedByAStopResumesWhereItWas() async throws {
        let directory = NSTemporaryDirectory() + "strata-resume-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = (0..<2).map { "\(directory)/r\($0).img" }
        let size: Int64 = 64 << 20
        do {
            let topology = Topology()
            let disks = try paths.enumerated().map { try FileDisk.create(in: topology, name: "r\($0)", path: $1, size: size) }
            let mirror = try MirrorGeom.create(in: topology, name: "resume", over: disks.map(\.provider))
            let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
            for block in 0..<32 { try await device.write(MirrorTests.pattern(65536, seed: block), at: Int64(block) << 21) }
            device.close()
            // Slow enough (8 s in all) that the stop lands in the middle even on a busy machine.
            mirror.rebuildRate.store(8 << 20, ordering: .relaxed)
            try mirror.rebuild("r1", in: topology)
            var progress = 0.0
            for _ in 0..<1000 where progress < 0.3 {
                // A blocking sleep keeps this test's own thread: a task sleep waits for a
                // free thread of the shared pool, which tests blocked on fio or qemu-img
                // can hold for seconds, long enough to miss the whole 8 s rebuild.
                usleep(10_000)
                progress = mirror.status.progress
            }
            #expect(mirror.status.state == "SYNCHRONIZING" && progress >= 0.3, "\(mirror.status)")
            #expect(topology.shutdown())
        }
        let topology = Topology()
        defer { topology.shutdown() }
        topology.register(MirrorClass())
        for (index, path) in paths.enumerated() { _ = try FileDisk.create(in: topology, name: "r\(index)", path: path) }
        topology.settle()
        let mirror = try #require(topology.geom(named: "resume") as? MirrorGeom)
        let resumedAt = mirror.status.progress
        #expect(resumedAt >= 0.2, "resumed from the saved offset, not from the start: \(mirror.status)")
        #expect(try await MirrorTests.waitFor(mirror, state: "COMPLETE"), "\(mirror.status)")
        let disks = try (0..<2).map { try #require(topology.provider(named: "r\($0)")) }
        #expect(try await MirrorTests.identical(disks[0], disks[1], in: topology, size: mirror.mirrorSize))
    }
}
