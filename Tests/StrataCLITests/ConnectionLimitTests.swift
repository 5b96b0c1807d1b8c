import Foundation
import Testing

/// Clients that connect and say nothing, or too many of them, cannot lock anyone out:
/// the descriptor limit is raised, connections past the cap are refused at once, idle
/// handshakes are closed, and the control socket keeps answering. A stop takes no longer
/// than its grace, whatever a backend holds.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ConnectionLimitTests {
    /// Starts `strata serve` under `prlimit --nofile=SOFT:HARD` in a directory of its own.
    static func serve(_ topology: String, soft: Int, hard: Int, prefix: String) throws -> (ServeProcess, String, String) {
        let directory = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString.prefix(8))"
        let socket = directory + "/nbd.sock"
        let control = directory + "/control.sock"
        let file = "listen: [unix://\(socket)]\ncontrol: \(control)\n" + topology
        let server = try ServeProcess(executable: "/usr/bin/prlimit",
                                      arguments: ["--nofile=\(soft):\(hard)", strataBinary, "serve", "--config", "t.yaml"],
                                      directory: directory, files: ["t.yaml": file])
        return (server, socket, control)
    }

    /// A Python function for the scripts below: whether the server has closed socket `s`,
    /// reading and dropping what it answered first.
    static let closedInPython = """
        def closed(s):
            try:
                while select.select([s], [], [], 0)[0]:
                    if not s.recv(65536):
                        return True
                return False
            except OSError:
                return True
        """

    /// A child's output line by line, however the pipe hands it over.
    final class Lines {
        private let pipe: Pipe
        private var buffered = Data()

        init(_ pipe: Pipe) { self.pipe = pipe }

        func next() -> String {
            while !buffered.contains(UInt8(ascii: "\n")) {
                let more = pipe.fileHandleForReading.availableData
                if more.isEmpty { break }
                buffered.append(more)
            }
            let end = buffered.firstIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? buffered.endIndex
            defer { buffered = Data(buffered[end...]) }
            return String(decoding: buffered[..<end], as: UTF8.self)
        }
    }

    @Test func idleConnectionsPastTheCapAreRefusedTimedOutAndLoggedOnceWhileTheControlSocketAnswers() throws {
        let (server, socket, control) = try Self.serve("""
            limits: {handshake-seconds: 2}
            disks:
              - {name: m0, memory: 16MiB}
            exports:
              - {name: vol, provider: m0}
            """, soft: 256, hard: 256, prefix: "strata-idle")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(server.stderr.contains("limits.connections lowered"), "256 descriptors leave 128 connections: \(server.stderr)")
        // 300 connections that send nothing; the script reports how many the server had
        // closed at once (past the cap) and, after the timeout, how many it closed.
        let idle = Process()
        idle.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        idle.arguments = ["-c", """
            import socket, select, sys, time
            conns = []
            for i in range(300):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect("\(socket)")
                conns.append(s)
            time.sleep(0.5)
            \(Self.closedInPython)
            print("refused", sum(closed(s) for s in conns), flush=True)
            sys.stdin.readline()
            time.sleep(2.5)
            print("timedout", sum(closed(s) for s in conns), flush=True)
            """]
        let toScript = Pipe()
        let fromScript = Pipe()
        idle.standardInput = toScript
        idle.standardOutput = fromScript
        try idle.run()
        let lines = Lines(fromScript)
        let first = lines.next()
        let refused = Int(first.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? -1
        #expect(refused >= 300 - 128 && refused < 300, "connections refused at the cap: \(first)")
        // With the cap full of idle clients, the control socket answers and a new client
        // is refused (it sees the connection closed).
        #expect(try runProgram(strataBinary, ["list", "--control", control]).0 == 0)
        let refusedClient = try runProgram("/usr/bin/nbdinfo", ["nbd+unix:///vol?socket=\(socket)"])
        #expect(refusedClient.0 != 0, "\(refusedClient)")
        toScript.fileHandleForWriting.write(Data("go\n".utf8))
        let second = lines.next()
        #expect(second.contains("timedout 300"), "every idle connection closed after the handshake timeout: \(second)")
        idle.waitUntilExit()
        let served = try runProgram("/usr/bin/nbdinfo", ["nbd+unix:///vol?socket=\(socket)"])
        #expect(served.0 == 0 && served.1.contains("export-size: 16777216"), "\(served)")
        #expect(server.stop() == 0)
        let log = server.stderr
        #expect(log.components(separatedBy: "handshake timed out").count - 1 == 1, "logged once per peer: \(log)")
        #expect(log.contains("connection refused: the server has its maximum of connections open"), "\(log)")
    }

    /// The control socket's connections are bounded too: past 64 they are closed at
    /// once, and one that has not sent its whole request within 10 s is closed (answered
    /// 408 if its head came), so 300 idle control connections in a server of 256
    /// descriptors leave the NBD clients served. A request the parser refuses is answered
    /// 400 and one with an oversized body 413, each closing its connection at once.
    @Test func controlConnectionsThatSayNothingOrTooMuchAreClosedAndLeaveTheNBDClientsServed() throws {
        let (server, socket, control) = try Self.serve("""
            disks:
              - {name: m0, memory: 16MiB}
            exports:
              - {name: vol, provider: m0}
            """, soft: 256, hard: 256, prefix: "strata-ctl-idle")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let script = Process()
        script.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        script.arguments = ["-c", """
            import socket, select, sys, time
            def connect(raw=b""):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect("\(control)")
                if raw:
                    s.sendall(raw)
                return s
            def answer(s, wait):
                s.settimeout(wait)
                out = b""
                try:
                    while True:
                        data = s.recv(65536)
                        if not data:
                            return out.decode(errors="replace") + " <closed>"
                        out += data
                except socket.timeout:
                    return out.decode(errors="replace") + " <open>"
                except OSError as error:
                    return out.decode(errors="replace") + " <" + str(error) + ">"
            \(Self.closedInPython)
            opened = time.monotonic()
            partial_head = connect(b"GET /v1/sta")
            partial_body = connect(b"POST /v1/geoms HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 50\\r\\n\\r\\n{")
            idle = [connect() for _ in range(300)]
            time.sleep(0.5)
            print("refused", sum(closed(s) for s in idle), flush=True)
            sys.stdin.readline()
            time.sleep(max(0, opened + 11 - time.monotonic()))
            print("partial-head", answer(partial_head, 1), flush=True)
            print("partial-body", answer(partial_body, 1).replace("\\r\\n", " "), flush=True)
            print("timedout", sum(closed(s) for s in idle), flush=True)
            print("garbage", answer(connect(b"NOT HTTP AT ALL\\r\\n\\r\\n"), 3).replace("\\r\\n", " "), flush=True)
            print("oversized", answer(connect(b"POST /v1/geoms HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 1048576\\r\\n\\r\\n"), 3).replace("\\r\\n", " "), flush=True)
            """]
        let toScript = Pipe()
        let fromScript = Pipe()
        script.standardInput = toScript
        script.standardOutput = fromScript
        try script.run()
        defer { kill(script.processIdentifier, SIGKILL) }
        let lines = Lines(fromScript)
        let refused = lines.next()
        let refusedCount = Int(refused.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? -1
        #expect(refusedCount == 300 - 62, "64 control connections served, two of them the partial requests: \(refused)")
        // The control socket is full of idle clients; the NBD server has its descriptors.
        let served = try runProgram("/usr/bin/nbdinfo", ["--size", "nbd+unix:///vol?socket=\(socket)"])
        #expect(served.0 == 0 && served.1.contains("16777216"), "\(served)")
        let full = try runProgram(strataBinary, ["status", "--control", control])
        #expect(full.0 == 1 && full.2.contains("closed the connection without answering"), "\(full)")
        toScript.fileHandleForWriting.write(Data("go\n".utf8))
        let partialHead = lines.next()
        #expect(partialHead.hasPrefix("partial-head  <closed>"), "no head, no response: \(partialHead)")
        let partialBody = lines.next()
        #expect(partialBody.contains("408 Request Timeout") && partialBody.contains("did not arrive whole within 10")
                && partialBody.contains("<closed>"), "\(partialBody)")
        let timedOut = lines.next()
        #expect(timedOut.contains("timedout 300"), "every idle connection closed after 10 s: \(timedOut)")
        let garbage = lines.next()
        #expect(garbage.contains("400 Bad Request") && garbage.contains("<closed>"), "\(garbage)")
        let oversized = lines.next()
        #expect(oversized.contains("413 Payload Too Large") && oversized.contains("longer than 65536 bytes")
                && oversized.contains("<closed>"), "\(oversized)")
        script.waitUntilExit()
        #expect(try runProgram(strataBinary, ["status", "--control", control]).0 == 0)
        #expect(server.stop() == 0)
        let reports = server.stderr.components(separatedBy: "control connection refused: 64 control connections are open").count - 1
        #expect(reports >= 1 && reports <= 3, "reported at most once a second: \(server.stderr)")
    }

    @Test func theSoftDescriptorLimitIsRaisedToTheHardOne() throws {
        let (server, _, _) = try Self.serve("disks:\n  - {name: m0, memory: 1MiB}\n", soft: 1024, hard: 8192, prefix: "strata-nofile")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let child = try runProgram("/usr/bin/pgrep", ["-P", "\(server.process.processIdentifier)", "strata"])
        let pid = child.1.split(separator: "\n").first.map(String.init) ?? "\(server.process.processIdentifier)"
        let limits = (try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)) ?? ""
        let line = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") } ?? ""
        #expect(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).prefix(2) == ["8192", "8192"], "\(line)")
        #expect(server.stop() == 0)
    }

    @Test func aStopTakesItsGraceWhateverABackendHoldsAndTheMirrorIsResynchronizedAfter() throws {
        let directory = NSTemporaryDirectory() + "strata-grace-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let topology = """
            listen: [unix://\(directory)/nbd.sock]
            control: \(directory)/control.sock
            shutdown-grace: 2
            disks:
              - {name: d0, file: d0.img, size: 8MiB}
              - {name: d1, file: d1.img, size: 8MiB}
            geoms:
              - {name: n0, class: nop, consumers: [d0]}
              - {name: m0, class: mirror, consumers: [n0, d1]}
            exports:
              - {name: vol, provider: m0}
            """
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": topology])
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        // Once the client is in transmission, the nop holds what comes: a write below the
        // mirror that will not finish within the grace.
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        writer.arguments = ["-c", """
            import nbd, sys, time
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(directory)/nbd.sock")
            print("connected", flush=True)
            sys.stdin.readline()
            h.aio_pwrite(b"w" * 4096, 0)
            time.sleep(120)
            """]
        let toWriter = Pipe()
        let fromWriter = Pipe()
        writer.standardInput = toWriter
        writer.standardOutput = fromWriter
        try writer.run()
        defer { kill(writer.processIdentifier, SIGKILL) }
        #expect(Lines(fromWriter).next().contains("connected"))
        #expect(try runProgram(strataBinary, ["nop", "configure", "n0", "--delay-ms", "60000",
                                              "--control", directory + "/control.sock"]).0 == 0)
        toWriter.fileHandleForWriting.write(Data("go\n".utf8))
        // The write waits in the nop once the mirror's clone reaches it.
        let deadline = Date().addingTimeInterval(10)
        while !(try runProgram(strataBinary, ["stat", "--once", "--json", "--control", directory + "/control.sock"]).1
                .contains("\"inFlight\" : 1")) && Date() < deadline { usleep(50_000) }
        let started = Date()
        let status = server.stop(seconds: 20)
        let took = Date().timeIntervalSince(started)
        #expect(status == 1 && took < 8, "exit \(String(describing: status)) after \(took) s: \(server.stderr)")
        #expect(server.stderr.contains("requests still in flight") && server.stderr.contains("n0: 1"), "\(server.stderr)")
        let again = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory)
        #expect(again.waitForOutput("control socket"), "\(again.stderr)")
        #expect(again.stderr.contains("was not closed cleanly"), "the dirty record was truthful: \(again.stderr)")
        #expect(again.stop() == 0)
    }
}
