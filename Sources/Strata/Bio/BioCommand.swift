/// What a request asks its provider to do (`bio_cmd` in g_bio(9)).
public enum BioCommand: UInt8, Sendable, CustomStringConvertible {
    /// Read `length` bytes at `offset` into the request's data.
    case read = 1
    /// Write the request's data at `offset`.
    case write = 2
    /// The range is no longer used: the provider may free or erase it (discard, trim).
    case delete = 3
    /// Inspect an out-of-band attribute named by the request's `attribute`.
    case getattr = 4
    /// Make every completed write durable (the provider flushes its write cache).
    case flush = 5
    /// Make the range read as zeros, without a data buffer (Linux REQ_OP_WRITE_ZEROES).
    case writeZeroes = 6

    public var description: String {
        switch self {
        case .read: "READ"
        case .write: "WRITE"
        case .delete: "DELETE"
        case .getattr: "GETATTR"
        case .flush: "FLUSH"
        case .writeZeroes: "WRITE_ZEROES"
        }
    }

    /// Commands that address a byte range of the media and are checked against it.
    @inlinable public var addressesMedia: Bool {
        switch self {
        case .read, .write, .delete, .writeZeroes: true
        case .getattr, .flush: false
        }
    }

    /// Commands that change the media and so need write access.
    @inlinable public var needsWriteAccess: Bool {
        switch self {
        case .write, .delete, .writeZeroes, .flush: true
        case .read, .getattr: false
        }
    }
}

/// Flags of a request (`bio_flags`): how it is to be done, and what became of it.
///
/// The request flags (`fua`, `preflush`, `noHole`) are set by the issuer and copied into
/// clones. The status flags (`error`, `done`, `readAsZeros`) are set by completion.
public struct BioFlags: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    // Computed and inlinable rather than stored: a stored static is reached through an
    // addressor call (with a `swift_once` for the sets), once per clone, from every module
    // but this one.

    /// BIO_ERROR: the request failed; its `error` holds why.
    @inlinable public static var error: BioFlags { BioFlags(rawValue: 1 << 0) }
    /// BIO_DONE: the request has been delivered.
    @inlinable public static var done: BioFlags { BioFlags(rawValue: 1 << 1) }
    /// Force unit access: the write is durable before it completes.
    @inlinable public static var fua: BioFlags { BioFlags(rawValue: 1 << 2) }
    /// Flush the write cache before doing this request.
    @inlinable public static var preflush: BioFlags { BioFlags(rawValue: 1 << 3) }
    /// For write-zeroes: the range must stay allocated (no hole may be punched).
    @inlinable public static var noHole: BioFlags { BioFlags(rawValue: 1 << 4) }
    /// For write-zeroes: fail at once with ENOTSUP rather than zero slowly.
    @inlinable public static var fastZero: BioFlags { BioFlags(rawValue: 1 << 5) }
    /// On a completed read: the range reads as zeros and the data buffer was not written.
    /// Set only on reads whose issuer asked for it with `zeroHint`.
    @inlinable public static var readAsZeros: BioFlags { BioFlags(rawValue: 1 << 6) }
    /// On a read: the issuer accepts `readAsZeros` in place of a zero-filled buffer
    /// (an NBD server then sends a hole chunk and nobody copies zeros).
    @inlinable public static var zeroHint: BioFlags { BioFlags(rawValue: 1 << 7) }

    /// The flags an issuer chooses; a clone inherits them.
    @inlinable public static var requestFlags: BioFlags { [.fua, .preflush, .noHole, .fastZero, .zeroHint] }
    /// The flags completion sets.
    @inlinable public static var statusFlags: BioFlags { [.error, .done, .readAsZeros] }

    public var description: String {
        let names: [(BioFlags, String)] = [
            (.error, "ERROR"), (.done, "DONE"), (.fua, "FUA"), (.preflush, "PREFLUSH"),
            (.noHole, "NO_HOLE"), (.fastZero, "FAST_ZERO"), (.readAsZeros, "ZEROS"), (.zeroHint, "ZERO_HINT"),
        ]
        return names.filter { contains($0.0) }.map(\.1).joined(separator: "|")
    }
}
