import Foundation
import Testing

/// The `strata` binary of the build being tested: the one beside the test bundle, so
/// that a sanitized build's tests (`--sanitize=address --scratch-path .build-asan`) run
/// its sanitized binary.
let strataBinary: String = {
    URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        .appendingPathComponent("strata").path
}()

/// A running `strata serve`, in a directory of its own.
///
/// Its output goes to files rather than pipes with readability handlers: on Linux a
/// handler's dispatch source outlives the pipe it watches when the object goes away,
/// and a later test's descriptor reusing that number crashes libdispatch's event loop.
final class ServeProcess: @unchecked Sendable {
    let process = Process()
    let directory: String
    private let outputPath: String
    private let errorPath: String
    private let outputHandle: FileHandle
    private let errorHandle: FileHandle

    /// - Parameters:
    ///   - executable: what to run, `strata` unless a wrapper starts it
    ///     (`systemd-socket-activate`, prlimit, a shell that sets the umask).
    ///   - environment: the whole environment, when not the test's.
    ///   - user: runs the server as this user and group (through setpriv, with no
    ///     supplementary groups) rather than as the test's user.
    init(executable: String = strataBinary, arguments: [String], directory: String? = nil, files: [String: String] = [:],
         environment: [String: String]? = nil, user: (name: String, group: String)? = nil) throws {
        self.directory = directory ?? NSTemporaryDirectory() + "strata-cli-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        for (name, text) in files { try text.write(toFile: self.directory + "/" + name, atomically: true, encoding: .utf8) }
        let logs = NSTemporaryDirectory() + "strata-serve-\(UUID().uuidString)"
        outputPath = logs + ".out"
        errorPath = logs + ".err"
        guard FileManager.default.createFile(atPath: outputPath, contents: nil),
              FileManager.default.createFile(atPath: errorPath, contents: nil),
              let outputHandle = FileHandle(forWritingAtPath: outputPath),
              let errorHandle = FileHandle(forWritingAtPath: errorPath) else {
            throw CocoaError(.fileWriteUnknown)
        }
        self.outputHandle = outputHandle
        self.errorHandle = errorHandle
        if let user {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=\(user.name)", "--regid=\(user.group)", "--clear-groups", executable] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        }
        if let environment { process.environment = environment }
        process.currentDirectoryURL = URL(fileURLWithPath: self.directory)
        process.standardOutput = outputHandle
        process.standardError = errorHandle
        try process.run()
    }

    deinit {
        try? outputHandle.close()
        try? errorHandle.close()
        try? FileManager.default.removeItem(atPath: outputPath)
        try? FileManager.default.removeItem(atPath: errorPath)
    }

    var stdout: String { Self.contents(of: outputPath) }
    var stderr: String { Self.contents(of: errorPath) }

    private static func contents(of path: String) -> String {
        String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
    }

    /// Waits until standard output contains `text`, or the process ends, or time passes.
    func waitForOutput(_ text: String, seconds: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if stdout.contains(text) { return true }
            if !process.isRunning { return stdout.contains(text) }
            usleep(20_000)
        }
        return false
    }

    /// The TCP port the startup block says it listens on.
    var tcpPort: Int? {
        guard let range = stdout.range(of: #"tcp://127\.0\.0\.1:(\d+)"#, options: .regularExpression) else { return nil }
        return Int(stdout[range].split(separator: ":").last!)
    }

    /// Sends a signal and waits for the exit; returns the status, or nil after `seconds`.
    func stop(signal: Int32 = SIGTERM, seconds: Double = 10) -> Int32? {
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            return nil
        }
        return process.terminationStatus
    }

    func waitForExit(seconds: Double = 30) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    func removeDirectory() { try? FileManager.default.removeItem(atPath: directory) }
}

/// Text appended from another thread.
final class LockedText: @unchecked Sendable {
    private let lock = NSLock()
    private var storage = ""
    func append(_ more: String) { lock.withLock { storage += more } }
    var text: String { lock.withLock { storage } }
}

