import Foundation
import Testing

/// A power-cut disk from a topology file, written over NBD, and its crash images taken
/// out with `strata powercut`.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PowerCutVerbTests {
    @Test func crashImagesOfADiskServedOverNBDAreWrittenForUsersToCheck() throws {
        let (server, socket, control) = try ServeProcess.serving("""
            writable-directories: [crash]
            disks:
              - name: pc0
                powercut: 4MiB
            exports:
              - name: vol
                provider: pc0
            """, prefix: "strata-pcut")
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        // Flushed, then not: a write of 'a' that must survive, one of 'b' that may not.
        let client = try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(socket)")
            h.pwrite(b"a" * 65536, 0)
            h.flush()
            h.pwrite(b"b" * 65536, 1048576)
            print("ok")
            """])
        #expect(client.1.contains("ok"), "\(client)")

        let show = try runProgram(strataBinary, ["powercut", "show", "pc0", "--json", "--control", control])
        let log = try JSONSerialization.jsonObject(with: Data(show.1.utf8)) as? [String: Any]
        let entries = try #require(log?["entries"] as? Int, "\(show)")
        #expect(entries >= 3 && log?["disks"] as? [String] == ["pc0"] && log?["dataBytes"] as? Int == 131072, "\(show)")

        let out = server.directory + "/crash"
        let images = try runProgram(strataBinary, ["powercut", "images", "pc0", "--out", out, "--from", "\(entries)",
                                                   "--subsets", "2", "--json", "--control", control])
        #expect(images.0 == 0 && images.1.contains("\"states\" : 2"), "\(images)")
        let states = String(decoding: FileManager.default.contents(atPath: out + "/states.txt") ?? Data(), as: UTF8.self)
        #expect(states.hasPrefix("00001 crash at \(entries)"), "\(states)")
        let everything = try #require(FileManager.default.contents(atPath: out + "/00001/pc0.img"))
        let nothing = try #require(FileManager.default.contents(atPath: out + "/00002/pc0.img"))
        #expect(everything.count == 4 << 20 && nothing.count == 4 << 20)
        for image in [everything, nothing] {
            #expect(image.prefix(65536).allSatisfy { $0 == UInt8(ascii: "a") }, "the flushed write is on every image")
        }
        #expect(everything[1048576..<(1048576 + 65536)].allSatisfy { $0 == UInt8(ascii: "b") }, "kept")
        #expect(nothing[1048576..<(1048576 + 65536)].allSatisfy { $0 == 0 }, "lost")

        // The server writes only beneath its data directory and writable-directories,
        // whoever asks: not in /etc, nor beside the topology file.
        for elsewhere in ["/etc/strata-powercut-\(UUID().uuidString.prefix(8))", server.directory + "/elsewhere"] {
            let refused = try runProgram(strataBinary, ["powercut", "images", "pc0", "--out", elsewhere, "--control", control])
            #expect(refused.0 == 1 && refused.2.contains("400") && refused.2.contains("must be beneath")
                    && refused.2.contains("strata-data or ") && refused.2.contains("writable-directories"), "\(refused)")
            #expect(!FileManager.default.fileExists(atPath: elsewhere))
        }
        let inData = server.directory + "/strata-data/crash/first"
        let written = try runProgram(strataBinary, ["powercut", "images", "pc0", "--out", inData, "--points", "1", "--control", control])
        #expect(written.0 == 0 && FileManager.default.fileExists(atPath: inData + "/states.txt"), "\(written)")
        // An image is never written through a link found where it goes.
        let victim = server.directory + "/victim"
        #expect(FileManager.default.createFile(atPath: victim, contents: Data("keep".utf8)))
        let linked = server.directory + "/strata-data/crash/linked"
        try FileManager.default.createDirectory(atPath: linked + "/00001", withIntermediateDirectories: true)
        #expect(symlink(victim, linked + "/00001/pc0.img") == 0)
        let throughLink = try runProgram(strataBinary, ["powercut", "images", "pc0", "--out", linked, "--points", "1", "--control", control])
        #expect(throughLink.0 == 1 && throughLink.2.contains("create \(linked)/00001/pc0.img") && throughLink.2.contains("ELOOP"),
                "\(throughLink)")
        #expect((try? String(contentsOfFile: victim, encoding: .utf8)) == "keep")

        let bad = try runProgram(strataBinary, ["powercut", "images", "pc0", "--out", out, "--subsets", "0", "--control", control])
        #expect(bad.0 == 1 && bad.2.contains("subsets '0': must be a whole number from 1 to 64"), "\(bad)")
        let missing = try runProgram(strataBinary, ["powercut", "show", "nope", "--control", control])
        #expect(missing.0 == 1 && missing.2.contains("no powercut geom named nope"), "\(missing)")
    }
}
