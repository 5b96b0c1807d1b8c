import Strata

/// The metadata a multi-component class keeps in the last sector of each component
/// (concat, stripe, label), so a geom reassembles from its disks by tasting alone.
///
/// Layout (big-endian), in the first 120 bytes of the sector, the rest zero:
/// magic (16) · version u32 · name (64, NUL-padded UTF-8) · id u64 · index u32 ·
/// count u32 · stripe size u64 · data size u64 · CRC-32 of those 116 bytes u32.
public struct ComponentLabel: Equatable, Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case concat = "STRATA::CONCAT"
        case stripe = "STRATA::STRIPE"
        case label = "STRATA::LABEL"
    }

    public static let version: UInt32 = 1
    static let encodedLength = 116

    public var kind: Kind
    /// The geom's name (at most 63 bytes of UTF-8).
    public var name: String
    /// Chosen when the geom is created: components of another geom with the same name
    /// are not mistaken for this one's.
    public var id: UInt64
    /// This component's place, from 0.
    public var index: Int
    public var count: Int
    public var stripeSize: Int64
    /// Bytes of this component that hold data (its media size less the label sector).
    public var dataSize: Int64

    public init(kind: Kind, name: String, id: UInt64, index: Int, count: Int, stripeSize: Int64 = 0, dataSize: Int64) {
        self.kind = kind
        self.name = name
        self.id = id
        self.index = index
        self.count = count
        self.stripeSize = stripeSize
        self.dataSize = dataSize
    }

    /// The label as a sector of `sectorSize` bytes.
    public func encoded(sectorSize: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes += padded(Array(kind.rawValue.utf8), to: 16)
        bytes += bigEndianBytes(Self.version)
        bytes += padded(Array(name.utf8.prefix(63)), to: 64)
        bytes += bigEndianBytes(id) + bigEndianBytes(UInt32(index)) + bigEndianBytes(UInt32(count))
        bytes += bigEndianBytes(UInt64(bitPattern: stripeSize)) + bigEndianBytes(UInt64(bitPattern: dataSize))
        bytes += bigEndianBytes(CRC32.checksum(bytes))
        return bytes + [UInt8](repeating: 0, count: sectorSize - bytes.count)
    }

    /// The most components a concat or stripe has.
    public static let maximumCount = 64

    /// Reads a label from a sector; nil unless it is one, whole, with a good checksum and
    /// values a geom can be built from: 1 to 64 components, a positive data size, and for
    /// a stripe a stripe size that is a power of two of at least 512 bytes. A disk image
    /// is input from outside: a label whose checksum holds may still carry any values.
    public static func decode(_ sector: [UInt8]) -> ComponentLabel? {
        guard sector.count >= encodedLength + 4 else { return nil }
        guard let kind = Kind.allCases.first(where: { padded(Array($0.rawValue.utf8), to: 16) == Array(sector[0..<16]) }) else {
            return nil
        }
        let body = sector[0..<encodedLength]
        guard CRC32.checksum(body) == bigEndianInteger(sector, at: encodedLength, as: UInt32.self),
              bigEndianInteger(sector, at: 16, as: UInt32.self) == version else { return nil }
        let nameBytes = sector[20..<84].prefix { $0 != 0 }
        let index = Int(bigEndianInteger(sector, at: 92, as: UInt32.self))
        let count = Int(bigEndianInteger(sector, at: 96, as: UInt32.self))
        guard count > 0, count <= maximumCount, index < count else { return nil }
        let stripeSize = Int64(bitPattern: bigEndianInteger(sector, at: 100, as: UInt64.self))
        let dataSize = Int64(bitPattern: bigEndianInteger(sector, at: 108, as: UInt64.self))
        guard dataSize > 0 else { return nil }
        if kind == .stripe {
            guard stripeSize >= 512, stripeSize & (stripeSize - 1) == 0 else { return nil }
        }
        return ComponentLabel(kind: kind, name: String(decoding: nameBytes, as: UTF8.self),
                              id: bigEndianInteger(sector, at: 84, as: UInt64.self), index: index, count: count,
                              stripeSize: stripeSize, dataSize: dataSize)
    }

    /// Reads the label of `provider` through a consumer of `geom` opened for the read.
    public static func read(from provider: Provider, through geom: Geom, in topology: Topology) -> ComponentLabel? {
        try? topology.reading(provider, through: geom) { consumer in
            decode(try consumer.readLastSector())
        }
    }

    /// Writes this label to the last sector of the provider `consumer` is attached to
    /// and opened for writing, durably.
    public func write(through consumer: Consumer) throws {
        guard let provider = consumer.provider else { throw StrataError(.noDevice, "write label: consumer not attached") }
        try consumer.writeSync(encoded(sectorSize: provider.sectorSize), at: provider.mediaSize - Int64(provider.sectorSize),
                               flags: .fua)
    }
}

private func padded(_ bytes: [UInt8], to length: Int) -> [UInt8] {
    Array(bytes.prefix(length)) + [UInt8](repeating: 0, count: max(0, length - bytes.count))
}

