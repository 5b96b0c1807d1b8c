import Foundation
import Glibc
import NIOCore
import StrataNBDClient
import Synchronization
import Testing

/// The reply styles a client can end up with, for tests that run in each.
enum ClientReplyStyle: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case extendedHeaders
    case structuredReplies
    case simpleReplies

    var testDescription: String { rawValue }

    func configuration(export: String = "") -> NBDClient.Configuration {
        NBDClient.Configuration(exportName: export, extendedHeaders: self == .extendedHeaders,
                                structuredReplies: self != .simpleReplies)
    }
}

/// Bytes that differ from one offset to the next and from one `seed` to another, so a
/// read that returns the wrong place or the wrong write is caught.
func clientTestPattern(seed: UInt64, length: Int) -> [UInt8] {
    // Eight bytes per step through raw memory: tests make patterns of 32 MiB in debug
    // builds, where a byte-at-a-time loop takes seconds.
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return [UInt8](unsafeUninitializedCapacity: length) { buffer, initialized in
        let bytes = UnsafeMutableRawBufferPointer(buffer)
        var at = 0
        while at < length {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            if at + 8 <= length {
                bytes.storeBytes(of: state, toByteOffset: at, as: UInt64.self)
            } else {
                for index in at..<length { bytes[index] = UInt8(truncatingIfNeeded: state >> (8 * (index - at))) }
            }
            at += 8
        }
        initialized = length
    }
}

/// Writes `count` patterned blocks of `length` bytes all at once, then reads them back
/// all at once; returns the blocks whose data came back different.
func writeAndReadBackConcurrently(_ client: NBDClient, count: Int, length: Int) async throws -> [Int] {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for index in 0..<count {
            group.addTask {
                try await client.write(clientTestPattern(seed: UInt64(index), length: length), offset: UInt64(index * length))
            }
        }
        try await group.waitForAll()
    }
    return try await withThrowingTaskGroup(of: Int?.self) { group in
        for index in 0..<count {
            group.addTask {
                let read = try await client.read(offset: UInt64(index * length), length: length)
                return read.clientTestBytes == clientTestPattern(seed: UInt64(index), length: length) ? nil : index
            }
        }
        var mismatches: [Int] = []
        for try await mismatch in group { if let mismatch { mismatches.append(mismatch) } }
        return mismatches
    }
}

extension ByteBuffer {
    /// The readable bytes, for comparing with `#expect`.
    var clientTestBytes: [UInt8] { withUnsafeReadableBytes { Array($0) } }
}

/// A task executor with a thread of its own, for clients of servers that time their
/// handshake. qemu-nbd drops a client that has not finished its handshake within ten
/// seconds; on a loaded machine, the tests running beside it can keep every thread of
/// the shared pool busy for longer than that, and the client's handshake would wait for
/// one between each reply and its next option.
final class DedicatedTaskExecutor: TaskExecutor {
    static let shared = DedicatedTaskExecutor()
    private let queue = DispatchQueue(label: "strata-tests.dedicated-executor")

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// A server program (nbdkit, qemu-nbd) running in the background for one test, its
/// output kept in a log file for the failure message. Killed by `stop()`.
final class ClientTestDaemon: @unchecked Sendable {
    let directory: String
    let socket: String
    private let process = Process()
    private let logPath: String

    /// Makes a fresh directory; `arguments` may use the socket path given to it.
    init(_ program: String, arguments: (_ socket: String, _ directory: String) throws -> [String]) throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("strata-nbd-client-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        socket = directory + "/nbd.sock"
        logPath = directory + "/log.txt"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = try arguments(socket, directory)
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    /// What the program printed so far.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits until the program accepts connections on its socket. The file appears at
    /// bind(), a moment before listen(), so its existence alone is not enough.
    func waitForSocket(seconds: Double = 20) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !accepts() {
            guard process.isRunning else {
                throw DaemonFailed(message: "exited with \(process.terminationStatus) before listening: \(log)")
            }
            guard Date() < deadline else { throw DaemonFailed(message: "not listening after \(seconds) s: \(log)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Whether a connection to the socket succeeds (it is closed at once).
    private func accepts() -> Bool {
        guard FileManager.default.fileExists(atPath: socket) else { return false }
        let descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socket.utf8CString)
        guard path.count <= MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            path.withUnsafeBytes { raw.copyMemory(from: $0) }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    /// Kills the program. SIGKILL, not SIGTERM: a child started from a test's thread
    /// inherits that thread's signal mask, in which SIGTERM is blocked, so nbdkit and
    /// qemu-nbd would never see a SIGTERM (nor nbdkit's --exit-with-parent signal).
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    struct DaemonFailed: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }
}

/// A value shared between a test and the closures it hands to servers.
final class ClientTestBox<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) { mutex = Mutex(value) }

    var value: Value { mutex.withLock { $0 } }

    func update(_ body: @Sendable (inout Value) -> Void) {
        mutex.withLock { body(&$0) }
    }
}

/// Polls until `condition` holds, for at most `seconds` (servers run on their own threads).
func clientTestEventually(seconds: Double = 5, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while !condition() && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(10))
    }
}
