import Strata
import StrataClasses
import StrataDisks
import StrataEli
import Testing

/// The eli class among the others: over a stripe, over a thin volume, and under a
/// mirror, where each leg holds its own volume.
@Suite struct EliStackTests {
    static let data = EliGeomTests.pattern(256 << 10, seed: 21)

    /// Writes `data` at 3 MiB + 512 through `provider`, reads it back, and returns the
    /// device for more.
    static func writeAndRead(_ provider: Provider, in topology: Topology) async throws -> Bool {
        let device = try BlockDevice(opening: provider, in: topology, writable: true)
        defer { device.close() }
        try await device.write(data, at: (3 << 20) + 512)
        try await device.flush()
        return try await device.read(at: (3 << 20) + 512, count: data.count) == data
    }

    @Test func anEliOverAStripeSpreadsCiphertextOverItsDisks() async throws {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "sd\($0)", size: 16 << 20) }
        let stripe = try StripeGeom.create(in: topology, name: "s0", over: disks.map(\.provider), stripeSize: 64 << 10)
        try EliGeomTests.format(stripe.providers[0], in: topology, version: .luks2)
        let eli = try EliGeom.create(in: topology, name: "e0", over: stripe.providers[0], passphrase: EliGeomTests.passphrase)
        #expect(try await Self.writeAndRead(eli.providers[0], in: topology))
        // The stripe's provider holds the cipher's output; each disk holds its chunks.
        let below = try BlockDevice(opening: stripe.providers[0], in: topology, writable: false)
        defer { below.close() }
        let stored = try await below.read(at: eli.volume.payloadOffset + (3 << 20) + 512, count: Self.data.count)
        let sameAsCipher = stored == (try EliGeomTests.ciphertext(Self.data, at: (3 << 20) + 512, volume: eli.volume))
        #expect(sameAsCipher)
        for disk in disks {
            let reader = try BlockDevice(opening: disk.provider, in: topology, writable: false)
            defer { reader.close() }
            let chunk = try await reader.read(at: (eli.volume.payloadOffset + (3 << 20)) / 2, count: 64 << 10)
            #expect(chunk != [UInt8](repeating: 0, count: 64 << 10), "\(disk.provider.name) holds part of the data")
        }
    }

    @Test func anEliOverAThinVolumeAllocatesOnlyWhatIsWritten() async throws {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "md", size: 96 << 20)
        let pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider], settings: [("volumes", "v:48m")],
                                           relativeTo: "/", in: topology)
        let volume = try #require(topology.provider(named: "tp/v"))
        try EliGeomTests.format(volume, in: topology, version: .luks2)
        let eli = try EliGeom.create(in: topology, name: "e0", over: volume, passphrase: EliGeomTests.passphrase)
        #expect(try await Self.writeAndRead(eli.providers[0], in: topology))
        // Below the eli the thin volume maps the header and key slot area, which the
        // format wrote over, and the data written; the rest stays unallocated, while
        // the eli reports all of it as data.
        let reader = try BlockDevice(opening: volume, in: topology, writable: false)
        defer { reader.close() }
        let extents = try await reader.extents(at: 0, length: volume.mediaSize)
        let allocated = extents.filter { !$0.kind.contains(.hole) }.reduce(Int64(0)) { $0 + $1.length }
        #expect(allocated > Int64(Self.data.count) && allocated <= eli.volume.payloadOffset + (1 << 20),
                "\(allocated) bytes allocated of \(volume.mediaSize)")
        let device = try BlockDevice(opening: eli.providers[0], in: topology, writable: false)
        defer { device.close() }
        let above = try await device.extents(at: 0, length: eli.providers[0].mediaSize)
        #expect(above.allSatisfy { $0.kind.isEmpty })
        _ = pool
    }

    @Test func aMirrorOfTwoElisKeepsItsDataWhenALegFails() async throws {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        var elis: [EliGeom] = []
        var nops: [NopGeom] = []
        for index in 0..<2 {
            let disk = try MemoryDisk.create(in: topology, name: "md\(index)", size: 24 << 20)
            let nop = try NopGeom.create(in: topology, name: "n\(index)", over: disk.provider)
            try EliGeomTests.format(nop.providers[0], in: topology, version: index == 0 ? .luks2 : .luks1)
            elis.append(try EliGeom.create(in: topology, name: "e\(index)", over: nop.providers[0],
                                           passphrase: EliGeomTests.passphrase))
            nops.append(nop)
        }
        let mirror = try MirrorGeom.create(in: topology, name: "m0", over: elis.map { $0.providers[0] })
        #expect(try await Self.writeAndRead(mirror.providers[0], in: topology))
        // Each leg decrypts to the same data.
        for eli in elis {
            let leg = try BlockDevice(opening: eli.providers[0], in: topology, writable: false)
            defer { leg.close() }
            #expect(try await leg.read(at: (3 << 20) + 512, count: Self.data.count) == Self.data, "\(eli.name)")
        }
        // The first leg's disk fails: the mirror reads from the second.
        try nops[0].configure(NopGeom.Settings(readFailPercent: 100, writeFailPercent: 100))
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: false)
        defer { device.close() }
        #expect(try await device.read(at: (3 << 20) + 512, count: Self.data.count) == Self.data)
    }
}
