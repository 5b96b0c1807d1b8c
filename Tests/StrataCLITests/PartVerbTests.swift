import Foundation
import Testing

/// `strata part` writes partition tables on a running server as gpart does, tables that
/// sfdisk reads, and the disk's partitions follow at once.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct PartVerbTests {
    func part(_ control: String, _ words: [String]) throws -> (Int32, String, String) {
        try runProgram(strataBinary, ["part"] + words + ["--json", "--control", control])
    }

    func providers(_ control: String) throws -> [String] {
        let list = try runProgram(strataBinary, ["list", "--json", "--control", control])
        let object = try JSONSerialization.jsonObject(with: Data(list.1.utf8)) as? [String: Any]
        let geoms = object?["geoms"] as? [[String: Any]] ?? []
        return geoms.flatMap { ($0["providers"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String } }.sorted()
    }

    /// What sfdisk reads of an image: its label and each partition's start, size and type.
    func sfdisk(_ image: String) throws -> [String: Any] {
        let result = try runProgram("/usr/sbin/sfdisk", ["--json", image])
        let object = try JSONSerialization.jsonObject(with: Data(result.1.utf8)) as? [String: Any]
        return object?["partitiontable"] as? [String: Any] ?? ["error": result.2]
    }

    @Test func aGPTMadeAddedToAndDestroyedOnARunningServerIsWhatSfdiskReads() throws {
        let (server, _, control) = try ServeProcess.serving("""
            disks:
              - {name: g0, file: g0.img, size: 16MiB}
            """, prefix: "strata-part")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let image = server.directory + "/g0.img"

        let empty = try part(control, ["add", "g0", "--size", "1m"])
        #expect(empty.0 == 1 && empty.2.contains("g0 has no partition table"), "\(empty)")
        let created = try part(control, ["create", "g0"])
        #expect(created.0 == 0 && created.1.contains("\"scheme\" : \"gpt\""), "\(created)")
        #expect(try part(control, ["create", "g0"]).2.contains("g0 has a GPT already"))
        let long = try part(control, ["add", "g0", "--size", "2m", "--label", String(repeating: "x", count: 37)])
        #expect(long.0 == 1 && long.2.contains("is 37 UTF-16 units long; a GPT partition's name holds at most 36"), "\(long)")
        #expect(try part(control, ["add", "g0", "--size", "2m", "--label", "root"]).0 == 0)
        let swap = try part(control, ["add", "g0", "--size", "4m", "--type", "linux-swap"])
        #expect(swap.0 == 0 && swap.1.contains("\"provider\" : \"g0p2\""), "\(swap)")
        #expect(try providers(control).filter { $0.hasPrefix("g0") } == ["g0", "g0p1", "g0p2"])

        let table = try sfdisk(image)
        #expect(table["label"] as? String == "gpt", "\(table)")
        let partitions = table["partitions"] as? [[String: Any]] ?? []
        #expect(partitions.map { $0["start"] as? Int } == [2048, 6144], "\(partitions)")
        #expect(partitions.map { $0["size"] as? Int } == [4096, 8192], "\(partitions)")
        #expect(partitions.first?["name"] as? String == "root")
        #expect((partitions.last?["type"] as? String)?.uppercased() == "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F")

        #expect(try part(control, ["delete", "g0", "--index", "1"]).0 == 0)
        #expect(try providers(control).filter { $0.hasPrefix("g0") } == ["g0", "g0p2"])
        let refused = try part(control, ["destroy", "g0"])
        #expect(refused.0 == 1 && refused.2.contains("has 1 partition(s)"), "\(refused)")
        let destroyed = try part(control, ["destroy", "g0", "--force"])
        #expect(destroyed.0 == 0 && destroyed.1.contains("\"scheme\" : \"none\""), "\(destroyed)")
        #expect(try providers(control).filter { $0.hasPrefix("g0") } == ["g0"])
        #expect(try runProgram("/usr/sbin/sfdisk", ["--json", image]).1.isEmpty, "no table left for sfdisk")
        #expect(server.stop() == 0)
    }

    @Test func anMBRTakesTypeBytesAndNoLabels() throws {
        let (server, _, control) = try ServeProcess.serving("""
            disks:
              - {name: m0, file: m0.img, size: 16MiB}
            """, prefix: "strata-mbr")
        defer { server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(try part(control, ["create", "m0", "--scheme", "mbr"]).0 == 0)
        #expect(try part(control, ["add", "m0", "--size", "1m", "--type", "83"]).0 == 0)
        #expect(try part(control, ["add", "m0", "--size", "1m", "--type", "linux-swap"]).0 == 0)
        let label = try part(control, ["add", "m0", "--size", "1m", "--label", "x"])
        #expect(label.0 == 1 && label.2.contains("label 'x': is for GPT partitions"), "\(label)")
        let table = try sfdisk(server.directory + "/m0.img")
        #expect(table["label"] as? String == "dos", "\(table)")
        let partitions = table["partitions"] as? [[String: Any]] ?? []
        #expect(partitions.map { $0["type"] as? String } == ["83", "82"], "\(partitions)")
        #expect(try providers(control).filter { $0.hasPrefix("m0") } == ["m0", "m0p1", "m0p2"])
        let missing = try part(control, ["add", "m0"])
        #expect(missing.0 == 1 && missing.2.contains("size: is required"), "\(missing)")
        let bad = try part(control, ["add", "m0", "--size", "lots"])
        #expect(bad.0 == 1 && bad.2.contains("size 'lots': must be a size like"), "\(bad)")
        #expect(server.stop() == 0)
    }

    @Test func aDiskWhosePartitionAClientHasOpenIsNotEdited() throws {
        let directory = NSTemporaryDirectory() + "strata-busy-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/b0.img"
        FileManager.default.createFile(atPath: image, contents: nil)
        try FileHandle(forWritingAtPath: image)!.truncate(atOffset: 16 << 20)
        let made = try runProgram("/bin/sh", ["-c", "printf 'label: gpt\\nsize=4MiB\\n' | /usr/sbin/sfdisk -q \(image)"])
        #expect(made.0 == 0, "\(made)")
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": """
            listen: [unix://\(directory)/nbd.sock]
            control: \(directory)/control.sock
            disks:
              - {name: b0, file: b0.img}
            exports:
              - {name: p1, provider: b0p1}
            """])
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        client.arguments = ["-c", """
            import nbd, time
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///p1?socket=\(directory)/nbd.sock")
            print("open", flush=True)
            time.sleep(60)
            """]
        let output = Pipe()
        client.standardOutput = output
        try client.run()
        #expect(String(decoding: output.fileHandleForReading.availableData, as: UTF8.self).contains("open"))
        let refused = try part(directory + "/control.sock", ["add", "b0", "--size", "1m"])
        #expect(refused.0 == 1 && refused.2.contains("b0 is open"), "\(refused)")
        kill(client.processIdentifier, SIGKILL)
        client.waitUntilExit()
        #expect(server.stop() == 0)
        let table = try sfdisk(image)
        #expect((table["partitions"] as? [[String: Any]])?.count == 1, "the table is as sfdisk wrote it: \(table)")
    }
}
