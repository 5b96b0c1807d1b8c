import Strata

/// Writing MBRs: a new empty table, and primary partitions added or deleted. Only sector
/// 0 changes, in one write, so a power cut leaves the old table or the new one; the boot
/// code before the table is kept.
public enum MBRWriter {
    /// Writes an empty MBR partition table.
    public static func create(sectorSize: Int, read: (Int64, Int) throws -> [UInt8], write: (Int64, [UInt8]) throws -> Void,
                              flush: () throws -> Void) throws {
        var sector = try read(0, 1)
        sector.replaceSubrange(446..<510, with: [UInt8](repeating: 0, count: 64))
        sector[510] = 0x55
        sector[511] = 0xAA
        try write(0, sector)
        try flush()
    }

    /// Adds a primary partition of `type` in the first free space of `size` bytes,
    /// aligned to 1 MiB as fdisk does, and returns it.
    /// - Throws: `StrataError` when there is no MBR, no free entry or no room.
    public static func add(type: UInt8, size: Int64, sectorSize: Int, sectors: Int64, read: (Int64, Int) throws -> [UInt8],
                           write: (Int64, [UInt8]) throws -> Void, flush: () throws -> Void) throws -> Partition {
        guard let table = try PartitionTable.read(sectorSize: sectorSize, sectors: sectors, read: read), table.scheme == .mbr else {
            throw StrataError(.invalid, "the disk has no MBR partition table to add a partition to")
        }
        var sector = try read(0, 1)
        let used = (0..<4).filter { sector[446 + $0 * 16 + 4] != 0 }
        guard let slot = (0..<4).first(where: { !used.contains($0) }) else {
            throw StrataError(.noSpace, "all 4 primary partition entries are in use")
        }
        let count = (size + Int64(sectorSize) - 1) / Int64(sectorSize)
        let alignment = max(1, Int64(1 << 20) / Int64(sectorSize))
        var start = alignment
        for partition in table.partitions.sorted(by: { $0.firstLBA < $1.firstLBA }) where partition.lastLBA >= start {
            if partition.firstLBA >= start + count { break }
            start = (partition.lastLBA + 1 + alignment - 1) / alignment * alignment
        }
        let last = min(sectors, 1 << 32) - 1
        guard count > 0, start + count - 1 <= last else {
            throw StrataError(.noSpace, "no room for a partition of \(size) bytes")
        }
        let entry: [UInt8] = [0x00, 0xFE, 0xFF, 0xFF, type, 0xFE, 0xFF, 0xFF] + le(UInt32(start)) + le(UInt32(count))
        sector.replaceSubrange((446 + slot * 16)..<(462 + slot * 16), with: entry)
        try write(0, sector)
        try flush()
        return Partition(number: slot + 1, firstLBA: start, lastLBA: start + count - 1, type: nil, unique: nil, name: "",
                         mbrType: type)
    }

    /// Deletes primary partition `number` (1 to 4).
    public static func delete(number: Int, read: (Int64, Int) throws -> [UInt8], write: (Int64, [UInt8]) throws -> Void,
                              flush: () throws -> Void) throws {
        var sector = try read(0, 1)
        guard (1...4).contains(number), sector[446 + (number - 1) * 16 + 4] != 0 else {
            throw StrataError(.invalid, "there is no partition \(number)")
        }
        sector.replaceSubrange((446 + (number - 1) * 16)..<(462 + (number - 1) * 16), with: [UInt8](repeating: 0, count: 16))
        try write(0, sector)
        try flush()
    }
}
