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
        var bytes = Self.magic + be(Self.version)
        bytes += Array(name.utf8.prefix(63)) + [UInt8](repeating: 0, count: 64 - min(63, name.utf8.count))
        bytes += be(mirrorID) + be(diskID) + be(UInt32(components)) + be(genid) + be(syncid)
        bytes += be(UInt32(priority)) + be(balance.rawValue) + be(UInt32(slice)) + be(UInt64(mediaSize)) + be(UInt64(syncOffset))
        bytes += be(flags.rawValue)
        bytes += be(CRC32.checksum(bytes))
        return bytes + [UInt8](repeating: 0, count: sectorSize - bytes.count)
    }

    public static func decode(_ sector: [UInt8]) -> MirrorMetadata? {
        guard sector.count >= length + 4, Array(sector[0..<16]) == magic,
              CRC32.checksum(sector[0..<length]) == beInteger(sector, length, UInt32.self),
              beInteger(sector, 16, UInt32.self) == version,
              let balance = MirrorBalance(rawValue: beInteger(sector, 116, UInt32.self)) else { return nil }
        return MirrorMetadata(
            name: String(decoding: sector[20..<84].prefix { $0 != 0 }, as: UTF8.self),
            mirrorID: beInteger(sector, 84, UInt64.self), diskID: beInteger(sector, 92, UInt64.self),
            components: Int(beInteger(sector, 100, UInt32.self)), genid: beInteger(sector, 104, UInt32.self),
            syncid: beInteger(sector, 108, UInt32.self), priority: Int(beInteger(sector, 112, UInt32.self)),
            balance: balance, slice: Int(beInteger(sector, 120, UInt32.self)),
            mediaSize: Int64(beInteger(sector, 124, UInt64.self)), syncOffset: Int64(beInteger(sector, 132, UInt64.self)),
            flags: Flags(rawValue: beInteger(sector, 140, UInt32.self)))
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

    public init?(name: String) {
        switch name {
        case "load": self = .load
        case "prefer": self = .prefer
        case "round-robin": self = .roundRobin
        case "split": self = .split
        default: return nil
        }
    }

    public var name: String {
        switch self {
        case .load: "load"
        case .prefer: "prefer"
        case .roundRobin: "round-robin"
        case .split: "split"
        }
    }
}

private func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

private func beInteger<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, _ type: T.Type) -> T {
    var value: T = 0
    for byte in bytes[offset..<(offset + MemoryLayout<T>.size)] { value = value << 8 | T(byte) }
    return value
}
