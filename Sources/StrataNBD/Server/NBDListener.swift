import CStrataSystem
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import Strata
import StrataNBDProtocol
import Synchronization

/// A listening socket and the thread that accepts on it: the NBD server's, and the
/// control socket's (`StrataControl`).
///
/// The server accepts its connections itself, rather than through NIO's
/// `ServerBootstrap`, so that it knows each connection's descriptor: busy polling
/// (`BusyPoller`) asks the kernel whether a connection has input, the control socket
/// asks who is at the other end, and NIO does not make its descriptors public. Each
/// accepted descriptor is handed to `accepted`, which gives it to NIO
/// (`ClientBootstrap.withConnectedSocket`).
public final class NBDListener: @unchecked Sendable {
    /// Who may connect to a Unix socket, by its file's mode and group: the control
    /// socket's. The mode is the socket's from the start, whatever the umask: there is
    /// no moment when the file is open to more.
    public struct FileAccess: Sendable, Equatable {
        /// The file's permission bits (0600: its owner only).
        public var mode: mode_t
        /// The group the file is given, for a mode that lets a group in.
        public var group: gid_t?

        public init(mode: mode_t, group: gid_t? = nil) {
            self.mode = mode
            self.group = group
        }
    }

    /// The address bound, with the port the kernel chose for a TCP port of 0.
    public let address: NBDListenAddress
    private let descriptor: Int32
    /// Written once to wake the accepting thread when the listener closes.
    private let wake: Int32
    private let finished = DispatchSemaphore(value: 0)
    /// Signalled once to let the thread accept (`accept`), or to let it end (`close`).
    private let opened = DispatchSemaphore(value: 0)
    private let isAccepting = Atomic<Bool>(false)
    /// A Unix socket's file, removed on close if it is still the one bound; nil for TCP
    /// and for a socket handed over by a service manager, which keeps its file.
    private let socketFile: (path: String, inode: UInt)?

    /// Binds and listens on `address`; connections wait in the kernel's queue until
    /// `accept`. A Unix socket's stale file (a socket left by a server that did not
    /// stop, on which nobody listens) is removed first; a socket another process
    /// listens on, or any other file there, is an error and is left alone.
    /// - Parameter access: for a Unix socket, its file's mode and group; nil leaves
    ///   the mode to the umask.
    /// - Throws: `StrataError` naming the address and the call that failed.
    public init(_ requested: NBDListenAddress, access: FileAccess? = nil,
                accepted: @escaping @Sendable (Int32) -> Void) throws {
        let socketAddress: SocketAddress
        do {
            switch requested {
            case .tcp(let host, let port): socketAddress = try SocketAddress.makeAddressResolvingHost(host, port: port)
            case .unix(let path):
                try NBDListener.claimSocketPath(path)
                socketAddress = try SocketAddress(unixDomainSocketPath: path)
            }
        } catch let error as StrataError {
            throw error
        } catch {
            throw StrataError(.invalid, "listen \(requested): \(error)")
        }
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        let descriptor = socket(Int32(socketAddress.protocol.rawValue), type, 0)
        guard descriptor >= 0 else { throw StrataError(BioError(errno: errno), "listen \(requested): socket") }
        var wakePipe: [Int32] = [-1, -1]
        var boundFile: String?
        do {
            if case .tcp = requested {
                var on: Int32 = 1
                setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
            }
            // Linux makes a Unix socket's file with the socket's own mode less the
            // umask, so a mode set here holds from the moment the file exists. A mode
            // for a group is set only once the file has that group (below).
            if let access, fchmod(descriptor, access.mode & 0o700) != 0 {
                throw StrataError(BioError(errno: errno), "listen \(requested): fchmod")
            }
            let bound = socketAddress.withSockAddr { address, length in bind(descriptor, address, socklen_t(length)) }
            guard bound == 0 else { throw StrataError(BioError(errno: errno), "listen \(requested): bind") }
            if case .unix(let path) = requested {
                boundFile = path
                if let access { try NBDListener.give(path, access) }
            }
            guard listen(descriptor, 256) == 0 else { throw StrataError(BioError(errno: errno), "listen \(requested): listen") }
            guard strata_pipe_cloexec(&wakePipe) == 0 else {
                throw StrataError(BioError(errno: errno), "listen \(requested): pipe")
            }
        } catch {
            // Nothing is left behind: not the socket, nor a Unix socket's file.
            Glibc.close(descriptor)
            if let boundFile { unlink(boundFile) }
            throw error
        }
        switch requested {
        case .tcp(let host, _):
            address = .tcp(host: host, port: NBDListener.boundPort(of: descriptor))
            socketFile = nil
        case .unix(let path):
            address = requested
            var status = stat()
            socketFile = lstat(path, &status) == 0 ? (path, UInt(status.st_ino)) : nil
        }
        self.descriptor = descriptor
        wake = wakePipe[1]
        startAccepting(wakeRead: wakePipe[0], accepted: accepted)
    }

