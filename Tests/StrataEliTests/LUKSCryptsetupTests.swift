import Foundation
import Strata
import StrataEli
import Testing

/// Strata and cryptsetup (and qemu-img) open each other's volumes: the volume key is
/// the same, key slots added by one open with the other, removed ones with neither.
@Suite(.enabled(if: cryptsetupInstalled, "needs /usr/sbin/cryptsetup"))
struct LUKSCryptsetupTests {
    static let passphrase = "correct horse battery staple"

    struct Made: Sendable, CustomStringConvertible {
        let name: String
        let arguments: [String]
        let size: Int64
        let version: LUKSVersion
        let sectorSize: Int
        var description: String { name }
    }

    static let cryptsetupVolumes: [Made] = [
        Made(name: "LUKS2 argon2id", arguments: ["--type", "luks2", "--sector-size", "512"] + quickArgon2, size: 20 << 20,
             version: .luks2, sectorSize: 512),
        Made(name: "LUKS2 pbkdf2", arguments: ["--type", "luks2", "--sector-size", "512"] + quickPBKDF2, size: 20 << 20,
             version: .luks2, sectorSize: 512),
        Made(name: "LUKS2 4096-byte sectors, AES-128", arguments: ["--type", "luks2", "--sector-size", "4096", "--key-size", "256"]
             + quickArgon2, size: 20 << 20, version: .luks2, sectorSize: 4096),
        Made(name: "LUKS1", arguments: ["--type", "luks1", "--pbkdf-force-iterations", "1000"], size: 4 << 20,
             version: .luks1, sectorSize: 512),
        Made(name: "LUKS1 AES-128, sha1", arguments: ["--type", "luks1", "--key-size", "256", "--hash", "sha1",
                                                        "--pbkdf-force-iterations", "1000"], size: 4 << 20,
             version: .luks1, sectorSize: 512),
    ]

    @Test(arguments: cryptsetupVolumes)
    func opensWhatCryptsetupFormats(_ made: Made) throws {
        let directory = try TemporaryDirectory()
        let image = try directory.file("volume.img", size: made.size)
        let keyFile = try directory.keyFile("key", Self.passphrase)
        try cryptsetup(["luksFormat", "--batch-mode", "--key-file", keyFile] + made.arguments + [image])
        let expected = try cryptsetupVolumeKey(image, keyFile: keyFile)

        let header = try LUKSHeader.read(from: try FileMedium(path: image))
        #expect(header.version == made.version)
        #expect(header.activeKeySlots == [0])
        let volume = try header.unlock(passphrase: secret(Self.passphrase))
        #expect(masterKeyBytes(volume) == expected)
        #expect(volume.cipher == "aes-xts-plain64")
        #expect(volume.sectorSize == made.sectorSize)
        // LUKS2 counts the IV in 512-byte sectors whatever the sector size (see below).
        #expect(!volume.ivLargeSectors)
        #expect(volume.payloadOffset == (made.version == .luks2 ? 16 << 20 : 2 << 20))
        #expect(volume.payloadSize == nil)
        #expect(volume.uuid == header.uuid)
        let uuid = try cryptsetup(["luksUUID", image]).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(header.uuid == uuid)

        // The dump is JSON and has no secret in it.
        let dump = try JSONEncoder().encode(header.dump)
        let text = String(decoding: dump, as: UTF8.self)
        #expect(!text.contains("salt"))
        #expect(try JSONDecoder().decode(LUKSDump.self, from: dump) == header.dump)
        #expect(header.dump.keySlots.map(\.id) == [0])
    }

    @Test func opensWhatQemuImgFormats() throws {
        try #require(qemuImgInstalled)
        let directory = try TemporaryDirectory()
        let image = directory.path + "/qemu.luks"
        let keyFile = try directory.keyFile("key", Self.passphrase)
        let made = try createQemuLUKSImage(["create", "-q", "-f", "luks", "--object", "secret,id=s0,data=\(Self.passphrase)",
                                            "-o", "key-secret=s0,iter-time=10", image, "4M"])
        try #require(made.status == 0, "qemu-img: \(made.errors)")
        let header = try LUKSHeader.read(from: try FileMedium(path: image))
        #expect(header.version == .luks1)
        let volume = try header.unlock(passphrase: secret(Self.passphrase))
        #expect(masterKeyBytes(volume) == (try cryptsetupVolumeKey(image, keyFile: keyFile)))
    }

    static let strataFormats: [(LUKSVersion, Int, Int, KDFParameters)] = [
        (.luks1, 64, 512, tinyPBKDF2),
        (.luks1, 32, 512, tinyPBKDF2),
        (.luks2, 64, 512, tinyArgon2),
        (.luks2, 64, 512, .argon2i(time: 4, memory: 64, lanes: 2)),
        (.luks2, 32, 4096, tinyPBKDF2),
    ]

