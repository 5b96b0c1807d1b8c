import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Strata

/// The directories the server keeps its own files in: the data directory (the state
/// file of run-time changes, which the server applies at each start) and the control
/// socket's. Whoever may write such a directory may put files there that the server
/// trusts, or take the control socket's name, so they are made 0755 whatever the umask
/// (under a umask of 000, mkdir alone makes them 0777), and one that already lets every
/// user write is refused (`Use` says when the sticky bit is enough).
public enum ServerDirectory {
    /// What the server keeps in a directory, which decides what another user who may
    /// write it could do.
    public enum Use: Sendable {
        /// Files the server reads back (the state file): every user writing the
        /// directory is refused, even with the sticky bit, since another user could make
        /// such a file there first.
        case state
        /// The control socket: a directory every user may write is allowed with the
        /// sticky bit (/run, /tmp), which keeps them from removing the socket to bind
        /// their own in its place.
        case socket

        var risk: String {
            switch self {
            case .state: "another user could put a state file there, which the server applies at start"
            case .socket: "another user could remove the control socket and bind their own in its place"
            }
        }
    }

    /// Makes `path` and its missing parents, each 0755 whatever the umask, and checks
    /// that no other user may write it for `use`.
    /// - Throws: `StrataError` naming the directory when it cannot be made, is not a
    ///   directory, or every user may write it.
    public static func prepare(_ path: String, for use: Use) throws {
        try make(path)
        var status = stat()
        guard stat(path, &status) == 0 else { throw StrataError(BioError(errno: errno), "\(path)") }
        guard status.st_mode & S_IFMT == S_IFDIR else { throw StrataError(.invalid, "\(path) is not a directory") }
        let mode = status.st_mode & 0o7777
        let everyoneWrites = mode & S_IWOTH != 0
        let sticky = mode & S_ISVTX != 0
        if everyoneWrites && !(use == .socket && sticky) {
            throw StrataError(.permission, "\(path) is writable by every user (mode \(String(mode, radix: 8))): \(use.risk); "
                              + "make it 0755 (chmod o-w \(path))")
        }
    }

    /// `mkdir -p` with 0755 for what it makes: mkdir's mode is narrowed by the umask but
    /// never widened, so each directory made is then set to exactly 0755.
    private static func make(_ path: String) throws {
        var status = stat()
        if stat(path, &status) == 0 { return }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != path { try make(parent) }
        if mkdir(path, 0o755) != 0 {
            guard errno == EEXIST else { throw StrataError(BioError(errno: errno), "make the directory \(path)") }
            return
        }
        guard chmod(path, 0o755) == 0 else { throw StrataError(BioError(errno: errno), "chmod \(path)") }
    }
}
