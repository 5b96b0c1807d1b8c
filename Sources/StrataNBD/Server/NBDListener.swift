import CStrataSystem
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import Strata
import StrataNBDProtocol
import Synchronization

/// A listening socket and the thread that accepts on it.
///
/// The server accepts its connections itself, rather than through NIO's
/// `ServerBootstrap`, so that it knows each connection's descriptor: busy polling
/// (`BusyPoller`) asks the kernel whether a connection has input, and NIO does not
/// make its descriptors public. Each accepted descriptor is handed to `accepted`, which
/// gives it to NIO (`ClientBootstrap.withConnectedSocket`).
final class NBDListener: @unchecked Sendable {
    /// The address bound, with the port the kernel chose for a TCP port of 0.
    let address: NBDListenAddress
    private let descriptor: Int32
    /// Written once to wake the accepting thread when the listener closes.
    private let wake: Int32
    private let finished = DispatchSemaphore(value: 0)
    /// Signalled once to let the thread accept (`accept`), or to let it end (`close`).
    private let opened = DispatchSemaphore(value: 0)
    private let isAccepting = Atomic<Bool>(false)
    /// A Unix socket's file, removed on close if it is still the one bound.
    private let socketFile: (path: String, inode: UInt)?

    /// Binds and listens on `address`; connections wait in the kernel's queue until
    /// `accept`. A Unix socket's stale file (a socket left by a server that did not
    /// stop) is removed first; any other file there is an error.
    /// - Throws: `StrataError` naming the address and the call that failed.
    init(_ requested: NBDListenAddress, accepted: @escaping @Sendable (Int32) -> Void) throws {
        let socketAddress: SocketAddress
        do {
            switch requested {
            case .tcp(let host, let port): socketAddress = try SocketAddress.makeAddressResolvingHost(host, port: port)
            case .unix(let path):
                try NBDListener.removeStaleSocket(at: path)
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
            let bound = socketAddress.withSockAddr { address, length in bind(descriptor, address, socklen_t(length)) }
            guard bound == 0 else { throw StrataError(BioError(errno: errno), "listen \(requested): bind") }
            if case .unix(let path) = requested { boundFile = path }
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
        self.descriptor = descriptor
        wake = wakePipe[1]
        switch requested {
        case .tcp(let host, _):
            address = .tcp(host: host, port: NBDListener.boundPort(of: descriptor))
            socketFile = nil
        case .unix(let path):
            address = requested
            var status = stat()
            socketFile = lstat(path, &status) == 0 ? (path, UInt(status.st_ino)) : nil
        }
        let wakeRead = wakePipe[0]
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
    func accept() {
        if !isAccepting.exchange(true, ordering: .relaxed) { opened.signal() }
    }

    /// Stops accepting and closes the socket, and removes a Unix socket's file unless
    /// another server has bound the path since; connections already accepted go on.
    func close() {
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

    /// Removes a socket file left at `path`; a missing file is fine, anything but a
    /// socket is refused.
    private static func removeStaleSocket(at path: String) throws {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFSOCK else {
            throw StrataError(.exists, "listen unix://\(path): the path exists and is not a socket")
        }
        unlink(path)
    }
}
