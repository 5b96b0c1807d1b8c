/// The numbers of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md, with the
/// extended-headers extension). All are big-endian on the wire.
public enum NBDMagic {
    public static let nbd: UInt64 = 0x4e42_444d_4147_4943          // "NBDMAGIC"
    public static let ihaveopt: UInt64 = 0x4948_4156_454F_5054     // "IHAVEOPT"
    public static let optionReply: UInt64 = 0x3_e889_0455_65a9
    public static let request: UInt32 = 0x2560_9513
    public static let extendedRequest: UInt32 = 0x21e4_1c71
    public static let simpleReply: UInt32 = 0x6744_6698
    public static let structuredReply: UInt32 = 0x668e_33ef
    public static let extendedReply: UInt32 = 0x6e8a_278c
}

/// Handshake flags the server sends, and client flags it receives.
public enum NBDHandshakeFlags {
    public static let fixedNewstyle: UInt16 = 1 << 0
    public static let noZeroes: UInt16 = 1 << 1
    public static let clientFixedNewstyle: UInt32 = 1 << 0
    public static let clientNoZeroes: UInt32 = 1 << 1
}

/// Options of the handshake phase.
public enum NBDOption: UInt32, Sendable {
    case exportName = 1
    case abort = 2
    case list = 3
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
    case extendedHeaders = 11
}

/// Replies to options; errors have bit 31 set.
public enum NBDOptionReply: UInt32, Sendable {
    case ack = 1
    case server = 2
    case info = 3
    case metaContext = 4
    case errorUnsupported = 0x8000_0001
    case errorPolicy = 0x8000_0002
    case errorInvalid = 0x8000_0003
    case errorPlatform = 0x8000_0004
    case errorTLSRequired = 0x8000_0005
    case errorUnknown = 0x8000_0006
    case errorShutdown = 0x8000_0007
    case errorBlockSizeRequired = 0x8000_0008
    case errorTooBig = 0x8000_0009
    case errorExtendedHeaderRequired = 0x8000_000a
}

/// Information types in INFO and GO.
public enum NBDInfo: UInt16, Sendable {
    case export = 0
    case name = 1
    case description = 2
    case blockSize = 3
}

// The flags of the two option sets below are inlinable computed properties, not stored
// ones: other modules (the server checks several flags a request) read a stored one
// through a call, and fold a literal into their code.

/// Transmission flags: what an export supports.
public struct NBDTransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public static var hasFlags: Self { Self(rawValue: 1 << 0) }
    @inlinable public static var readOnly: Self { Self(rawValue: 1 << 1) }
    @inlinable public static var sendFlush: Self { Self(rawValue: 1 << 2) }
    @inlinable public static var sendFUA: Self { Self(rawValue: 1 << 3) }
    @inlinable public static var rotational: Self { Self(rawValue: 1 << 4) }
    @inlinable public static var sendTrim: Self { Self(rawValue: 1 << 5) }
    @inlinable public static var sendWriteZeroes: Self { Self(rawValue: 1 << 6) }
    @inlinable public static var sendDF: Self { Self(rawValue: 1 << 7) }
    @inlinable public static var canMultiConn: Self { Self(rawValue: 1 << 8) }
    @inlinable public static var sendResize: Self { Self(rawValue: 1 << 9) }
    @inlinable public static var sendCache: Self { Self(rawValue: 1 << 10) }
    @inlinable public static var sendFastZero: Self { Self(rawValue: 1 << 11) }
    @inlinable public static var blockStatusPayload: Self { Self(rawValue: 1 << 12) }
}

/// Commands of the transmission phase.
public enum NBDCommand: UInt16, Sendable, CustomStringConvertible {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7

    public var description: String {
        switch self {
        case .read: "READ"
        case .write: "WRITE"
        case .disconnect: "DISC"
        case .flush: "FLUSH"
        case .trim: "TRIM"
        case .cache: "CACHE"
        case .writeZeroes: "WRITE_ZEROES"
        case .blockStatus: "BLOCK_STATUS"
        }
    }
}

/// Command flags.
public struct NBDCommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public static var fua: Self { Self(rawValue: 1 << 0) }
    @inlinable public static var noHole: Self { Self(rawValue: 1 << 1) }
    @inlinable public static var dontFragment: Self { Self(rawValue: 1 << 2) }
    @inlinable public static var requestOne: Self { Self(rawValue: 1 << 3) }
    @inlinable public static var fastZero: Self { Self(rawValue: 1 << 4) }
    @inlinable public static var payloadLength: Self { Self(rawValue: 1 << 5) }
}

/// Structured and extended reply chunk types.
public enum NBDReplyType: UInt16, Sendable {
    case none = 0
    case offsetData = 1
    case offsetHole = 2
    case blockStatus = 5
    case blockStatusExtended = 6
    case error = 32769
    case errorOffset = 32770
}

/// Reply chunk flags.
public enum NBDReplyFlags {
    public static let done: UInt16 = 1 << 0
}

/// Errors on the wire (errno values as NBD numbers them).
public enum NBDError: UInt32, Sendable {
    case permission = 1
    case io = 5
    case noMemory = 12
    case invalid = 22
    case noSpace = 28
    case overflow = 75
    case notSupported = 95
    case shutdown = 108

    /// The NBD error for a request's errno (anything unknown travels as EIO).
    public init(errno: Int32) {
        switch errno {
        case 1: self = .permission
        case 12: self = .noMemory
        case 22: self = .invalid
        case 27, 28: self = .noSpace
        case 75: self = .overflow
        case 95: self = .notSupported
        case 108: self = .shutdown
        default: self = .io
        }
    }
}

/// `base:allocation` status flags.
public enum NBDAllocationFlags {
    public static let hole: UInt32 = 1 << 0
    public static let zero: UInt32 = 1 << 1
}

/// `qemu:dirty-bitmap:` status flags (qemu's docs/interop/nbd.rst).
public enum NBDDirtyBitmapFlags {
    /// The extent changed since the bitmap's point in time.
    public static let dirty: UInt32 = 1 << 0
}

/// Metadata contexts: their names, and the namespaces queries name them by.
public enum NBDMetaContext {
    public static let baseAllocation = "base:allocation"
    /// The `base` namespace: a wildcard in LIST, ignored in SET.
    public static let baseNamespace = "base:"
    /// The `qemu` namespace: a wildcard in LIST, ignored in SET.
    public static let qemuNamespace = "qemu:"
    /// The start of a dirty bitmap's context name (`qemu:dirty-bitmap:NAME`); alone, a
    /// wildcard for every bitmap in LIST.
    public static let dirtyBitmapPrefix = "qemu:dirty-bitmap:"
    /// The longest string the protocol carries, a context name among them.
    public static let maximumNameLength = 4096
}
