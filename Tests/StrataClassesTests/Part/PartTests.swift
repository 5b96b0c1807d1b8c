import Foundation
import Strata
import StrataClasses
import StrataDisks
import Testing

/// PART against tables written by sfdisk, and GPTs written here read back by sfdisk.
@Suite(.serialized) struct PartTests {
    final class Image: @unchecked Sendable {
        let directory: String
        let path: String

        init(size: Int64 = 64 << 20) throws {
            directory = NSTemporaryDirectory() + "strata-part-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            path = directory + "/disk.img"
            FileManager.default.createFile(atPath: path, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            try handle.truncate(atOffset: UInt64(size))
            try handle.close()
        }

        deinit { try? FileManager.default.removeItem(atPath: directory) }

        @discardableResult
        func sfdisk(_ script: String, _ options: [String] = []) throws -> String {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/sfdisk")
            process.arguments = options + ["--no-reread", "--no-tell-kernel", path]
            let input = Pipe()
            let output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = output
            try process.run()
            input.fileHandleForWriting.write(Data(script.utf8))
            try input.fileHandleForWriting.close()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "sfdisk: \(text)")
            return text
        }

        /// What sfdisk reads: (start, size, type, name) per partition.
        func sfdiskPartitions(_ options: [String] = []) throws -> [[String: Any]] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/sfdisk")
            process.arguments = options + ["--json", path]
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            let json = try JSONSerialization.jsonObject(with: data) as? [String: Any]
            return (json?["partitiontable"] as? [String: Any])?["partitions"] as? [[String: Any]] ?? []
        }

