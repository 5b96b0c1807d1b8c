import Glibc

/// An image as the `rbd` command names it: `POOL/IMAGE`, `POOL/NAMESPACE/IMAGE`, and
/// either with `@SNAPSHOT` for a snapshot (read-only).
public struct RBDImageSpec: Sendable, Hashable, CustomStringConvertible {
    public let pool: String
    public let namespace: String?
    public let image: String
    public let snapshot: String?

    public init?(_ text: String) {
        var rest = Substring(text)
        if let at = rest.firstIndex(of: "@") {
            let snapshot = rest[rest.index(after: at)...]
            guard !snapshot.isEmpty, !snapshot.contains("@"), !snapshot.contains("/") else { return nil }
            self.snapshot = String(snapshot)
            rest = rest[..<at]
        } else {
            snapshot = nil
        }
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 || parts.count == 3, !parts.contains(where: \.isEmpty) else { return nil }
        pool = String(parts[0])
        namespace = parts.count == 3 ? String(parts[1]) : nil
        image = String(parts[parts.count - 1])
    }

    public var description: String {
        [pool, namespace, image].compactMap { $0 }.joined(separator: "/") + (snapshot.map { "@\($0)" } ?? "")
    }
}

/// librados' and librbd's negative errno results as words.
enum RBDError {
    /// "ETIMEDOUT (Connection timed out)" for -110.
    static func describe(_ result: some BinaryInteger) -> String {
        let number = Int32(truncatingIfNeeded: -Int(result))
        let name = names[number].map { "\($0) " } ?? ""
        return "\(name)(\(String(cString: strerror(number))))"
    }

    /// The errno names a cluster's failures most often carry.
    private static let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", EACCES: "EACCES", EBUSY: "EBUSY", EEXIST: "EEXIST",
        EINVAL: "EINVAL", EROFS: "EROFS", ENOSPC: "ENOSPC", EDQUOT: "EDQUOT", ETIMEDOUT: "ETIMEDOUT",
        ESHUTDOWN: "EBLOCKLISTED", ENOTCONN: "ENOTCONN", ECONNREFUSED: "ECONNREFUSED", ENOTSUP: "EOPNOTSUPP",
        ECANCELED: "ECANCELED", ENOMEM: "ENOMEM", EAGAIN: "EAGAIN", ERANGE: "ERANGE",
    ]
}
