import Strata

/// A GUID as GPT stores it: the first three fields little-endian, the rest as bytes.
public struct GUID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16, "a GUID is 16 bytes")
        self.bytes = bytes
    }

    /// Parses "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".
    public init?(_ text: String) {
        let hex = text.filter { $0 != "-" }
        guard hex.count == 32, text.count == 36 else { return nil }
        var raw: [UInt8] = []
        var index = hex.startIndex
        for _ in 0..<16 {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            raw.append(byte)
            index = next
        }
        bytes = Array(raw[0..<4].reversed()) + Array(raw[4..<6].reversed()) + Array(raw[6..<8].reversed()) + Array(raw[8...])
    }

    public static let zero = GUID(bytes: [UInt8](repeating: 0, count: 16))

    /// A random (version 4) GUID.
    public static func random() -> GUID {
        var raw = (0..<16).map { _ in UInt8.random(in: 0...255) }
        raw[7] = raw[7] & 0x0F | 0x40
        raw[8] = raw[8] & 0x3F | 0x80
        return GUID(bytes: raw)
    }

    public var description: String {
        let ordered = Array(bytes[0..<4].reversed()) + Array(bytes[4..<6].reversed()) + Array(bytes[6..<8].reversed()) + Array(bytes[8...])
        let hex = ordered.map { String($0, radix: 16, uppercase: true).leftPadded(to: 2) }.joined()
        let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
        return parts.joined(separator: "-")
    }

    /// Linux filesystem data.
    public static let linuxData = GUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")!
    /// EFI system partition.
    public static let efiSystem = GUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")!
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

/// One partition: where it is and what it says it is.
public struct Partition: Equatable, Sendable {
    /// 1-based, as the table numbers it (the provider is `<disk>p<number>`).
    public var number: Int
    public var firstLBA: Int64
    public var lastLBA: Int64
    /// GPT type GUID, or nil for MBR.
    public var type: GUID?
    public var unique: GUID?
    public var name: String
    /// MBR type byte, or nil for GPT.
    public var mbrType: UInt8?

    public var sectors: Int64 { lastLBA - firstLBA + 1 }
}

/// A partition table read from a disk.
public struct PartitionTable: Equatable, Sendable {
    public enum Scheme: String, Sendable { case gpt, mbr }

    public var scheme: Scheme
    public var partitions: [Partition]
    /// GPT only: the primary header or its entries were damaged and the backup was used.
    public var usedBackup: Bool
    public var diskGUID: GUID?
    public var firstUsableLBA: Int64
    public var lastUsableLBA: Int64

    /// Reads the table through `read(lba, sectors)`. Returns nil when the disk has none.
    /// - Throws: `StrataError` when a GPT is there but both copies are damaged.
    public static func read(sectorSize: Int, sectors: Int64, read: (Int64, Int) throws -> [UInt8]) throws -> PartitionTable? {
        let mbr = try read(0, 1)
        guard mbr.count >= 512, mbr[510] == 0x55, mbr[511] == 0xAA else { return nil }
        var primaries: [Partition] = []
        var protective = false
        for index in 0..<4 {
            let entry = Array(mbr[(446 + index * 16)..<(446 + index * 16 + 16)])
            let type = entry[4]
            let start = Int64(le32(entry, 8))
            let count = Int64(le32(entry, 12))
            if type == 0xEE { protective = true }
            // Extended partitions hold logical ones; only primaries are served.
            guard type != 0, count > 0, ![0x05, 0x0F, 0x85].contains(type) else { continue }
            primaries.append(Partition(number: index + 1, firstLBA: start, lastLBA: start + count - 1, type: nil, unique: nil,
                                       name: "", mbrType: type))
        }
        guard protective else {
            return PartitionTable(scheme: .mbr, partitions: primaries, usedBackup: false, diskGUID: nil, firstUsableLBA: 1,
                                  lastUsableLBA: sectors - 1)
        }
        if let primary = try GPTHeader.read(at: 1, sectorSize: sectorSize, read: read) {
            return primary.table(usedBackup: false)
        }
        if let backup = try GPTHeader.read(at: sectors - 1, sectorSize: sectorSize, read: read) {
            return backup.table(usedBackup: true)
        }
        throw StrataError(.io, "the GPT is damaged: neither the primary nor the backup header and entries check out")
    }
}

/// A GPT header with its entries, checked.
struct GPTHeader {
    var currentLBA: Int64
    var backupLBA: Int64
    var firstUsable: Int64
    var lastUsable: Int64
    var diskGUID: GUID
    var entriesLBA: Int64
    var entryCount: Int
    var entrySize: Int
    var partitions: [Partition]

    static let signature = Array("EFI PART".utf8)