    @Test(arguments: strataFormats)
    func cryptsetupOpensWhatStrataFormats(version: LUKSVersion, keySize: Int, sectorSize: Int, kdf: KDFParameters) throws {
        let directory = try TemporaryDirectory()
        let image = try directory.file("volume.img", size: version == .luks2 ? 17 << 20 : 3 << 20)
        let keyFile = try directory.keyFile("key", Self.passphrase)
        let volume = try LUKSFormatter.format(try FileMedium(path: image), version: version, passphrase: secret(Self.passphrase),
                                              keySize: keySize, sectorSize: sectorSize, kdf: kdf)
        // cryptsetup reads it without a complaint.
        let dump = try runTool("/usr/sbin/cryptsetup", ["luksDump", image])
        #expect(dump.status == 0)
        #expect(dump.errors.isEmpty, "\(dump.errors)")
        #expect(dump.output.contains("Version:       \t\(version == .luks1 ? 1 : 2)"))
        #expect(dump.output.contains(volume.uuid))
        #expect(try cryptsetupOpens(image, keyFile: keyFile))
        #expect(try cryptsetupVolumeKey(image, keyFile: keyFile) == masterKeyBytes(volume))
        #expect(volume.sectorSize == sectorSize)
        // And Strata reads back what it wrote.
        let reread = try LUKSHeader.read(from: try FileMedium(path: image)).unlock(passphrase: secret(Self.passphrase))
        #expect(masterKeyBytes(reread) == masterKeyBytes(volume))
        #expect(reread.payloadOffset == volume.payloadOffset)
        if version == .luks2 {
            // cryptsetup finds nothing to repair in either copy.
            let json = try cryptsetup(["luksDump", "--dump-json-metadata", image])
            #expect(json.contains("\"keyslots_size\":\"16744448\""))
        }
    }

    @Test(arguments: [LUKSVersion.luks1, .luks2])
    func keysAddedAndRemovedByEitherToolWork(version: LUKSVersion) throws {
        let directory = try TemporaryDirectory()
        let image = try directory.file("volume.img", size: version == .luks2 ? 17 << 20 : 3 << 20)
        let first = try directory.keyFile("first", "first passphrase")
        let second = try directory.keyFile("second", "second passphrase")
        let third = try directory.keyFile("third", "third passphrase")
        try cryptsetup(["luksFormat", "--batch-mode", "--type", version.rawValue, "--key-file", first]
            + (version == .luks2 ? quickArgon2 : ["--pbkdf-force-iterations", "1000"]) + [image])
        let masterKey = try cryptsetupVolumeKey(image, keyFile: first)

        // cryptsetup adds, Strata opens.
        try cryptsetup(["luksAddKey", "--batch-mode", "--key-file", first]
            + (version == .luks2 ? quickPBKDF2 : ["--pbkdf-force-iterations", "1000"]) + [image, second])
        var header = try LUKSHeader.read(from: try FileMedium(path: image))
        #expect(header.activeKeySlots == [0, 1])
        #expect(masterKeyBytes(try header.unlock(passphrase: secret("second passphrase"))) == masterKey)

        // Strata adds (in slot 5), cryptsetup opens.
        let kdf = version == .luks2 ? tinyArgon2 : tinyPBKDF2
        let slot = try LUKSFormatter.addKey(try FileMedium(path: image), passphrase: secret("second passphrase"),
                                            newPassphrase: secret("third passphrase"), kdf: kdf, slot: 5)
        #expect(slot == 5)
        #expect(try cryptsetupOpens(image, keyFile: third))
        #expect(try cryptsetupVolumeKey(image, keyFile: third) == masterKey)
        header = try LUKSHeader.read(from: try FileMedium(path: image))
        #expect(header.activeKeySlots == [0, 1, 5])

        // Strata removes the first; neither opens with it.
        #expect(try LUKSFormatter.removeKey(try FileMedium(path: image), passphrase: secret("first passphrase")) == 0)
        #expect(try !cryptsetupOpens(image, keyFile: first))
        let removed = #expect(throws: StrataError.self) {
            try LUKSHeader.read(from: try FileMedium(path: image)).unlock(passphrase: secret("first passphrase"))
        }
        #expect(removed?.code == .permission)

