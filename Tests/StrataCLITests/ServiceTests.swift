import Foundation
import Testing

/// `strata serve` among other processes: it never takes a socket another process serves
/// on; its control socket is its owner's (mode, peer credentials, where it writes);
/// under a service manager it serves the sockets passed and says when it is ready; and
/// every stopping signal stops it cleanly.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ServiceTests {
    static let memoryDisk = """
        disks:
          - {name: m0, memory: 4MiB}
          - {name: pc0, powercut: 4MiB}
        exports:
          - {name: vol, provider: m0}
        """

    static let nobody = 65534
    static let nogroup = 65534
    static let users = 100

    /// `curl` on the control socket as another user (uid, gid and supplementary groups);
    /// answers the exit status and the body followed by a line with the HTTP status.
    func curl(_ control: String, _ route: String, uid: Int, gid: Int, groups: [Int] = [],
              post body: String? = nil) throws -> (status: Int32, output: String) {
        var arguments = ["--reuid=\(uid)", "--regid=\(gid)",
                         groups.isEmpty ? "--clear-groups" : "--groups=" + groups.map(String.init).joined(separator: ",")]
        arguments += ["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", control, "http://strata" + route]
        if let body { arguments += ["-X", "POST", "--data", body] }
        let result = try runProgram("/usr/bin/setpriv", arguments)
        return (result.0, result.1)
    }

    func fileMode(_ path: String) -> (permissions: mode_t, group: gid_t)? {
        var status = stat()
        guard lstat(path, &status) == 0 else { return nil }
        return (status.st_mode & 0o7777, status.st_gid)
    }

    /// A datagram socket at `path` that prints each message it gets as one line, as a
    /// service manager's `NOTIFY_SOCKET` would receive them; `path` starting with '@'
    /// is an abstract name. `stop` ends it.
    final class NotificationReader {
        let path: String
        let said = LockedText()
        private let reader = Process()
        private let output = Pipe()

        init(_ path: String) throws {
            self.path = path
            reader.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            reader.arguments = ["-c", """
                import socket, sys
                path = sys.argv[1]
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.bind("\\0" + path[1:] if path.startswith("@") else path)
                print("bound", flush=True)
                s.settimeout(60)
                while True:
                    print(s.recv(4096).decode().replace("\\n", " "), flush=True)
                """, path]
            reader.standardOutput = output
            let said = self.said
            output.fileHandleForReading.readabilityHandler = { handle in said.append(String(decoding: handle.availableData, as: UTF8.self)) }
            try reader.run()
        }

        func wait(for word: String, seconds: Double = 30) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while !said.text.contains(word) && Date() < deadline { usleep(10_000) }
            return said.text.contains(word)
        }

        func stop() {
            // SIGKILL: the test runner's children inherit SIGTERM ignored.
            kill(reader.processIdentifier, SIGKILL)
            reader.waitUntilExit()
            output.fileHandleForReading.readabilityHandler = nil
        }
    }

    @Test func aSecondServerOnTheSameSocketsIsRefusedAndTheFirstKeepsServing() throws {
        let (first, socket, control) = try ServeProcess.serving(Self.memoryDisk, prefix: "strata-live")
        defer { _ = first.stop(); first.removeDirectory() }
        #expect(first.waitForOutput("control socket"), "\(first.stderr)")
        let directory = first.directory

        // The same control socket, an NBD socket of its own.
        let sameControl = try ServeProcess(arguments: ["serve", "--config", "same-control.yaml"], directory: directory, files: [
            "same-control.yaml": "listen: [unix://\(directory)/other.sock]\ncontrol: \(control)\n" + Self.memoryDisk,
        ])
        defer { _ = sameControl.stop() }
        #expect(sameControl.waitForExit() == 1)
        #expect(sameControl.stderr.contains("cannot open the control socket \(control)")
                && sameControl.stderr.contains("another process is serving on \(control)"), "\(sameControl.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/other.sock"))

        // The same NBD socket, a control socket of its own: refused once its control
        // socket is open, which it takes away again.
        let sameNBD = try ServeProcess(arguments: ["serve", "--config", "same-nbd.yaml"], directory: directory, files: [
            "same-nbd.yaml": "listen: [unix://\(socket)]\ncontrol: \(directory)/other-control.sock\n" + Self.memoryDisk,
        ])
        defer { _ = sameNBD.stop() }
        #expect(sameNBD.waitForExit() == 1)
        #expect(sameNBD.stderr.contains("cannot listen") && sameNBD.stderr.contains("another process is serving on \(socket)"),
                "\(sameNBD.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/other-control.sock"))

        // The first server answers on both as before.
        let list = try runProgram(strataBinary, ["list", "--control", control])
        #expect(list.0 == 0 && list.1.contains("m0"), "\(list)")
        let size = try runProgram("/usr/bin/nbdinfo", ["--size", "nbd+unix:///vol?socket=\(socket)"])
        #expect(size.1.contains("4194304"), "\(size)")

        // Killed, it leaves its sockets; nobody listens on them, so the next server takes them.
        #expect(first.stop(signal: SIGKILL) != nil)
        #expect(FileManager.default.fileExists(atPath: control) && FileManager.default.fileExists(atPath: socket))
        let next = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory)
        #expect(next.waitForOutput("control socket"), "\(next.stderr)")
        #expect(try runProgram(strataBinary, ["list", "--control", control]).0 == 0)
        #expect(next.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: control) && !FileManager.default.fileExists(atPath: socket))
    }

    @Test(.enabled(if: getuid() == 0, "switching to another user takes root"))
    func theControlSocketIsItsOwnersWhateverTheUmask() throws {
        let directory = NSTemporaryDirectory() + "strata-owner-\(UUID().uuidString.prefix(8))"
        let control = directory + "/control.sock"
        // umask 000: every file the server makes without a mode of its own is anyone's.
        let server = try ServeProcess(executable: "/bin/sh",
                                      arguments: ["-c", "umask 000; exec \"$0\" \"$@\"", strataBinary, "serve", "--config", "t.yaml"],
                                      directory: directory, files: [
                                          "t.yaml": "listen: [unix://\(directory)/nbd.sock]\ncontrol: \(control)\n" + Self.memoryDisk,
                                      ])
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(fileMode(control)?.permissions == 0o600)

        // What once wrote a directory under /etc as root for user nobody.
        let target = "/etc/strata-owner-test-\(UUID().uuidString.prefix(8))"
        let asNobody = try curl(control, "/v1/powercut/pc0/images", uid: Self.nobody, gid: Self.nogroup, post: "{\"out\": \"\(target)\"}")
        #expect(asNobody.status != 0 && !asNobody.output.contains("200"), "\(asNobody)")

        // Past the file's mode, the peer's credentials still keep nobody out.
        #expect(chmod(control, 0o666) == 0)
        for _ in 1...2 {
            let refused = try curl(control, "/v1/powercut/pc0/images", uid: Self.nobody, gid: Self.nogroup, post: "{\"out\": \"\(target)\"}")
            #expect(refused.output.hasSuffix("\n403") && refused.output.contains("uid 65534 is not one of them"), "\(refused)")
            let object = try? JSONSerialization.jsonObject(with: Data(refused.output.split(separator: "\n").first.map { Data($0.utf8) } ?? Data()))
            #expect((object as? [String: String])?["error"] != nil, "\(refused)")
        }
        #expect(!FileManager.default.fileExists(atPath: target))
        #expect(server.stderr.components(separatedBy: "refused uid 65534").count == 2, "logged once: \(server.stderr)")
        // Its owner (root here) is served.
        let asRoot = try curl(control, "/v1/status", uid: 0, gid: 0)
        #expect(asRoot.output.hasSuffix("\n200"), "\(asRoot)")
        #expect(server.stop() == 0)
    }

    /// The directories the server makes for itself are 0755 whatever the umask, one that
    /// every user may write is refused before the state file in it is read, and the state
    /// file is never written through a link another user left.
    @Test func theServersDirectoriesAreNotAnyonesWhateverTheUmask() throws {
        let directory = NSTemporaryDirectory() + "strata-dirs-\(UUID().uuidString.prefix(8))"
        let data = directory + "/strata-data"
        let control = data + "/control.sock"
        let umask000 = ["-c", "umask 000; exec \"$0\" \"$@\"", strataBinary, "serve", "--config", "t.yaml"]
        let server = try ServeProcess(executable: "/bin/sh", arguments: umask000, directory: directory, files: [
            "t.yaml": "listen: [unix://\(directory)/nbd.sock]\n" + Self.memoryDisk,
        ])
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(fileMode(data)?.permissions == 0o755, "\(String(describing: fileMode(data)))")
        // A link left where the state file is first written must not be followed.
        let victim = directory + "/victim"
        #expect(FileManager.default.createFile(atPath: victim, contents: Data("keep".utf8)))
        #expect(symlink(victim, data + "/state.yaml.new") == 0)
        #expect(try runProgram(strataBinary, ["geom", "create", "nop", "n1", "--consumers", "m0", "--control", control]).0 == 0)
        #expect((try? String(contentsOfFile: victim, encoding: .utf8)) == "keep")
        #expect((try? String(contentsOfFile: data + "/state.yaml", encoding: .utf8))?.contains("n1") == true)
        #expect(fileMode(data + "/state.yaml")?.permissions == 0o600 && fileMode(data)?.permissions == 0o755)
        #expect(server.stop() == 0)

        // A data directory every user may write: refused before its state file is read.
        #expect(chmod(data, 0o1777) == 0)
        let refused = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory)
        #expect(refused.waitForExit() == 1)
        #expect(refused.stderr.contains("t.yaml: data-directory: '\(data)': \(data) is writable by every user (mode 1777): another "
                                        + "user could put a state file there, which the server applies at start"), "\(refused.stderr)")
        #expect(chmod(data, 0o755) == 0)

        // The control socket's directory: made 0755 with its parents; every user's is
        // refused unless its sticky bit keeps them from replacing the socket.
        let nested = directory + "/run/strata"
        let files = { (socketDirectory: String) in
            "listen: [unix://\(directory)/nbd.sock]\ncontrol: \(socketDirectory)/control.sock\n" + Self.memoryDisk
        }
        let made = try ServeProcess(executable: "/bin/sh", arguments: umask000, directory: directory, files: ["t.yaml": files(nested)])
        #expect(made.waitForOutput("control socket"), "\(made.stderr)")
        #expect(fileMode(directory + "/run")?.permissions == 0o755 && fileMode(nested)?.permissions == 0o755)
        #expect(made.stop() == 0)
        #expect(chmod(nested, 0o777) == 0)
        let open = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory)
        #expect(open.waitForExit() == 1)
        #expect(open.stderr.contains("cannot open the control socket \(nested)/control.sock: \(nested) is writable by every user "
                                     + "(mode 777): another user could remove the control socket and bind their own"), "\(open.stderr)")
        #expect(chmod(nested, 0o1777) == 0)
        let sticky = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory)
        #expect(sticky.waitForOutput("control socket"), "\(sticky.stderr)")
        #expect(sticky.stop() == 0)
    }

    @Test(.enabled(if: getuid() == 0, "switching to another user takes root"))
    func aControlGroupLetsItsMembersInAndNoOneElse() throws {
        let directory = NSTemporaryDirectory() + "strata-group-\(UUID().uuidString.prefix(8))"
        let control = directory + "/control.sock"
        let head = "listen: [unix://\(directory)/nbd.sock]\ncontrol: \(control)\n"
        let unknown = try ServeProcess(arguments: ["serve", "--config", "bad.yaml"], directory: directory, files: [
            "bad.yaml": head + "control-group: no-such-group-here\n" + Self.memoryDisk,
        ])
        #expect(unknown.waitForExit() == 1)
        #expect(unknown.stderr.contains("bad.yaml:3: control-group: 'no-such-group-here': names no group of this system"),
                "\(unknown.stderr)")

        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: [
            "t.yaml": head + "control-group: nogroup\n" + Self.memoryDisk,
        ])
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let mode = fileMode(control)
        #expect(mode?.permissions == 0o660 && mode?.group == gid_t(Self.nogroup), "\(String(describing: mode))")

        // Its members, by their group or a supplementary one.
        let primary = try curl(control, "/v1/status", uid: Self.nobody, gid: Self.nogroup)
        #expect(primary.output.hasSuffix("\n200"), "\(primary)")
        let supplementary = try curl(control, "/v1/status", uid: Self.nobody, gid: Self.users, groups: [Self.nogroup])
        #expect(supplementary.output.hasSuffix("\n200"), "\(supplementary)")
        // Anyone else: not by the file's mode, and not past it either.
        let other = try curl(control, "/v1/status", uid: Self.nobody, gid: Self.users)
        #expect(other.status != 0 && !other.output.contains("200"), "\(other)")
        #expect(chmod(control, 0o666) == 0)
        let refused = try curl(control, "/v1/status", uid: Self.nobody, gid: Self.users)
        #expect(refused.output.hasSuffix("\n403") && refused.output.contains("the members of group nogroup"), "\(refused)")
        #expect(server.stop() == 0)
    }

    @Test func socketActivationServesThroughThePassedSocketAndSaysWhenReady() throws {
        let directory = NSTemporaryDirectory() + "strata-activate-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let socket = directory + "/activated.sock"
        let notify = directory + "/notify.sock"
        let reader = try NotificationReader(notify)
        defer { reader.stop() }
        #expect(reader.wait(for: "bound"))

        // systemd-socket-activate binds the socket, and at the first connection starts
        // strata with it (LISTEN_FDS); -E passes NOTIFY_SOCKET on.
        try ("listen: [unix://\(directory)/unused.sock]\ncontrol: \(directory)/control.sock\n" + Self.memoryDisk)
            .write(toFile: directory + "/t.yaml", atomically: true, encoding: .utf8)
        let server = try SpawnedProcess(["/usr/bin/systemd-socket-activate", "-l", socket, "-E", "NOTIFY_SOCKET=\(notify)",
                                         strataBinary, "serve", "--config", directory + "/t.yaml"], in: directory)
        defer { _ = server.stop(); try? FileManager.default.removeItem(atPath: directory) }
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: socket) && Date() < deadline { usleep(10_000) }
        // Bounded: a server that ignored the passed socket would leave the client waiting.
        // KILL: the test runner's children inherit SIGTERM ignored.
        let client = try runProgram("/usr/bin/timeout", ["-s", "KILL", "30", "/usr/bin/python3", "-c", """
            import nbd
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(socket)")
            h.pwrite(b"activated" * 455 + b"!", 4096)
            assert h.pread(4096, 4096) == b"activated" * 455 + b"!"
            print("served", h.get_size())
            """])
        #expect(client.1.contains("served 4194304"), "\(client)\n\(server.stderr)")
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(server.stdout.contains("listening on unix://\(socket) (passed by the service manager)"), "\(server.stdout)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/unused.sock"), "the listen addresses are not bound")
        #expect(reader.wait(for: "READY=1"), "\(reader.said.text)")
        #expect(reader.said.text.contains("STATUS=serving 1 export"), "\(reader.said.text)")

        #expect(server.stop() == 0, "\(server.stderr)")
        #expect(reader.wait(for: "STOPPING=1"), "\(reader.said.text)")
        #expect(FileManager.default.fileExists(atPath: socket), "the passed socket's file is the manager's")
    }

    @Test func theUnitsInContribAreOnesSystemdReads() throws {
        let contrib = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../contrib").standardized.path
        let directory = NSTemporaryDirectory() + "strata-units-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for unit in ["strata.service", "strata.socket"] {
            // The binary of this build where the unit expects the installed one.
            let text = try String(contentsOfFile: contrib + "/" + unit, encoding: .utf8)
                .replacingOccurrences(of: "/usr/local/bin/strata", with: strataBinary)
            try text.write(toFile: directory + "/" + unit, atomically: true, encoding: .utf8)
        }
        let verified = try runProgram("/usr/bin/systemd-analyze", ["verify", "--man=no",
                                                                   directory + "/strata.socket", directory + "/strata.service"])
        #expect(verified.0 == 0 && verified.2.isEmpty, "\(verified)")
    }

    @Test(arguments: [SIGHUP, SIGQUIT])
    func sighupAndSigquitStopCleanlyLikeSigterm(signal: Int32) throws {
        let directory = NSTemporaryDirectory() + "strata-signal-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // The notification socket by an abstract name, as systemd gives it.
        let reader = try NotificationReader("@strata-test-\(UUID().uuidString.prefix(8))")
        defer { reader.stop() }
        #expect(reader.wait(for: "bound"))
        let topology = "listen: [unix://\(directory)/nbd.sock]\ncontrol: \(directory)/control.sock\n" + RestartTests.mirrorOverNop
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = reader.path
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": topology],
                                      environment: environment)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(reader.wait(for: "READY=1"), "\(reader.said.text)")

        // A client has written and keeps the mirror open for writing.
        let (writer, output) = try RestartTests.writerThatStays(directory, byte: 0x5a)
        #expect(String(decoding: output.fileHandleForReading.availableData, as: UTF8.self).contains("written"))
        let status = server.stop(signal: signal)
        kill(writer.processIdentifier, SIGKILL)
        writer.waitUntilExit()
        let named = signal == SIGHUP ? "SIGHUP" : "SIGQUIT"
        #expect(status == 0, "\(server.stderr)")
        #expect(server.stderr.contains("signal \(named): stopping"), "\(server.stderr)")
        #expect(reader.wait(for: "STOPPING=1"), "\(reader.said.text)")

        // Closed cleanly: the next start finds the mirror clean and resynchronizes nothing.
        let again = try RestartTests.serve(RestartTests.mirrorOverNop, in: directory)
        #expect(again.waitForOutput("control socket"), "\(again.stderr)")
        let mirror = try RestartTests.mirrorStatus(directory)
        #expect(mirror.state == "COMPLETE" && mirror.components == ["d0:ACTIVE", "n1:ACTIVE"], "\(mirror)")
        #expect(!again.stderr.contains("was not closed cleanly") && !again.stderr.contains("rebuild")
                && !again.stderr.contains("resynchroniz"), "\(again.stderr)")
        #expect(try RestartTests.firstMiB(directory) == Data(repeating: 0x5a, count: 1 << 20))
        #expect(again.stop() == 0)
    }
}

