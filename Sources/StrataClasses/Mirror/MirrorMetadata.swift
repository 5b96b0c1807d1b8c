import Strata

/// What a mirror keeps in the last sector of each component (as gmirror does).
///
/// Layout (big-endian), CRC-32 over the first 144 bytes: magic "STRATA::MIRROR" (16) ·
/// version u32 · name (64) · mirror id u64 · disk id u64 · components u32 · genid u32 ·
/// syncid u32 · priority u32 · balance u32 · slice u32 · media size u64 · sync offset u64 ·
/// flags u32 · CRC u32.
public struct MirrorMetadata: Equatable, Sendable {
    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Open for writing and not closed cleanly: the copies may differ.
        public static let dirty = Flags(rawValue: 1)
        /// This component is being rebuilt; `syncOffset` says how far it got.
        public static let synchronizing = Flags(rawValue: 2)
    }

    static let magic = Array("STRATA::MIRROR".utf8) + [0, 0]
    public static let version: UInt32 = 1
    static let length = 144

    public var name: String
    public var mirrorID: UInt64
    public var diskID: UInt64
    public var components: Int
    /// Bumped when a component is ejected or forgotten: an older genid is never read.
    public var genid: UInt32
    /// Bumped each time the mirror starts writing: a component that missed it is stale.
    public var syncid: UInt32
    public var priority: Int
    public var balance: MirrorBalance
    public var slice: Int
    public var mediaSize: Int64
    public var syncOffset: Int64
    public var flags: Flags

    public init(name: String, mirrorID: UInt64, diskID: UInt64, components: Int, genid: UInt32, syncid: UInt32,
                priority: Int, balance: MirrorBalance, slice: Int, mediaSize: Int64, syncOffset: Int64, flags: Flags) {
        (self.name, self.mirrorID, self.diskID, self.components) = (name, mirrorID, diskID, components)
        (self.genid, self.syncid, self.priority, self.balance, self.slice) = (genid, syncid, priority, balance, slice)
        (self.mediaSize, self.syncOffset, self.flags) = (mediaSize, syncOffset, flags)
    }

    public func encoded(sectorSize: Int) -> [UInt8] {
        var bytes = Self.magic + bigEndianBytes(Self.version)
        bytes += Array(name.utf8.prefix(63)) + [UInt8](repeating: 0, count: 64 - min(63, name.utf8.count))
        bytes += bigEndianBytes(mirrorID) + bigEndianBytes(diskID) + bigEndianBytes(UInt32(components)) + bigEndianBytes(genid) + bigEndianBytes(syncid)
        bytes += bigEndianBytes(UInt32(priority)) + bigEndianBytes(balance.rawValue) + bigEndianBytes(UInt32(slice)) + bigEndianBytes(UInt64(mediaSize)) + bigEndianBytes(UInt64(syncOffset))
        bytes += bigEndianBytes(flags.rawValue)
        bytes += bigEndianBytes(CRC32.checksum(bytes))
        return bytes + [UInt8](repeating: 0, count: sectorSize - bytes.count)
    }

    public static func decode(_ sector: [UInt8]) -> MirrorMetadata? {
        guard sector.count >= length + 4, Array(sector[0..<16]) == magic,
              CRC32.checksum(sector[0..<length]) == bigEndianInteger(sector, at: length, as: UInt32.self),
              bigEndianInteger(sector, at: 16, as: UInt32.self) == version,
              let balance = MirrorBalance(rawValue: bigEndianInteger(sector, at: 116, as: UInt32.self)) else { return nil }
        return MirrorMetadata(
            name: String(decoding: sector[20..<84].prefix { $0 != 0 }, as: UTF8.self),
            mirrorID: bigEndianInteger(sector, at: 84, as: UInt64.self), diskID: bigEndianInteger(sector, at: 92, as: UInt64.self),
            components: Int(bigEndianInteger(sector, at: 100, as: UInt32.self)), genid: bigEndianInteger(sector, at: 104, as: UInt32.self),
            syncid: bigEndianInteger(sector, at: 108, as: UInt32.self), priority: Int(bigEndianInteger(sector, at: 112, as: UInt32.self)),
            balance: balance, slice: Int(bigEndianInteger(sector, at: 120, as: UInt32.self)),
            mediaSize: Int64(bigEndianInteger(sector, at: 124, as: UInt64.self)), syncOffset: Int64(bigEndianInteger(sector, at: 132, as: UInt64.self)),
            flags: Flags(rawValue: bigEndianInteger(sector, at: 140, as: UInt32.self)))
    }

    /// Which of two components' metadata is newer: genid first, then syncid.
    func isOlder(than other: MirrorMetadata) -> Bool {
        (genid, syncid) < (other.genid, other.syncid)
    }
}

/// How a mirror picks the component a read goes to.
public enum MirrorBalance: UInt32, Sendable, CaseIterable {
    /// The component with the fewest requests in flight.
    case load = 0
    /// The readable component with the highest priority.
    case prefer = 1
    /// Each in turn.
    case roundRobin = 2
    /// Reads of at least two slices are split in slices across the components.
    case split = 3
    /// Local components first (the least busy of them); remote ones (disks on another
    /// machine) only when no local one can serve the read.
    case preferLocal = 4

    public init?(name: String) {
        switch name {
        case "load": self = .load
        case "prefer": self = .prefer
        case "round-robin": self = .roundRobin
        case "split": self = .split
        case "prefer-local": self = .preferLocal
        default: return nil
        }
    }

    public var name: String {
        switch self {
        case .load: "load"
        case .prefer: "prefer"
        case .roundRobin: "round-robin"
        case .split: "split"
        case .preferLocal: "prefer-local"
        }
    }
}

