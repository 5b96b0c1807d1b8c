import Foundation
import Strata
import StrataDisks
import StrataEli
import Testing

/// Known answers: LUKS volumes cryptsetup and qemu-img made (in `Fixtures/`, with how),
/// opened with their passphrase, their volume keys as the tools printed them, and their
/// payload read through an eli.
@Suite struct EliFixtureTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path
    static let passphrase = SecretBytes(copying: Array("fixture passphrase".utf8))

    /// Sector `n` of every fixture's payload.
    static let payload: [UInt8] = (0..<32).flatMap { sector -> [UInt8] in
        let text = Array(String(format: "Strata eli fixture, sector %02d.", sector).utf8)
        return text + [UInt8](repeating: UInt8(ascii: "."), count: 512 - text.count)
    }

    /// The fixture, uncompressed into a temporary file.
    static func unpack(_ name: String) throws -> String {
        let path = NSTemporaryDirectory() + "strata-fixture-\(UUID().uuidString.prefix(8))-\(name)"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/gzip")
        process.arguments = ["-dc", fixtures + "/" + name + ".gz"]
        FileManager.default.createFile(atPath: path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw StrataError(.io, "gzip -dc \(name).gz failed") }
        return path
    }

    static func hex(_ key: SecretBytes) -> String {
        key.withBytes { $0.map { String(format: "%02x", $0) }.joined() }
    }

    @Test(arguments: [
        ("cryptsetup-luks2.img", LUKSVersion.luks2, "bd0b01a1921499675f6fd565fe4f8c1c95406584f4b630fb79c2b99d359357ac"),
        ("cryptsetup-luks1.img", .luks1, "4126ec5e0fb78b9e44990b2a7d8c09cf678b98dc916347d2c14f5fc75cccfe1e"),
        ("qemu-luks1.img", .luks1, "9eaaf632734bf764803f711b096c9e0cfd0de0fa72d6f2c645eb0b099685e717"),
    ])
    func aVolumeAnotherToolMadeOpensWithItsKeyAndReadsAsWritten(name: String, version: LUKSVersion, volumeKey: String) async throws {
        let path = try Self.unpack(name)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let medium = try FileMedium(path: path)
        let header = try LUKSHeader.read(from: medium)
        #expect(header.version == version)
        let volume = try header.unlock(passphrase: Self.passphrase)
        #expect(Self.hex(volume.masterKey) == volumeKey)
        #expect(throws: StrataError.self) { try header.unlock(passphrase: SecretBytes(copying: Array("fixture".utf8))) }

        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disk = try FileDisk.create(in: topology, name: "fx", path: path, readOnly: true)
        let eli = try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: Self.passphrase)
        #expect(eli.providers[0].mediaSize == 16384)
        let device = try BlockDevice(opening: eli.providers[0], in: topology, writable: false)
        defer { device.close() }
        let read = try await device.read(at: 0, count: 16384)
        #expect(read == Self.payload)
    }
}
