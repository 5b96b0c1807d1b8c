import Foundation
import Testing

/// Failing components under real load through `strata serve`: a mirror absorbs read
/// and write failures and delays under fio with verification, is rebuilt and ends with
/// identical copies; a component whose image file is deleted mid-run is recreated and
/// rebuilt on restart; a stripe or concat that loses a component fails its requests
/// cleanly while the server goes on serving everything else.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct FaultTests {
    func nop(_ control: String, _ name: String, _ settings: [String]) throws {
        let result = try runProgram(strataBinary, ["nop", "configure", name] + settings + ["--control", control])
        #expect(result.0 == 0, "\(result)")
    }

    func mirrorStatus(_ control: String, _ name: String) throws -> [String: Any] {
        let result = try runProgram(strataBinary, ["status", "--json", "--control", control])
        let object = try JSONSerialization.jsonObject(with: Data(result.1.utf8)) as? [String: Any]
        return ((object?["geoms"] as? [[String: Any]]) ?? []).first { $0["name"] as? String == name } ?? [:]
    }

    func componentStates(_ status: [String: Any]) -> [String] {
        (status["components"] as? [[String: Any]] ?? []).map { "\($0["name"]!):\($0["state"]!)" }
    }

    /// Polls the mirror's status until it is COMPLETE or `seconds` pass; returns the last.
    func waitForComplete(_ control: String, _ name: String, seconds: Double = 60) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(seconds)
        var status = try mirrorStatus(control, name)
        while status["state"] as? String != "COMPLETE" && Date() < deadline {
            usleep(100_000)
            status = try mirrorStatus(control, name)
        }
        return status
    }

    /// Writes, in `directory`, a fio job that fills 16 MiB of export `vol` with 4 KiB
    /// random writes checked by crc32c, then verifies them; returns its path.
    func writeVerifyJob(in directory: String, socket: String, options: [String]) throws -> String {
        let job = ([
            "[global]", "ioengine=nbd", "uri=nbd+unix:///vol?socket=\(socket)", "rw=randwrite", "bs=4k", "size=16m",
            "verify=crc32c", "verify_fatal=1", "verify_state_save=0", "do_verify=1",
        ] + options + ["[writes-then-verify]"]).joined(separator: "\n")
        let path = directory + "/verify.fio"
        try job.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Whether images d0.img ... of `directory` hold the same bytes outside their last
    /// (metadata) sector.
    func copiesMatch(in directory: String, count: Int, size: Int) throws -> Bool {
        let copies = try (0..<count).map { try Data(contentsOf: URL(fileURLWithPath: "\(directory)/d\($0).img")).prefix(size - 512) }
        return copies.allSatisfy { $0 == copies[0] }
    }

    /// fio writes and verifies (crc32c) through NBD while one component fails a third
    /// of its reads and writes and another holds every request 2 ms.
    @Test func aMirrorUnderFioWithFailingAndSlowComponentsLosesNothingAndIsRebuilt() throws {
        let size = 32 << 20
        let (server, socket, control) = try ServeProcess.serving("""
            disks:
              - {name: d0, file: d0.img, size: 32MiB}
              - {name: d1, file: d1.img, size: 32MiB}
              - {name: d2, file: d2.img, size: 32MiB}
            geoms:
              - {name: n0, class: nop, consumers: [d0]}
              - {name: n1, class: nop, consumers: [d1]}
              - {name: m0, class: mirror, consumers: [n0, n1, d2]}
            exports:
              - {name: vol, provider: m0}
            """, prefix: "strata-fault")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        try nop(control, "n0", ["--read-fail-percent", "30", "--write-fail-percent", "30"])
        try nop(control, "n1", ["--delay-ms", "2"])
        let jobFile = try writeVerifyJob(in: server.directory, socket: socket, options: ["iodepth=16"])
        let fio = try runProgram("/usr/bin/fio", ["--output-format=terse", jobFile])
        #expect(fio.0 == 0, "fio: \(fio.1) \(fio.2)")
        #expect(!fio.2.contains("verify"), "verify errors: \(fio.2)")
        let degraded = try mirrorStatus(control, "m0")
        #expect(degraded["state"] as? String == "DEGRADED", "\(degraded)")
        #expect(componentStates(degraded) == ["n0:BROKEN", "n1:ACTIVE", "d2:ACTIVE"], "\(degraded)")

        // Repaired and rebuilt online, the mirror is whole again.
        try nop(control, "n0", ["--read-fail-percent", "0", "--write-fail-percent", "0"])
        try nop(control, "n1", ["--delay-ms", "0"])
        let rebuild = try runProgram(strataBinary, ["mirror", "rebuild", "m0", "n0", "--control", control])
        #expect(rebuild.0 == 0, "\(rebuild)")
        let status = try waitForComplete(control, "m0")
        #expect(status["state"] as? String == "COMPLETE", "\(status)")
        // fio's verify pass again, reading only, through whichever copies the mirror picks.
        let reread = try runProgram("/usr/bin/fio", ["--output-format=terse", "--rw=randread", "--verify_only", jobFile])
        #expect(reread.0 == 0 && !reread.2.contains("verify"), "\(reread.1) \(reread.2)")
        #expect(server.stop() == 0)

        // Every copy holds the same bytes outside its metadata sector.
        #expect(try copiesMatch(in: server.directory, count: 3, size: size), "the rebuilt copies differ")
    }

    /// A stripe and a concat each lose a component to EIO: their requests fail at once
    /// with an error, nothing hangs, and the server's other export keeps serving.
    @Test func aStripeOrConcatLosingAComponentFailsCleanlyAndOtherExportsServe() throws {
        let (server, socket, control) = try ServeProcess.serving("""
            disks:
              - {name: a0, memory: 8MiB}
              - {name: a1, memory: 8MiB}
              - {name: b0, memory: 8MiB}
              - {name: b1, memory: 8MiB}
              - {name: other, memory: 8MiB}
            geoms:
              - {name: fa, class: nop, consumers: [a1]}
              - {name: fb, class: nop, consumers: [b0]}
              - {name: s0, class: stripe, consumers: [a0, fa], stripe-size: 64KiB}
              - {name: c0, class: concat, consumers: [fb, b1]}
            exports:
              - {name: striped, provider: s0}
              - {name: joined, provider: c0}
              - {name: other, provider: other}
            """, prefix: "strata-lose")
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        try nop(control, "fa", ["--read-fail-percent", "100", "--write-fail-percent", "100"])
        try nop(control, "fb", ["--read-fail-percent", "100", "--write-fail-percent", "100"])
        let script = """
            import nbd, sys, time
            socket = sys.argv[1]
            def attempt(export, call):
                h = nbd.NBD()
                h.connect_uri("nbd+unix:///" + export + "?socket=" + socket)
                started = time.monotonic()
                try:
                    call(h)
                    outcome = "ok"
                except nbd.Error as error:
                    outcome = "EIO" if str(error.errno) in ("5", "EIO") else "errno %s" % error.errno
                return outcome, time.monotonic() - started
            results = {
                # The second stripe (64 KiB on) is on the failing component; the first 8 MiB of the concat is.
                "striped read": attempt("striped", lambda h: h.pread(65536, 65536)),
                "striped write": attempt("striped", lambda h: h.pwrite(b"x" * 131072, 0)),
                "striped good half": attempt("striped", lambda h: h.pread(65536, 0)),
                "joined read": attempt("joined", lambda h: h.pread(4096, 0)),
                "joined write": attempt("joined", lambda h: h.pwrite(b"y" * 4096, 4096)),
                "joined good half": attempt("joined", lambda h: h.pwrite(b"y" * 4096, 8 << 20)),
                "other": attempt("other", lambda h: h.pwrite(b"z" * 65536, 0)),
            }
            for name, (outcome, seconds) in results.items():
                print("%s: %s in %.3f s" % (name, outcome, seconds))
            """
        let result = try runProgram("/usr/bin/python3", ["-c", script, socket])
        let lines = result.1
        for failing in ["striped read", "striped write", "joined read", "joined write"] {
            #expect(lines.contains("\(failing): EIO"), "\(failing) must fail with EIO: \(lines) \(result.2)")
        }
        for working in ["striped good half", "joined good half", "other"] {
            #expect(lines.contains("\(working): ok"), "\(working) must work: \(lines) \(result.2)")
        }
        // Nothing waited: each answer came well within a second.
        let slow = lines.split(separator: "\n").filter { line in
            guard let seconds = line.split(separator: " ").dropLast().last.flatMap({ Double($0) }) else { return false }
            return seconds > 1
        }
        #expect(slow.isEmpty, "slow answers: \(slow)")
    }
    /// A component's image file is deleted while fio writes through the mirror. The
    /// open descriptor keeps the deleted file working, as a loop device would, so
    /// nothing fails and nothing is lost; on restart the topology file recreates the
    /// missing image, the mirror rebuilds it from the survivor, and the copies match.
    @Test func aComponentWhoseFileIsDeletedMidRunIsRebuiltOnRestart() throws {
        let size = 16 << 20
        let (server, socket, control) = try ServeProcess.serving("""
            disks:
              - {name: d0, file: d0.img, size: 16MiB}
              - {name: d1, file: d1.img, size: 16MiB}
            geoms:
              - {name: m0, class: mirror, consumers: [d0, d1]}
            exports:
              - {name: vol, provider: m0}
            """, prefix: "strata-unlink")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        // 4,096 writes at 2,000 a second: the deletion lands about a quarter of the way in.
        let jobFile = try writeVerifyJob(in: server.directory, socket: socket, options: ["iodepth=8", "rate_iops=2000"])
        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        fio.arguments = ["--output-format=terse", jobFile]
        let fioErrors = Pipe()
        fio.standardOutput = FileHandle.nullDevice
        fio.standardError = fioErrors
        try fio.run()
        usleep(500_000)
        #expect(fio.isRunning, "fio finished before the file was deleted")
        try FileManager.default.removeItem(atPath: server.directory + "/d1.img")
        let errors = String(decoding: fioErrors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        fio.waitUntilExit()
        #expect(fio.terminationStatus == 0 && !errors.contains("verify"), "fio: \(errors)")
        #expect(try mirrorStatus(control, "m0")["state"] as? String == "COMPLETE")
        #expect(server.stop() == 0)

        let restarted = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: server.directory)
        defer { if restarted.process.isRunning { _ = restarted.stop() } }
        #expect(restarted.waitForOutput("control socket"), "\(restarted.stderr)")
        let status = try waitForComplete(control, "m0")
        #expect(restarted.stderr.contains("inserted d1 from the topology file; rebuilding it"), "\(restarted.stderr)")
        #expect(status["state"] as? String == "COMPLETE", "\(status)")
        let reread = try runProgram("/usr/bin/fio", ["--output-format=terse", "--rw=randread", "--verify_only", "--rate_iops=0", jobFile])
        #expect(reread.0 == 0 && !reread.2.contains("verify"), "\(reread.1) \(reread.2)")
        #expect(restarted.stop() == 0)
        #expect(try copiesMatch(in: server.directory, count: 2, size: size), "the recreated copy differs from the survivor")
    }
}
