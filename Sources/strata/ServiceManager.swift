import CStrataSystem
import Foundation

/// What a service manager (systemd, or anything speaking its protocol) hands
/// `strata serve` in its environment: listening sockets (`LISTEN_FDS`, socket
/// activation) and a socket to say when the server is ready and when it stops
/// (`NOTIFY_SOCKET`). Taken once at start and taken out of the environment, so a
/// program the server starts does not take them for its own.
struct ServiceManager {
    /// The listening sockets passed, from descriptor 3 on; empty when none were, or
    /// when they were meant for another process (`LISTEN_PID`).
    var descriptors: [Int32] = []
    /// Their names (`LISTEN_FDNAMES`, systemd's `FileDescriptorName=`), when given.
    var names: [String] = []
    /// Where readiness is said, when a manager waits for it (`Type=notify`).
    var notifySocket: String?

    /// The first descriptor passed (`SD_LISTEN_FDS_START`).
    static let firstDescriptor: Int32 = 3

    /// Reads and unsets `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES` and `NOTIFY_SOCKET`.
    /// - Throws: `FailureExit` for a `LISTEN_FDS` meant for this process that is not a
    ///   count of descriptors.
    static func take(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ServiceManager {
        defer {
            for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"] { unsetenv(name) }
        }
        var manager = ServiceManager()
        if let socket = environment["NOTIFY_SOCKET"], !socket.isEmpty { manager.notifySocket = socket }
        // Sockets passed to a parent that then started this process are not ours.
        guard let count = environment["LISTEN_FDS"], environment["LISTEN_PID"].flatMap({ Int32($0) }) == getpid() else {
            return manager
        }
        guard let number = Int32(count), (0...4096).contains(number) else {
            throw FailureExit(message: "LISTEN_FDS '\(count)' from the service manager is not a count of descriptors")
        }
        manager.descriptors = Array(firstDescriptor..<(firstDescriptor + number))
        manager.names = environment["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        return manager
    }

    /// Tells the manager something (`READY=1`, `STOPPING=1`, `STATUS=...`); nothing
    /// without a manager listening. A manager that has gone away is no reason to stop
    /// serving, so a failure is only returned, for the log.
    func notify(_ lines: [String]) -> String? {
        guard let notifySocket else { return nil }
        guard strata_notify(notifySocket, lines.joined(separator: "\n")) == 0 else {
            return "cannot notify the service manager at \(notifySocket): \(String(cString: strerror(errno)))"
        }
        return nil
    }
}
