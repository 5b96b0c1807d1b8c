import Foundation
import Testing

let cryptsetupInstalled = FileManager.default.isExecutableFile(atPath: "/usr/sbin/cryptsetup")

/// The eli class through `strata serve`, against the LUKS tools users already have:
/// volumes cryptsetup and qemu-img make open in Strata, and what Strata writes reads
/// back through qemu's LUKS driver and through the key cryptsetup dumps; volumes
/// `strata eli init` makes pass cryptsetup's checks.
@Suite(.serialized, .timeLimit(.minutes(5)),
       .enabled(if: cryptsetupInstalled, "needs cryptsetup (scripts/check installs cryptsetup-bin)"))
struct EliServeTests {
    static let passphrase = "open sesame, a passphrase with spaces\n"

    static func cryptsetup(_ arguments: [String]) throws -> (Int32, String, String) {
        try runProgram("/usr/sbin/cryptsetup", ["--batch-mode"] + arguments)
    }

    /// A sparse file of `size` bytes and a key file beside it, in a new directory.
    static func volumeFiles(_ prefix: String, size: UInt64) throws -> (directory: String, image: String, key: String) {
        let directory = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let image = directory + "/vol.img"
        FileManager.default.createFile(atPath: image, contents: nil)
        try FileHandle(forWritingAtPath: image)!.truncate(atOffset: size)
        let key = directory + "/pass.key"
        FileManager.default.createFile(atPath: key, contents: Data(passphrase.utf8))
        return (directory, image, key)
    }

    /// The volume key as `cryptsetup luksDump --dump-volume-key` prints it, in hex.
    static func dumpedVolumeKey(_ image: String, key: String) throws -> String {
        let dump = try cryptsetup(["luksDump", "--dump-volume-key", "--key-file", key, image])
        guard dump.0 == 0, let start = dump.1.range(of: "MK dump:") else { return "none: \(dump)" }
        return dump.1[start.upperBound...].split(whereSeparator: \.isWhitespace).filter { $0.count == 2 }
            .joined().lowercased()
    }

    /// The sector size of a LUKS2 volume's data, as `cryptsetup luksDump` shows it
    /// (cryptsetup picks 4096 on a file system with 4 KiB blocks unless told).
    static func dumpedSectorSize(_ image: String) throws -> Int {
        let dump = try cryptsetup(["luksDump", image]).1
        guard let line = dump.split(separator: "\n").first(where: { $0.contains("sector:") }),
              let size = line.split(whereSeparator: \.isWhitespace).compactMap({ Int($0) }).first else { return 0 }
        return size
    }

    /// Decrypts `count` bytes at payload byte `offset` of a volume with its key, by
    /// Python's `cryptography` (OpenSSL underneath, but none of Strata's code), and
    /// says whether every byte is `byte`. The tweak counts 512-byte sectors whatever the
    /// sector size, as dm-crypt does for LUKS volumes.
    static func decryptsTo(_ byte: UInt8, image: String, keyHex: String, payloadOffset: Int, sectorSize: Int,
                           offset: Int, count: Int) throws -> Bool {
        let script = """
            import sys
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
            key = bytes.fromhex("\(keyHex)")
            sector, payload, offset, count = \(sectorSize), \(payloadOffset), \(offset), \(count)
            with open("\(image)", "rb") as f:
                f.seek(payload + offset)
                data = f.read(count)
            plain = bytearray()
            for at in range(0, count, sector):
                tweak = ((offset + at) // 512).to_bytes(16, "little")
                d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
                plain += d.update(data[at:at + sector]) + d.finalize()
            print("same" if plain == bytes([\(byte)]) * count else "differs")
            """
        let result = try runProgram("/usr/bin/python3", ["-c", script])
        return result.0 == 0 && result.1.contains("same")
    }

    static func serveEli(_ directory: String, image: String, key: String, name: String = "t.yaml",
                         writable: Bool = false) throws -> (ServeProcess, String) {
        let socket = directory + "/nbd.sock"
        let server = try ServeProcess(arguments: ["serve", "--config", name], directory: directory, files: [name: """
            listen: [unix://\(socket)]
            control: \(directory)/control.sock
            \(writable ? "writable-directories: [\(directory)]" : "")
            disks:
              - {name: d0, file: \(image)}
            geoms:
              - {name: e0, class: eli, consumers: [d0], key-file: \(key)}
            exports:
              - {name: vol, provider: e0}
            """])
        return (server, "nbd+unix:///vol?socket=\(socket)")
    }