/// Runs a program to completion and returns its exit status and output.
func runProgram(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (Int32, String, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    try process.run()
    let out = output.fileHandleForReading.readDataToEndOfFile()
    let err = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct ServeTests {
    @Test func theDefaultTopologyServesASparseGigabyteDiskThatPersists() throws {
        let first = try ServeProcess(arguments: ["serve", "--listen", "tcp://127.0.0.1:0"])
        defer { first.removeDirectory() }
        #expect(first.waitForOutput("control socket"), "stdout: \(first.stdout)\nstderr: \(first.stderr)")
        #expect(first.stdout.contains("export disk0: 1 GiB, provider disk0, read-write, default"), "\(first.stdout)")
        let engineLine = first.stdout.split(separator: "\n").first { $0.hasPrefix("  file disk disk0: ") }
        #expect(engineLine.map { line in ["inline", "uring", "threads"].contains { line.hasSuffix("/disk0.img, io \($0)") } } == true,
                "\(first.stdout)")
        let port = try #require(first.tcpPort)
        let write = try runProgram("/usr/bin/python3", ["-c", """
        import nbd
        h = nbd.NBD()
        h.connect_uri("nbd://127.0.0.1:\(port)")
        assert h.get_size() == 1 << 30
        h.pwrite(b"persist!" * 512, 1 << 20, nbd.CMD_FLAG_FUA)
        print("written")
        """])
        #expect(write.1.contains("written"), "\(write)")
        #expect(first.stop() == 0)
        let attributes = try FileManager.default.attributesOfItem(atPath: first.directory + "/strata-data/disk0.img")
        #expect(attributes[.size] as? Int == 1 << 30)

        let second = try ServeProcess(arguments: ["serve", "--listen", "tcp://127.0.0.1:0"], directory: first.directory)
        #expect(second.waitForOutput("control socket"), "\(second.stderr)")
        let secondPort = try #require(second.tcpPort)
        let read = try runProgram("/usr/bin/python3", ["-c", """
        import nbd
        h = nbd.NBD()
        h.connect_uri("nbd://127.0.0.1:\(secondPort)/disk0")
        assert h.pread(4096, 1 << 20) == b"persist!" * 512
        print("kept")
        """])
        #expect(read.1.contains("kept"), "\(read)")
        #expect(second.stop(signal: SIGINT) == 0)
    }

    @Test func aTopologyFileIsServedOnItsListenAddresses() throws {
        let directory = NSTemporaryDirectory() + "strata-cli-\(UUID().uuidString.prefix(8))"
        let socket = directory + "/nbd.sock"
        let server = try ServeProcess(arguments: ["serve", "--config", "topology.yaml"], directory: directory, files: [
            "topology.yaml": """
            listen:
              - unix://\(socket)
            disks:
              - name: fast
                memory: 64MiB
              - name: kept
                file: kept.img
                size: 16MiB
            exports:
              - name: scratch
                provider: fast
                description: scratch space
              - name: data
                provider: kept
                default: true
            """,
        ])
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(server.stdout.contains("export scratch: 64 MiB, provider fast, read-write"))
        #expect(server.stdout.contains("export data: 16 MiB, provider kept, read-write, default"))
        #expect(server.stdout.contains("listening on unix://\(socket)"))
        #expect(server.stdout.contains("busy polling up to 50 µs before an idle connection's loop sleeps"), "\(server.stdout)")
        let list = try runProgram("/usr/bin/nbdinfo", ["--list", "--json", "nbd+unix:///?socket=\(socket)"])
        #expect(list.0 == 0 && list.1.contains("scratch space"), "\(list)")
        #expect(server.stop() == 0)
    }

    @Test func sigtermWithRequestsInFlightAnswersThemAndExitsZero() throws {
        let directory = NSTemporaryDirectory() + "strata-cli-\(UUID().uuidString.prefix(8))"
        let socket = directory + "/nbd.sock"
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: [
            "t.yaml": "listen: [unix://\(socket)]\ndisks:\n  - name: f\n    file: f.img\n    size: 64MiB\nexports:\n  - name: f\n    provider: f\n",
        ])
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        client.arguments = ["-c", """
        import nbd, sys
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///f?socket=\(socket)")
        buffers = [nbd.Buffer.from_bytearray(bytearray(b"\\x5a" * 65536)) for i in range(256)]
        cookies = [h.aio_pwrite(buffers[i], i * 65536) for i in range(256)]
        print("issued", flush=True)
        try:
            while h.aio_in_flight() > 0:
                h.poll(-1)
        except nbd.Error as e:
            print("lost", e)
        answered = shutdown = failed = 0
        for cookie in cookies:
            try:
                if h.aio_command_completed(cookie):
                    answered += 1
            except nbd.Error as e:
                answered += 1
                if e.errno in (108, "ESHUTDOWN"):
                    shutdown += 1
                else:
                    failed += 1
        print("answered", answered, "failed", failed, "shutdown", shutdown, flush=True)
        """]
        let clientOutput = Pipe()
        client.standardOutput = clientOutput
        let printed = LockedText()
        clientOutput.fileHandleForReading.readabilityHandler = { handle in printed.append(String(decoding: handle.availableData, as: UTF8.self)) }
        try client.run()
        // Signal only once every write has been sent.
        let deadline = Date().addingTimeInterval(20)
        while !printed.text.contains("issued") && client.isRunning && Date() < deadline { usleep(5_000) }
        let status = server.stop()
        client.waitUntilExit()
        clientOutput.fileHandleForReading.readabilityHandler = nil
        let text = printed.text + String(decoding: clientOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(status == 0, "\(server.stderr)")
        // Every write is answered: done, or refused with ESHUTDOWN if it arrived after
        // the signal. None is lost to a reset connection.
        #expect(text.contains("answered 256 failed 0"), "\(text)")
    }

    @Test func aBadTopologyFileServesNothingAndSaysWhereTheMistakeIs() throws {
        let server = try ServeProcess(arguments: ["serve", "--config", "bad.yaml"], files: [
            "bad.yaml": "disks:\n  - name: d0\n    memory: 12XB\n",
        ])
        defer { server.removeDirectory() }
        let status = server.waitForExit()
        #expect(status == 1)
        #expect(server.stderr.contains("bad.yaml:3: disks[0].memory: '12XB': must be a size like"), "\(server.stderr)")
        #expect(!server.stdout.contains("serving"))
    }

    /// What a client sends reaches the log escaped: an export name with a newline, asked
    /// for before any authentication, cannot start a line that reads as the server's.
    @Test func aClientsExportNameCannotForgeALineOfTheLog() throws {
        let (server, socket, _) = try ServeProcess.serving("disks:\n  - {name: m0, memory: 1MiB}\n", prefix: "strata-forge")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let client = try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD()
            h.set_export_name("nope\\n2026-01-01T00:00:00+0000 critical strata: forged\\x1b[31m")
            try:
                h.connect_unix("\(socket)")
            except nbd.Error as error:
                print("refused")
            """])
        #expect(client.1.contains("refused"), "\(client)")
        #expect(server.stop() == 0)
        let lines = server.stderr.split(separator: "\n")
        #expect(!lines.contains { $0.hasPrefix("2026-01-01T00:00:00+0000 critical") }, "\(server.stderr)")
        #expect(server.stderr.contains(#"no export named 'nope\n2026-01-01T00:00:00+0000 critical strata: forged\u{1b}[31m'"#),
                "\(server.stderr)")
    }

    @Test func badOptionsAreRefusedWithAMessage() throws {
        let listen = try runProgram(strataBinary, ["serve", "--listen", "ftp://x"])
        #expect(listen.0 != 0 && listen.2.contains("--listen 'ftp://x' is not tcp://HOST:PORT"), "\(listen)")
        let level = try runProgram(strataBinary, ["serve", "--log-level", "loud"])
        #expect(level.0 != 0 && level.2.contains("--log-level 'loud'"), "\(level)")
    }

    @Test func helpReadsWell() throws {
        let help = try runProgram(strataBinary, ["--help"])
        #expect(help.0 == 0 && help.1.contains("serve") && help.1.contains("nbdinfo nbd://127.0.0.1:10809"), "\(help)")
        let serveHelp = try runProgram(strataBinary, ["serve", "--help"])
        #expect(serveHelp.1.contains("--config") && serveHelp.1.contains("SIGTERM"), "\(serveHelp)")
    }
}

extension ServeProcess {
    /// `strata serve --config t.yaml` in a fresh directory. The file listens on and is
    /// controlled through sockets in that directory; `topology` is the rest of it.
    static func serving(_ topology: String, prefix: String) throws -> (server: ServeProcess, socket: String, control: String) {
        let directory = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString.prefix(8))"
        let socket = directory + "/nbd.sock"
        let control = directory + "/control.sock"
        let file = "listen: [unix://\(socket)]\ncontrol: \(control)\n" + topology
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": file])
        return (server, socket, control)
    }
}