    /// Reads and checks the header at `lba` and its entries; nil if either is damaged.
    static func read(at lba: Int64, sectorSize: Int, read: (Int64, Int) throws -> [UInt8]) throws -> GPTHeader? {
        guard lba > 0, let sector = try? read(lba, 1), sector.count >= 92, Array(sector[0..<8]) == signature else { return nil }
        let headerSize = Int(le32(sector, 12))
        guard headerSize >= 92, headerSize <= sectorSize else { return nil }
        var header = Array(sector[0..<headerSize])
        header[16..<20] = [0, 0, 0, 0]
        guard CRC32.checksum(header) == le32(sector, 16) else { return nil }
        let entryCount = Int(le32(sector, 80))
        let entrySize = Int(le32(sector, 84))
        guard entrySize >= 128, entrySize % 8 == 0, entryCount > 0, entryCount <= 4096 else { return nil }
        let entriesLBA = Int64(le64(sector, 72))
        let bytes = entryCount * entrySize
        guard let entries = try? read(entriesLBA, (bytes + sectorSize - 1) / sectorSize), entries.count >= bytes,
              CRC32.checksum(entries[0..<bytes]) == le32(sector, 88) else { return nil }
        var partitions: [Partition] = []
        for index in 0..<entryCount {
            let entry = Array(entries[(index * entrySize)..<(index * entrySize + 128)])
            let type = GUID(bytes: Array(entry[0..<16]))
            guard type != .zero else { continue }
            let units = stride(from: 56, to: 128, by: 2).map { UInt16(entry[$0]) | UInt16(entry[$0 + 1]) << 8 }
            partitions.append(Partition(number: index + 1, firstLBA: Int64(le64(entry, 32)), lastLBA: Int64(le64(entry, 40)),
                                        type: type, unique: GUID(bytes: Array(entry[16..<32])),
                                        name: String(decoding: units.prefix { $0 != 0 }, as: UTF16.self), mbrType: nil))
        }
        return GPTHeader(currentLBA: Int64(le64(sector, 24)), backupLBA: Int64(le64(sector, 32)),
                         firstUsable: Int64(le64(sector, 40)), lastUsable: Int64(le64(sector, 48)),
                         diskGUID: GUID(bytes: Array(sector[56..<72])), entriesLBA: entriesLBA, entryCount: entryCount,
                         entrySize: entrySize, partitions: partitions)
    }

    func table(usedBackup: Bool) -> PartitionTable {
        PartitionTable(scheme: .gpt, partitions: partitions, usedBackup: usedBackup, diskGUID: diskGUID,
                       firstUsableLBA: firstUsable, lastUsableLBA: lastUsable)
    }
}

/// Writing GPTs: a new table, and partitions added or deleted, both copies and their
/// checksums kept right.
///
/// `write(lba, bytes)` writes sectors; `flush()` makes what was written durable (a
/// FLUSH of the disk). The copies are rewritten one at a time, the first made durable
/// before the second is touched, so a power cut at any moment leaves the disk reading as
/// the old table or the new one; the new one is durable when a call returns.
public enum GPTWriter {
    static let entryCount = 128
    static let entrySize = 128

    /// The on-disk layout of a GPT on a disk of `sectors` sectors.
    static func layout(sectorSize: Int, sectors: Int64) -> (entrySectors: Int64, firstUsable: Int64, lastUsable: Int64) {
        let entrySectors = Int64((entryCount * entrySize + sectorSize - 1) / sectorSize)
        return (entrySectors, 2 + entrySectors, sectors - 2 - entrySectors)
    }

    /// Writes an empty GPT (both copies) and a protective MBR.
    public static func create(sectorSize: Int, sectors: Int64, diskGUID: GUID = .random(),
                              write: (Int64, [UInt8]) throws -> Void, flush: () throws -> Void) throws {
        try store([], diskGUID: diskGUID, sectorSize: sectorSize, sectors: sectors, write: write, flush: flush)
        // The MBR last: until it says GPT, the disk reads as it did before.
        try write(0, protectiveMBR(sectorSize: sectorSize, sectors: sectors))
        try flush()
    }

    /// Adds a partition in the first free space of `size` bytes (aligned to 1 MiB, as
    /// sfdisk does) and returns it.
    /// - Throws: `StrataError` when there is no GPT, no free entry or no room.
    public static func add(type: GUID, name: String, size: Int64, sectorSize: Int, sectors: Int64,
                           read: (Int64, Int) throws -> [UInt8], write: (Int64, [UInt8]) throws -> Void,
                           flush: () throws -> Void) throws -> Partition {
        guard let table = try PartitionTable.read(sectorSize: sectorSize, sectors: sectors, read: read), table.scheme == .gpt else {
            throw StrataError(.invalid, "the disk has no GPT to add a partition to")
        }
        let count = (size + Int64(sectorSize) - 1) / Int64(sectorSize)
        let alignment = max(1, Int64(1 << 20) / Int64(sectorSize))
        var start = (table.firstUsableLBA + alignment - 1) / alignment * alignment
        for partition in table.partitions.sorted(by: { $0.firstLBA < $1.firstLBA }) where partition.lastLBA >= start {
            if partition.firstLBA >= start + count { break }
            start = (partition.lastLBA + 1 + alignment - 1) / alignment * alignment
        }
        guard count > 0, start + count - 1 <= table.lastUsableLBA else {
            throw StrataError(.noSpace, "no room for a partition of \(size) bytes")
        }
        let used = Set(table.partitions.map(\.number))
        guard let number = (1...entryCount).first(where: { !used.contains($0) }) else {
            throw StrataError(.noSpace, "all \(entryCount) partition entries are in use")
        }
        let partition = Partition(number: number, firstLBA: start, lastLBA: start + count - 1, type: type, unique: .random(),
                                  name: name, mbrType: nil)
        try store(table.partitions + [partition], diskGUID: table.diskGUID ?? .random(), sectorSize: sectorSize,
                  sectors: sectors, write: write, flush: flush)
        return partition
    }

