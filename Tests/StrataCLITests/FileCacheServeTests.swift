import Foundation
import Testing

/// `strata serve` of a file disk with `cache: none` (O_DIRECT), read and written by
/// qemu-io over NBD, with requests aligned and not.
@Suite(.serialized, .timeLimit(.minutes(3)),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-io"), "needs qemu-io (qemu-utils)"))
struct FileCacheServeTests {
    @Test func aCacheNoneFileIsServedAndWhatQemuWritesIsInTheFileAndNotInThePageCache() throws {
        let directory = NSTemporaryDirectory() + "strata-direct-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = directory + "/nbd.sock"
        let image = directory + "/d0.img"
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": """
            listen: [unix://\(socket)]
            disks:
              - {name: d0, file: \(image), size: 16MiB, cache: none}
            exports:
              - {name: vol, provider: d0}
            """])
        #expect(server.waitForOutput("listening on"), "\(server.stderr)")
        #expect(server.stdout.contains("file disk d0: \(image), io ") && server.stdout.contains(", cache none (O_DIRECT"),
                "\(server.stdout)")
        let uri = "nbd+unix:///vol?socket=\(socket)"
        // 1 MiB aligned, 4 KiB, and a write that starts and ends inside sectors.
        let io = try runProgram("/usr/bin/qemu-io", ["-f", "raw",
                                                     "-c", "write -P 0x5a 1M 1M", "-c", "write -P 0xa5 8M 4k",
                                                     "-c", "write -P 0x33 10001 3000", "-c", "flush",
                                                     "-c", "read -P 0x5a 1M 1M", "-c", "read -P 0xa5 8M 4k",
                                                     "-c", "read -P 0x33 10001 3000", uri])
        #expect(io.0 == 0 && !io.1.contains("failed") && !io.2.contains("error"), "\(io)")
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/fincore") {
            let fincore = try runProgram("/usr/bin/fincore", ["--bytes", "--noheadings", "--output", "RES", image])
            #expect(fincore.0 == 0 && fincore.1.trimmingCharacters(in: .whitespacesAndNewlines) == "0",
                    "pages of the file in the page cache: \(fincore)")
        }
        #expect(server.stop() == 0)
        let file = try Data(contentsOf: URL(fileURLWithPath: image))
        #expect(file[(1 << 20)..<(2 << 20)].allSatisfy { $0 == 0x5a })
        #expect(file[(8 << 20)..<((8 << 20) + 4096)].allSatisfy { $0 == 0xa5 })
        #expect(file[10001..<13001].allSatisfy { $0 == 0x33 })
        #expect(file[9984..<10001].allSatisfy { $0 == 0 } && file[13001..<13312].allSatisfy { $0 == 0 })
    }
}
