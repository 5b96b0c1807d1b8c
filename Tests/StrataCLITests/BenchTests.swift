import Foundation
import Testing

@Suite(.serialized, .timeLimit(.minutes(2)))
struct BenchTests {
    func topologyFile() throws -> String {
        let directory = NSTemporaryDirectory() + "strata-bench-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/bench.yaml"
        try "disks:\n  - name: m0\n    memory: 256MiB\n  - name: f0\n    file: f0.img\n    size: 64MiB\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test(arguments: ["randread", "randwrite", "read", "write", "randrw"])
    func benchPrintsTheFixedJSONShape(pattern: String) throws {
        let config = try topologyFile()
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: config).deletingLastPathComponent().path) }
        let result = try runProgram(strataBinary, ["bench", "--config", config, "--provider", "m0", "--rw", pattern,
                                                   "--bs", "4K", "--iodepth", "8", "--seconds", "0.5", "--json"])
        #expect(result.0 == 0, "\(result)")
        let object = try JSONSerialization.jsonObject(with: Data(result.1.utf8)) as? [String: Any]
        #expect(Set(object?.keys ?? [:].keys) == ["iops", "mibps", "latency_us"], "\(result.1)")
        let latency = object?["latency_us"] as? [String: Double] ?? [:]
        #expect(Set(latency.keys) == ["p50", "p99", "p999", "max"])
        #expect((object?["iops"] as? Double ?? 0) > 100)
        #expect(latency["p50"]! <= latency["p99"]! && latency["p99"]! <= latency["p999"]! && latency["p999"]! <= latency["max"]!)
    }

    @Test func benchDrivesAFileDiskFromSeveralThreads() throws {
        let config = try topologyFile()
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: config).deletingLastPathComponent().path) }
        let result = try runProgram(strataBinary, ["bench", "--config", config, "--provider", "f0", "--rw", "randrw",
                                                   "--bs", "16K", "--iodepth", "4", "--threads", "2", "--seconds", "0.5"])
        #expect(result.0 == 0, "\(result)")
        #expect(result.1.contains("IOPS") && result.1.contains("latency (µs): p50"), "\(result)")
    }

    @Test func benchRefusesAnUnknownProviderAndBadOptions() throws {
        let config = try topologyFile()
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: config).deletingLastPathComponent().path) }
        let unknown = try runProgram(strataBinary, ["bench", "--config", config, "--provider", "nope"])
        #expect(unknown.0 == 1 && unknown.2.contains("--provider 'nope' is not a provider of this topology (providers: f0, m0)"), "\(unknown)")
        let pattern = try runProgram(strataBinary, ["bench", "--config", config, "--provider", "m0", "--rw", "sideways"])
        #expect(pattern.0 != 0 && pattern.2.contains("--rw 'sideways'"), "\(pattern)")
        let size = try runProgram(strataBinary, ["bench", "--config", config, "--provider", "m0", "--bs", "100"])
        #expect(size.0 == 1 && size.2.contains("must be a multiple of m0's 512-byte sectors"), "\(size)")
    }
}
