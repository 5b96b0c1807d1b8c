import Foundation
import Testing

/// The remote disk through `strata serve`: exports of nbdkit, qemu-nbd and another strata
/// (over TLS) served again, with real clients on top; a backend that goes away and comes
/// back within the reconnect timeout costs no request, one that stays away fails them
/// with EIO, and the link comes back by itself.
@Suite(.serialized, .timeLimit(.minutes(4)),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/nbdkit")
                    || FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdkit"), "needs nbdkit"))
struct RemoteDiskTests {
    /// A program running in the background until stopped.
    final class Background {
        let process = Process()
        init(_ path: String, _ arguments: [String]) throws {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
        }
        /// Stops it with `signal`: SIGKILL by default (qemu-nbd does not always end on
        /// SIGTERM); nbdkit answers what comes meanwhile with ESHUTDOWN on SIGTERM.
        func stop(signal: Int32 = SIGKILL) {
            guard process.isRunning else { return }
            kill(process.processIdentifier, signal)
            process.waitUntilExit()
        }
        deinit { stop() }
    }

    static var nbdkitPath: String {
        FileManager.default.isExecutableFile(atPath: "/usr/sbin/nbdkit") ? "/usr/sbin/nbdkit" : "/usr/bin/nbdkit"
    }

    /// nbdkit serving `plugin` on `socket`, once it answers.
    static func nbdkit(_ socket: String, _ plugin: [String]) throws -> Background {
        try? FileManager.default.removeItem(atPath: socket)
        let server = try Background(nbdkitPath, ["--foreground", "-U", socket] + plugin)
        #expect(waitUntilServed("nbd+unix:///?socket=\(socket)"), "nbdkit \(plugin) did not start")
        return server
    }

    static func waitUntilServed(_ uri: String) -> Bool {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if (try? runProgram("/usr/bin/nbdinfo", ["--size", uri]))?.0 == 0 { return true }
            usleep(50_000)
        }
        return false
    }

    static func python(_ script: String) throws -> (Int32, String, String) {
        try runProgram("/usr/bin/python3", ["-c", "import nbd, sys, time\n" + script])
    }

    /// A new directory of its own in the temporary folder, named after the test; the
    /// test removes it.
    static func makeDirectory(_ prefix: String) throws -> String {
        let directory = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    static func status(_ directory: String) throws -> String {
        try runProgram(strataBinary, ["status", "--control", directory + "/control.sock"]).1
    }

    @Test func nbdkitAndQemuNbdExportsServedAgainWithRealClients() throws {
        let directory = try Self.makeDirectory("strata-remote")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let kit = try Self.nbdkit(directory + "/kit.sock", ["memory", "64M"])
        defer { kit.stop() }
        #expect(FileManager.default.createFile(atPath: directory + "/q.img", contents: nil))
        try FileHandle(forWritingAtPath: directory + "/q.img")!.truncate(atOffset: 32 << 20)
        let qemu = try Background("/usr/bin/qemu-nbd", ["--socket", directory + "/q.sock", "--format", "raw", "--persistent",
                                                        "--shared", "4", "--cache", "none", "--aio", "threads", directory + "/q.img"])
        defer { qemu.stop() }
        #expect(Self.waitUntilServed("nbd+unix:///?socket=\(directory)/q.sock"))
        let server = try RestartTests.serve("""
            disks:
              - {name: kit, remote: "nbd+unix:///?socket=\(directory)/kit.sock", connections: 2}
              - {name: q, remote: "nbd+unix:///?socket=\(directory)/q.sock"}
            exports:
              - {name: kit, provider: kit}
              - {name: q, provider: q}
            """, in: directory)
        defer { _ = server.stop() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        // Writes and reads through the remote disk, FUA and flush, trim; holes passed up.
        let io = try runProgram("/usr/bin/qemu-io", ["-f", "raw", "nbd+unix:///kit?socket=\(directory)/nbd.sock",
                                                     "-c", "write -P 0x5c 1M 3M", "-c", "write -f -P 0x5d 8M 64k", "-c", "flush",
                                                     "-c", "read -P 0x5c 1M 3M", "-c", "read -P 0x5d 8M 64k", "-c", "read -P 0 0 1M",
                                                     "-c", "discard 2M 1M"])
        #expect(io.0 == 0 && !io.1.contains("verification failed") && !io.1.contains("error"), "\(io)")
        let map = try runProgram("/usr/bin/nbdinfo", ["--map", "nbd+unix:///kit?socket=\(directory)/nbd.sock"])
        #expect(map.1.contains("0     1048576    3  hole,zero") && map.1.contains("1048576     1048576    0  data"), "\(map)")
        // The same bytes reach nbdkit itself.
        let direct = try Self.python("""
            h = nbd.NBD(); h.connect_uri("nbd+unix:///?socket=\(directory)/kit.sock")
            assert h.pread(4096, 1 << 20) == b"\\x5c" * 4096 and h.pread(4096, 8 << 20) == b"\\x5d" * 4096
            print("ok")
            """)
        #expect(direct.1.contains("ok"), "\(direct)")
        // qemu-nbd's export: what is written through strata is in its image.
        let mirrored = try Self.python("""
            h = nbd.NBD(); h.connect_uri("nbd+unix:///q?socket=\(directory)/nbd.sock")
            h.pwrite(b"\\x71" * 65536, 4 << 20); h.flush(); h.shutdown()
            q = nbd.NBD(); q.connect_uri("nbd+unix:///?socket=\(directory)/q.sock")
            assert q.pread(65536, 4 << 20) == b"\\x71" * 65536
            print("ok")
            """)
        #expect(mirrored.1.contains("ok"), "\(mirrored)")
        let status = try Self.status(directory)
        #expect(status.contains("kit") && status.contains("CONNECTED") && status.contains("latency"), "\(status)")
        #expect(server.stop() == 0)
    }

    @Test func anotherStrataOverTLSWithMultipleConnections() throws {
        let directory = try Self.makeDirectory("strata-remotetls")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try TLSTests.makeCertificates(in: directory + "/keys")
        let backend = try RestartTests.serve("""
            tls: require
            tls-psk-file: \(directory)/keys/keys.psk
            disks:
              - {name: m0, memory: 32MiB}
            exports:
              - {name: vol, provider: m0, tls-allow: [alice]}
            """, in: directory + "/backend")
        defer { _ = backend.stop() }
        #expect(backend.waitForOutput("control socket"), "\(backend.stderr)")
        let front = try RestartTests.serve("""
            disks:
              - name: r0
                remote: "nbds+unix://alice@/vol?socket=\(directory)/backend/nbd.sock"
                tls-psk-file: \(directory)/keys/keys.psk
                connections: 3
            exports:
              - {name: vol, provider: r0}
            """, in: directory + "/front")
        defer { _ = front.stop() }
        #expect(front.waitForOutput("control socket"), "\(front.stderr)")
        let copied = try Self.python("""
            import os
            data = os.urandom(3 << 20)
            h = nbd.NBD(); h.connect_uri("nbd+unix:///vol?socket=\(directory)/front/nbd.sock")
            for i in range(48): h.aio_pwrite(data[i * 65536:(i + 1) * 65536], i * 65536)
            while h.aio_in_flight() > 0: h.poll(-1)
            h.flush()
            assert h.pread(3 << 20, 0) == data
            print("ok")
            """)
        #expect(copied.1.contains("ok"), "\(copied)")
        // The backend sees three TLS connections from alice.
        let metrics = try runProgram("/usr/bin/curl", ["-s", "--unix-socket", directory + "/backend/control.sock", "http://strata/metrics"])
        #expect(metrics.1.contains("strata_nbd_export_connections{export=\"vol\"} 3"), "\(metrics.1.split(separator: "\n").filter { $0.contains("connections") })")
        #expect(backend.stderr.components(separatedBy: "tls-client=alice").count - 1 >= 3, "\(backend.stderr)")
        // Wrong credentials stop the start, naming the disk's key.
        let wrong = try RestartTests.serve("""
            disks:
              - {name: r0, remote: "nbds+unix://alice@/vol?socket=\(directory)/backend/nbd.sock", tls-psk-file: \(directory)/keys/wrong.psk}
            """, in: directory + "/wrong")
        #expect(wrong.waitForExit() == 1)
        #expect(wrong.stderr.contains("disks[0].remote") && wrong.stderr.contains("cannot be opened"), "\(wrong.stderr)")
        #expect(front.stop() == 0)
    }

    /// Over TCP, with certificates checked both ways: the front presents the client
    /// certificate the backend's CA signed, and checks the backend's against the same CA
    /// and the name it connected to (localhost). fio verifies what it wrote.
    @Test func anotherStrataOverTCPWithCertificatesCheckedBothWays() throws {
        let directory = try Self.makeDirectory("strata-remotetcp")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try TLSTests.makeCertificates(in: directory + "/keys")
        let backend = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory + "/backend", files: ["t.yaml": """
            listen: [tcp://127.0.0.1:0]
            control: \(directory)/backend/control.sock
            tls: require
            tls-certificates: \(directory)/keys/pki
            tls-verify-peer: true
            disks:
              - {name: m0, memory: 64MiB}
            exports:
              - {name: vol, provider: m0, tls-allow: ["\(TLSTests.clientName)"]}
            """])
        defer { _ = backend.stop() }
        #expect(backend.waitForOutput("control socket"), "\(backend.stderr)")
        let port = try #require(backend.tcpPort)
        let front = try RestartTests.serve("""
            disks:
              - {name: r0, remote: "nbds://localhost:\(port)/vol", tls-certificates: \(directory)/keys/client}
            exports:
              - {name: vol, provider: r0}
            """, in: directory + "/front")
        defer { _ = front.stop() }
        #expect(front.waitForOutput("control socket"), "\(front.stderr)")
        let fio = try runProgram("/usr/bin/fio", ["--name=verify", "--ioengine=nbd", "--uri=nbd+unix:///vol?socket=\(directory)/front/nbd.sock",
                                                  "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16m", "--verify=crc32c",
                                                  "--do_verify=1", "--output-format=terse"])
        #expect(fio.0 == 0 && !fio.1.contains("verify:") && !fio.2.contains("bad"), "\(fio)")
        #expect(backend.stderr.contains("tls-client=\(TLSTests.clientName)"), "\(backend.stderr)")
        // A front with the right client certificate but another CA refuses the backend's
        // certificate, and says so.
        let keys = directory + "/keys"
        try FileManager.default.createDirectory(atPath: keys + "/distrust", withIntermediateDirectories: true)
        for file in ["client-cert.pem", "client-key.pem"] {
            try FileManager.default.copyItem(atPath: keys + "/client/" + file, toPath: keys + "/distrust/" + file)
        }
        try FileManager.default.copyItem(atPath: keys + "/rogue-ca/ca-cert.pem", toPath: keys + "/distrust/ca-cert.pem")
        let untrusting = try RestartTests.serve("""
            disks:
              - {name: r0, remote: "nbds://localhost:\(port)/vol", tls-certificates: \(keys)/distrust}
            """, in: directory + "/untrusting")
        #expect(untrusting.waitForExit() == 1)
        #expect(untrusting.stderr.contains("disks[0].remote") && untrusting.stderr.contains("cannot be opened")
                && untrusting.stderr.contains("CERTIFICATE_VERIFY_FAILED"), "\(untrusting.stderr)")
        #expect(front.stop() == 0)
    }

    @Test func aLostBackendIsWaitedForThenFailedThenFoundAgain() throws {
        let directory = try Self.makeDirectory("strata-reconnect")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/back.img"
        #expect(FileManager.default.createFile(atPath: image, contents: nil))
        try FileHandle(forWritingAtPath: image)!.truncate(atOffset: 16 << 20)
        let socket = directory + "/kit.sock"
        var kit = try Self.nbdkit(socket, ["file", image])
        let server = try RestartTests.serve("""
            disks:
              - {name: r0, remote: "nbd+unix:///?socket=\(socket)", reconnect-timeout: 3}
            exports:
              - {name: vol, provider: r0}
            """, in: directory)
        defer { _ = server.stop() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")

        // Away for about 1.5 s: the write waits, then lands.
        kit.stop()
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        writer.arguments = ["-c", """
            import nbd, time
            h = nbd.NBD(); h.connect_uri("nbd+unix:///vol?socket=\(directory)/nbd.sock")
            h.pwrite(b"\\x44" * 65536, 0); h.flush()
            print("written", flush=True)
            """]
        let output = Pipe()
        writer.standardOutput = output
        try writer.run()
        usleep(1_500_000)
        #expect(try Self.status(directory).contains("RECONNECTING"))
        kit = try Self.nbdkit(socket, ["file", image])
        writer.waitUntilExit()
        #expect(String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).contains("written"))
        #expect(try FileHandle(forReadingAtPath: image)!.read(upToCount: 4) == Data([0x44, 0x44, 0x44, 0x44]))
        #expect(server.stderr.contains("reconnected") && server.stderr.contains("sent again"), "\(server.stderr)")

        // Away for longer than the timeout: EIO, and at once after that; then back.
        kit.stop()
        let failed = try Self.python("""
            h = nbd.NBD(); h.connect_uri("nbd+unix:///vol?socket=\(directory)/nbd.sock")
            start = time.time()
            try:
                h.pwrite(b"\\x45" * 4096, 0)
                print("written")
            except nbd.Error as e:
                print("failed", e.errno, round(time.time() - start))
            start = time.time()
            try:
                h.pread(4096, 0)
            except nbd.Error as e:
                print("then", e.errno, round(time.time() - start))
            """)
        #expect(failed.1.contains("failed EIO") && failed.1.contains("then EIO 0"), "\(failed)")
        #expect(try Self.status(directory).contains("FAILED"))
        kit = try Self.nbdkit(socket, ["file", image])
        defer { kit.stop() }
        let deadline = Date().addingTimeInterval(10)
        while !(try Self.status(directory).contains("CONNECTED")) && Date() < deadline { usleep(100_000) }
        let again = try Self.python("""
            h = nbd.NBD(); h.connect_uri("nbd+unix:///vol?socket=\(directory)/nbd.sock")
            h.pwrite(b"\\x46" * 4096, 0); h.flush(); assert h.pread(4096, 0) == b"\\x46" * 4096
            print("ok")
            """)
        #expect(again.1.contains("ok"), "\(again)")
        #expect(server.stop() == 0)
    }

    @Test func badRemoteEntriesAreReportedWithTheirKey() throws {
        let directory = try Self.makeDirectory("strata-remotebad")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for (disk, message) in [
            ("{name: r0, remote: \"http://example.com/x\"}", "disks[0].remote: 'http://example.com/x': is not nbd://"),
            ("{name: r0, remote: \"nbds://127.0.0.1:1/x\"}", "disks[0].remote: 'nbds://127.0.0.1:1/x': asks for TLS"),
            ("{name: r0, remote: \"nbd+unix:///x?socket=\(directory)/none.sock\"}", "cannot be opened"),
        ] {
            let server = try RestartTests.serve("disks:\n  - \(disk)\n", in: directory)
            #expect(server.waitForExit() == 1, "\(disk)")
            #expect(server.stderr.contains(message), "\(disk): \(server.stderr)")
        }
    }

    /// Remote disks are read by the classes tasting them (label, part) the moment each is
    /// added. A read held before the disk's connections were in service was never sent,
    /// and the next disk waited for ever on the topology's lock that the taste held (a
    /// race: seen under load, with the disk added before its connections were adopted).
    @Test func manyRemoteDisksAreTastedAndTheTopologyBuilds() throws {
        let directory = try Self.makeDirectory("strata-remotetaste")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let kit = try Self.nbdkit(directory + "/kit.sock", ["memory", "64M"])
        defer { kit.stop() }
        let disks = (0..<16).map { "  - {name: r\($0), remote: \"nbd+unix:///?socket=\(directory)/kit.sock\"}" }
        let config = directory + "/bench.yaml"
        try ("disks:\n" + disks.joined(separator: "\n") + "\n").write(toFile: config, atomically: true, encoding: .utf8)
        // timeout(1): a build that hangs fails the test with status 124 instead of holding it.
        let result = try runProgram("/usr/bin/timeout", ["60", strataBinary, "bench", "--config", config, "--provider", "r15",
                                                         "--rw", "randread", "--bs", "4K", "--iodepth", "4", "--seconds", "0.3", "--json"])
        #expect(result.0 == 0, "\(result)")
    }
}
