import Foundation
import Testing

/// `kill -9` of `strata serve` in the middle of write load with FUA and FLUSH, at
/// random moments, again and again: after each restart every write acknowledged with
/// FUA, or before an acknowledged FLUSH, reads back intact, and the mirror, found
/// dirty, resynchronizes; at the end its copies are identical. A process crash keeps
/// what reached the kernel; what a power cut keeps is the power-cut disk's subject.
/// `STRATA_LONG=1` (scripts/check --long) runs 50 crashes instead of 10.
@Suite(.serialized, .timeLimit(.minutes(10)))
struct CrashTests {
    static let topology = """
        disks:
          - {name: d0, file: d0.img, size: 32MiB}
          - {name: d1, file: d1.img, size: 32MiB}
        geoms:
          - {name: m0, class: mirror, consumers: [d0, d1]}
        exports:
          - {name: vol, provider: m0}
        """

    /// Writes 4 KiB blocks, each a different block of the disk and each filled from its
    /// own seed, a third of them with FUA and a FLUSH after every eighth, until the
    /// server goes away; prints each acknowledgement as it comes. Done early, it keeps
    /// the export open, so that the kill always finds the mirror open for writing.
    static let writer = """
        import nbd, random, sys, time
        uri, first = sys.argv[1], int(sys.argv[2])
        h = nbd.NBD()
        h.connect_uri(uri)
        print("connected", flush=True)
        rng = random.Random(first)
        def block(seed):
            return random.Random(seed).randbytes(4096)
        try:
            for n in range(150):
                index = first + n
                fua = rng.random() < 0.33
                h.pwrite(block(index), index * 4096, nbd.CMD_FLAG_FUA if fua else 0)
                print(("fua" if fua else "write"), index, flush=True)
                if n % 8 == 7:
                    h.flush()
                    print("flush", flush=True)
            time.sleep(30)
        except nbd.Error:
            pass
        """

    static let checker = """
        import nbd, random, sys
        uri, durable = sys.argv[1], [int(i) for i in sys.argv[2].split(",") if i]
        h = nbd.NBD()
        h.connect_uri(uri)
        lost = [i for i in durable if h.pread(4096, i * 4096) != random.Random(i).randbytes(4096)]
        print("checked", len(durable), "lost", lost)
        """

    func mirrorState(_ control: String) throws -> String {
        let result = try runProgram(strataBinary, ["status", "--json", "--control", control])
        let object = try JSONSerialization.jsonObject(with: Data(result.1.utf8)) as? [String: Any]
        return (((object?["geoms"] as? [[String: Any]]) ?? []).first?["state"] as? String) ?? "?"
    }

    func waitForComplete(_ control: String) throws -> String {
        let deadline = Date().addingTimeInterval(60)
        var state = try mirrorState(control)
        while state != "COMPLETE" && Date() < deadline {
            usleep(50_000)
            state = try mirrorState(control)
        }
        return state
    }

    @Test func killedAtRandomMomentsItKeepsEveryAcknowledgedDurableWrite() throws {
        let crashes = ProcessInfo.processInfo.environment["STRATA_LONG"] == nil ? 10 : 50
        var (server, socket, control) = try ServeProcess.serving(Self.topology, prefix: "strata-crash")
        let directory = server.directory
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let uri = "nbd+unix:///vol?socket=\(socket)"
        var durable: [Int] = []
        var generator = SystemRandomNumberGenerator()
        var writesAcknowledged = 0
        for crash in 0..<crashes {
            #expect(server.waitForOutput("control socket"), "\(server.stderr)")
            if crash > 0 {
                #expect((server.stdout + server.stderr).contains("was not closed cleanly"), "crash \(crash): found dirty")
            }
            #expect(try waitForComplete(control) == "COMPLETE", "crash \(crash): resynchronized")
            // What earlier rounds made durable is all there after the restart.
            let check = try runProgram("/usr/bin/python3", ["-c", Self.checker, uri, durable.map(String.init).joined(separator: ",")])
            #expect(check.1.contains("checked \(durable.count) lost []"), "crash \(crash): \(check.1) \(check.2)")

            // Write from a fresh range of blocks and kill the server at a random moment.
            let writer = Process()
            writer.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            writer.arguments = ["-c", Self.writer, uri, String(crash * 150)]
            let output = Pipe()
            writer.standardOutput = output
            try writer.run()
            // The kill comes once the writer has the export open, 0 to 150 ms into its writes.
            var received = Data()
            while !String(decoding: received, as: UTF8.self).contains("connected\n") {
                let more = output.fileHandleForReading.availableData
                if more.isEmpty { break }
                received += more
            }
            usleep(UInt32.random(in: 0...150_000, using: &generator))
            _ = server.stop(signal: SIGKILL)
            // The writer has seen the connection drop, or wrote everything and waits.
            kill(writer.processIdentifier, SIGKILL)
            writer.waitUntilExit()
            let lines = String(decoding: received + output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                .split(separator: "\n")
            // Durable: FUA writes acknowledged, and writes acknowledged before a FLUSH
            // that was acknowledged (one request at a time, so order is completion order).
            var sinceFlush: [Int] = []
            for line in lines {
                let fields = line.split(separator: " ")
                switch fields.first {
                case "fua": durable.append(Int(fields[1])!); writesAcknowledged += 1
                case "write": sinceFlush.append(Int(fields[1])!); writesAcknowledged += 1
                case "flush": durable += sinceFlush; sinceFlush = []
                default: break
                }
            }
            server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory)
        }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(try waitForComplete(control) == "COMPLETE")
        let check = try runProgram("/usr/bin/python3", ["-c", Self.checker, uri, durable.map(String.init).joined(separator: ",")])
        #expect(check.1.contains("checked \(durable.count) lost []"), "\(check.1) \(check.2)")
        #expect(server.stop() == 0)
        let copies = try (0..<2).map { try Data(contentsOf: URL(fileURLWithPath: "\(directory)/d\($0).img")).prefix((32 << 20) - 512) }
        #expect(copies[0] == copies[1], "the copies differ after the last resynchronization")
        #expect(durable.count > 0, "some writes were made durable before the crashes")
        print("crash test: \(crashes) kill -9, \(writesAcknowledged) writes acknowledged, \(durable.count) durable, all read back")
    }
}
