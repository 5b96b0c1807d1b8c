#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a request failed: an errno, as GEOM and NBD both carry it.
///
/// A request's error travels as this four-byte value so the I/O path never allocates
/// for it; `description` gives the system's message for the code.
public struct BioError: Error, Hashable, Sendable, CustomStringConvertible {
    public let errno: Int32

    @inlinable public init(errno: Int32) {
        precondition(errno != 0, "a BioError needs a non-zero errno")
        self.errno = errno
    }

    public static let permission = BioError(errno: EPERM)
    public static let io = BioError(errno: EIO)
    public static let noDevice = BioError(errno: ENXIO)
    public static let noMemory = BioError(errno: ENOMEM)
    public static let invalid = BioError(errno: EINVAL)
    public static let noSpace = BioError(errno: ENOSPC)
    public static let notSupported = BioError(errno: EOPNOTSUPP)
    public static let busy = BioError(errno: EBUSY)
    public static let loop = BioError(errno: ELOOP)
    public static let exists = BioError(errno: EEXIST)
    public static let shutdown = BioError(errno: ESHUTDOWN)
    public static let readOnly = BioError(errno: EROFS)

    /// The symbolic name where it is a common one, else the number.
    public var name: String {
        switch errno {
        case EPERM: "EPERM"
        case ENOENT: "ENOENT"
        case EIO: "EIO"
        case ENXIO: "ENXIO"
        case ENOMEM: "ENOMEM"
        case EACCES: "EACCES"
        case EBUSY: "EBUSY"
        case EEXIST: "EEXIST"
        case EINVAL: "EINVAL"
        case ENOSPC: "ENOSPC"
        case EROFS: "EROFS"
        case ELOOP: "ELOOP"
        case EOPNOTSUPP: "EOPNOTSUPP"
        case EOVERFLOW: "EOVERFLOW"
        case ESHUTDOWN: "ESHUTDOWN"
        case EISDIR: "EISDIR"
        case EFBIG: "EFBIG"
        default: "errno \(errno)"
        }
    }

    public var description: String { "\(String(cString: strerror(errno))) (\(name))" }
}

/// An error with a message for people: what was being done, on what, and why.
///
/// Used wherever a failure leaves the I/O path: opening a backing file, a topology
/// change refused, a request made through the async API.
public struct StrataError: Error, Sendable, CustomStringConvertible {
    /// The errno that best describes the failure.
    public let code: BioError
    /// What was being done and on what, e.g. "open /srv/d0.img".
    public let message: String

    public init(_ code: BioError, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message): \(code)" }
}