    /// Deletes partition `number`.
    public static func delete(number: Int, sectorSize: Int, sectors: Int64, read: (Int64, Int) throws -> [UInt8],
                              write: (Int64, [UInt8]) throws -> Void, flush: () throws -> Void) throws {
        guard let table = try PartitionTable.read(sectorSize: sectorSize, sectors: sectors, read: read), table.scheme == .gpt else {
            throw StrataError(.invalid, "the disk has no GPT")
        }
        guard table.partitions.contains(where: { $0.number == number }) else {
            throw StrataError(.invalid, "there is no partition \(number)")
        }
        try store(table.partitions.filter { $0.number != number }, diskGUID: table.diskGUID ?? .random(), sectorSize: sectorSize,
                  sectors: sectors, write: write, flush: flush)
    }

    /// Writes both entry arrays and both headers for `partitions`, durably.
    static func store(_ partitions: [Partition], diskGUID: GUID, sectorSize: Int, sectors: Int64,
                      write: (Int64, [UInt8]) throws -> Void, flush: () throws -> Void) throws {
        let layout = layout(sectorSize: sectorSize, sectors: sectors)
        var entries = [UInt8](repeating: 0, count: Int(layout.entrySectors) * sectorSize)
        for partition in partitions {
            let base = (partition.number - 1) * entrySize
            entries.replaceSubrange(base..<(base + 16), with: partition.type!.bytes)
            entries.replaceSubrange((base + 16)..<(base + 32), with: (partition.unique ?? .random()).bytes)
            entries.replaceSubrange((base + 32)..<(base + 40), with: le(UInt64(partition.firstLBA)))
            entries.replaceSubrange((base + 40)..<(base + 48), with: le(UInt64(partition.lastLBA)))
            let units = Array(partition.name.utf16.prefix(36))
            for (index, unit) in units.enumerated() {
                entries[base + 56 + index * 2] = UInt8(unit & 0xff)
                entries[base + 57 + index * 2] = UInt8(unit >> 8)
            }
        }
        let entriesCRC = CRC32.checksum(entries[0..<(entryCount * entrySize)])
        let lastLBA = sectors - 1
        let backupEntries = lastLBA - layout.entrySectors
        func header(current: Int64, backup: Int64, entriesAt: Int64) -> [UInt8] {
            var bytes = GPTHeader.signature + le(UInt32(0x0001_0000)) + le(UInt32(92)) + le(UInt32(0)) + le(UInt32(0))
            bytes += le(UInt64(current)) + le(UInt64(backup)) + le(UInt64(layout.firstUsable)) + le(UInt64(layout.lastUsable))
            bytes += diskGUID.bytes + le(UInt64(entriesAt)) + le(UInt32(entryCount)) + le(UInt32(entrySize)) + le(entriesCRC)
            bytes.replaceSubrange(16..<20, with: le(CRC32.checksum(bytes)))
            return bytes + [UInt8](repeating: 0, count: sectorSize - bytes.count)
        }
        // A copy caught half-written fails its checksums and the reader takes the other,
        // so the other must be whole: the primary is made durable before the backup is
        // touched. (Both entry arrays first, then both headers, could leave neither.)
        try write(2, entries)
        try write(1, header(current: 1, backup: lastLBA, entriesAt: 2))
        try flush()
        try write(backupEntries, entries)
        try write(lastLBA, header(current: lastLBA, backup: 1, entriesAt: backupEntries))
        try flush()
    }

    static func protectiveMBR(sectorSize: Int, sectors: Int64) -> [UInt8] {
        var mbr = [UInt8](repeating: 0, count: sectorSize)
        let entry: [UInt8] = [0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF] + le(UInt32(1)) + le(UInt32(min(sectors - 1, 0xFFFF_FFFF)))
        mbr.replaceSubrange(446..<462, with: entry)
        mbr[510] = 0x55
        mbr[511] = 0xAA
        return mbr
    }
}

func le32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
}

func le64(_ bytes: [UInt8], _ offset: Int) -> UInt64 {
    (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
}

func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}
