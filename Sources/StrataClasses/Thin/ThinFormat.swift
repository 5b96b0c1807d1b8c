/// The on-disk format of a thin pool (docs: `thin.md`, "On-disk format"). Everything is
/// little-endian and in 4 KiB metadata blocks: block 0 and block 1 are the two copies of
/// the superblock, blocks 2 up to `metadataBlocks` hold tree nodes and the volume table,
/// and data chunks follow from `dataStart`.
public enum ThinFormat {
    public static let blockSize = 4096
    /// Map entries per tree node: what a block holds after its 32-byte header.
    public static let fanout = 508
    public static let version: UInt32 = 1
    static let superblockMagic = Array("STRTHIN1".utf8)
    static let nodeMagic = Array("STRTNODE".utf8)
    static let volumeTableMagic = Array("STRTVOLS".utf8)
    static let headerSize = 32
    static let volumeRecordSize = 120
    /// Volume records per volume-table block.
    static let volumesPerBlock = (blockSize - headerSize) / volumeRecordSize
    public static let maximumNameLength = 63
    /// Deepest tree: 508^4 chunks, far past any provider.
    static let maximumDepth = 4

    /// Tree depth for `chunks` virtual chunks: at least one level.
    public static func depth(forChunks chunks: Int64) -> Int {
        var depth = 1
        var reach = Int64(fanout)
        while reach < chunks { depth += 1; reach *= Int64(fanout) }
        return depth
    }
}

/// A pool's superblock: which commit is current and where its volume table is.
///
/// Layout: magic "STRTHIN1" (8) · CRC-32 (4, over the block with this field zero) ·
/// version u32 · generation u64 · pool id (16) · chunk size u32 · 4 zero bytes ·
/// metadata blocks u64 · data chunks u64 · data start u64 · volume table block u64 ·
/// next volume id u32 · name length u8 · name (63).
public struct ThinSuperblock: Equatable, Sendable {
    public var generation: UInt64
    public var poolID: [UInt8]
    public var chunkSize: Int
    public var metadataBlocks: Int64
    public var dataChunks: Int64
    public var dataStart: Int64
    public var volumeTable: UInt64
    public var nextVolumeID: UInt32
    public var name: String

    public func encoded() -> [UInt8] {
        var block = ThinBlockWriter()
        block.bytes(ThinFormat.superblockMagic)
        block.integer(UInt32(0))
        block.integer(ThinFormat.version)
        block.integer(generation)
        block.bytes(poolID)
        block.integer(UInt32(chunkSize))
        block.integer(UInt32(0))
        block.integer(UInt64(metadataBlocks))
        block.integer(UInt64(dataChunks))
        block.integer(UInt64(dataStart))
        block.integer(volumeTable)
        block.integer(nextVolumeID)
        block.name(name)
        return block.sealed()
    }

    /// The superblock in `block`, or nil when it is not one (or is torn).
    public static func decode(_ block: [UInt8]) -> ThinSuperblock? {
        guard block.count == ThinFormat.blockSize, Array(block[0..<8]) == ThinFormat.superblockMagic,
              ThinBlockReader.checksumHolds(block) else { return nil }
        var reader = ThinBlockReader(block, at: 12)
        guard reader.integer(UInt32.self) == ThinFormat.version else { return nil }
        let generation = reader.integer(UInt64.self)
        let poolID = reader.bytes(16)
        let chunkSize = Int(reader.integer(UInt32.self))
        _ = reader.integer(UInt32.self)
        let metadataBlocks = Int64(bitPattern: reader.integer(UInt64.self))
        let dataChunks = Int64(bitPattern: reader.integer(UInt64.self))
        let dataStart = Int64(bitPattern: reader.integer(UInt64.self))
        let volumeTable = reader.integer(UInt64.self)
        let nextVolumeID = reader.integer(UInt32.self)
        guard let name = reader.name() else { return nil }
        return ThinSuperblock(generation: generation, poolID: poolID, chunkSize: chunkSize,
                              metadataBlocks: metadataBlocks, dataChunks: dataChunks, dataStart: dataStart,
                              volumeTable: volumeTable, nextVolumeID: nextVolumeID, name: name)
    }
}