/// A program started with posix_spawn rather than Foundation's `Process`, its output in
/// files. `Process` learns that a child ended when a socket the child inherited closes,
/// then waits for it on the one thread that reaps every child: a program that closes
/// the descriptors it inherits (systemd-socket-activate does, before it starts strata)
/// would keep any other child's end from being noticed until its own.
final class SpawnedProcess: @unchecked Sendable {
    let pid: pid_t
    private let outputPath: String
    private let errorPath: String
    private var status: Int32?

    init(_ arguments: [String], in directory: String) throws {
        outputPath = directory + "/spawned.out"
        errorPath = directory + "/spawned.err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
        guard spawned == 0 else { throw CocoaError(.executableLoad) }
        self.pid = pid
    }

    var stdout: String { String(decoding: FileManager.default.contents(atPath: outputPath) ?? Data(), as: UTF8.self) }
    var stderr: String { String(decoding: FileManager.default.contents(atPath: errorPath) ?? Data(), as: UTF8.self) }

    /// Whether it still runs; reaps it when it has ended.
    private var isRunning: Bool {
        guard status == nil else { return false }
        var raw: Int32 = 0
        guard waitpid(pid, &raw, WNOHANG) == pid else { return true }
        // WIFEXITED, WEXITSTATUS and WTERMSIG, which Swift does not import.
        status = raw & 0x7f == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        return false
    }

    func waitForOutput(_ text: String, seconds: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if stdout.contains(text) { return true }
            if !isRunning { return stdout.contains(text) }
            usleep(20_000)
        }
        return false
    }

    /// Sends a signal and waits for the end; returns the exit status (128 + the signal
    /// for one that killed it), or nil after `seconds` (then it is killed).
    func stop(signal: Int32 = SIGTERM, seconds: Double = 10) -> Int32? {
        guard isRunning else { return status }
        kill(pid, signal)
        let deadline = Date().addingTimeInterval(seconds)
        while isRunning && Date() < deadline { usleep(20_000) }
        if isRunning {
            kill(pid, SIGKILL)
            while isRunning { usleep(20_000) }
            return nil
        }
        return status
    }
}
