import Dispatch
import Strata
import StrataDisks
import StrataEli
import Testing

/// The eli geom's I/O path over a memory disk: what goes down is ciphertext, what comes
/// up is the plaintext, whatever the data's segments, and the commands that could leak
/// or corrupt are refused or rewritten.
@Suite struct EliGeomTests {
    static let passphrase = SecretBytes(copying: Array("correct horse battery staple".utf8))
    static let quickKDF = KDFParameters.pbkdf2(hash: "sha256", iterations: 1000)

    /// A memory disk with a fresh LUKS volume, and an eli over it opened for writing.
    static func stack(version: LUKSVersion = .luks2, sectorSize: Int = 512, diskSectorSize: Int = 512,
                      allowDiscards: Bool = false) throws -> (Topology, MemoryDisk, EliGeom, BlockDevice) {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "eli-md", size: 24 << 20, sectorSize: diskSectorSize)
        try format(disk.provider, in: topology, version: version, sectorSize: sectorSize)
        let eli = try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: passphrase,
                                     allowDiscards: allowDiscards)
        let device = try BlockDevice(opening: eli.providers[0], in: topology, writable: true)
        return (topology, disk, eli, device)
    }

    static func format(_ provider: Provider, in topology: Topology, version: LUKSVersion, sectorSize: Int = 512) throws {
        let medium = try ProviderMedium(provider, in: topology)
        defer { medium.close() }
        _ = try LUKSFormatter.format(medium, version: version, passphrase: passphrase, keySize: 64,
                                     sectorSize: sectorSize, kdf: quickKDF)
    }

    static func pattern(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ seed &* 7 &+ ($0 >> 9)) }
    }

    /// What the volume's key makes of `plain` at payload byte `position`, by the cipher
    /// alone.
    static func ciphertext(_ plain: [UInt8], at position: Int64, volume: LUKSVolume) throws -> [UInt8] {
        let cipher = try XTSCipher(key: volume.masterKey)
        let unit = volume.ivLargeSectors ? Int64(volume.sectorSize) : 512
        var out = plain
        plain.withUnsafeBytes { input in
            out.withUnsafeMutableBytes { output in
                cipher.encrypt(input.baseAddress!, to: output.baseAddress!, count: plain.count, sectorSize: volume.sectorSize,
                               firstSector: volume.ivOffset + UInt64(position / unit),
                               sectorStep: UInt64(Int64(volume.sectorSize) / unit))
            }
        }
        return out
    }

    @Test(arguments: [(LUKSVersion.luks2, 512), (.luks2, 4096), (.luks1, 512)])
    func writesGoDownEncryptedAndReadBackPlain(version: LUKSVersion, sectorSize: Int) async throws {
        let (topology, disk, eli, device) = try Self.stack(version: version, sectorSize: sectorSize)
        defer { device.close(); _ = topology.shutdown() }
        #expect(eli.providers[0].sectorSize == sectorSize)
        #expect(eli.providers[0].mediaSize == (24 << 20) - eli.volume.payloadOffset)
        let data = Self.pattern(64 << 10, seed: 3)
        try await device.write(data, at: 1 << 20)
        let readBack = try await device.read(at: 1 << 20, count: data.count)
        #expect(readBack == data)
        let below = try BlockDevice(opening: disk.provider, in: topology, writable: false)
        defer { below.close() }
        let stored = try await below.read(at: eli.volume.payloadOffset + (1 << 20), count: data.count)
        let expected = try Self.ciphertext(data, at: 1 << 20, volume: eli.volume)
        let storedIsCiphertext = stored == expected
        #expect(storedIsCiphertext, "the disk below holds the cipher's output for those sectors")
        #expect(stored != data)
    }

    @Test func theCallersBufferIsNotChangedByAWrite() async throws {
        let (topology, _, _, device) = try Self.stack()
        defer { device.close(); _ = topology.shutdown() }
        var data = Self.pattern(8192, seed: 9)
        let copy = data
        try data.withUnsafeMutableBytes { buffer in
            try Self.perform(.write, on: device, offset: 4096, pieces: [buffer])
        }
        #expect(data == copy)
    }

    /// Sectors split between a request's segments, both ways.
    @Test func scatteredSegmentsWithSplitSectorsRoundTrip() async throws {
        let (topology, _, _, device) = try Self.stack()
        defer { device.close(); _ = topology.shutdown() }
        let data = Self.pattern(8192, seed: 5)
        var written = data
        try written.withUnsafeMutableBytes { buffer in
            let pieces = [buffer[0..<700], buffer[700..<2048], buffer[2048..<2049], buffer[2049..<8192]]
            try Self.perform(.write, on: device, offset: 8192, pieces: pieces.map { UnsafeMutableRawBufferPointer(rebasing: $0) })
        }
        #expect(try await device.read(at: 8192, count: 8192) == data)
        var read = [UInt8](repeating: 0, count: 8192)
        try read.withUnsafeMutableBytes { buffer in
            let pieces = [buffer[0..<511], buffer[511..<1025], buffer[1025..<4096], buffer[4096..<8192]]
            try Self.perform(.read, on: device, offset: 8192, pieces: pieces.map { UnsafeMutableRawBufferPointer(rebasing: $0) })
        }
        #expect(read == data)
    }

    @Test func writeZeroesReadsBackZerosAndStoresCiphertext() async throws {
        let (topology, disk, eli, device) = try Self.stack()
        defer { device.close(); _ = topology.shutdown() }
        try await device.write(Self.pattern(3 << 20, seed: 1), at: 0)
        try await device.writeZeroes(at: 512, length: (2 << 20) + 1024)
        let readBack = try await device.read(at: 0, count: 3 << 20)
        #expect(readBack[512..<((2 << 20) + 1536)].allSatisfy { $0 == 0 })
        #expect(Array(readBack[0..<512]) == Array(Self.pattern(3 << 20, seed: 1)[0..<512]))
        let below = try BlockDevice(opening: disk.provider, in: topology, writable: false)
        defer { below.close() }
        let stored = try await below.read(at: eli.volume.payloadOffset + 512, count: 4096)
        #expect(stored != [UInt8](repeating: 0, count: 4096), "zeros are encrypted, not written as zeros")
    }

    @Test func trimIsRefusedUnlessDiscardsAreAllowed() async throws {
        let (topology, _, _, device) = try Self.stack()
        defer { device.close(); _ = topology.shutdown() }
        #expect(try await device.canDelete() == false)
        await #expect(throws: StrataError.self) { try await device.delete(at: 0, length: 4096) }

        let (allowedTopology, _, _, allowed) = try Self.stack(allowDiscards: true)
        defer { allowed.close(); _ = allowedTopology.shutdown() }
        #expect(try await allowed.canDelete() == true)
        try await allowed.delete(at: 0, length: 4096)
    }

    @Test func everyRangeIsReportedAsData() async throws {
        let (topology, _, eli, device) = try Self.stack()
        defer { device.close(); _ = topology.shutdown() }
        let size = eli.providers[0].mediaSize
        let extents = try await device.extents(at: 0, length: size)
        #expect(extents == [BioExtent(offset: 0, length: size, kind: [])])
    }

    @Test func aWrongPassphraseLeavesNothingBehind() throws {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "eli-md", size: 24 << 20)
        try Self.format(disk.provider, in: topology, version: .luks2)
        let wrong = SecretBytes(copying: Array("incorrect".utf8))
        #expect(throws: StrataError.self) {
            try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: wrong)
        }
        #expect(topology.geom(named: "e0") == nil)
        #expect(disk.provider.accessCounts.read == 0)
        try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: Self.passphrase)
    }

    @Test func aProviderWithoutAVolumeIsRefused() throws {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "eli-md", size: 24 << 20)
        #expect(throws: StrataError.self) {
            try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: Self.passphrase)
        }
        #expect(topology.geom(named: "e0") == nil)
    }

    @Test func dataSurvivesClosingAndOpeningAgain() async throws {
        let (topology, disk, eli, device) = try Self.stack()
        defer { _ = topology.shutdown() }
        let data = Self.pattern(16384, seed: 11)
        try await device.write(data, at: 77 * 512)
        device.close()
        topology.wither(eli)
        #expect(topology.waitUntilGone(eli))
        let again = try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: Self.passphrase)
        let reopened = try BlockDevice(opening: again.providers[0], in: topology, writable: false)
        defer { reopened.close() }
        #expect(try await reopened.read(at: 77 * 512, count: data.count) == data)
    }

    /// Detaching lets go of the geom, and with it the only holders of the volume key:
    /// its locked pages (wiped as they go) and the OpenSSL contexts (freed, which wipes
    /// their key schedules).
    @Test func aDetachedEliLeavesNothingHoldingItsKey() async throws {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "eli-md", size: 24 << 20)
        try Self.format(disk.provider, in: topology, version: .luks2)
        weak var released: EliGeom?
        weak var key: SecretBytes?
        do {
            let eli = try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: Self.passphrase)
            let device = try BlockDevice(opening: eli.providers[0], in: topology, writable: true)
            try await device.write(Self.pattern(4096, seed: 1), at: 0)
            _ = try await device.read(at: 0, count: 4096)
            device.close()
            #expect(eli.volume.masterKey.isLocked, "the key's pages are locked in memory")
            (released, key) = (eli, eli.volume.masterKey)
            topology.wither(eli)
            #expect(topology.waitUntilGone(eli))
        }
        #expect(released == nil)
        #expect(key == nil)
    }

    /// Sends one request whose data is `pieces`, one segment each, and waits for it.
    static func perform(_ command: BioCommand, on device: BlockDevice, offset: Int64,
                        pieces: [UnsafeMutableRawBufferPointer]) throws {
        let bio = AnyBioSet.unpooled.alloc(segments: pieces.count)
        bio.command = command
        bio.offset = offset
        bio.length = Int64(pieces.reduce(0) { $0 + $1.count })
        for piece in pieces { bio.appendSegment(piece) }
        let finished = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        bio.done = .closure { done in
            outcome.error = done.error
            done.destroy()
            finished.signal()
        }
        device.consumer.request(bio)
        finished.wait()
        if let error = outcome.error { throw StrataError(error, "\(command) at \(offset)") }
    }

    final class Outcome: @unchecked Sendable {
        var error: BioError?
    }
}

/// A provider as a LUKS medium for tests, through a device of its own.
final class ProviderMedium: LUKSMedium {
    let device: BlockDevice
    let medium: ConsumerMedium

    init(_ provider: Provider, in topology: Topology) throws {
        device = try BlockDevice(opening: provider, in: topology, writable: true)
        medium = ConsumerMedium(consumer: device.consumer, provider: provider)
    }

    var size: Int64 { medium.size }
    func close() { device.close() }
    func read(at offset: Int64, count: Int) throws -> [UInt8] { try medium.read(at: offset, count: count) }
    func write(_ bytes: [UInt8], at offset: Int64) throws { try medium.write(bytes, at: offset) }
    func flush() throws { try medium.flush() }
}