/// One volume or snapshot as the volume table records it.
///
/// Layout (120 bytes): id u32 · flags u32 · size u64 · root block u64 · depth u8 ·
/// 3 bytes zero · origin id u32 · created (Unix seconds) u64 · name length u8 · name (63) ·
/// 16 bytes zero.
public struct ThinVolumeRecord: Equatable, Sendable {
    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// A snapshot: read-only, a point in time of its origin.
        public static let snapshot = Flags(rawValue: 1)
    }

    public var id: UInt32
    public var flags: Flags
    public var size: Int64
    /// The block of the tree's root node; 0 when nothing is mapped.
    public var root: UInt64
    public var depth: Int
    /// The volume or snapshot it was made from (0: none).
    public var origin: UInt32
    public var created: UInt64
    public var name: String
}

/// The volume table: a chain of blocks of volume records.
///
/// Block layout: magic "STRTVOLS" (8) · CRC-32 (4) · record count u16 · 2 bytes zero ·
/// this block's number u64 · next block u64 (0: last) · records from byte 32.
enum ThinVolumeTable {
    static func encode(_ records: ArraySlice<ThinVolumeRecord>, block number: UInt64, next: UInt64) -> [UInt8] {
        var block = ThinBlockWriter()
        block.bytes(ThinFormat.volumeTableMagic)
        block.integer(UInt32(0))
        block.integer(UInt16(records.count))
        block.integer(UInt16(0))
        block.integer(number)
        block.integer(next)
        for record in records {
            let start = block.count
            block.integer(record.id)
            block.integer(record.flags.rawValue)
            block.integer(UInt64(record.size))
            block.integer(record.root)
            block.integer(UInt8(record.depth))
            block.bytes([0, 0, 0])
            block.integer(record.origin)
            block.integer(record.created)
            block.name(record.name)
            block.bytes([UInt8](repeating: 0, count: start + ThinFormat.volumeRecordSize - block.count))
        }
        return block.sealed()
    }

    /// The records of block `number` and the next block, or why the block is not one.
    static func decode(_ block: [UInt8], number: UInt64) -> Result<(records: [ThinVolumeRecord], next: UInt64), ThinDamage> {
        guard block.count == ThinFormat.blockSize, Array(block[0..<8]) == ThinFormat.volumeTableMagic else {
            return .failure(ThinDamage("volume table block \(number) has no volume table magic"))
        }
        guard ThinBlockReader.checksumHolds(block) else { return .failure(ThinDamage("volume table block \(number) fails its checksum")) }
        var reader = ThinBlockReader(block, at: 12)
        let count = Int(reader.integer(UInt16.self))
        _ = reader.integer(UInt16.self)
        guard reader.integer(UInt64.self) == number else {
            return .failure(ThinDamage("volume table block \(number) says it is another block (a misdirected write)"))
        }
        let next = reader.integer(UInt64.self)
        guard count <= ThinFormat.volumesPerBlock else { return .failure(ThinDamage("volume table block \(number) claims \(count) records")) }
        var records: [ThinVolumeRecord] = []
        for index in 0..<count {
            var record = ThinBlockReader(block, at: ThinFormat.headerSize + index * ThinFormat.volumeRecordSize)
            let id = record.integer(UInt32.self)
            let flags = ThinVolumeRecord.Flags(rawValue: record.integer(UInt32.self))
            let size = Int64(bitPattern: record.integer(UInt64.self))
            let root = record.integer(UInt64.self)
            let depth = Int(record.integer(UInt8.self))
            _ = record.bytes(3)
            let origin = record.integer(UInt32.self)
            let created = record.integer(UInt64.self)
            guard let name = record.name() else { return .failure(ThinDamage("volume table block \(number): record \(index) has a bad name")) }
            records.append(ThinVolumeRecord(id: id, flags: flags, size: size, root: root, depth: depth, origin: origin,
                                            created: created, name: name))
        }
        return .success((records, next))
    }
}

