import Foundation
import Logging
import NIOCore
import Strata
import StrataDisks
import StrataNBD
import StrataNBDProtocol

/// A server on a Unix socket in a fresh directory, exporting disks made for the test.
final class ServerFixture: @unchecked Sendable {
    let topology = Topology()
    let directory: String
    let socket: String
    var server: NBDServer!
    var tcpPort: Int?

    /// - Parameter disks: builds the disks and returns the exports to serve.
    init(tcp: Bool = false, limits: NBDServer.Limits = .patient, threads: Int = 2, busyPoll: Duration = .zero,
         coalescing: Duration = .zero, _ disks: (Topology, String) throws -> [NBDExport]) async throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("strata-nbd-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        socket = directory + "/nbd.sock"
        let exports = try disks(topology, directory)
        var logger = Logger(label: "strata.nbd.test")
        logger.logLevel = ProcessInfo.processInfo.environment["STRATA_TEST_LOG"] != nil ? .debug : .critical
        server = try NBDServer(topology: topology, exports: exports, logger: logger, limits: limits, threads: threads,
                               busyPoll: busyPoll, coalescing: coalescing)
        var addresses: [NBDListenAddress] = [.unix(path: socket)]
        if tcp { addresses.append(.tcp(host: "127.0.0.1", port: 0)) }
        let bound = try await server.start(listeningOn: addresses)
        tcpPort = bound.compactMap(\.port).first
    }

    /// An NBD URI for libnbd tools.
    func uri(export: String = "") -> String { "nbd+unix:///\(export)?socket=\(socket)" }
    /// The same for qemu (its syntax differs).
    func qemuURI(export: String = "") -> String { "nbd+unix:///\(export)?socket=\(socket)" }

    func stop() async {
        await server.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

extension NBDServer.Limits {
    /// The defaults with a handshake timeout of ten minutes, for servers whose clients
    /// are this process's own: their handshakes await cooperative threads, which the crash
    /// sweeps of the suites beside them can hold for tens of seconds.
    static var patient: Self {
        var limits = Self()
        limits.handshakeTimeout = .seconds(600)
        return limits
    }
}

/// What a program printed and how it exited.
struct ProgramResult: CustomStringConvertible {
    var status: Int32
    var output: String
    var errors: String
    var description: String { "exit \(status)\nstdout: \(output)\nstderr: \(errors)" }
}

/// Runs a program found on PATH (or at an absolute path) and waits for it, with a
/// time limit. Standard input gets `input` if given.
func run(_ program: String, _ arguments: [String], input: String? = nil, seconds: Double = 120) throws -> ProgramResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program.hasPrefix("/") ? program : "/usr/bin/env")
    process.arguments = program.hasPrefix("/") ? arguments : [program] + arguments
    let output = Pipe()
    let errors = Pipe()
    let stdin = Pipe()
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = stdin
    try process.run()
    if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
    try? stdin.fileHandleForWriting.close()
    let outputData = Locked(Data())
    let errorData = Locked(Data())
    let readers = DispatchGroup()
    for (pipe, sink) in [(output, outputData), (errors, errorData)] {
        readers.enter()
        DispatchQueue.global().async {
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            sink.set(data)
            readers.leave()
        }
    }
    let deadline = Date().addingTimeInterval(seconds)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
        // SIGKILL: children of test threads may inherit a mask that blocks SIGTERM.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
    readers.wait()
    return ProgramResult(status: process.terminationStatus,
                         output: String(decoding: outputData.get(), as: UTF8.self),
                         errors: String(decoding: errorData.get(), as: UTF8.self))
}

/// A value behind a lock, for results handed between threads.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func get() -> Value { lock.withLock { value } }
    func set(_ newValue: Value) { lock.withLock { value = newValue } }
    func update(_ body: (inout Value) -> Void) { lock.withLock { body(&value) } }
}

/// Whether a program is installed (tests that need it say so in their failure).
func installed(_ program: String) -> Bool {
    ["/usr/bin/", "/usr/sbin/", "/usr/local/bin/"].contains { FileManager.default.isExecutableFile(atPath: $0 + program) }
}