        func corrupt(at offset: UInt64) throws {
            let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
            try handle.seek(toOffset: offset)
            try handle.write(contentsOf: Data(repeating: 0xFF, count: 64))
            try handle.close()
        }
    }

    @Test func aGPTWrittenBySfdiskIsReadWithItsNamesTypesAndRanges() async throws {
        let image = try Image()
        try image.sfdisk("label: gpt\nsize=8MiB, type=linux, name=root\nsize=16MiB, type=uefi, name=esp\nsize=4MiB\n")
        let expected = try image.sfdiskPartitions()
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "g0", path: image.path)
        let part = try PartGeom.create(in: topology, over: disk.provider)
        #expect(part.table.scheme == .gpt && !part.table.usedBackup)
        #expect(part.table.partitions.count == 3)
        for (partition, reference) in zip(part.table.partitions, expected) {
            #expect(partition.firstLBA == reference["start"] as? Int64 ?? Int64(reference["start"] as? Int ?? -1))
            #expect(partition.sectors == Int64(reference["size"] as? Int ?? -1))
        }
        #expect(part.table.partitions.map(\.name) == ["root", "esp", ""])
        #expect(part.table.partitions[0].type == .linuxData && part.table.partitions[1].type == .efiSystem)
        let p2 = try #require(topology.provider(named: "g0p2"))
        #expect(p2.mediaSize == 16 << 20)
        // Data written through g0p2 lands at the partition's start on the disk.
        let device = try BlockDevice(opening: p2, in: topology, writable: true)
        try await device.write([UInt8](repeating: 0x2b, count: 4096), at: 8192)
        device.close()
        let whole = try BlockDevice(opening: disk.provider, in: topology, writable: false)
        defer { whole.close() }
        let start = part.table.partitions[1].firstLBA * 512
        #expect(try await whole.read(at: start + 8192, count: 4096) == [UInt8](repeating: 0x2b, count: 4096))
    }

    @Test func anMBRWrittenBySfdiskGivesItsPrimaryPartitions() throws {
        let image = try Image()
        try image.sfdisk("label: dos\nsize=8MiB, type=83\nsize=12MiB, type=7\n")
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "m0", path: image.path)
        let part = try PartGeom.create(in: topology, over: disk.provider)
        #expect(part.table.scheme == .mbr)
        #expect(part.table.partitions.map(\.mbrType) == [0x83, 0x07])
        #expect(topology.provider(named: "m0p1")?.mediaSize == 8 << 20)
        #expect(topology.provider(named: "m0p2")?.mediaSize == 12 << 20)
    }

    @Test func aDamagedPrimaryGPTIsReadFromTheBackupAndSaidSo() throws {
        let image = try Image()
        try image.sfdisk("label: gpt\nsize=8MiB, name=one\nsize=8MiB, name=two\n")
        try image.corrupt(at: 512 + 24)
        let log = LogLines()
        let topology = Topology(log: { _, message in log.append(message) })
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "d0", path: image.path)
        let part = try PartGeom.create(in: topology, over: disk.provider)
        #expect(part.table.usedBackup)
        #expect(part.table.partitions.map(\.name) == ["one", "two"])
        #expect(log.lines.contains { $0.contains("primary GPT is damaged") })
    }

    @Test func aGPTDamagedInBothCopiesIsAnError() throws {
        let image = try Image(size: 16 << 20)
        try image.sfdisk("label: gpt\nsize=4MiB\n")
        try image.corrupt(at: 512 + 24)
        try image.corrupt(at: UInt64(16 << 20) - 512 + 24)
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "bad", path: image.path)
        #expect(throws: StrataError.self) { try PartGeom.create(in: topology, over: disk.provider) }
    }

    @Test func aGPTOn4096ByteSectors() throws {
        // This sfdisk has no --sector-size; fdisk -b 4096 writes the same kind of table.
        let image = try Image()
        let fdisk = Process()
        fdisk.executableURL = URL(fileURLWithPath: "/usr/sbin/fdisk")
        fdisk.arguments = ["-b", "4096", image.path]
        let input = Pipe()
        fdisk.standardInput = input
        fdisk.standardOutput = FileHandle.nullDevice
        fdisk.standardError = FileHandle.nullDevice
        try fdisk.run()
        input.fileHandleForWriting.write(Data("g\nn\n\n\n+8M\nw\n".utf8))
        try input.fileHandleForWriting.close()
        fdisk.waitUntilExit()
        #expect(fdisk.terminationStatus == 0)
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "s4k", path: image.path, sectorSize: 4096)
        let part = try PartGeom.create(in: topology, over: disk.provider)
        #expect(part.table.partitions.map(\.firstLBA) == [256])
        #expect(topology.provider(named: "s4kp1")?.mediaSize == 8 << 20)
        #expect(topology.provider(named: "s4kp1")?.sectorSize == 4096)
    }

    @Test func aGPTWrittenHereIsReadBySfdisk() throws {
        let image = try Image()
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "w0", path: image.path)
        let writer = Geom(name: "writer", className: "TEST")
        try topology.add(writer)
        let consumer = topology.createConsumer(for: writer)
        try topology.attach(consumer, to: disk.provider)
        try topology.access(consumer, read: 1, write: 1, exclusive: 0)
        let sectors = disk.provider.mediaSize / 512
        let read: (Int64, Int) throws -> [UInt8] = { try consumer.readSync(at: $0 * 512, count: $1 * 512) }
        let write: (Int64, [UInt8]) throws -> Void = { try consumer.writeSync($1, at: $0 * 512) }
        let flush: () throws -> Void = { try consumer.performSync(.flush, offset: 0, length: 0) }
        try GPTWriter.create(sectorSize: 512, sectors: sectors, write: write, flush: flush)
        let root = try GPTWriter.add(type: .linuxData, name: "root", size: 10 << 20, sectorSize: 512, sectors: sectors,
                                     read: read, write: write, flush: flush)
        _ = try GPTWriter.add(type: .efiSystem, name: "esp", size: 4 << 20, sectorSize: 512, sectors: sectors, read: read,
                              write: write, flush: flush)
        try topology.access(consumer, read: 0, write: 0, exclusive: 0)
        var partitions = try image.sfdiskPartitions()
        #expect(partitions.count == 2)
        #expect(partitions.first?["name"] as? String == "root")
        #expect(partitions.first?["start"] as? Int == Int(root.firstLBA) && root.firstLBA == 2048)
        #expect((partitions.last?["type"] as? String)?.uppercased() == GUID.efiSystem.description)
        try GPTWriter.delete(number: 1, sectorSize: 512, sectors: sectors, read: read, write: write, flush: flush)
        partitions = try image.sfdiskPartitions()
        #expect(partitions.map { $0["name"] as? String } == ["esp"])
        #expect(throws: StrataError.self) {
            _ = try GPTWriter.add(type: .linuxData, name: "huge", size: 1 << 30, sectorSize: 512, sectors: sectors, read: read,
                                  write: write, flush: flush)
        }
    }

    @Test func thePartitionClassTastesDisksWithTables() throws {
        let image = try Image()
        try image.sfdisk("label: gpt\nsize=8MiB, name=auto\n")
        let topology = Topology()
        defer { topology.shutdown() }
        topology.register(PartClass())
        _ = try FileDisk.create(in: topology, name: "t0", path: image.path)
        topology.settle()
        #expect(topology.provider(named: "t0p1")?.mediaSize == 8 << 20)
    }

    @Test func guidsRoundTripThroughTheirTextForm() {
        let guid = GUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")!
        #expect(guid.description == "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        #expect(guid.bytes.prefix(4) == [0xAF, 0x3D, 0xC6, 0x0F], "the first field is little-endian on disk")
        #expect(GUID("not-a-guid") == nil)
    }
}

final class LogLines: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func append(_ line: String) { lock.withLock { storage.append(line) } }
    var lines: [String] { lock.withLock { storage } }
}
