import Foundation
import Testing

/// The thin class through `strata serve`: its verbs on the command line, real clients on
/// exported volumes and snapshots, a restart, and kill -9 under fio.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct ThinVerbTests {
    static let pool = """
        disks:
          - {name: d0, file: pool.img, size: 96MiB}
        geoms:
          - {name: tp, class: thin, consumers: [d0], volumes: "vm1:32m, vm2:32m"}
        exports:
          - {name: vol1, provider: tp/vm1}
          - {name: vol2, provider: tp/vm2}
        """

    static func serve(in directory: String) throws -> ServeProcess {
        try RestartTests.serve(pool, in: directory)
    }

    static func strata(_ arguments: [String], _ directory: String) throws -> (Int32, String, String) {
        // A class verb's answer as JSON, to be read here.
        try runProgram(strataBinary, arguments + (arguments.first == "thin" ? ["--json"] : []) + ["--control", directory + "/control.sock"])
    }

    static func python(_ script: String) throws -> (Int32, String, String) {
        try runProgram("/usr/bin/python3", ["-c", "import nbd, sys, hashlib\n" + script])
    }

    static func uri(_ export: String, _ directory: String) -> String { "nbd+unix:///\(export)?socket=\(directory)/nbd.sock" }

    /// The SHA-256 of a whole export, read by nbdcopy.
    static func digest(_ export: String, _ directory: String) throws -> String {
        let result = try runProgram("/bin/sh", ["-c", "nbdcopy '\(uri(export, directory))' - | sha256sum"])
        #expect(result.0 == 0, "\(result)")
        return String(result.1.prefix(64))
    }

    static func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    /// A second server given the same pool image stops at once, naming the first, and
    /// writes nothing: no second metadata thread ever commits over the first one's.
    @Test func aSecondServerOfTheSamePoolStopsAtOnceAndTheFirstGoesOn() throws {
        let first = try RestartTests.serve(Self.pool, in: NSTemporaryDirectory() + "strata-thin-\(UUID().uuidString.prefix(8))")
        defer { first.removeDirectory() }
        #expect(first.waitForOutput("control socket"), "\(first.stderr)")
        let write = try Self.python("""
            h = nbd.NBD(); h.connect_uri("\(Self.uri("vol1", first.directory))")
            h.pwrite(bytes([3]) * (1 << 20), 65536); h.flush(); h.shutdown()
            """)
        #expect(write.0 == 0, "\(write)")
        #expect(try Self.strata(["thin", "snapshot", "tp", "vm1", "s1"], first.directory).0 == 0)
        let image = URL(fileURLWithPath: first.directory + "/pool.img")
        let before = try Data(contentsOf: image)
        let second = try RestartTests.serve("""
            disks:
              - {name: d0, file: \(first.directory)/pool.img}
            geoms:
              - {name: tp, class: thin, consumers: [d0], volumes: "vm1:32m, vm9:1g"}
            exports:
              - {name: vol1, provider: tp/vm1}
            """, in: NSTemporaryDirectory() + "strata-thin-second-\(UUID().uuidString.prefix(8))")
        defer {
            if second.process.isRunning { _ = second.stop(signal: SIGKILL) }
            second.removeDirectory()
        }
        #expect(second.waitForExit() == 1, "\(second.stdout)")
        #expect(second.stderr.contains("is locked by PID \(first.process.processIdentifier) (strata)"), "\(second.stderr)")
        #expect(try Data(contentsOf: image) == before, "the second server wrote to the pool")
        // The first server goes on: its volume, snapshot and metadata as they were.
        let check = try Self.strata(["thin", "check", "tp"], first.directory)
        #expect(check.0 == 0 && (Self.json(check.1)["problems"] as? [Any])?.isEmpty == true, "\(check)")
        let list = try Self.strata(["thin", "list", "tp"], first.directory)
        let names = (Self.json(list.1)["volumes"] as? [[String: Any]])?.compactMap { $0["name"] as? String }
        #expect(names == ["vm1", "vm2", "s1"], "\(list)")
        let read = try Self.python("""
            h = nbd.NBD(); h.connect_uri("\(Self.uri("vol1", first.directory))")
            assert h.pread(1 << 20, 65536) == bytes([3]) * (1 << 20); h.shutdown()
            """)
        #expect(read.0 == 0, "\(read)")
        #expect(first.stop() == 0)
    }

    @Test func verbsSnapshotsAndExportsWithRealClientsAndARestart() throws {
        let directory = NSTemporaryDirectory() + "strata-thin-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var server = try Self.serve(in: directory)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        // A client writes the first 2 MiB, then a snapshot, then chunks 4 and 100 change.
        let first = try Self.python("""
            h = nbd.NBD(); h.connect_uri("\(Self.uri("vol1", directory))")
            h.pwrite(bytes([7]) * (2 << 20), 0); h.flush(); h.shutdown()
            """)
        #expect(first.0 == 0, "\(first)")
        let snapshot = try Self.strata(["thin", "snapshot", "tp", "vm1", "s1"], directory)
        #expect(snapshot.0 == 0 && Self.json(snapshot.1)["kind"] as? String == "snapshot", "\(snapshot)")
        let second = try Self.python("""
            h = nbd.NBD(); h.connect_uri("\(Self.uri("vol1", directory))")
            h.pwrite(bytes([9]) * 4096, 4 * 65536); h.pwrite(bytes([9]) * 4096, 100 * 65536); h.flush(); h.shutdown()
            """)
        #expect(second.0 == 0, "\(second)")
        // The snapshot, exported at run time, still reads the first data, read-only.
        let added = try Self.strata(["export", "add", "snap1", "tp/s1"], directory)
        #expect(added.0 == 0, "\(added)")
        let snapshotRead = try Self.python("""
            h = nbd.NBD(); h.connect_uri("\(Self.uri("snap1", directory))")
            print(h.is_read_only(), h.pread(4096, 4 * 65536) == bytes([7]) * 4096, h.pread(4096, 100 * 65536) == bytes(4096))
            """)
        #expect(snapshotRead.1.contains("True True True"), "\(snapshotRead)")
        let map = try runProgram("/usr/bin/nbdinfo", ["--map", Self.uri("snap1", directory)])
        #expect(map.0 == 0 && map.1.contains("2097152    0  data") && map.1.contains("3  hole,zero"), "\(map)")
        // qemu-img sees a 32 MiB image with 2 MiB allocated.
        let info = try runProgram("/usr/bin/qemu-img", ["map", "--output=json", "--image-opts",
                                                       "driver=nbd,path=\(directory)/nbd.sock,export=snap1"])
        #expect(info.0 == 0 && info.1.contains("\"length\": 2097152, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true"), "\(info)")
        // A clone of the snapshot, and the list.
        #expect(try Self.strata(["thin", "clone", "tp", "s1", "c1"], directory).0 == 0)
        let list = try Self.strata(["thin", "list", "tp"], directory)
        let volumes = (Self.json(list.1)["volumes"] as? [[String: Any]]) ?? []
        #expect(volumes.map { $0["name"] as? String } == ["vm1", "vm2", "s1", "c1"], "\(list)")
        #expect(volumes.first { $0["name"] as? String == "c1" }?["parent"] as? String == "s1", "\(list)")
        #expect(volumes.first { $0["name"] as? String == "vm1" }?["allocated"] as? Int == (2 << 20) + 65536, "\(list)")
        // Without --json: the pool's fields, then a table of volumes, sizes in units.
        let text = try runProgram(strataBinary, ["thin", "list", "tp", "--control", directory + "/control.sock"])
        let lines = text.1.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        #expect(lines.contains("chunk-size: 64KiB") && lines.contains("state: OK") && lines.contains("volumes:"), "\(text)")
        #expect(lines.contains("NAME ALLOCATED CREATED KIND PARENT PROVIDER SHARED SIZE"), "\(text)")
        #expect(lines.contains { $0.hasPrefix("vm1 2.1MiB ") && $0.hasSuffix(" volume - tp/vm1 1.9MiB 32MiB") }, "\(text)")
        #expect(lines.contains { $0.hasPrefix("c1 2MiB ") && $0.hasSuffix(" volume s1 tp/c1 2MiB 32MiB") }, "\(text)")
        // Refusals, each with its reason.
        let holder = try Self.python("""
            import time
            h = nbd.NBD(); h.connect_uri("\(Self.uri("vol1", directory))")
            print("open", flush=True)
            r = __import__("subprocess").run(["\(strataBinary)", "thin", "delete", "tp", "vm1", "--control", "\(directory)/control.sock"], capture_output=True, text=True)
            print(r.returncode, r.stderr)
            """)
        #expect(holder.1.contains("1 ") && holder.1.contains("is open") && holder.1.contains("--force"), "\(holder)")
        let duplicate = try Self.strata(["thin", "create", "tp", "vm2", "--size", "1g"], directory)
        #expect(duplicate.0 == 1 && duplicate.2.contains("has a volume or snapshot named vm2"), "\(duplicate)")
        let badSize = try Self.strata(["thin", "create", "tp", "vm3", "--size", "lots"], directory)
        #expect(badSize.0 == 1 && badSize.2.contains("size 'lots'"), "\(badSize)")
        let check = try Self.strata(["thin", "check", "tp"], directory)
        #expect(check.0 == 0 && (Self.json(check.1)["problems"] as? [Any])?.isEmpty == true, "\(check)")
        let status = try Self.strata(["status", "--json"], directory)
        #expect(status.1.contains("\"thin\"") && status.1.contains("\"OK\""), "\(status)")
        let dump = try Self.strata(["config", "dump"], directory)
        #expect(dump.1.contains("volumes:") && dump.1.contains("vm1:32MiB"), "\(dump)")
        let digest = try Self.digest("snap1", directory)
        #expect(server.stop() == 0, "\(server.stderr)")
        // After a restart: the same volumes and snapshot, its data the same.
        server = try Self.serve(in: directory)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let again = try Self.strata(["thin", "list", "tp"], directory)
        #expect(((Self.json(again.1)["volumes"] as? [[String: Any]]) ?? []).map { $0["name"] as? String } == ["vm1", "vm2", "s1", "c1"], "\(again)")
        let kept = try Self.strata(["config", "dump"], directory)
        #expect(kept.1.contains("snap1"), "the runtime export is kept: \(kept)")
        #expect(try Self.digest("snap1", directory) == digest)
        #expect(try Self.strata(["thin", "delete", "tp", "c1"], directory).0 == 0)
        // A volume an export serves, even with no client, stays until the export goes.
        let exported = try Self.strata(["thin", "delete", "tp", "vm2"], directory)
        #expect(exported.0 == 1 && exported.2.contains("an export or an entry of the topology uses tp/vm2"), "\(exported)")
        #expect(try Self.strata(["export", "remove", "vol2"], directory).0 == 0)
        #expect(try Self.strata(["thin", "delete", "tp", "vm2"], directory).0 == 0)
        #expect(server.stop() == 0, "\(server.stderr)")
    }

    /// The backup recipe of thin.md, run as written: a full copy of one snapshot, then
    /// only the chunks a later snapshot changed, found through `qemu:dirty-bitmap`, give
    /// the later snapshot byte for byte; nbdinfo and qemu-img see the same changes.
    @Test func changedBlocksMakeAnIncrementalBackupWithRealClients() throws {
        let directory = NSTemporaryDirectory() + "strata-thinbackup-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try Self.serve(in: directory)
        defer { _ = server.stop() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let chunk = 65536
        let first = try Self.python("""
            h = nbd.NBD(); h.connect_uri("\(Self.uri("vol1", directory))")
            h.pwrite(bytes(range(256)) * 8192, 0); h.flush(); h.shutdown()
            """)
        #expect(first.0 == 0, "\(first)")
        #expect(try Self.strata(["thin", "snapshot", "tp", "vm1", "b1"], directory).0 == 0)
        #expect(try Self.strata(["export", "add", "b1", "tp/b1"], directory).0 == 0)
        let full = try runProgram("/usr/bin/nbdcopy", [Self.uri("b1", directory), directory + "/full.raw"])
        #expect(full.0 == 0, "\(full)")
        let changes = try Self.python("""
            h = nbd.NBD(); h.connect_uri("\(Self.uri("vol1", directory))")
            h.pwrite(b"x" * 4096, 4 * \(chunk) + 512)
            h.pwrite(b"y" * 8192, 100 * \(chunk))
            h.trim(\(chunk), 10 * \(chunk))
            h.flush(); h.shutdown()
            """)
        #expect(changes.0 == 0, "\(changes)")
        #expect(try Self.strata(["thin", "snapshot", "tp", "vm1", "b2"], directory).0 == 0)
        #expect(try Self.strata(["export", "add", "b2", "tp/b2"], directory).0 == 0)
        // nbdinfo: the three changed chunks dirty, the rest clean.
        let map = try runProgram("/usr/bin/nbdinfo", ["--map=qemu:dirty-bitmap:b1", Self.uri("b2", directory)])
        let dirty = map.1.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            .filter { $0.count >= 3 && $0[2] == "1" }.map { "\($0[0])+\($0[1])" }
        #expect(dirty == ["\(4 * chunk)+\(chunk)", "\(10 * chunk)+\(chunk)", "\(100 * chunk)+\(chunk)"], "\(map)")
        // qemu-img reads a dirty range as not present, as qemu's own x-dirty-bitmap does.
        let qemu = try runProgram("/usr/bin/qemu-img", ["map", "--output=json", "--image-opts",
            "driver=nbd,path=\(directory)/nbd.sock,export=b2,x-dirty-bitmap=qemu:dirty-bitmap:b1"])
        #expect(qemu.0 == 0 && qemu.1.contains("\"start\": \(100 * chunk), \"length\": \(chunk), \"depth\": 0, \"present\": false"), "\(qemu)")
        // The recipe, as the page gives it.
        let page = try String(contentsOfFile: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Sources/StrataClasses/Thin/thin.md").standardized.path, encoding: .utf8)
        let start = page.range(of: "/usr/bin/python3 - <<'EOF'\n")!.upperBound
        let script = String(page[start..<page.range(of: "\nEOF\n", range: start..<page.endIndex)!.lowerBound])
            .replacingOccurrences(of: "/run/strata/nbd.sock", with: directory + "/nbd.sock")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script]
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let backup = try runProgram("/usr/bin/sha256sum", [directory + "/full.raw"])
        #expect(String(backup.1.prefix(64)) == (try Self.digest("b2", directory)), "the incremental backup is b2")
        #expect(try Self.digest("b1", directory) != (try Self.digest("b2", directory)))
    }

    /// fio writes (and verifies) one region of two volumes at QD32 and flushes, a
    /// snapshot of one keeps its digest, and writes elsewhere go on while the server is
    /// killed with SIGKILL; ten times over, each start finds every flushed write, the
    /// snapshot whole and the pool's metadata sound.
    @Test func killedTenTimesUnderFioTheFlushedWritesAndTheSnapshotStay() throws {
        let directory = NSTemporaryDirectory() + "strata-thinkill-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // --thread: fio's job runs in its process, not a child of it. A child would outlive
        // the SIGKILL below holding the descriptor by which Foundation learns that the
        // process it started has ended, and waitUntilExit would wait for ever.
        func fio(_ export: String, _ arguments: [String]) -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
            process.arguments = ["--name=\(export)", "--ioengine=nbd", "--uri=\(Self.uri(export, directory))", "--bs=4k",
                                 "--iodepth=32", "--output=/dev/null", "--thread"] + arguments
            return process
        }
        var snapshotDigest: String?
        for round in 1...10 {
            let server = try Self.serve(in: directory)
            #expect(server.waitForOutput("control socket"), "round \(round): \(server.stderr)")
            let check = try Self.strata(["thin", "check", "tp"], directory)
            #expect((Self.json(check.1)["problems"] as? [Any])?.isEmpty == true, "round \(round): \(check)")
            if round > 1 {
                // The snapshot's export, if a runtime change did not keep it.
                _ = try Self.strata(["export", "add", "snap1", "tp/s1"], directory)
                // What the last round wrote and flushed is there.
                for export in ["vol1", "vol2"] {
                    let verify = fio(export, ["--rw=write", "--size=8m", "--verify=crc32c", "--verify_only",
                                              "--randseed=\(round - 1)"])
                    try verify.run()
                    verify.waitUntilExit()
                    #expect(verify.terminationStatus == 0, "round \(round): \(export) lost flushed writes")
                }
                #expect(try Self.digest("snap1", directory) == snapshotDigest, "round \(round): the snapshot changed")
            }
            for export in ["vol1", "vol2"] {
                let write = fio(export, ["--rw=write", "--size=8m", "--verify=crc32c", "--do_verify=1", "--end_fsync=1",
                                         "--randseed=\(round)"])
                try write.run()
                write.waitUntilExit()
                #expect(write.terminationStatus == 0, "round \(round): fio on \(export)")
            }
            if round == 1 {
                #expect(try Self.strata(["thin", "snapshot", "tp", "vm1", "s1"], directory).0 == 0)
                #expect(try Self.strata(["export", "add", "snap1", "tp/s1"], directory).0 == 0)
                snapshotDigest = try Self.digest("snap1", directory)
            }
            // Random writes past the verified region, unflushed, while the server dies.
            let storm = fio("vol1", ["--rw=randwrite", "--offset=16m", "--size=16m", "--time_based", "--runtime=30"])
            let storm2 = fio("vol2", ["--rw=randwrite", "--offset=16m", "--size=16m", "--time_based", "--runtime=30"])
            try storm.run()
            try storm2.run()
            usleep(UInt32(300_000 + round * 50_000))
            #expect(server.stop(signal: SIGKILL) != nil)
            for process in [storm, storm2] {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
    }
}
