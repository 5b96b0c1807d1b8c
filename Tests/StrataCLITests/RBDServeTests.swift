import Foundation
import Testing

/// The test cluster `scripts/check` starts (`scripts/ceph-test-cluster`).
let cephConfiguration = ProcessInfo.processInfo.environment["STRATA_CEPH_CONF"]

/// rbd disks through `strata serve` with real clients: qemu-img, qemu-io, fio, nbdcopy
/// and nbdinfo on the export; `rbd export` and qemu's own rbd driver read back the same
/// bytes; a stripe and a thin pool over RBD images; a mirror of an RBD image and a file
/// whose cluster dies mid-write.
@Suite(.serialized, .timeLimit(.minutes(5)),
       .enabled(if: cephConfiguration != nil, "needs a Ceph cluster: STRATA_CEPH_CONF (scripts/check starts one)"))
struct RBDServeTests {
    static let configuration = cephConfiguration
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    static func rbd(_ arguments: [String], configuration: String? = configuration) throws -> (Int32, String, String) {
        try runProgram("/usr/bin/rbd", ["-c", configuration ?? "/nonexistent"] + arguments)
    }

    static func uniqueImage(_ prefix: String) -> String { "rbd/\(prefix)-\(UUID().uuidString.prefix(8).lowercased())" }

    static func remove(_ images: String...) {
        for image in images { _ = try? rbd(["rm", "--no-progress", image]) }
    }

    static func sameFiles(_ first: String, _ second: String) -> Bool {
        (try? runProgram("/usr/bin/cmp", ["-s", first, second]))?.0 == 0
    }

    /// fio over NBD on `export`: random writes then a full verify, as terse output.
    static func fioVerify(_ socket: String, _ export: String, size: String, depth: Int, extra: [String] = [])
        throws -> (Int32, String, String) {
        try runProgram("/usr/bin/fio", ["--name=rbd", "--ioengine=nbd", "--uri=nbd+unix:///\(export)?socket=\(socket)",
                                        "--rw=randwrite", "--bs=4k", "--iodepth=\(depth)", "--size=\(size)",
                                        "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--output-format=terse"] + extra)
    }

