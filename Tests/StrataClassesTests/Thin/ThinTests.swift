import Foundation
import Strata
@testable import StrataClasses
import StrataDisks
import Synchronization
import Testing

/// THIN: volumes, snapshots, clones, revert, delete, TRIM, block status and changed
/// blocks, space, and a pool reopened from its metadata.
@Suite struct ThinTests {
    static let chunk = 64 << 10

    /// A pool `tp` over a 64 MiB memory disk (or `disk` if given).
    static func pool(in topology: Topology, size: Int64 = 64 << 20, settings: [(key: String, text: String)] = [])
        throws -> (Provider, ThinPoolGeom) {
        let disk = try MemoryDisk.create(in: topology, name: "md", size: size)
        let pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider], settings: settings, relativeTo: "/", in: topology)
        return (disk.provider, pool as! ThinPoolGeom)
    }

    static func open(_ pool: ThinPoolGeom, _ name: String, in topology: Topology, writable: Bool = true) throws -> BlockDevice {
        try BlockDevice(opening: topology.provider(named: "tp/\(name)")!, in: topology, writable: writable)
    }

    static func pattern(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ seed &* 13 &+ ($0 >> 9)) }
    }

    @Test func aNewVolumeReadsZerosAndKeepsWhatIsWritten() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        _ = try pool.create("vm1", size: 1 << 30, in: topology)
        let volume = try Self.open(pool, "vm1", in: topology)
        defer { volume.close() }
        #expect(topology.provider(named: "tp/vm1")!.mediaSize == 1 << 30)
        #expect(try await volume.read(at: 900 << 20, count: 8192) == [UInt8](repeating: 0, count: 8192))
        // A write inside one chunk, one across two, and a whole chunk.
        let small = Self.pattern(4096, seed: 1)
        let across = Self.pattern(Self.chunk, seed: 2)
        let whole = Self.pattern(Self.chunk, seed: 3)
        try await volume.write(small, at: 12288)
        try await volume.write(across, at: Int64(5 * Self.chunk - 8192))
        try await volume.write(whole, at: Int64(700 * Self.chunk))
        #expect(try await volume.read(at: 12288, count: 4096) == small)
        #expect(try await volume.read(at: 0, count: 12288) == [UInt8](repeating: 0, count: 12288), "the rest of a new chunk is zeros")
        #expect(try await volume.read(at: Int64(5 * Self.chunk - 8192), count: Self.chunk) == across)
        #expect(try await volume.read(at: Int64(700 * Self.chunk), count: Self.chunk) == whole)
        // Overwrites in place, then a read spanning mapped and unmapped chunks.
        let again = Self.pattern(8192, seed: 4)
        try await volume.write(again, at: 12288)
        var expected = [UInt8](repeating: 0, count: 3 * Self.chunk)
        expected.replaceSubrange(12288..<(12288 + 8192), with: again)
        #expect(try await volume.read(at: 0, count: 3 * Self.chunk) == expected)
        let list = try pool.list()
        #expect(list.volumes.map(\.allocated) == [Int64(4 * Self.chunk)])
        #expect(list.pool.dataUsed == Int64(4 * Self.chunk))
    }

    /// As `geom destroy`, `delete` leaves a volume that an export or a topology entry
    /// uses (a claim), or that a geom stands on, unless forced.
    @Test func aVolumeThatAnExportOrAGeomUsesIsDeletedOnlyWhenForced() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        func refusal(_ name: String) -> String {
            do {
                _ = try pool.delete(name, force: false, in: topology)
                return "deleted"
            } catch {
                return "\(error)"
            }
        }
        _ = try pool.create("served", size: 1 << 20, in: topology)
        topology.claim(["tp/served"])
        #expect(refusal("served").hasPrefix("an export or an entry of the topology uses tp/served; remove it first, or delete with --force"))
        _ = try pool.create("under", size: 1 << 20, in: topology)
        _ = try NopGeom.create(in: topology, name: "above", over: topology.provider(named: "tp/under")!, settings: .init())
        #expect(refusal("under").hasPrefix("above is stacked on tp/under; destroy it first, or delete with --force"))
        #expect(topology.provider(named: "tp/served") != nil && topology.provider(named: "tp/under") != nil)
        _ = try pool.delete("served", force: true, in: topology)
        #expect(topology.provider(named: "tp/served") == nil)
        topology.unclaim(["tp/served"])
        _ = try pool.create("free", size: 1 << 20, in: topology)
        #expect(refusal("free") == "deleted")
    }

    @Test func aChunkThatHeldADeletedVolumesDataReadsZerosAroundANewWrite() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology, size: 4 << 20)
        let chunks = Int(pool.geometry.dataChunks)
        _ = try pool.create("old", size: 64 << 20, in: topology)
        let old = try Self.open(pool, "old", in: topology)
        for index in 0..<chunks { try await old.write([UInt8](repeating: 0xA5, count: Self.chunk), at: Int64(index * Self.chunk)) }
        try await old.flush()
        old.close()
        _ = try pool.delete("old", force: false, in: topology)
        // Every chunk of the pool held 0xA5: each first write below gets one of them.
        _ = try pool.create("new", size: 64 << 20, in: topology)
        let new = try Self.open(pool, "new", in: topology)
        defer { new.close() }
        for index in 0..<chunks {
            let bytes = Self.pattern(4096, seed: index)
            try await new.write(bytes, at: Int64(index * Self.chunk + 8192))
            var expected = [UInt8](repeating: 0, count: Self.chunk)
            expected.replaceSubrange(8192..<(8192 + 4096), with: bytes)
            #expect(try await new.read(at: Int64(index * Self.chunk), count: Self.chunk) == expected, "chunk \(index)")
        }
        #expect(try pool.check().problems.isEmpty)
    }

    @Test func aSnapshotKeepsItsPointInTimeWhileTheOriginChanges() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        _ = try pool.create("vm1", size: 64 << 20, in: topology)
        let volume = try Self.open(pool, "vm1", in: topology)
        defer { volume.close() }
        let before = Self.pattern(4 * Self.chunk, seed: 5)
        try await volume.write(before, at: 0)
        let started = monotonicSeconds()
        let snapshot = try pool.share("vm1", as: "s1", snapshot: true, in: topology)
        #expect(monotonicSeconds() - started < 0.5)
        #expect(snapshot.kind == "snapshot" && snapshot.parent == "vm1" && snapshot.shared == Int64(4 * Self.chunk))
        let after = Self.pattern(4096, seed: 6)
        try await volume.write(after, at: 4096)
        let view = try Self.open(pool, "s1", in: topology, writable: false)
        defer { view.close() }
        #expect(try await view.read(at: 0, count: 4 * Self.chunk) == before, "the snapshot still reads the old data")
        var now = before
        now.replaceSubrange(4096..<8192, with: after)
        #expect(try await volume.read(at: 0, count: 4 * Self.chunk) == now)
        // Only the written chunk was copied.
        let list = try pool.list()
        #expect(list.pool.dataUsed == Int64(5 * Self.chunk))
        #expect(list.volumes.first { $0.name == "vm1" }?.shared == Int64(3 * Self.chunk))
        // A snapshot cannot be written.
        #expect(throws: (any Error).self) { try BlockDevice(opening: topology.provider(named: "tp/s1")!, in: topology, writable: true) }
    }

    @Test func clonesRevertAndDeleteShareAndFreeChunks() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        _ = try pool.create("vm1", size: 16 << 20, in: topology)
        do {
            let volume = try Self.open(pool, "vm1", in: topology)
            try await volume.write(Self.pattern(2 * Self.chunk, seed: 7), at: 0)
            volume.close()
        }
        _ = try pool.share("vm1", as: "s1", snapshot: true, in: topology)
        #expect(throws: StrataError.self) { _ = try pool.share("vm1", as: "c1", snapshot: false, in: topology) }
        _ = try pool.share("s1", as: "c1", snapshot: false, in: topology)
        let clone = try Self.open(pool, "c1", in: topology)
        try await clone.write(Self.pattern(4096, seed: 8), at: 0)
        #expect(try await clone.read(at: Int64(Self.chunk), count: 4096) == Array(Self.pattern(2 * Self.chunk, seed: 7)[Self.chunk..<(Self.chunk + 4096)]))
        // Snapshots of clones and of snapshots.
        _ = try pool.share("c1", as: "c1s", snapshot: true, in: topology)
        _ = try pool.share("s1", as: "s1s", snapshot: true, in: topology)
        clone.close()
        // Revert: the volume reads as the snapshot again.
        do {
            let volume = try Self.open(pool, "vm1", in: topology)
            try await volume.write(Self.pattern(8192, seed: 9), at: 0)
            #expect(throws: StrataError.self) { _ = try pool.revert("vm1", to: "s1", force: false, in: topology) }
            volume.close()
        }
        _ = try pool.revert("vm1", to: "s1", force: false, in: topology)
        do {
            let volume = try Self.open(pool, "vm1", in: topology)
            #expect(try await volume.read(at: 0, count: 2 * Self.chunk) == Self.pattern(2 * Self.chunk, seed: 7))
            volume.close()
        }
        // Deleting everything frees every chunk.
        for name in ["c1s", "c1", "s1s", "vm1", "s1"] { _ = try pool.delete(name, force: false, in: topology) }
        let list = try pool.list()
        #expect(list.volumes.isEmpty && list.pool.dataUsed == 0)
        #expect(topology.provider(named: "tp/vm1") == nil)
        let check = try pool.check()
        #expect(check.problems.isEmpty && check.dataChunksUsed == 0 && check.nodes == 0)
    }

    @Test func trimUnmapsWholeChunksAndZeroesTheRest() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        _ = try pool.create("vm1", size: 16 << 20, in: topology)
        let volume = try Self.open(pool, "vm1", in: topology)
        defer { volume.close() }
        try await volume.write(Self.pattern(4 * Self.chunk, seed: 10), at: 0)
        #expect(try await volume.canDelete())
        try await volume.delete(at: 4096, length: Int64(2 * Self.chunk))
        var expected = Self.pattern(4 * Self.chunk, seed: 10)
        expected.replaceSubrange(4096..<(4096 + 2 * Self.chunk), with: [UInt8](repeating: 0, count: 2 * Self.chunk))
        #expect(try await volume.read(at: 0, count: 4 * Self.chunk) == expected)
        #expect(try pool.list().volumes[0].allocated == Int64(3 * Self.chunk), "the chunk trimmed whole was freed")
        try await volume.writeZeroes(at: Int64(2 * Self.chunk), length: Int64(2 * Self.chunk))
        #expect(try pool.list().volumes[0].allocated == Int64(Self.chunk))
        let extents = try await volume.extents(at: 0, length: 16 << 20)
        #expect(extents.first == BioExtent(offset: 0, length: Int64(Self.chunk), kind: []))
        #expect(extents.dropFirst().first == BioExtent(offset: Int64(Self.chunk), length: (16 << 20) - Int64(Self.chunk), kind: [.hole, .zero]))
    }

    @Test func resizeKeepsTheDataAndAShrunkTailReadsZerosOnceGrownAgain() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        _ = try pool.create("vm1", size: 1 << 20, in: topology)
        let data = Self.pattern(1 << 20, seed: 20)
        do {
            let volume = try Self.open(pool, "vm1", in: topology)
            try await volume.write(data, at: 0)
            volume.close()
        }
        // Growing past what one node reaches adds a level above the old root.
        _ = try pool.resize("vm1", to: 64 << 30, force: false, in: topology)
        #expect(topology.provider(named: "tp/vm1")!.mediaSize == 64 << 30)
        do {
            let volume = try Self.open(pool, "vm1", in: topology)
            #expect(try await volume.read(at: 0, count: 1 << 20) == data)
            try await volume.write(Self.pattern(4096, seed: 21), at: 40 << 30)
            #expect(try await volume.read(at: 40 << 30, count: 4096) == Self.pattern(4096, seed: 21))
            #expect(throws: StrataError.self) { _ = try pool.resize("vm1", to: 1 << 20, force: false, in: topology) }
            volume.close()
        }
        // Shrinking unmaps what lies past the end; a tail cut inside a chunk reads zeros
        // once the volume grows again.
        _ = try pool.resize("vm1", to: (1 << 20) - 8192, force: false, in: topology)
        #expect(try pool.list().volumes[0].allocated == 1 << 20)
        _ = try pool.resize("vm1", to: 2 << 20, force: false, in: topology)
        let volume = try Self.open(pool, "vm1", in: topology)
        defer { volume.close() }
        #expect(try await volume.read(at: 0, count: (1 << 20) - 8192) == Array(data[0..<((1 << 20) - 8192)]))
        #expect(try await volume.read(at: (1 << 20) - 8192, count: 8192) == [UInt8](repeating: 0, count: 8192))
        #expect(try pool.check().problems.isEmpty)
    }

    @Test func changedBlocksBetweenSnapshotsComeFromTheMaps() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        _ = try pool.create("vm1", size: 64 << 20, in: topology)
        let volume = try Self.open(pool, "vm1", in: topology)
        defer { volume.close() }
        try await volume.write(Self.pattern(8 * Self.chunk, seed: 11), at: 0)
        _ = try pool.share("vm1", as: "s1", snapshot: true, in: topology)
        try await volume.write(Self.pattern(4096, seed: 12), at: Int64(2 * Self.chunk))
        try await volume.write(Self.pattern(4096, seed: 13), at: Int64(600 * Self.chunk))
        try await volume.delete(at: Int64(5 * Self.chunk), length: Int64(Self.chunk))
        _ = try pool.share("vm1", as: "s2", snapshot: true, in: topology)
        try await volume.write(Self.pattern(4096, seed: 14), at: Int64(7 * Self.chunk))
        let provider = topology.provider(named: "tp/s2")!
        let view = try BlockDevice(opening: provider, in: topology, writable: false)
        defer { view.close() }
        let bitmaps = try await view.attributeString(.dirtyBitmaps)
        #expect(bitmaps == "s1\n")
        let dirty = try await view.extents(attribute: .dirtyBitmap("s1"), at: 0, length: 64 << 20)
            .filter { $0.kind.contains(.dirty) }.map { ($0.offset / Int64(Self.chunk), $0.length / Int64(Self.chunk)) }
        #expect(dirty.map(\.0) == [2, 5, 600] && dirty.map(\.1) == [1, 1, 1])
        // The live volume against s2: only what was written since.
        let live = try await volume.extents(attribute: .dirtyBitmap("s2"), at: 0, length: 64 << 20)
            .filter { $0.kind.contains(.dirty) }.map { $0.offset / Int64(Self.chunk) }
        #expect(live == [7])
    }

    @Test func runningOutOfSpaceFailsTheWriteAndKeepsTheRest() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology, size: 4 << 20, settings: [("low-water", "1m")])
        _ = try pool.create("vm1", size: 64 << 20, in: topology)
        let volume = try Self.open(pool, "vm1", in: topology)
        defer { volume.close() }
        let chunks = Int(pool.geometry.dataChunks)
        for index in 0..<chunks { try await volume.write(Self.pattern(4096, seed: index), at: Int64(index * Self.chunk)) }
        do {
            try await volume.write(Self.pattern(4096, seed: 99), at: Int64(chunks * Self.chunk))
            Issue.record("a write past the pool's space succeeded")
        } catch let error as StrataError {
            #expect(error.code == .noSpace)
        }
        #expect(pool.report.state == "OUT OF DATA SPACE")
        for index in 0..<chunks {
            #expect(try await volume.read(at: Int64(index * Self.chunk), count: 4096) == Self.pattern(4096, seed: index))
        }
        // Freeing space lets writes in again.
        try await volume.delete(at: 0, length: Int64(2 * Self.chunk))
        try await volume.flush()
        try await volume.write(Self.pattern(4096, seed: 98), at: Int64(chunks * Self.chunk))
        #expect(try pool.check().problems.isEmpty)
    }

    /// Snapshot churn until the metadata area is full: the write or snapshot that finds
    /// no room fails with ENOSPC and changes nothing; every acknowledged write and every
    /// snapshot stays; the pool says so in its state, checks sound, comes back from its
    /// metadata, and takes writes and snapshots again once snapshots are deleted.
    @Test func fillingTheMetadataAreaWithSnapshotsFailsCleanly() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("thin-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/pool.img"
        let places: [Int64] = [0, 300, 600, 900].map { Int64($0 * Self.chunk + 4096) }
        var latest: [Int64: [UInt8]] = [:]
        var snapshots: [(name: String, contents: [Int64: [UInt8]])] = []
        var refusal: StrataError?
        do {
            let topology = Topology()
            defer { topology.shutdown() }
            let disk = try FileDisk.create(in: topology, name: "fd", path: path, size: 128 << 20)
            let pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider],
                                               settings: [("metadata-size", "1m"), ("volumes", "vm1:64m")],
                                               relativeTo: "/", in: topology) as! ThinPoolGeom
            let volume = try Self.open(pool, "vm1", in: topology)
            defer { volume.close() }
            churn: for round in 0..<1000 {
                for (index, place) in places.enumerated() {
                    let bytes = Self.pattern(4096, seed: round * 8 + index)
                    do {
                        try await volume.write(bytes, at: place, fua: true)
                        latest[place] = bytes
                    } catch let error as StrataError {
                        refusal = error
                        break churn
                    }
                }
                let before = try pool.list().volumes.map(\.name)
                do {
                    _ = try pool.share("vm1", as: "s\(round)", snapshot: true, in: topology)
                    snapshots.append(("s\(round)", latest))
                } catch let error as StrataError {
                    refusal = error
                    #expect(try pool.list().volumes.map(\.name) == before, "a refused snapshot left nothing behind")
                    #expect(topology.provider(named: "tp/s\(round)") == nil)
                    break churn
                }
            }
            #expect(refusal?.code == .noSpace, "the metadata area filled with ENOSPC: \(String(describing: refusal))")
            #expect(pool.report.state == "OUT OF METADATA SPACE")
            #expect(snapshots.count > 10)
            #expect(try pool.check().problems.isEmpty)
            for (place, bytes) in latest { #expect(try await volume.read(at: place, count: 4096) == bytes) }
            for snapshot in [snapshots.first!, snapshots.last!] {
                let device = try Self.open(pool, snapshot.name, in: topology, writable: false)
                for (place, bytes) in snapshot.contents { #expect(try await device.read(at: place, count: 4096) == bytes) }
                device.close()
            }
        }
        // Reopened: the same, and room again once half the snapshots are gone.
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "fd", path: path)
        let pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider], settings: [], relativeTo: "/", in: topology) as! ThinPoolGeom
        #expect(try pool.list().volumes.map(\.name) == ["vm1"] + snapshots.map(\.name))
        #expect(try pool.check().problems.isEmpty)
        let volume = try Self.open(pool, "vm1", in: topology)
        defer { volume.close() }
        for (place, bytes) in latest { #expect(try await volume.read(at: place, count: 4096) == bytes) }
        for snapshot in snapshots.prefix(snapshots.count / 2) { _ = try pool.delete(snapshot.name, force: false, in: topology) }
        try await volume.write(Self.pattern(4096, seed: 7777), at: places[0], fua: true)
        _ = try pool.share("vm1", as: "again", snapshot: true, in: topology)
        #expect(pool.report.state == "OK")
        let kept = snapshots.last!
        let device = try Self.open(pool, kept.name, in: topology, writable: false)
        for (place, bytes) in kept.contents { #expect(try await device.read(at: place, count: 4096) == bytes) }
        device.close()
        #expect(try pool.check().problems.isEmpty)
    }

    @Test func aPoolComesBackFromItsMetadata() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("thin-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/pool.img"
        let data = Self.pattern(3 * Self.chunk, seed: 15)
        do {
            let topology = Topology()
            let disk = try FileDisk.create(in: topology, name: "fd", path: path, size: 32 << 20)
            let pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider], settings: [("volumes", "vm1:8m, vm2:1g")],
                                               relativeTo: "/", in: topology) as! ThinPoolGeom
            let volume = try Self.open(pool, "vm1", in: topology)
            try await volume.write(data, at: 8192)
            _ = try pool.share("vm1", as: "s1", snapshot: true, in: topology)
            try await volume.write(Self.pattern(4096, seed: 16), at: 8192)
            volume.close()
            topology.shutdown()
        }
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "fd", path: path)
        let pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider], settings: [], relativeTo: "/", in: topology) as! ThinPoolGeom
        #expect(try pool.list().volumes.map(\.name) == ["vm1", "vm2", "s1"])
        #expect(topology.provider(named: "tp/vm2")!.mediaSize == 1 << 30)
        let snapshot = try Self.open(pool, "s1", in: topology, writable: false)
        #expect(try await snapshot.read(at: 8192, count: data.count) == data)
        snapshot.close()
        let volume = try Self.open(pool, "vm1", in: topology)
        #expect(try await volume.read(at: 8192, count: 4096) == Self.pattern(4096, seed: 16))
        volume.close()
        #expect(try pool.check().problems.isEmpty)
    }

    @Test func settingsAndProvidersAreChecked() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let (_, pool) = try Self.pool(in: topology)
        #expect(throws: SettingError.self) { _ = try pool.create("a/b", size: 1 << 20, in: topology) }
        for dots in [".", ".."] {
            #expect(throws: SettingError.self, "provider \(dots) of the pool would be collapsed in a URL") {
                _ = try pool.create(dots, size: 1 << 20, in: topology)
            }
        }
        #expect(throws: SettingError.self) { _ = try pool.create("odd", size: 1000, in: topology) }
        _ = try pool.create("vm1", size: 1 << 20, in: topology)
        #expect(throws: StrataError.self) { _ = try pool.create("vm1", size: 1 << 20, in: topology) }
        #expect(throws: StrataError.self) { _ = try pool.share("nope", as: "s", snapshot: true, in: topology) }
        // A provider holding something else is not formatted.
        let other = try MemoryDisk.create(in: topology, name: "md2", contents: [UInt8](repeating: 0x5a, count: 8 << 20))
        #expect(throws: StrataError.self) {
            _ = try ThinDefinition.make(name: "tp2", consumers: [other.provider], settings: [], relativeTo: "/", in: topology)
        }
        #expect(throws: SettingError.self) {
            _ = try ThinDefinition.make(name: "tp3", consumers: [other.provider], settings: [("chunk-size", "3k")], relativeTo: "/", in: topology)
        }
        // Settings that cannot make a pool leave a blank provider blank.
        let blank = try MemoryDisk.create(in: topology, name: "md3", size: 8 << 20)
        for (index, settings) in [[("volumes", "vm1:lots")], [("volumes", "a/b:1m")], [("volumes", "vm1:1m, vm1:2m")],
                                  [("chunk-size", "3k")], [("metadata-size", "64m")]].enumerated() {
            let name = "bad\(index)"
            #expect(throws: (any Error).self, "\(settings)") {
                _ = try ThinDefinition.make(name: name, consumers: [blank.provider], settings: settings, relativeTo: "/", in: topology)
            }
            // A pool that could not be made withers (on the topology's event thread).
            let deadline = Date().addingTimeInterval(10)
            while topology.geom(named: name) != nil && Date() < deadline {
                topology.settle()
                usleep(1000)
            }
            #expect(topology.geom(named: name) == nil, "\(settings)")
        }
        let device = try BlockDevice(opening: blank.provider, in: topology, writable: false)
        defer { device.close() }
        #expect(try await device.read(at: 0, count: 1 << 20) == [UInt8](repeating: 0, count: 1 << 20), "nothing was formatted")
    }

    /// Four threads write their own regions of a volume while snapshots are taken and
    /// dropped under them: each snapshot holds, for every block, a write that had started
    /// before the snapshot ended and none older than the newest one that had finished
    /// before it began; the volume holds every block's last write; the pool checks sound
    /// and, everything deleted, empty.
    @Test func snapshotsTakenUnderConcurrentWritesAreConsistentPointsInTime() async throws {
        let problems = try await ThinCrashTests.onItsOwnThread { try Self.snapshotsUnderConcurrentWrites() }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    /// The test's work, on a thread of its own; what it finds wrong.
    static func snapshotsUnderConcurrentWrites() throws -> [String] {
        let topology = Topology()
        defer { topology.shutdown() }
        // Each request below the pool is held a millisecond, so that writes are in
        // flight while snapshots are taken.
        let disk = try MemoryDisk.create(in: topology, name: "md", size: 96 << 20)
        let delay = try NopGeom.create(in: topology, name: "slow", over: disk.provider, settings: .init(delayMilliseconds: 1))
        let pool = try ThinDefinition.make(name: "tp", consumers: [delay.providers[0]], settings: [], relativeTo: "/",
                                           in: topology) as! ThinPoolGeom
        _ = try pool.create("vm1", size: 16 << 20, in: topology)
        let device = try Self.open(pool, "vm1", in: topology)
        defer { device.close() }
        let consumer = device.consumerForBenchmark
        // Every chunk mapped first: the writes below then go to chunks the volume owns
        // until a snapshot shares them.
        for offset in stride(from: 0, to: 16 << 20, by: 1 << 20) {
            try consumer.writeSync([UInt8](repeating: 0, count: 1 << 20), at: Int64(offset))
        }
        let blocks = (16 << 20) / 4096
        let writers = 4
        let clock = OrderClock()
        let tick: @Sendable () -> Int = { clock.tick() }
        let logs = WriteLogs(writers)
        let done = DispatchGroup()
        for writer in 0..<writers {
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                var generator = SystemRandomNumberGenerator()
                var log: [StampedWrite] = []
                for sequence in 1...300 {
                    let block = writer * blocks / writers + Int.random(in: 0..<(blocks / writers), using: &generator)
                    let stamp = UInt64(writer) << 32 | UInt64(sequence)
                    let data = withUnsafeBytes(of: stamp) { [UInt8]($0) } + [UInt8](repeating: UInt8(writer), count: 4088)
                    let began = tick()
                    try? consumer.writeSync(data, at: Int64(block * 4096))
                    log.append(StampedWrite(block: block, stamp: stamp, began: began, ended: tick()))
                }
                logs.set(writer, log)
            }
        }
        var snapshots: [(name: String, began: Int, ended: Int)] = []
        var firstReads: [String: [UInt8]] = [:]
        for index in 0..<12 {
            let began = tick()
            _ = try pool.share("vm1", as: "s\(index)", snapshot: true, in: topology)
            snapshots.append(("s\(index)", began, tick()))
            // Read at once, while the writes go on: it must never change afterwards.
            let reader = try BlockDevice(opening: topology.provider(named: "tp/s\(index)")!, in: topology, writable: false)
            firstReads["s\(index)"] = try reader.consumerForBenchmark.readSync(at: 0, count: 16 << 20)
            reader.close()
            if index % 4 == 3 { _ = try pool.delete("s\(index - 2)", force: false, in: topology) }
            usleep(2000)
        }
        done.wait()
        let writes = logs.all
        let byBlock = Dictionary(grouping: writes, by: \.block)
        func stamp(in bytes: [UInt8], block: Int) -> UInt64 {
            bytes[(block * 4096)..<(block * 4096 + 8)].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        }
        var problems: [String] = []
        for snapshot in snapshots where !snapshot.name.hasSuffix("s1") && !snapshot.name.hasSuffix("s5") && !snapshot.name.hasSuffix("s9") {
            let reader = try BlockDevice(opening: topology.provider(named: "tp/\(snapshot.name)")!, in: topology, writable: false)
            let bytes = try reader.consumerForBenchmark.readSync(at: 0, count: 16 << 20)
            reader.close()
            if bytes != firstReads[snapshot.name] { problems.append("\(snapshot.name) changed after it was taken") }
            for (block, history) in byBlock where problems.count < 5 {
                let found = stamp(in: bytes, block: block)
                let newestDone = history.filter { $0.ended < snapshot.began }.map(\.stamp).max() ?? 0
                let candidates = Set(history.filter { $0.began < snapshot.ended && $0.stamp >= newestDone }.map(\.stamp))
                    .union(newestDone == 0 ? [0] : [])
                if !candidates.contains(found) {
                    problems.append("\(snapshot.name) block \(block): stamp \(found), expected one of \(candidates.sorted())")
                }
            }
        }
        let live = try consumer.readSync(at: 0, count: 16 << 20)
        for (block, history) in byBlock where problems.count < 5 {
            let last = history.max { $0.ended < $1.ended }!.stamp
            if stamp(in: live, block: block) != last { problems.append("vm1 block \(block) lost its last write") }
        }
        problems += try pool.check().problems
        device.close()
        for name in try pool.list().volumes.map(\.name) { _ = try pool.delete(name, force: false, in: topology) }
        let check = try pool.check()
        if !(check.problems.isEmpty && check.dataChunksUsed == 0 && check.nodes == 0) {
            problems.append("everything deleted, the pool is not empty and sound: \(check)")
        }
        return problems
    }
}

/// A write of the concurrency test: its block, its stamp, and the order clock's reading
/// before it began and after it ended.
struct StampedWrite: Sendable {
    let block: Int
    let stamp: UInt64
    let began: Int
    let ended: Int
}

/// A counter every thread of a test reads in one order.
final class OrderClock: Sendable {
    private let value = Mutex(0)
    func tick() -> Int { value.withLock { $0 += 1; return $0 } }
}

/// Each writer thread's log, handed over when it ends.
final class WriteLogs: Sendable {
    private let logs: Mutex<[[StampedWrite]]>
    init(_ writers: Int) { logs = Mutex(Array(repeating: [], count: writers)) }
    func set(_ writer: Int, _ log: [StampedWrite]) { logs.withLock { $0[writer] = log } }
    var all: [StampedWrite] { logs.withLock { $0.flatMap { $0 } } }
}
