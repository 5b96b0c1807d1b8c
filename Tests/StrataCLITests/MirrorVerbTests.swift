import Foundation
import Testing

@Suite(.serialized, .timeLimit(.minutes(3)))
struct MirrorVerbTests {
    func status(_ control: String) throws -> [String: Any] {
        let result = try runProgram(strataBinary, ["status", "--json", "--control", control])
        let object = try JSONSerialization.jsonObject(with: Data(result.1.utf8)) as? [String: Any]
        return ((object?["geoms"] as? [[String: Any]]) ?? []).first ?? [:]
    }

    func waitForState(_ state: String, _ control: String, seconds: Double = 60) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(seconds)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = try status(control)
            if last["state"] as? String == state { return last }
            usleep(100_000)
        }
        return last
    }

    @Test func aMirrorDegradesIsRepairedOnlineAndComesBackCleanAfterARestart() throws {
        let (server, socket, control) = try ServeProcess.serving("""
        disks:
          - name: d0
            file: d0.img
            size: 16MiB
          - name: d1
            file: d1.img
            size: 16MiB
          - name: spare
            file: spare.img
            size: 16MiB
        geoms:
          - name: n0
            class: nop
            consumers: [d0]
          - name: m0
            class: mirror
            consumers: [n0, d1]
        exports:
          - name: vol
            provider: m0
        """, prefix: "strata-mcli")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(try status(control)["state"] as? String == "COMPLETE")
        func client(_ body: String) throws -> String {
            try runProgram("/usr/bin/python3", ["-c", "import nbd\nh = nbd.NBD()\nh.connect_uri(\"nbd+unix:///vol?socket=\(socket)\")\n" + body]).1
        }
        #expect(try client("h.pwrite(b'\\x61' * 65536, 0)\nprint('ok')").contains("ok"))
        _ = try runProgram(strataBinary, ["nop", "configure", "n0", "--write-fail-percent", "100", "--control", control])
        #expect(try client("h.pwrite(b'\\x62' * 65536, 65536)\nprint('ok')").contains("ok"), "the mirror absorbs the failure")
        let degraded = try status(control)
        #expect(degraded["state"] as? String == "DEGRADED")
        let components = (degraded["components"] as? [[String: Any]] ?? []).map { "\($0["name"]!):\($0["state"]!)" }
        #expect(components == ["n0:BROKEN", "d1:ACTIVE"], "\(components)")
        let insert = try runProgram(strataBinary, ["mirror", "insert", "m0", "spare", "--control", control])
        #expect(insert.0 == 0, "\(insert)")
        let repaired = try waitForState("COMPLETE", control)
        #expect(repaired["state"] as? String == "COMPLETE", "\(repaired)")
        #expect(try client("assert h.pread(131072, 0) == b'\\x61' * 65536 + b'\\x62' * 65536\nprint('ok')").contains("ok"))
        let bad = try runProgram(strataBinary, ["mirror", "remove", "m0", "nope", "--control", control])
        #expect(bad.0 == 1 && bad.2.contains("mirror m0 has no component nope"), "\(bad)")
        #expect(server.stop() == 0)

        // Restarted from the same file, the mirror comes back by tasting, clean.
        let again = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: server.directory)
        #expect(again.waitForOutput("control socket"), "\(again.stderr)")
        let back = try waitForState("COMPLETE", control, seconds: 20)
        #expect(back["state"] as? String == "COMPLETE", "\(back) \(again.stderr)")
        #expect(try client("assert h.pread(131072, 0) == b'\\x61' * 65536 + b'\\x62' * 65536\nprint('ok')").contains("ok"))
        #expect(again.stop() == 0)
    }
}
