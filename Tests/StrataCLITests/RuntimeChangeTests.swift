import Foundation
import Testing

/// `strata geom create|destroy`, `strata export add|remove` and `strata config dump` on a
/// running server: refusals while in use, nothing changed by a failed change, and every
/// change still there after a restart.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RuntimeChangeTests {
    static let topology = """
        disks:
          - {name: d0, file: d0.img, size: 8MiB}
          - {name: d1, file: d1.img, size: 8MiB}
          - {name: m0, memory: 16MiB}
        geoms:
          - {name: s0, class: stripe, consumers: [d0, d1], stripe-size: 16k}
        exports:
          - {name: vol, provider: s0}
        """

    func strata(_ control: String, _ words: [String]) throws -> (Int32, String, String) {
        try runProgram(strataBinary, words + ["--control", control])
    }

    /// The geoms of the running server as "name:class", in order.
    func geoms(_ control: String) throws -> [String] {
        let list = try runProgram(strataBinary, ["list", "--json", "--control", control])
        let object = try JSONSerialization.jsonObject(with: Data(list.1.utf8)) as? [String: Any]
        return (object?["geoms"] as? [[String: Any]] ?? []).compactMap { geom in
            guard let name = geom["name"] as? String, let kind = geom["class"] as? String else { return nil }
            return "\(name):\(kind)"
        }
    }

    func python(_ script: String) throws -> (Int32, String, String) {
        try runProgram("/usr/bin/python3", ["-c", script])
    }

    @Test func changesAreRefusedInUseKeptAcrossARestartAndDumpedAsAFileThatReproducesThem() throws {
        let (server, socket, control) = try ServeProcess.serving(Self.topology, prefix: "strata-runtime")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let state = server.directory + "/strata-data/state.yaml"

        // A change that fails changes nothing.
        let bad = try strata(control, ["geom", "create", "nop", "n9", "--consumers", "m0", "delay-ms=70000"])
        #expect(bad.0 == 1 && bad.2.contains("delay-ms '70000': must be a whole number from 0 to 60000"), "\(bad)")
        let nothing = try strata(control, ["geom", "create", "nop", "n9", "--consumers", "nowhere"])
        #expect(nothing.0 == 1 && nothing.2.contains("no provider named nowhere"), "\(nothing)")
        let taken = try strata(control, ["geom", "create", "nop", "s0", "--consumers", "m0"])
        #expect(taken.0 == 1 && taken.2.contains("s0 is already the name"), "\(taken)")
        let dots = try strata(control, ["geom", "create", "nop", "..", "--consumers", "m0"])
        #expect(dots.0 == 1 && dots.2.contains("name '..': must not begin or end with /"), "\(dots)")
        let newline = try strata(control, ["export", "add", "a\nb", "m0"])
        #expect(newline.0 == 1 && newline.2.contains("must not hold control characters"), "\(newline)")
        let twice = try strata(control, ["geom", "create", "concat", "c9", "--consumers", "m0,d1,m0"])
        #expect(twice.0 == 1 && twice.2.contains("consumers[2] 'm0': is consumers[0] already; a geom consumes a provider once"),
                "\(twice)")
        #expect(!FileManager.default.fileExists(atPath: state), "a failed change wrote the state file")

        #expect(try strata(control, ["geom", "create", "nop", "n9", "--consumers", "m0", "delay-ms=1"]).0 == 0)
        #expect(try strata(control, ["export", "add", "fast", "n9", "--description", "a nop over memory"]).0 == 0)
        let write = try python("""
            import nbd
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///fast?socket=\(socket)")
            h.pwrite(b"x" * 4096, 0)
            print(h.pread(512, 0)[:4].decode())
            """)
        #expect(write.1.contains("xxxx"), "\(write)")

        let exported = try strata(control, ["geom", "destroy", "n9"])
        #expect(exported.0 == 1 && exported.2.contains("an export serves n9"), "\(exported)")
        let stacked = try strata(control, ["geom", "destroy", "d0"])
        #expect(stacked.0 == 1 && stacked.2.contains("s0 is stacked on d0"), "\(stacked)")

        // A client holds vol open: its removal is refused, then forced.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        holder.arguments = ["-c", """
            import nbd, time
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(socket)")
            print("open", flush=True)
            time.sleep(60)
            """]
        let said = Pipe()
        holder.standardOutput = said
        try holder.run()
        #expect(String(decoding: said.fileHandleForReading.availableData, as: UTF8.self).contains("open"))
        let busy = try strata(control, ["export", "remove", "vol"])
        #expect(busy.0 == 1 && busy.2.contains("export vol has 1 client connected"), "\(busy)")
        #expect(try strata(control, ["export", "remove", "vol", "--force"]).0 == 0)
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        #expect(try strata(control, ["geom", "destroy", "s0"]).0 == 0)
        let running0 = try geoms(control).filter { !$0.hasPrefix("nbd/") }
        #expect(running0 == ["d0:FILE", "d1:FILE", "m0:MEMORY", "n9:NOP"], "\(running0)")
        let stateText = (try? String(contentsOfFile: state, encoding: .utf8)) ?? ""
        #expect(stateText.contains("n9") && stateText.contains("removed:") && stateText.contains("s0"), "\(stateText)")
        #expect(!FileManager.default.fileExists(atPath: state + ".new"))

        let dumped = try strata(control, ["config", "dump"])
        #expect(dumped.0 == 0 && dumped.1.contains("{name: n9, class: nop, consumers: [m0], delay-ms: 1}"), "\(dumped)")
        #expect(dumped.1.contains("max-request: 64MiB"), "\(dumped)")
        #expect(server.stop() == 0)

        // Restarted on the same file: the changes are there, and the stripe's labels on
        // d0 and d1 do not bring s0 back.
        let again = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: server.directory)
        #expect(again.waitForOutput("control socket"), "\(again.stderr)")
        let running1 = try geoms(control).filter { !$0.hasPrefix("nbd/") }
        #expect(running1 == ["d0:FILE", "d1:FILE", "m0:MEMORY", "n9:NOP"], "\(running1)")
        let list = try runProgram("/usr/bin/nbdinfo", ["--list", "nbd+unix:///?socket=\(socket)"])
        #expect(list.1.contains("export=\"fast\"") && !list.1.contains("export=\"vol\""), "\(list)")
        #expect(again.stop() == 0)

        // The dump, served alone, is the same topology.
        try dumped.1.write(toFile: server.directory + "/dump.yaml", atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: state)
        let fromDump = try ServeProcess(arguments: ["serve", "--config", "dump.yaml"], directory: server.directory)
        #expect(fromDump.waitForOutput("control socket"), "\(fromDump.stderr)")
        let running2 = try geoms(control).filter { !$0.hasPrefix("nbd/") }
        #expect(running2 == ["d0:FILE", "d1:FILE", "m0:MEMORY", "n9:NOP"], "\(running2)")
        #expect(try strata(control, ["nop", "show", "n9", "--json"]).1.contains("\"delay-ms\" : 1"))
        #expect(fromDump.stop() == 0)
    }

    @Test func aStateFileThatNoLongerFitsTheTopologyFileIsReportedWithItsPlace() throws {
        let (server, _, control) = try ServeProcess.serving(Self.topology, prefix: "strata-state")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(try strata(control, ["geom", "create", "nop", "n9", "--consumers", "m0"]).0 == 0)
        #expect(server.stop() == 0)
        // The file now declares n9 too.
        let file = server.directory + "/t.yaml"
        let text = try String(contentsOfFile: file, encoding: .utf8)
        try text.replacingOccurrences(of: "exports:", with: "  - {name: n9, class: nop, consumers: [d0]}\nexports:")
            .write(toFile: file, atomically: true, encoding: .utf8)
        let clash = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: server.directory)
        #expect(clash.waitForExit() == 1)
        #expect(clash.stderr.contains("state.yaml:") && clash.stderr.contains("'n9': was added at run time, but"), "\(clash.stderr)")
    }
}
