import Foundation
import Testing

/// `strata list`, `status` and `stat` against a running server, and the control
/// socket's routes with curl.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ControlVerbTests {
    static func startServer() throws -> (server: ServeProcess, socket: String, control: String) {
        try ServeProcess.serving("""
            disks:
              - name: m0
                memory: 64MiB
              - name: z0
                zero: 1GiB
                sector-size: 4096
            exports:
              - name: vol
                provider: m0
            """, prefix: "strata-ctl")
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
        #expect(metrics.1.contains("strata_nbd_connections 0.0"), "\(metrics)")
        #expect(metrics.1.contains("strata_nbd_export_connections{export=\"vol\"} 0.0"), "\(metrics)")

        // Prometheus's own Python client parses the whole scrape and sees each family's type.
        let parsed = try runProgram("/usr/bin/python3", ["-c", """
        import json, subprocess
        from prometheus_client.parser import text_string_to_metric_families
        text = subprocess.run(["curl", "-sf", "--unix-socket", "\(control)", "http://strata/metrics"],
                              capture_output=True, text=True, check=True).stdout
        print(json.dumps({f.name: [f.type, len(f.samples)] for f in text_string_to_metric_families(text)}))
        """])
        let families = try JSONSerialization.jsonObject(with: Data(parsed.1.utf8)) as? [String: [Any]] ?? [:]
        let expected = ["strata_provider_operations": "counter", "strata_provider_bytes": "counter",
                        "strata_provider_errors": "counter", "strata_provider_busy_seconds": "counter",
                        "strata_provider_in_flight": "gauge", "strata_provider_latency_seconds": "histogram",
                        "strata_nbd_connections": "gauge", "strata_nbd_export_connections": "gauge",
                        "strata_nbd_export_in_flight": "gauge"]
        for (name, type) in expected {
            #expect(families[name]?.first as? String == type, "\(name) in \(parsed)")
            #expect((families[name]?.last as? Int ?? 0) > 0, "\(name) has no samples: \(parsed)")
        }
        let missing = try runProgram("/usr/bin/env", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", control, "http://strata/v1/nope"])
        #expect(missing.1 == "404")
    }

    /// Every class's verbs come from its declarations: `/v1/classes` lists them, and the
    /// one route per class and verb checks what it is given.
    @Test func classVerbsAreServedFromTheClassesDeclarations() throws {
        let (server, _, control) = try ServeProcess.serving("""
            disks:
              - {name: d0, memory: 16MiB}
            geoms:
              - {name: n0, class: nop, consumers: [d0]}
            """, prefix: "strata-verbs")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        func curl(_ arguments: [String]) throws -> (code: String, body: String) {
            let result = try runProgram("/usr/bin/env", ["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", control] + arguments)
            let lines = result.1.split(separator: "\n", omittingEmptySubsequences: false)
            return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
        }
        let classes = try curl(["http://strata/v1/classes"])
        let list = try JSONSerialization.jsonObject(with: Data(classes.body.utf8)) as? [[String: Any]] ?? []
        #expect(list.compactMap { $0["name"] as? String }
                == ["file", "memory", "null", "zero", "powercut", "remote", "rbd", "nop", "concat", "stripe", "label", "part", "mirror", "thin", "eli"])
        let nop = list.first { $0["name"] as? String == "nop" }
        #expect((nop?["verbs"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["configure", "show"])
        #expect(try curl(["http://strata/v1/nop/n0"]).body.contains("\"delay-ms\" : 0"))
        let configured = try curl(["-X", "POST", "-d", #"{"delay-ms": 3, "error": "28"}"#, "http://strata/v1/nop/n0/configure"])
        #expect(configured.code == "200" && configured.body.contains("\"delay-ms\" : 3") && configured.body.contains("\"error\" : 28"),
                "\(configured)")
        let range = try curl(["-X", "POST", "-d", #"{"delay-ms": 70000}"#, "http://strata/v1/nop/n0/configure"])
        #expect(range.code == "400" && range.body.contains("delay-ms '70000': must be a whole number from 0 to 60000"), "\(range)")
        let unknown = try curl(["-X", "POST", "-d", #"{"delay": 1}"#, "http://strata/v1/nop/n0/configure"])
        #expect(unknown.code == "400" && unknown.body.contains("did you mean 'delay-ms'?"), "\(unknown)")
        let fixed = try curl(["-X", "POST", "-d", #"{"offset": 4096}"#, "http://strata/v1/nop/n0/configure"])
        #expect(fixed.code == "400" && fixed.body.contains("offset: is not an option of configure"), "\(fixed)")
        #expect(try curl(["-X", "POST", "-d", "[1]", "http://strata/v1/nop/n0/configure"]).code == "400")
        #expect(try curl(["http://strata/v1/nop/n0/configure"]).code == "405", "configure changes things: POST only")
        #expect(try curl(["http://strata/v1/nop/nope"]).code == "404")
        #expect(try curl(["-X", "POST", "http://strata/v1/nop/n0/explode"]).code == "404")
        #expect(try curl(["http://strata/v1/mirror/n0"]).code == "404", "n0 is not a mirror")
        let cli = try runProgram(strataBinary, ["nop", "configure", "n0", "--delay", "1", "--control", control])
        #expect(cli.0 != 0 && cli.2.contains("--delay is not an option of nop configure"), "\(cli)")
        let verbless = try runProgram(strataBinary, ["nop", "--control", control])
        #expect(verbless.0 != 0 && verbless.2.contains("give a verb: configure, show"), "\(verbless)")
        #expect(server.stop() == 0)
    }

    /// A client holds a connection open after 20 writes: the export gauges count it, and
    /// the latency histogram of every provider under it has counted the writes, its
    /// buckets cumulative and its +Inf bucket equal to its count.
    @Test func metricsCountExportConnectionsAndLatencies() throws {
        let (server, socket, control) = try Self.startServer()
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let marker = server.directory + "/written"
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        client.arguments = ["-c", """
        import nbd, time
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///vol?socket=\(socket)")
        for i in range(20):
            h.pwrite(b"y" * 4096, i * 4096)
        open("\(marker)", "w").close()
        time.sleep(30)
        """]
        try client.run()
        defer { if client.isRunning { kill(client.processIdentifier, SIGKILL); client.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: marker) && Date() < deadline { usleep(20_000) }
        #expect(FileManager.default.fileExists(atPath: marker), "the client never finished its writes")

        let metrics = try runProgram("/usr/bin/env", ["curl", "-sf", "--unix-socket", control, "http://strata/metrics"]).1
        #expect(metrics.contains("strata_nbd_connections 1.0"), "\(metrics)")
        #expect(metrics.contains("strata_nbd_export_connections{export=\"vol\"} 1.0"), "\(metrics)")
        #expect(metrics.contains("strata_nbd_export_in_flight{export=\"vol\"} 0.0"), "\(metrics)")
        #expect(metrics.contains("# TYPE strata_provider_latency_seconds histogram"))

        var series: [String: [(bound: String, count: Int)]] = [:]
        var counts: [String: Int] = [:]
        for line in metrics.split(separator: "\n") where line.hasPrefix("strata_provider_latency_seconds_")
            && !line.hasPrefix("strata_provider_latency_seconds_sum") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let value = Int(parts[1]) else {
                Issue.record("unparsable line \(line)"); continue
            }
            let name = String(parts[0])
            if name.hasPrefix("strata_provider_latency_seconds_bucket{") {
                let key = String(name.split(separator: ",le=").first ?? "").replacingOccurrences(of: "_bucket{", with: "{")
                let bound = String(name.split(separator: "le=").last ?? "").trimmingCharacters(in: CharacterSet(charactersIn: "\"}"))
                series[key + "}", default: []].append((bound, value))
            } else if name.hasPrefix("strata_provider_latency_seconds_count") {
                counts[name.replacingOccurrences(of: "_count{", with: "{")] = value
            }
        }
        #expect(!series.isEmpty)
        for (key, buckets) in series {
            #expect(buckets.count == 22 && buckets.last?.bound == "+Inf", "\(key)")
            #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $0.count <= $1.count }, "\(key) is not cumulative")
            #expect(buckets.last?.count == counts[key], "\(key): +Inf bucket and count differ")
        }
        let writes = counts["strata_provider_latency_seconds{provider=\"m0\",kind=\"write\"}"] ?? 0
        #expect(writes == 20, "m0 counted \(writes) timed writes")

        // When the client goes, its connection leaves the export's count.
        kill(client.processIdentifier, SIGKILL)
        client.waitUntilExit()
        var after = ""
        for _ in 0..<100 {
            after = try runProgram("/usr/bin/env", ["curl", "-sf", "--unix-socket", control, "http://strata/metrics"]).1
            if after.contains("strata_nbd_export_connections{export=\"vol\"} 0.0") { break }
            usleep(50_000)
        }
        #expect(after.contains("strata_nbd_export_connections{export=\"vol\"} 0.0"), "\(after)")
    }

    @Test func aVerbWithNoServerSaysSo() throws {
        let result = try runProgram(strataBinary, ["list", "--control", "/tmp/strata-no-such.sock"])
        #expect(result.0 == 1)
        #expect(result.2.contains("no strata server answers on /tmp/strata-no-such.sock"), "\(result)")
    }
}