/// Tree nodes on disk.
///
/// Block layout: magic "STRTNODE" (8) · CRC-32 (4) · level u8 (0: leaf) · 3 bytes zero ·
/// this block's number u64 · 8 bytes zero · 508 entries u64 from byte 32. A leaf entry is
/// 0 for an unmapped chunk, else the data chunk's index plus one; an inner entry is 0 for
/// an empty subtree, else the child node's block.
enum ThinNodeBlock {
    static func encode(level: Int, block number: UInt64, entries: (Int) -> UInt64) -> [UInt8] {
        var block = ThinBlockWriter()
        block.bytes(ThinFormat.nodeMagic)
        block.integer(UInt32(0))
        block.integer(UInt8(level))
        block.bytes([0, 0, 0])
        block.integer(number)
        block.integer(UInt64(0))
        for index in 0..<ThinFormat.fanout { block.integer(entries(index)) }
        return block.sealed()
    }

    /// The level and entries of node block `number`, or why it is not a node.
    static func decode(_ block: [UInt8], number: UInt64) -> Result<(level: Int, entries: [UInt64]), ThinDamage> {
        guard block.count == ThinFormat.blockSize, Array(block[0..<8]) == ThinFormat.nodeMagic else {
            return .failure(ThinDamage("block \(number) is not a tree node"))
        }
        guard ThinBlockReader.checksumHolds(block) else { return .failure(ThinDamage("node block \(number) fails its checksum")) }
        var reader = ThinBlockReader(block, at: 12)
        let level = Int(reader.integer(UInt8.self))
        _ = reader.bytes(3)
        guard reader.integer(UInt64.self) == number else {
            return .failure(ThinDamage("node block \(number) says it is another block (a misdirected write)"))
        }
        var entries = [UInt64](repeating: 0, count: ThinFormat.fanout)
        block.withUnsafeBytes { raw in
            for index in 0..<ThinFormat.fanout {
                entries[index] = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: ThinFormat.headerSize + index * 8, as: UInt64.self))
            }
        }
        return .success((level, entries))
    }
}

/// What is wrong with a pool's metadata, said so that its owner can find it.
public struct ThinDamage: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Builds one block: fields in order, zeros to the end, the CRC in bytes 8..<12.
struct ThinBlockWriter {
    private var block: [UInt8] = []
    init() { block.reserveCapacity(ThinFormat.blockSize) }
    var count: Int { block.count }

    mutating func bytes(_ bytes: [UInt8]) { block += bytes }
    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { block += $0 }
    }
    /// A name: its length in one byte, then 63 bytes.
    mutating func name(_ name: String) {
        let utf8 = Array(name.utf8.prefix(ThinFormat.maximumNameLength))
        integer(UInt8(utf8.count))
        bytes(utf8 + [UInt8](repeating: 0, count: ThinFormat.maximumNameLength - utf8.count))
    }

    consuming func sealed() -> [UInt8] {
        precondition(block.count <= ThinFormat.blockSize, "thin metadata block overflows")
        block += [UInt8](repeating: 0, count: ThinFormat.blockSize - block.count)
        let crc = CRC32.checksum(block)
        withUnsafeBytes(of: crc.littleEndian) { block.replaceSubrange(8..<12, with: $0) }
        return block
    }
}

/// Reads one block's fields in order.
struct ThinBlockReader {
    private let block: [UInt8]
    private var at: Int

    init(_ block: [UInt8], at offset: Int) {
        self.block = block
        at = offset
    }

    static func checksumHolds(_ block: [UInt8]) -> Bool {
        var zeroed = block
        zeroed.replaceSubrange(8..<12, with: [0, 0, 0, 0])
        var stored: UInt32 = 0
        for (shift, byte) in block[8..<12].enumerated() { stored |= UInt32(byte) << (8 * shift) }
        return CRC32.checksum(zeroed) == stored
    }

    mutating func integer<T: FixedWidthInteger>(_ type: T.Type) -> T {
        var value: T = 0
        for (shift, byte) in block[at..<(at + MemoryLayout<T>.size)].enumerated() { value |= T(byte) << (8 * shift) }
        at += MemoryLayout<T>.size
        return value
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        defer { at += count }
        return Array(block[at..<(at + count)])
    }

    mutating func name() -> String? {
        let length = Int(integer(UInt8.self))
        let stored = bytes(ThinFormat.maximumNameLength)
        guard length <= ThinFormat.maximumNameLength else { return nil }
        return String(validating: stored[0..<length], as: UTF8.self)
    }
}