    @Test func realClientsReadAndWriteAnRbdImageThroughStrata() throws {
        let image = Self.uniqueImage("serve")
        defer { Self.remove(image) }
        let (server, socket, _) = try ServeProcess.serving("""
            disks:
              - {name: r0, rbd: \(image), ceph-conf: \(Self.configuration!), size: 64MiB}
            exports:
              - {name: vol, provider: r0}
            """, prefix: "strata-rbd")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let uri = "nbd+unix:///vol?socket=\(socket)"
        let directory = server.directory

        // qemu-img in: 24 MiB of random bytes, then 40 MiB of nothing.
        let source = directory + "/source.img"
        #expect(try runProgram("/usr/bin/dd", ["if=/dev/urandom", "of=\(source)", "bs=1M", "count=24", "status=none"]).0 == 0)
        try FileHandle(forWritingAtPath: source)!.truncate(atOffset: 64 << 20)
        let convertIn = try runProgram("/usr/bin/qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, uri])
        #expect(convertIn.0 == 0, "\(convertIn)")
        let map = try runProgram("/usr/bin/nbdinfo", ["--map", uri])
        #expect(map.1.contains("data") && map.1.contains("hole,zero"), "\(map)")

        // qemu-io's patterns, and fio verifying at QD32 in the upper half.
        let io = try runProgram("/usr/bin/qemu-io", ["-f", "raw", "-c", "write -P 0x5a 28M 1M", "-c", "read -P 0x5a 28M 1M",
                                                     "-c", "read -P 0 30M 64k", uri])
        #expect(io.0 == 0 && !io.1.contains("Pattern verification failed"), "\(io)")
        let fio = try Self.fioVerify(socket, "vol", size: "16m", depth: 32, extra: ["--offset=40m"])
        #expect(fio.0 == 0 && !fio.1.contains("verify:") && !fio.2.contains("verify"), "\(fio)")

        // nbdcopy out, then the same bytes through `rbd export` and qemu's rbd driver.
        let copied = directory + "/copied.img"
        #expect(try runProgram("/usr/bin/nbdcopy", [uri, copied]).0 == 0)
        let head = try FileHandle(forReadingAtPath: copied)!.read(upToCount: 24 << 20)
        let sourceHead = try FileHandle(forReadingAtPath: source)!.read(upToCount: 24 << 20)
        let sameHead = head == sourceHead
        #expect(sameHead, "the first 24 MiB differ from what qemu-img wrote")
        #expect(server.stop() == 0)
        let exported = directory + "/exported.img"
        #expect(try Self.rbd(["export", "--no-progress", image, exported]).0 == 0)
        #expect(Self.sameFiles(copied, exported), "rbd export differs from what NBD read")
        let viaQemu = directory + "/qemu.img"
        let convertOut = try runProgram("/usr/bin/qemu-img", ["convert", "-f", "raw", "-O", "raw",
                                                              "rbd:\(image):conf=\(Self.configuration!)", viaQemu])
        #expect(convertOut.0 == 0, "\(convertOut)")
        #expect(Self.sameFiles(copied, viaQemu), "qemu's rbd driver reads other bytes")
    }

    @Test func aServerKilledWithSigkillLosesNoFlushedWriteAndItsLockIsTakenOverOnRestart() throws {
        let image = Self.uniqueImage("kill")
        defer { Self.remove(image) }
        let (server, socket, _) = try ServeProcess.serving("""
            disks:
              - {name: r0, rbd: \(image), ceph-conf: \(Self.configuration!), size: 16MiB}
            exports:
              - {name: vol, provider: r0}
            """, prefix: "strata-rbd-kill")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let uri = "nbd+unix:///vol?socket=\(socket)"
        // Written and flushed (through librbd's cache, write-back after the first flush),
        // then the server is killed with more writes in flight.
        let written = try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD()
            h.connect_uri("\(uri)")
            h.pwrite(b"\\x61" * 1048576, 0)
            h.flush()
            h.pwrite(b"\\x62" * 1048576, 4194304, nbd.CMD_FLAG_FUA)
            for i in range(64):
                h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"\\x63" * 65536)), 8388608 + i * 65536)
            print("ok", flush=True)
            """])
        #expect(written.0 == 0 && written.1.contains("ok"), "\(written)")
        #expect(server.stop(signal: SIGKILL) != nil)

        // The restart waits for the cluster to notice the dead holder, then takes the lock.
        let started = Date()
        let again = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: server.directory)
        #expect(again.waitForOutput("control socket", seconds: 90), "\(again.stderr)")
        #expect(Date().timeIntervalSince(started) < 60)
        let check = try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD()
            h.connect_uri("\(uri)")
            assert h.pread(1048576, 0) == b"\\x61" * 1048576
            assert h.pread(1048576, 4194304) == b"\\x62" * 1048576
            print("ok", flush=True)
            """])
        #expect(check.0 == 0 && check.1.contains("ok"), "\(check)")
        #expect(again.stop() == 0)
    }

    @Test func aStripeAndAThinPoolOverRbdImagesComeBackAfterARestart() throws {
        let (one, two, three) = (Self.uniqueImage("s1"), Self.uniqueImage("s2"), Self.uniqueImage("tp"))
        defer { Self.remove(one, two, three) }
        let conf = Self.configuration!
        let topology = """
            disks:
              - {name: r1, rbd: \(one), ceph-conf: \(conf), size: 32MiB}
              - {name: r2, rbd: \(two), ceph-conf: \(conf), size: 32MiB}
              - {name: r3, rbd: \(three), ceph-conf: \(conf), size: 64MiB}
            geoms:
              - {name: s0, class: stripe, consumers: [r1, r2], stripe-size: 64k}
              - {name: tp, class: thin, consumers: [r3], chunk-size: 64KiB, volumes: "v1:32m"}
            exports:
              - {name: striped, provider: s0}
              - {name: thin, provider: tp/v1}
            """
        let (server, socket, _) = try ServeProcess.serving(topology, prefix: "strata-rbd-stack")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        for export in ["striped", "thin"] {
            let fio = try Self.fioVerify(socket, export, size: "12m", depth: 16)
            #expect(fio.0 == 0 && !fio.1.contains("verify:") && !fio.2.contains("verify"), "\(export): \(fio)")
        }
        let directory = server.directory
        for export in ["striped", "thin"] {
            #expect(try runProgram("/usr/bin/nbdcopy", ["nbd+unix:///\(export)?socket=\(socket)", "\(directory)/\(export).before"]).0 == 0)
        }
        // Each image holds its share: the stripe's halves alternate between the two.
        #expect(server.stop() == 0)

        // Restarted, the stripe is made again and the thin pool found on its image.
        let again = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory)
        #expect(again.waitForOutput("control socket"), "\(again.stderr)")
        for export in ["striped", "thin"] {
            let after = "\(directory)/\(export).after"
            #expect(try runProgram("/usr/bin/nbdcopy", ["nbd+unix:///\(export)?socket=\(socket)", after]).0 == 0)
            #expect(Self.sameFiles("\(directory)/\(export).before", after), "\(export) changed across the restart")
        }
        #expect(again.stop() == 0)
        let halves = [one, two].map { "\(directory)/\($0.split(separator: "/").last!).img" }
        for (image, file) in zip([one, two], halves) {
            #expect(try Self.rbd(["export", "--no-progress", image, file]).0 == 0)
        }
        let striped = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/striped.before"))
        let first = try Data(contentsOf: URL(fileURLWithPath: halves[0]))
        let second = try Data(contentsOf: URL(fileURLWithPath: halves[1]))
        let interleaved = striped.prefix(65536) == first.prefix(65536)
            && striped[65536..<131072] == second.prefix(65536)
        #expect(interleaved, "the stripe's first two chunks are not on the two images in turn")
    }

    @Test func aMirrorOfAnRbdImageAndAFileKeepsServingWhenTheClusterDies() throws {
        let directory = NSTemporaryDirectory() + "strata-rbd-mirror-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = Self.repository + "/scripts/ceph-test-cluster"
        // A cluster of its own: its OSD is killed.
        let dying = try runProgram(script, ["start", directory + "/dying"])
        #expect(dying.0 == 0, "\(dying)")
        defer { _ = try? runProgram(script, ["stop", directory + "/dying"]) }
        let server = try RestartTests.serve("""
            writable-directories: [\(directory)]
            disks:
              - {name: r0, rbd: rbd/leg, ceph-conf: \(directory)/dying/ceph.conf, size: 64MiB, timeout: 3}
              - {name: f0, file: f0.img, size: 64MiB}
            geoms:
              - {name: m0, class: mirror, consumers: [r0, f0]}
            exports:
              - {name: vol, provider: m0}
            """, in: directory + "/serve")
        defer { _ = server.stop() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(try RestartTests.mirrorStatus(directory + "/serve").state == "COMPLETE")

        // fio writes 12 MiB at 2 MiB/s and then reads it all back and checks it; the
        // OSD is killed two seconds in.
        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        fio.arguments = ["--name=rbdmirror", "--ioengine=nbd", "--uri=nbd+unix:///vol?socket=\(directory)/serve/nbd.sock",
                         "--rw=randwrite", "--bs=16k", "--iodepth=8", "--size=12m", "--rate=2m", "--verify=crc32c",
                         "--verify_fatal=1", "--do_verify=1", "--output-format=terse"]
        let fioOutput = Pipe()
        fio.standardOutput = fioOutput
        fio.standardError = fioOutput
        try fio.run()
        defer { if fio.isRunning { fio.terminate() } }
        sleep(2)
        let osd = try String(contentsOfFile: directory + "/dying/run/osd.pid", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(kill(pid_t(osd)!, SIGKILL) == 0)
        let degraded = try CrossHostMirrorTests.waitForMirror(directory + "/serve", seconds: 30) { $0.state == "DEGRADED" }
        #expect(degraded.state == "DEGRADED" && degraded.components == ["r0:BROKEN", "f0:ACTIVE"], "\(degraded) \(server.stderr)")
        fio.waitUntilExit()
        let fioText = String(decoding: fioOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(fio.terminationStatus == 0 && !fioText.contains("verify:") && !fioText.contains("bad"), "\(fioText)")
        let log = server.stderr
        #expect(log.contains("rbd disk r0:") && log.contains("of image rbd/leg failed: ETIMEDOUT"), "\(log)")
        let status = try runProgram(strataBinary, ["status", "--control", directory + "/serve/control.sock"])
        #expect(status.1.contains("FAILING"), "\(status)")

        // A new cluster's image is inserted and rebuilt from the file.
        let fresh = try runProgram(script, ["start", directory + "/fresh"])
        #expect(fresh.0 == 0, "\(fresh)")
        defer { _ = try? runProgram(script, ["stop", directory + "/fresh"]) }
        let control = directory + "/serve/control.sock"
        let created = try runProgram(strataBinary, ["geom", "create", "rbd", "r1", "rbd=rbd/leg", "ceph-conf=\(directory)/fresh/ceph.conf",
                                                    "size=64MiB", "timeout=3", "--control", control])
        #expect(created.0 == 0, "\(created)")
        let inserted = try runProgram(strataBinary, ["mirror", "insert", "m0", "r1", "--control", control])
        #expect(inserted.0 == 0, "\(inserted)")
        let complete = try CrossHostMirrorTests.waitForMirror(directory + "/serve", seconds: 60) { $0.state == "COMPLETE" }
        #expect(complete.state == "COMPLETE" && complete.components == ["r1:ACTIVE", "f0:ACTIVE"], "\(complete) \(server.stderr)")
        #expect(server.stop() == 0, "\(server.stderr)")

        // The new image holds what the file holds, outside the mirror's metadata sector.
        #expect(try Self.rbd(["export", "--no-progress", "rbd/leg", directory + "/leg.img"],
                             configuration: directory + "/fresh/ceph.conf").0 == 0)
        let size = (64 << 20) - 512
        let file = try Data(contentsOf: URL(fileURLWithPath: directory + "/serve/f0.img")).prefix(size)
        let leg = try Data(contentsOf: URL(fileURLWithPath: directory + "/leg.img")).prefix(size)
        let same = file == leg
        #expect(same, "the rebuilt image differs from the file")
    }
}