        // cryptsetup removes Strata's; Strata no longer opens with it.
        try cryptsetup(["luksRemoveKey", "--batch-mode", image, third])
        #expect(throws: StrataError.self) {
            try LUKSHeader.read(from: try FileMedium(path: image)).unlock(passphrase: secret("third passphrase"))
        }
        header = try LUKSHeader.read(from: try FileMedium(path: image))
        #expect(header.activeKeySlots == [1])
        #expect(masterKeyBytes(try header.unlock(passphrase: secret("second passphrase"))) == masterKey)
        #expect(try cryptsetupOpens(image, keyFile: second))

        // The last key stays.
        let last = #expect(throws: StrataError.self) {
            try LUKSFormatter.removeKey(try FileMedium(path: image), passphrase: secret("second passphrase"))
        }
        #expect(last?.code == .busy)
    }

    @Test(arguments: [LUKSVersion.luks1, .luks2])
    func aWrongPassphraseChangesNothing(version: LUKSVersion) throws {
        let directory = try TemporaryDirectory()
        let image = try directory.file("volume.img", size: version == .luks2 ? 17 << 20 : 3 << 20)
        let keyFile = try directory.keyFile("key", Self.passphrase)
        try cryptsetup(["luksFormat", "--batch-mode", "--type", version.rawValue, "--key-file", keyFile]
            + (version == .luks2 ? quickPBKDF2 : ["--pbkdf-force-iterations", "1000"]) + [image])
        let before = try fileBytes(image)
        let medium = try FileMedium(path: image)
        let error = #expect(throws: StrataError.self) {
            try LUKSHeader.read(from: medium).unlock(passphrase: secret("not the passphrase"))
        }
        #expect(error?.code == .permission)
        #expect(error?.message == "no key slot opens with this passphrase")
        #expect(throws: StrataError.self) {
            try LUKSFormatter.addKey(medium, passphrase: secret("not the passphrase"), newPassphrase: secret("x"), kdf: tinyPBKDF2)
        }
        #expect(throws: StrataError.self) { try LUKSFormatter.removeKey(medium, passphrase: secret("not the passphrase")) }
        #expect(try fileBytes(image) == before)
    }

    /// A damaged primary LUKS2 header: the secondary is used; both damaged: a clear error.
    @Test func aDamagedPrimaryFallsBackToTheSecondary() throws {
        let directory = try TemporaryDirectory()
        let image = try directory.file("volume.img", size: 20 << 20)
        let keyFile = try directory.keyFile("key", Self.passphrase)
        try cryptsetup(["luksFormat", "--batch-mode", "--type", "luks2", "--key-file", keyFile] + quickPBKDF2 + [image])
        let expected = try cryptsetupVolumeKey(image, keyFile: keyFile)
        let medium = try FileMedium(path: image)
        // A byte of the primary's JSON.
        try medium.write([0x7b ^ 0xff], at: 4096)
        let volume = try LUKSHeader.read(from: medium).unlock(passphrase: secret(Self.passphrase))
        #expect(masterKeyBytes(volume) == expected)
        // The primary's magic gone too: the secondary is still found.
        try medium.write([0, 0, 0, 0, 0, 0], at: 0)
        #expect(masterKeyBytes(try LUKSHeader.read(from: medium).unlock(passphrase: secret(Self.passphrase))) == expected)
        // And the secondary's JSON.
        try medium.write([0x00], at: 16384 + 4096 + 20)
        let error = #expect(throws: StrataError.self) { try LUKSHeader.read(from: medium) }
        #expect(error?.message.contains("no LUKS1 or LUKS2 header") == true)
        #expect(error?.message.contains("checksum mismatch") == true)
    }

    /// With 64 KiB header copies, a damaged primary does not say where the secondary
    /// is: it is found at one of the offsets LUKS2 allows, and keys still change.
    @Test func findsASecondaryAtALargerOffset() throws {
        let directory = try TemporaryDirectory()
        let image = try directory.file("volume.img", size: 20 << 20)
        let keyFile = try directory.keyFile("key", Self.passphrase)
        try cryptsetup(["luksFormat", "--batch-mode", "--type", "luks2", "--luks2-metadata-size", "64k", "--key-file", keyFile]
            + quickPBKDF2 + [image])
        let expected = try cryptsetupVolumeKey(image, keyFile: keyFile)
        let medium = try FileMedium(path: image)
        try medium.write([UInt8](repeating: 0, count: 4096), at: 0)
        let header = try LUKSHeader.read(from: medium)
        #expect(masterKeyBytes(try header.unlock(passphrase: secret(Self.passphrase))) == expected)
        // A key added now rewrites both copies, with 64 KiB ones, which cryptsetup reads.
        let other = try directory.keyFile("other", "other passphrase")
        _ = try LUKSFormatter.addKey(medium, passphrase: secret(Self.passphrase), newPassphrase: secret("other passphrase"),
                                     kdf: tinyPBKDF2)
        #expect(try cryptsetupOpens(image, keyFile: other))
        #expect(try cryptsetupVolumeKey(image, keyFile: other) == expected)
        let json = try cryptsetup(["luksDump", "--dump-json-metadata", image])
        #expect(json.contains("\"json_size\":\"61440\""))
    }

    /// Data cryptsetup encrypted (offline, `reencrypt --encrypt`, which needs no
    /// device-mapper) decrypts with the volume Strata unlocks, its sectors where
    /// `payloadOffset` says and their tweaks counted as `ivLargeSectors` says (for
    /// LUKS2, in 512-byte units even with 4096-byte sectors): what the eli geom relies on.
    @Test(arguments: [4096, 512])
    func decryptsWhatCryptsetupEncrypted(sectorSize: Int) throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/plain.img"
        // Each 512-byte block holds its number, so misplaced or mis-tweaked sectors show.
        let blocks = 24 * 2048
        var plain = [UInt8](repeating: 0, count: blocks * 512)
        for block in 0..<blocks {
            for word in 0..<128 {
                let at = block * 512 + word * 4
                plain[at] = UInt8(block & 0xff)
                plain[at + 1] = UInt8(block >> 8 & 0xff)
                plain[at + 2] = UInt8(block >> 16)
                plain[at + 3] = UInt8(word)
            }
        }
        try Data(plain).write(to: URL(fileURLWithPath: path))
        let keyFile = try directory.keyFile("key", Self.passphrase)
        try cryptsetup(["reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size", "16M", "--batch-mode",
                        "--key-file", keyFile, "--sector-size", String(sectorSize)] + quickPBKDF2 + [path])

        let medium = try FileMedium(path: path)
        let volume = try LUKSHeader.read(from: medium).unlock(passphrase: secret(Self.passphrase))
        #expect(volume.sectorSize == sectorSize)
        // The device shrinks by the 16 MiB given: the first 8 MiB of the plaintext are
        // what is encrypted.
        let units = (8 << 20) / sectorSize
        for unit in [0, 1, 2, 7, 8, 9, 333, units / 2, units - 1] {
            let decrypted = try decrypt(medium, volume, unit: unit)
            let firstBlock = unit * sectorSize / 512
            let same = decrypted == Array(plain[firstBlock * 512..<firstBlock * 512 + sectorSize])
            #expect(same, "\(sectorSize)-byte sector \(unit) of \(units)")
        }
    }

    /// The same for LUKS1, with data qemu wrote through its LUKS driver.
    @Test func decryptsWhatQemuWrote() throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-io"))
        let directory = try TemporaryDirectory()
        let image = directory.path + "/qemu.luks"
        let secretObject = "secret,id=s0,data=\(Self.passphrase)"
        let made = try createQemuLUKSImage(["create", "-q", "-f", "luks", "--object", secretObject,
                                            "-o", "key-secret=s0,iter-time=10", image, "4M"])
        try #require(made.status == 0, "qemu-img: \(made.errors)")
        let wrote = try runTool("/usr/bin/qemu-io", ["--object", secretObject, "--image-opts",
                                                     "driver=luks,key-secret=s0,file.filename=\(image)",
                                                     "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x33 1M 512"])
        try #require(wrote.status == 0, "qemu-io: \(wrote.errors)")
        let medium = try FileMedium(path: image)
        let volume = try LUKSHeader.read(from: medium).unlock(passphrase: secret(Self.passphrase))
        for unit in [0, 1, 1000, 2047] {
            #expect(try decrypt(medium, volume, unit: unit) == [UInt8](repeating: 0x5a, count: 512), "sector \(unit)")
        }
        #expect(try decrypt(medium, volume, unit: 2048) == [UInt8](repeating: 0x33, count: 512))
    }

    /// Sector `unit` (of the volume's sector size) of the payload, decrypted as the
    /// eli geom does from a `LUKSVolume`.
    func decrypt(_ medium: FileMedium, _ volume: LUKSVolume, unit: Int) throws -> [UInt8] {
        let sectorSize = volume.sectorSize
        var bytes = try medium.read(at: volume.payloadOffset + Int64(unit * sectorSize), count: sectorSize)
        let tweak = volume.ivOffset + UInt64(volume.ivLargeSectors ? unit : unit * sectorSize / 512)
        let cipher = try XTSCipher(key: volume.masterKey)
        bytes.withUnsafeMutableBytes { buffer in
            cipher.decrypt(buffer.baseAddress!, to: buffer.baseAddress!, count: sectorSize, sectorSize: sectorSize,
                           firstSector: tweak)
        }
        return bytes
    }
}
