import Foundation
import Testing

/// What a user sees of the file locks and read-only disks: a second server on the same
/// images stops at once and names the first; a file named twice is a mistake in the
/// topology file and at run time; a read-only image is served by an unprivileged server.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ExclusiveAccessTests {
    /// The bytes of the named files in `directory`.
    static func images(_ names: [String], in directory: String) throws -> [Data] {
        try names.map { try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\($0)")) }
    }

    @Test func aSecondServerOfTheSameImagesStopsAtOnceNamingTheFileAndTheFirstServer() throws {
        let first = try RestartTests.serve(RestartTests.mirrorOverNop, in: NSTemporaryDirectory() + "strata-first-\(UUID().uuidString.prefix(8))")
        defer { first.removeDirectory() }
        #expect(first.waitForOutput("control socket"), "\(first.stderr)")
        let write = try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(first.directory)/nbd.sock")
            h.pwrite(b"\\x5a" * (1 << 20), 0)
            h.flush()
            h.shutdown()
            """])
        #expect(write.0 == 0, "\(write.2)")
        // The mirror marks itself clean once the client has gone: wait until it has.
        var before = try Self.images(["d0.img", "d1.img"], in: first.directory)
        for _ in 0..<50 {
            usleep(100_000)
            let now = try Self.images(["d0.img", "d1.img"], in: first.directory)
            if now == before { break }
            before = now
        }

        let images = first.directory
        for (what, disks) in [
            ("the same mirror", """
                disks:
                  - {name: d0, file: \(images)/d0.img}
                  - {name: d1, file: \(images)/d1.img}
                geoms:
                  - {name: n1, class: nop, consumers: [d1]}
                  - {name: m0, class: mirror, consumers: [d0, n1]}
                exports:
                  - {name: vol, provider: m0}
                """),
            ("one leg, read-only", """
                disks:
                  - {name: d0, file: \(images)/d0.img, read-only: true}
                exports:
                  - {name: vol, provider: d0}
                """),
        ] {
            let started = Date()
            let second = try RestartTests.serve(disks, in: NSTemporaryDirectory() + "strata-second-\(UUID().uuidString.prefix(8))")
            defer {
                // Only a server that wrongly started is still running.
                if second.process.isRunning { _ = second.stop(signal: SIGKILL) }
                second.removeDirectory()
            }
            #expect(second.waitForExit() == 1, "\(what): \(second.stdout)")
            #expect(Date().timeIntervalSince(started) < 10, "\(what): it stops at once")
            let lines = second.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(what): \(second.stderr)")
            #expect(second.stderr.contains("t.yaml:4: disks[0].file: '\(images)/d0.img': is in use: \(images)/d0.img is locked by PID \(first.process.processIdentifier) (strata)"),
                    "\(what): \(second.stderr)")
            #expect(try Self.images(["d0.img", "d1.img"], in: images) == before, "\(what): the images changed")
        }

        // The first server goes on as it was: whole, and nothing resynchronized under it.
        #expect(try RestartTests.mirrorStatus(first.directory).state == "COMPLETE")
        #expect(try RestartTests.firstMiB(first.directory) == Data(repeating: 0x5A, count: 1 << 20))
        #expect(!first.stderr.contains("resynchroniz") && !first.stderr.contains("rebuild"), "\(first.stderr)")
        #expect(first.stop() == 0)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-nbd"), "needs qemu-utils"))
    func qemuAndStrataRefuseEachOthersImages() throws {
        let directory = NSTemporaryDirectory() + "strata-qemu-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/a.img"
        try Data(count: 8 << 20).write(to: URL(fileURLWithPath: image))
        let topology = "disks:\n  - {name: d0, file: a.img}\nexports:\n  - {name: vol, provider: d0}\n"

        let server = try RestartTests.serve(topology, in: directory)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let qemu = try runProgram("/usr/bin/qemu-io", ["-f", "raw", "-c", "read 0 512", image])
        #expect(qemu.0 != 0 && qemu.2.contains("Failed to lock byte"), "\(qemu)")
        #expect(server.stop() == 0)

        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-nbd")
        holder.arguments = ["-f", "raw", "--socket=\(directory)/qemu.sock", image]
        try holder.run()
        defer {
            kill(holder.processIdentifier, SIGKILL)
            holder.waitUntilExit()
        }
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: directory + "/qemu.sock") && Date() < deadline { usleep(20_000) }
        let refused = try RestartTests.serve(topology, in: directory)
        defer { if refused.process.isRunning { _ = refused.stop(signal: SIGKILL) } }
        #expect(refused.waitForExit() == 1)
        #expect(refused.stderr.contains("t.yaml:4: disks[0].file: 'a.img': is in use: \(image) is locked by PID \(holder.processIdentifier) (qemu-nbd)"),
                "\(refused.stderr)")
    }

    @Test func oneFileNamedTwiceIsAMistakeInTheTopologyFileAndAtRunTime() throws {
        let directory = NSTemporaryDirectory() + "strata-twice-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: directory + "/link.img", withDestinationPath: "d0.img")
        let twice = try RestartTests.serve("""
            disks:
              - {name: d0, file: d0.img, size: 8MiB}
              - {name: d1, file: link.img, size: 8MiB}
            geoms:
              - {name: m0, class: mirror, consumers: [d0, d1]}
            """, in: directory)
        defer {
            if twice.process.isRunning { _ = twice.stop(signal: SIGKILL) }
            twice.removeDirectory()
        }
        #expect(twice.waitForExit() == 1)
        #expect(twice.stderr.split(separator: "\n").count == 1, "\(twice.stderr)")
        #expect(twice.stderr.contains("t.yaml:5: disks[1].file: 'link.img': is the file d0 opens (t.yaml:4: disks[0].file: 'd0.img'); a file can be one disk only"),
                "\(twice.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/d0.img"), "nothing was made")

        let server = try RestartTests.serve("""
            disks:
              - {name: d0, file: d0.img, size: 8MiB}
            exports:
              - {name: vol, provider: d0}
            """, in: directory)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let control = directory + "/control.sock"
        let created = try runProgram(strataBinary, ["geom", "create", "file", "d1", "file=\(directory)/link.img", "--control", control])
        #expect(created.0 == 1 && created.2.replacingOccurrences(of: "\\/", with: "/")
                    .contains("file '\(directory)/link.img': is the file d0 opens (\(directory)/d0.img); a file can be one disk only"),
                "\(created)")
        let list = try runProgram(strataBinary, ["list", "--control", control])
        #expect(!list.1.contains("d1"), "\(list)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/strata-data/state.yaml"), "a refused change is not recorded")
        #expect(server.stop() == 0)
    }

    @Test(.enabled(if: getuid() == 0, "runs the server as nobody, which takes root"))
    func anUnprivilegedServerServesAReadOnlyImageAndRefusesWrites() throws {
        let directory = NSTemporaryDirectory() + "strata-readonly-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // The server may make its sockets in the folder; the image is root's, 0444.
        #expect(chown(directory, 65534, 65534) == 0)
        let image = directory + "/image.img"
        let content = Data((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try content.write(to: URL(fileURLWithPath: image))
        #expect(chmod(image, 0o444) == 0)
        let socket = directory + "/nbd.sock"
        func topology(_ disk: String) -> String {
            "listen: [unix://\(socket)]\ncontrol: \(directory)/control.sock\ndisks:\n  - {name: d0, file: image.img\(disk)}\nexports:\n  - {name: vol, provider: d0}\n"
        }

        // A disk that writes cannot open the image for writing.
        let writable = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory,
                                        files: ["t.yaml": topology("")], user: ("nobody", "nogroup"))
        #expect(writable.waitForExit() == 1)
        #expect(writable.stderr.contains("t.yaml:4: disks[0]: 'd0': open \(image) for writing: permission denied (a read-only disk opens it read-only)"),
                "\(writable.stderr)")

        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory,
                                      files: ["t.yaml": topology(", read-only: true")], user: ("nobody", "nogroup"))
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(server.stdout.contains("export vol: 1 MiB, provider d0, read-only"), "\(server.stdout)")
        let info = try runProgram("/usr/bin/nbdinfo", ["--json", "nbd+unix:///vol?socket=\(socket)"])
        #expect(info.1.contains("\"is_read_only\": true"), "\(info)")
        // The client sends the write even though the export says read-only, to see the server refuse it.
        let client = try runProgram("/usr/bin/python3", ["-c", """
            import errno, nbd
            h = nbd.NBD()
            h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_COMMANDS)
            h.connect_uri("nbd+unix:///vol?socket=\(socket)")
            print("read", h.pread(4096, 0) == bytes((i * 7) & 0xff for i in range(4096)))
            for name, call in [("write", lambda: h.pwrite(b"x" * 4096, 0)),
                               ("zero", lambda: h.zero(4096, 0)), ("trim", lambda: h.trim(4096, 0))]:
                try:
                    call()
                    print(name, "done")
                except nbd.Error as e:
                    print(name, errno.errorcode.get(e.errno, e.errno))
            h.shutdown()
            """])
        #expect(client.1 == "read True\nwrite EPERM\nzero EPERM\ntrim EPERM\n", "\(client)")
        #expect(server.stop() == 0, "\(server.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == content, "the image is as it was")
    }
}