    static func qemuIO(_ uri: String, _ commands: [String]) throws -> (Int32, String, String) {
        try runProgram("/usr/bin/qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [uri])
    }

    /// qemu-io straight on a LUKS1 image, through qemu's own LUKS driver.
    static func qemuLUKS(_ image: String, key: String, _ commands: [String]) throws -> (Int32, String, String) {
        try runProgram("/usr/bin/qemu-io", ["--object", "secret,id=s0,file=\(key)", "--image-opts"]
                       + commands.flatMap { ["-c", $0] }
                       + ["driver=luks,key-secret=s0,file.driver=file,file.filename=\(image)"])
    }

    static func succeeded(_ result: (Int32, String, String)) -> Bool {
        result.0 == 0 && !result.1.contains("Pattern verification failed") && !result.1.contains("failed")
    }

    @Test(arguments: [["--type", "luks2", "--sector-size", "512", "--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4",
                       "--pbkdf-parallel", "1"],
                      ["--type", "luks2", "--sector-size", "4096", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
                      ["--type", "luks1", "--pbkdf-force-iterations", "1000", "--hash", "sha256"]])
    func aVolumeCryptsetupFormatsServesItsDataAndWhatStrataWritesDecryptsWithItsKey(options: [String]) throws {
        let (directory, image, key) = try Self.volumeFiles("strata-eli-cs", size: 40 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let format = try Self.cryptsetup(["luksFormat"] + options + ["--key-file", key, image])
        #expect(format.0 == 0, "\(format)")

        let (server, uri) = try Self.serveEli(directory, image: image, key: key)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let io = try Self.qemuIO(uri, ["write -P 0x5a 1M 1M", "write -P 0xa5 8M 64k", "read -P 0x5a 1M 1M",
                                       "read -P 0xa5 8M 64k"])
        #expect(Self.succeeded(io), "\(io)")
        #expect(server.stop() == 0)

        let luks2 = options.contains("luks2")
        let sectorSize = luks2 ? try Self.dumpedSectorSize(image) : 512
        let keyHex = try Self.dumpedVolumeKey(image, key: key)
        #expect(keyHex.count == 128, "\(keyHex)")
        let payloadOffset = luks2 ? 16 << 20 : 4096 * 512
        #expect(try Self.decryptsTo(0x5a, image: image, keyHex: keyHex, payloadOffset: payloadOffset, sectorSize: sectorSize,
                                    offset: 1 << 20, count: 1 << 20))
        #expect(try Self.decryptsTo(0xa5, image: image, keyHex: keyHex, payloadOffset: payloadOffset, sectorSize: sectorSize,
                                    offset: 8 << 20, count: 64 << 10))
        if !luks2 {
            let read = try Self.qemuLUKS(image, key: key, ["read -P 0x5a 1M 1M", "read -P 0xa5 8M 64k"])
            #expect(Self.succeeded(read), "\(read)")
        }
    }

    @Test func aQemuImgLUKSImageAndStrataReadEachOthersWrites() throws {
        let (directory, image, key) = try Self.volumeFiles("strata-eli-qemu", size: 0)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let arguments = ["create", "--object", "secret,id=s0,file=\(key)", "-f", "luks", "-o", "key-secret=s0,iter-time=10",
                         image, "32M"]
        var create = try runProgram("/usr/bin/qemu-img", arguments)
        // qemu-img may see no CPU time pass while it times its key derivation on a busy
        // machine, and give up: that alone is tried again.
        for _ in 0..<4 where create.0 != 0 && create.2.contains("Unable to get accurate CPU usage") {
            create = try runProgram("/usr/bin/qemu-img", arguments)
        }
        #expect(create.0 == 0, "\(create)")
        #expect(Self.succeeded(try Self.qemuLUKS(image, key: key, ["write -P 0x11 2M 1M"])))

        let (server, uri) = try Self.serveEli(directory, image: image, key: key)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let io = try Self.qemuIO(uri, ["read -P 0x11 2M 1M", "write -P 0x22 5M 1M", "write -P 0x33 31M 512"])
        #expect(Self.succeeded(io), "\(io)")
        #expect(server.stop() == 0)
        let back = try Self.qemuLUKS(image, key: key, ["read -P 0x22 5M 1M", "read -P 0x33 31M 512", "read -P 0x11 2M 1M"])
        #expect(Self.succeeded(back), "\(back)")
    }

    @Test(arguments: ["luks1", "luks2"])
    func aVolumeStrataFormatsPassesCryptsetupAndOpensInQemu(type: String) throws {
        let (directory, image, key) = try Self.volumeFiles("strata-eli-init", size: 40 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let control = directory + "/control.sock"
        let plain = try ServeProcess(arguments: ["serve", "--config", "plain.yaml"], directory: directory, files: ["plain.yaml": """
            control: \(control)
            writable-directories: [\(directory)]
            disks:
              - {name: d0, file: \(image)}
            """])
        #expect(plain.waitForOutput("control socket"), "\(plain.stderr)")
        let kdf = type == "luks1" ? ["--pbkdf-iterations", "1000"]
            : ["--pbkdf", "argon2id", "--pbkdf-memory", "8192", "--pbkdf-iterations", "4", "--pbkdf-parallel", "1"]
        let initialized = try runProgram(strataBinary, ["eli", "init", "d0", "--key-file", key, "--type", type] + kdf
                                         + ["--json", "--control", control])
        #expect(initialized.0 == 0, "\(initialized)")
        let again = try runProgram(strataBinary, ["eli", "init", "d0", "--key-file", key, "--json", "--control", control])
        #expect(again.0 != 0 && again.2.contains("holds a \(type.uppercased()) volume already"), "\(again)")
        #expect(plain.stop() == 0)

        let dump = try Self.cryptsetup(["luksDump", image])
        #expect(dump.0 == 0 && dump.1.contains("Version:") && dump.1.contains(type == "luks1" ? "1" : "2"), "\(dump)")
        #expect(try Self.cryptsetup(["open", "--test-passphrase", "--key-file", key, image]).0 == 0)
        let wrongKey = directory + "/wrong.key"
        FileManager.default.createFile(atPath: wrongKey, contents: Data("not it".utf8))
        #expect(try Self.cryptsetup(["open", "--test-passphrase", "--key-file", wrongKey, image]).0 != 0)

        let (server, uri) = try Self.serveEli(directory, image: image, key: key, name: "eli.yaml")
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(Self.succeeded(try Self.qemuIO(uri, ["write -P 0x77 3M 1M", "write -P 0x78 12M 4k"])))
        #expect(server.stop() == 0)
        let keyHex = try Self.dumpedVolumeKey(image, key: key)
        let payloadOffset = type == "luks2" ? 16 << 20 : 4096 * 512
        #expect(try Self.decryptsTo(0x77, image: image, keyHex: keyHex, payloadOffset: payloadOffset, sectorSize: 512,
                                    offset: 3 << 20, count: 1 << 20))
        if type == "luks1" {
            #expect(Self.succeeded(try Self.qemuLUKS(image, key: key, ["read -P 0x77 3M 1M", "read -P 0x78 12M 4k"])))
        }
    }

    @Test func aWrongPassphraseStopsTheStartWithAMessageAndWritesNothing() throws {
        let (directory, image, key) = try Self.volumeFiles("strata-eli-wrong", size: 24 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try Self.cryptsetup(["luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                                     "--key-file", key, image]).0 == 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: image))
        let wrong = directory + "/wrong.key"
        FileManager.default.createFile(atPath: wrong, contents: Data("guess".utf8))
        let (server, _) = try Self.serveEli(directory, image: image, key: wrong)
        #expect(server.waitForExit() == 1)
        #expect(server.stderr.contains("t.yaml") && server.stderr.contains("no key slot opens"), "\(server.stderr)")
        let after = try Data(contentsOf: URL(fileURLWithPath: image))
        #expect(before == after)
    }
}
