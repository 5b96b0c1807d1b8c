import Foundation
import Testing

/// `strata serve` started and stopped, cleanly and with kill -9, on the documented
/// fault-injection stack; what a client writes never changes how the next start builds
/// the topology; and a start that fails leaves the disks as they were, saying one thing.
@Suite(.serialized, .timeLimit(.minutes(10)))
struct RestartTests {
    static let mirrorOverNop = """
        disks:
          - {name: d0, file: d0.img, size: 8MiB}
          - {name: d1, file: d1.img, size: 8MiB}
        geoms:
          - {name: n1, class: nop, consumers: [d1]}
          - {name: m0, class: mirror, consumers: [d0, n1]}
        exports:
          - {name: vol, provider: m0}
        """

    /// A server in `directory`, serving `topology` on `nbd.sock`, its control on `control.sock`.
    static func serve(_ topology: String, in directory: String) throws -> ServeProcess {
        let file = "listen: [unix://\(directory)/nbd.sock]\ncontrol: \(directory)/control.sock\n" + topology
        return try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": file])
    }

    /// Mirror m0's state and its components' states.
    static func mirrorStatus(_ directory: String) throws -> (state: String, components: [String]) {
        let result = try runProgram(strataBinary, ["status", "--json", "--control", directory + "/control.sock"])
        let object = try JSONSerialization.jsonObject(with: Data(result.1.utf8)) as? [String: Any]
        let mirror = ((object?["geoms"] as? [[String: Any]]) ?? []).first { $0["name"] as? String == "m0" } ?? [:]
        let components = (mirror["components"] as? [[String: Any]] ?? []).map { "\($0["name"]!):\($0["state"]!)" }
        return (mirror["state"] as? String ?? "(none: \(result))", components)
    }