    /// Accepts on a socket already listening, handed over by a service manager
    /// (systemd's `LISTEN_FDS`). The listener owns the descriptor from now on; the
    /// socket's file, if it has one, is the manager's and stays when it closes.
    /// - Throws: `StrataError` naming the descriptor when it is not a listening stream
    ///   socket of a Unix, IPv4 or IPv6 address.
    public init(inherited descriptor: Int32, accepted: @escaping @Sendable (Int32) -> Void) throws {
        let family = strata_listening_family(descriptor)
        guard family >= 0 else {
            let error = BioError(errno: errno == 0 ? EINVAL : errno)
            let problem = switch error.errno {
            case ENOTSOCK: "is not a socket"
            case EINVAL: "is not a listening stream socket"
            default: "cannot be used"
            }
            throw StrataError(error, "descriptor \(descriptor) passed by the service manager \(problem)")
        }
        guard let address = NBDListener.localAddress(of: descriptor, family: family) else {
            throw StrataError(.invalid, "descriptor \(descriptor) passed by the service manager is not a Unix, IPv4 or IPv6 socket")
        }
        // The accept loop polls and must not block in accept; a program this server
        // starts must not inherit the socket.
        var wakePipe: [Int32] = [-1, -1]
        guard fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK) == 0,
              fcntl(descriptor, F_SETFD, FD_CLOEXEC) == 0,
              strata_pipe_cloexec(&wakePipe) == 0 else {
            throw StrataError(BioError(errno: errno), "listen \(address) (descriptor \(descriptor)): fcntl")
        }
        self.address = address
        self.descriptor = descriptor
        socketFile = nil
        wake = wakePipe[1]
        startAccepting(wakeRead: wakePipe[0], accepted: accepted)
    }

    private func startAccepting(wakeRead: Int32, accepted: @escaping @Sendable (Int32) -> Void) {
        let descriptor = self.descriptor
        let finished = self.finished
        let opened = self.opened
        startWorkerThread {
            opened.wait()
            NBDListener.acceptLoop(descriptor, wake: wakeRead, accepted: accepted)
            Glibc.close(wakeRead)
            finished.signal()
        }
    }

    /// Starts accepting connections. Once only.
    public func accept() {
        if !isAccepting.exchange(true, ordering: .relaxed) { opened.signal() }
    }

    /// Stops accepting and closes the socket, and removes a Unix socket's file unless
    /// another server has bound the path since; connections already accepted go on.
    public func close() {
        // A listener that never accepted lets its thread run into the wake below.
        if !isAccepting.exchange(true, ordering: .relaxed) { opened.signal() }
        var byte: UInt8 = 1
        _ = write(wake, &byte, 1)
        finished.wait()
        Glibc.close(wake)
        Glibc.close(descriptor)
        var status = stat()
        if let socketFile, lstat(socketFile.path, &status) == 0, UInt(status.st_ino) == socketFile.inode {
            unlink(socketFile.path)
        }
    }

    /// Accepts until `wake` is written. The socket does not block, so a connection
    /// that went away between the poll and the accept costs one failed call. Transient
    /// failures (such a connection, a signal) are retried at once; running out of
    /// descriptors or memory waits a little, so the loop does not spin meanwhile.
    private static func acceptLoop(_ descriptor: Int32, wake: Int32, accepted: @Sendable (Int32) -> Void) {
        var watched = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&watched, 2, -1) < 0 {
                // Only a signal or a shortage of kernel memory; neither ends the server.
                if errno != EINTR { usleep(10_000) }
                continue
            }
            if watched[1].revents != 0 { return }
            guard watched[0].revents != 0 else { continue }
            let connection = strata_accept_cloexec(descriptor)
            if connection >= 0 {
                accepted(connection)
            } else if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                usleep(10_000)
            }
        }
    }

    private static func boundPort(of descriptor: Int32) -> Int {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        let address: SocketAddress? = withUnsafeBytes(of: storage) { raw in
            switch Int32(storage.ss_family) {
            case AF_INET: SocketAddress(raw.load(as: sockaddr_in.self))
            case AF_INET6: SocketAddress(raw.load(as: sockaddr_in6.self))
            default: nil
            }
        }
        return address?.port ?? 0
    }

    /// The address a socket of `family` is bound to, as a listen address: a Unix
    /// socket's path (`@NAME` for an abstract one), or a TCP host and port.
    private static func localAddress(of descriptor: Int32, family: Int32) -> NBDListenAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard named == 0, Int32(storage.ss_family) == family else { return nil }
        return withUnsafeBytes(of: storage) { raw -> NBDListenAddress? in
            switch family {
            case AF_INET, AF_INET6:
                let address = family == AF_INET ? SocketAddress(raw.load(as: sockaddr_in.self))
                                                : SocketAddress(raw.load(as: sockaddr_in6.self))
                return .tcp(host: address.ipAddress ?? "?", port: address.port ?? 0)
            case AF_UNIX:
                let offset = MemoryLayout<sa_family_t>.size
                var path = Array(raw[offset..<max(offset, min(Int(length), raw.count))])
                if path.first == 0 { path[0] = UInt8(ascii: "@") }
                if let end = path.firstIndex(of: 0) { path = Array(path[..<end]) }
                return .unix(path: String(decoding: path, as: UTF8.self))
            default:
                return nil
            }
        }
    }

    /// Makes `path` free to bind, without ever taking it from a server that is using
    /// it: a missing file is fine; a socket that nobody listens on (a server was killed
    /// and left it) is removed; a socket a process accepts on, or any other file, is
    /// refused and kept.
    private static func claimSocketPath(_ path: String) throws {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw StrataError(.exists, "listen unix://\(path): the path exists and is not a socket")
        }
        if strata_unix_probe(path) == 0 {
            throw StrataError(.busy, "listen unix://\(path): another process is serving on \(path)")
        }
        switch errno {
        case ECONNREFUSED: unlink(path)
        case ENOENT: break
        default:
            throw StrataError(BioError(errno: errno), "listen unix://\(path): cannot tell whether another process serves on it (connect)")
        }
    }

    /// Gives a bound Unix socket's file its group, then its mode: the group's bits are
    /// set only once the file is the group's, so no other group is let in meanwhile.
    private static func give(_ path: String, _ access: FileAccess) throws {
        if let group = access.group, lchown(path, uid_t.max, group) != 0 {
            throw StrataError(BioError(errno: errno), "listen unix://\(path): give the socket to group \(group) (chown)")
        }
        if access.mode & ~0o700 != 0, chmod(path, access.mode) != 0 {
            throw StrataError(BioError(errno: errno), "listen unix://\(path): chmod \(String(access.mode, radix: 8))")
        }
    }
}
