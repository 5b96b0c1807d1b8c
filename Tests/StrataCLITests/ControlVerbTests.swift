import Foundation
import Testing

/// `strata list`, `status` and `stat` against a running server, and the control
/// socket's routes with curl.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ControlVerbTests {
    static func startServer() throws -> (ServeProcess, socket: String, control: String) {
        let directory = NSTemporaryDirectory() + "strata-ctl-\(UUID().uuidString.prefix(8))"
        let socket = directory + "/nbd.sock"
        let control = directory + "/control.sock"
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: [
            "t.yaml": """
            listen: [unix://\(socket)]
            control: \(control)
            disks:
              - name: m0
                memory: 64MiB
              - name: z0
                zero: 1GiB
                sector-size: 4096
            exports:
              - name: vol
                provider: m0
            """,
        ])
        return (server, socket, control)
    }

    @Test func listShowsGeomsProvidersAndConsumersAsTextJSONAndDot() throws {
        let (server, _, control) = try Self.startServer()
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let text = try runProgram(strataBinary, ["list", "--control", control])
        #expect(text.0 == 0, "\(text)")
        // The export's geom has consumers only while clients are connected.
        for line in ["Geom name: m0", "Class: MEMORY", "Mediasize: 67108864 (64 MiB)", "Sectorsize: 4096", "Geom name: nbd/vol",
                     "Class: NBD", "Mode: r0w0e0"] {
            #expect(text.1.contains(line), "\(line) missing from\n\(text.1)")
        }
        let json = try runProgram(strataBinary, ["list", "--json", "--control", control])
        let decoded = try JSONSerialization.jsonObject(with: Data(json.1.utf8)) as? [String: Any]
        let geoms = decoded?["geoms"] as? [[String: Any]] ?? []
        #expect(Set(geoms.compactMap { $0["name"] as? String }) == ["m0", "z0", "nbd/vol"])
        let dot = try runProgram(strataBinary, ["list", "--dot", "--control", control])
        #expect(dot.1.hasPrefix("digraph strata {") && dot.1.contains("\"g:m0\" -> \"p:m0\""), "\(dot)")
    }

    @Test func statusPrintsTheFixedJSONShape() throws {
        let (server, _, control) = try Self.startServer()
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let json = try runProgram(strataBinary, ["status", "--json", "--control", control])
        let decoded = try JSONSerialization.jsonObject(with: Data(json.1.utf8)) as? [String: Any]
        #expect((decoded?["geoms"] as? [Any])?.isEmpty == true, "no geom here has a state yet: \(json)")
        let text = try runProgram(strataBinary, ["status", "--control", control])
        #expect(text.1.contains("No geom with a state."))
    }

    @Test func statReportsRatesWhileAClientWrites() throws {
        let (server, socket, control) = try Self.startServer()
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let load = Process()
        load.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        load.arguments = ["-c", """
        import nbd, time
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///vol?socket=\(socket)")
        end = time.time() + 3
        i = 0
        while time.time() < end:
            h.pwrite(b"x" * 65536, (i % 1000) * 65536)
            i += 1
        """]
        try load.run()
        let stat = try runProgram(strataBinary, ["stat", "--json", "--control", control])
        load.waitUntilExit()
        let rates = try JSONSerialization.jsonObject(with: Data(stat.1.utf8)) as? [[String: Any]] ?? []
        let m0 = rates.first { $0["name"] as? String == "m0" }
        let writes = (m0?["write"] as? [String: Any])?["operationsPerSecond"] as? Double ?? 0
        #expect(writes > 10, "\(stat)")
        let busy = m0?["busyPercent"] as? Double ?? -1
        #expect(busy >= 0 && busy <= 100)
    }

    @Test func theControlSocketAnswersCurlAndPrometheus() throws {
        let (server, _, control) = try Self.startServer()
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let topology = try runProgram("/usr/bin/env", ["curl", "-sf", "--unix-socket", control, "http://strata/v1/topology"])
        #expect(topology.0 == 0 && topology.1.contains("\"className\"") == false && topology.1.contains("\"class\" : \"MEMORY\""), "\(topology)")
        let metrics = try runProgram("/usr/bin/env", ["curl", "-sf", "--unix-socket", control, "http://strata/metrics"])
        #expect(metrics.1.contains("# TYPE strata_provider_operations_total counter"), "\(metrics)")
        #expect(metrics.1.contains("strata_nbd_connections 0"), "\(metrics)")
        let missing = try runProgram("/usr/bin/env", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", control, "http://strata/v1/nope"])
        #expect(missing.1 == "404")
    }

    @Test func aVerbWithNoServerSaysSo() throws {
        let result = try runProgram(strataBinary, ["list", "--control", "/tmp/strata-no-such.sock"])
        #expect(result.0 == 1)
        #expect(result.2.contains("no strata server answers on /tmp/strata-no-such.sock"), "\(result)")
    }
}