    /// A client that writes `byte` over the first MiB of `vol`, flushes, says so, and
    /// stays connected (the mirror open for writing) until killed.
    static func writerThatStays(_ directory: String, byte: UInt8) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", """
            import nbd, sys, time
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(directory)/nbd.sock")
            h.pwrite(bytes([\(byte)]) * (1 << 20), 0)
            h.flush()
            print("written", flush=True)
            time.sleep(120)
            """]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        return (process, output)
    }

    /// The first MiB of `vol`, as read by a client.
    static func firstMiB(_ directory: String) throws -> Data {
        let result = try runProgram("/usr/bin/python3", ["-c", """
            import nbd, sys
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(directory)/nbd.sock")
            sys.stdout.buffer.write(h.pread(1 << 20, 0))
            h.shutdown()
            """])
        #expect(result.0 == 0, "\(result.2)")
        return Data(result.1.utf8)
    }

    @Test func fiftyStartsCleanOrKilledEachComeBackCompleteAndNeverResynchronizeAfterACleanStop() throws {
        let directory = NSTemporaryDirectory() + "strata-restart-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var killedWhileWriting = false
        var lastByte: UInt8 = 0
        for start in 1...50 {
            let server = try Self.serve(Self.mirrorOverNop, in: directory)
            #expect(server.waitForOutput("control socket"), "start \(start): \(server.stderr)")
            var status = try Self.mirrorStatus(directory)
            if killedWhileWriting {
                // Killed with a writer connected: the mirror was dirty, so it is made whole again.
                #expect(status.state == "SYNCHRONIZING" || status.state == "COMPLETE", "start \(start): \(status)")
                let deadline = Date().addingTimeInterval(30)
                while status.state != "COMPLETE" && Date() < deadline {
                    usleep(20_000)
                    status = try Self.mirrorStatus(directory)
                }
                #expect(server.stderr.contains("was not closed cleanly"), "start \(start): \(server.stderr)")
            } else {
                #expect(!server.stderr.contains("rebuild") && !server.stderr.contains("resynchroniz"),
                        "start \(start) after a clean stop: \(server.stderr)")
            }
            #expect(status.state == "COMPLETE", "start \(start): \(status) \(server.stderr)")
            #expect(status.components == ["d0:ACTIVE", "n1:ACTIVE"], "start \(start): \(status)")
            #expect(!server.stderr.contains("DEGRADED") && !server.stderr.contains("degraded"), "start \(start): \(server.stderr)")
            if lastByte != 0 {
                #expect(try Self.firstMiB(directory) == Data(repeating: lastByte, count: 1 << 20), "start \(start): the data")
            }
            killedWhileWriting = start % 2 == 0
            if killedWhileWriting {
                lastByte = UInt8(start)
                let (writer, output) = try Self.writerThatStays(directory, byte: lastByte)
                let said = output.fileHandleForReading.availableData
                #expect(String(decoding: said, as: UTF8.self).contains("written"), "start \(start): the writer")
                #expect(server.stop(signal: SIGKILL) != nil)
                // SIGKILL: the test runner's children inherit SIGTERM ignored.
                kill(writer.processIdentifier, SIGKILL)
                writer.waitUntilExit()
            } else {
                #expect(server.stop() == 0, "start \(start): \(server.stderr)")
            }
        }
    }

    @Test func aMirrorLabelAClientWritesIntoItsExportIsItsDataAtTheNextStart() throws {
        let directory = NSTemporaryDirectory() + "strata-forged-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A real mirror's metadata sector, to forge with.
        let mirror = try Self.serve("""
            disks:
              - {name: a, file: a.img, size: 8MiB}
              - {name: b, file: b.img, size: 8MiB}
            geoms:
              - {name: m0, class: mirror, consumers: [a, b]}
            """, in: directory)
        #expect(mirror.waitForOutput("control socket"), "\(mirror.stderr)")
        #expect(mirror.stop() == 0)
        let forged = try Data(contentsOf: URL(fileURLWithPath: directory + "/b.img")).suffix(512)
        let plain = """
            disks:
              - {name: d5, file: d5.img, size: 8MiB}
            exports:
              - {name: vol, provider: d5}
            """
        let first = try Self.serve(plain, in: directory)
        #expect(first.waitForOutput("control socket"), "\(first.stderr)")
        let write = try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(directory)/nbd.sock")
            h.pwrite(bytes.fromhex("\(forged.map { String(format: "%02x", $0) }.joined())"), h.get_size() - 512)
            h.flush()
            h.shutdown()
            """])
        #expect(write.0 == 0, "\(write.2)")
        #expect(first.stop() == 0)

        let second = try Self.serve(plain, in: directory)
        #expect(second.waitForOutput("control socket"), "\(second.stderr)")
        #expect(!second.stderr.contains("tasted"), "\(second.stderr)")
        let info = try runProgram("/usr/bin/nbdinfo", ["nbd+unix:///vol?socket=\(directory)/nbd.sock"])
        #expect(info.0 == 0 && info.1.contains("export-size: 8388608"), "the export opens: \(info)")
        let list = try runProgram(strataBinary, ["list", "--json", "--control", directory + "/control.sock"])
        let geoms = try (JSONSerialization.jsonObject(with: Data(list.1.utf8)) as? [String: Any])?["geoms"] as? [[String: Any]]
        #expect(geoms?.compactMap { $0["class"] as? String }.filter { $0 != "FILE" && $0 != "NBD" } == [], "\(list.1)")
        #expect(second.stop() == 0)
        let image = try Data(contentsOf: URL(fileURLWithPath: directory + "/d5.img"))
        #expect(image.suffix(512) == forged, "the client's bytes are as it wrote them")
    }

    @Test func aStartThatFailsLeavesTheImagesAsTheyWereAndSaysOneLine() throws {
        let directory = NSTemporaryDirectory() + "strata-failed-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let good = try Self.serve(Self.mirrorOverNop, in: directory)
        #expect(good.waitForOutput("control socket"), "\(good.stderr)")
        #expect(good.stop() == 0)
        func images() throws -> [Data] {
            try ["d0.img", "d1.img"].map { try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\($0)")) }
        }
        let before = try images()
        for (what, topology, listen) in [
            ("an export naming nothing", Self.mirrorOverNop.replacingOccurrences(of: "provider: m0", with: "provider: m9"), nil),
            ("a new disk and a consumer naming nothing",
             Self.mirrorOverNop.replacingOccurrences(of: "geoms:", with: "  - {name: e0, file: e0.img, size: 8MiB}\ngeoms:")
                .replacingOccurrences(of: "exports:", with: "  - {name: n9, class: nop, consumers: [x]}\nexports:"), nil),
            ("an address that cannot be bound", Self.mirrorOverNop, "tcp://192.0.2.1:10809"),
        ] as [(String, String, String?)] {
            let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"] + (listen.map { ["--listen", $0] } ?? []),
                                          directory: directory,
                                          files: ["t.yaml": "control: \(directory)/control.sock\n" + topology])
            #expect(server.waitForExit() == 1, "\(what): \(server.stderr)")
            let lines = server.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(what): \(server.stderr)")
            #expect(try images() == before, "\(what): the images changed")
            #expect(!FileManager.default.fileExists(atPath: directory + "/e0.img"), "\(what): a new image was left")
        }
    }
}
