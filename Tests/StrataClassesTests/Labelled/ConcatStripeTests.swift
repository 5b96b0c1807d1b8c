import Foundation
import Strata
import StrataClasses
import StrataDisks
import Synchronization
import Testing

/// CONCAT and STRIPE: mapping across boundaries, labels, reassembly by tasting.
@Suite struct ConcatStripeTests {
    static func pattern(_ count: Int, at offset: Int64, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: (offset + Int64($0)) &* 131 &+ Int64(seed) &* 7 ^ (offset + Int64($0)) >> 9) }
    }

    /// Writes a pattern at each offset (they cross boundaries) and reads it back.
    static func exercise(_ device: BlockDevice, size: Int64, pieces: [(Int64, Int)]) async throws {
        for (index, (offset, count)) in pieces.enumerated() {
            try await device.write(pattern(count, at: offset, seed: UInt8(index)), at: offset)
            let back = try await device.read(at: offset, count: count)
            #expect(back == pattern(count, at: offset, seed: UInt8(index)), "piece \(index) at \(offset)+\(count)")
        }
    }

    @Test func aConcatPutsComponentsEndToEndAndSplitsAcrossThem() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try [1, 2, 1].enumerated().map { index, mebibytes in
            try MemoryDisk.create(in: topology, name: "cat\(index)", size: Int64(mebibytes) << 20)
        }
        let concat = try ConcatGeom.create(in: topology, name: "c0", over: disks.map(\.provider))
        let expected = Int64(4 << 20) - 3 * 512
        #expect(concat.providers[0].mediaSize == expected)
        let device = try BlockDevice(opening: concat.providers[0], in: topology, writable: true)
        defer { device.close() }
        let boundary = Int64(1 << 20) - 512
        try await Self.exercise(device, size: expected, pieces: [
            (0, 4096), (boundary - 4096, 8192), (boundary * 3 - 2048, 4096), (expected - 8192, 8192),
            (boundary - 512, 3 * 1024 * 1024 - 1024),
        ])
        // A write across the first boundary lands half on each of the first two disks.
        let crossing = Self.pattern(8192, at: boundary - 4096, seed: 77)
        try await device.write(crossing, at: boundary - 4096)
        let first = try BlockDevice(opening: disks[0].provider, in: topology, writable: false)
        let second = try BlockDevice(opening: disks[1].provider, in: topology, writable: false)
        defer { first.close(); second.close() }
        #expect(try await first.read(at: boundary - 4096, count: 4096) == Array(crossing.prefix(4096)))
        #expect(try await second.read(at: 0, count: 4096) == Array(crossing.suffix(4096)))
    }

    @Test func aStripeMapsStripesRoundRobinAndReportsItsStripeSize() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<3).map { try MemoryDisk.create(in: topology, name: "str\($0)", size: 4 << 20) }
        let stripe = try StripeGeom.create(in: topology, name: "s0", over: disks.map(\.provider), stripeSize: 64 << 10)
        let provider = stripe.providers[0]
        #expect(provider.stripeSize == 64 << 10)
        #expect(provider.mediaSize == 3 * ((Int64(4 << 20) - 512) / 65536 * 65536))
        let device = try BlockDevice(opening: provider, in: topology, writable: true)
        defer { device.close() }
        try await Self.exercise(device, size: provider.mediaSize, pieces: [
            (0, 65536), (65536 - 512, 1024), (3 * 65536 - 4096, 200 * 1024), (1 << 20, 1 << 20), (provider.mediaSize - 4096, 4096),
        ])
        // Stripe 1 (bytes 64K..128K) lives at offset 0 of the second disk.
        let second = try BlockDevice(opening: disks[1].provider, in: topology, writable: false)
        defer { second.close() }
        let direct = try await second.read(at: 0, count: 512)
        let through = try await device.read(at: 65536, count: 512)
        #expect(direct == through)
    }

    @Test func everyComponentCarriesALabel() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "lab\($0)", size: 1 << 20) }
        let stripe = try StripeGeom.create(in: topology, name: "labelled", over: disks.map(\.provider), stripeSize: 4096)
        for (index, disk) in disks.enumerated() {
            let probe = Geom(name: "probe\(index)", className: "TEST")
            try topology.add(probe)
            let label = try #require(ComponentLabel.read(from: disk.provider, through: probe, in: topology))
            #expect(label == ComponentLabel(kind: .stripe, name: "labelled", id: stripe.id, index: index, count: 2,
                                            stripeSize: 4096, dataSize: (1 << 20) - 512))
        }
    }

    /// A disk image comes from outside: a label whose checksum holds may carry values no
    /// geom can be built from, and decoding refuses them rather than trapping later.
    @Test(arguments: [
        ComponentLabel(kind: .stripe, name: "s", id: 7, index: 0, count: 65, stripeSize: 4096, dataSize: 1 << 20),
        ComponentLabel(kind: .stripe, name: "s", id: 7, index: 0, count: 2, stripeSize: 0, dataSize: 1 << 20),
        ComponentLabel(kind: .stripe, name: "s", id: 7, index: 0, count: 2, stripeSize: 3000, dataSize: 1 << 20),
        ComponentLabel(kind: .stripe, name: "s", id: 7, index: 0, count: 2, stripeSize: 256, dataSize: 1 << 20),
        ComponentLabel(kind: .stripe, name: "s", id: 7, index: 0, count: 2, stripeSize: -4096, dataSize: 1 << 20),
        ComponentLabel(kind: .concat, name: "c", id: 7, index: 0, count: 2, dataSize: 0),
        ComponentLabel(kind: .concat, name: "c", id: 7, index: 0, count: 2, dataSize: -1),
        ComponentLabel(kind: .concat, name: "c", id: 7, index: 2, count: 2, dataSize: 1 << 20),
    ])
    func aLabelWithValuesNoGeomCanHaveIsNotOne(label: ComponentLabel) {
        #expect(ComponentLabel.decode(label.encoded(sectorSize: 512)) == nil)
    }

    /// Labels that decode but do not fit the disk under them, or the geom they name, are
    /// refused when tasted, with a warning, and no geom is made from them.
    @Test func aTastedLabelThatDoesNotFitItsDiskOrItsGeomIsRefused() throws {
        let warnings = Mutex<[String]>([])
        let topology = Topology { level, message in
            if level == .warning { warnings.withLock { $0.append(message) } }
        }
        defer { topology.shutdown() }
        topology.register(StripeClass())
        func disk(_ name: String, carrying label: ComponentLabel) throws {
            var contents = [UInt8](repeating: 0, count: 1 << 20)
            contents.replaceSubrange(((1 << 20) - 512)..., with: label.encoded(sectorSize: 512))
            _ = try MemoryDisk.create(in: topology, name: name, contents: contents)
            topology.settle()
        }
        // Says it holds more data than the disk has room for.
        try disk("big0", carrying: ComponentLabel(kind: .stripe, name: "big", id: 9, index: 0, count: 2, stripeSize: 4096,
                                                  dataSize: 4 << 20))
        // Two components of one geom (same name and id) that disagree on the count: the
        // second says it is component 2 of a geom that has 2.
        try disk("odd0", carrying: ComponentLabel(kind: .stripe, name: "odd", id: 11, index: 0, count: 2, stripeSize: 4096,
                                                  dataSize: (1 << 20) - 512))
        try disk("odd2", carrying: ComponentLabel(kind: .stripe, name: "odd", id: 11, index: 2, count: 3, stripeSize: 4096,
                                                  dataSize: (1 << 20) - 512))
        #expect(topology.provider(named: "big") == nil)
        #expect(topology.provider(named: "odd") == nil)
        let seen = warnings.withLock { $0 }
        #expect(seen.contains { $0.contains("big0") && $0.contains("room for \((1 << 20) - 512)") })
        #expect(seen.contains { $0.contains("odd2") && $0.contains("component 2 of a geom that has 2") })
    }

    @Test func aLabelWithABadChecksumIsNotOne() {
        var sector = ComponentLabel(kind: .concat, name: "x", id: 7, index: 0, count: 2, dataSize: 1024).encoded(sectorSize: 512)
        #expect(ComponentLabel.decode(sector) != nil)
        sector[40] ^= 1
        #expect(ComponentLabel.decode(sector) == nil)
        #expect(ComponentLabel.decode([UInt8](repeating: 0, count: 512)) == nil)
    }

    @Test(arguments: ["concat", "stripe"])
    func geomsReassembleFromTheirLabelsAfterARestart(kind: String) async throws {
        let directory = NSTemporaryDirectory() + "strata-\(kind)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let data = Self.pattern(300 * 1024, at: 12345, seed: 9)
        do {
            let topology = Topology()
            let disks = try (0..<3).map { try FileDisk.create(in: topology, name: "f\($0)", path: "\(directory)/f\($0).img", size: 2 << 20) }
            let geom: Geom = kind == "concat"
                ? try ConcatGeom.create(in: topology, name: "g0", over: disks.map(\.provider))
                : try StripeGeom.create(in: topology, name: "g0", over: disks.map(\.provider), stripeSize: 32768)
            let device = try BlockDevice(opening: geom.providers[0], in: topology, writable: true)
            try await device.write(data, at: 1 << 20)
            try await device.flush()
            device.close()
            #expect(topology.shutdown())
        }
        let topology = Topology()
        defer { topology.shutdown() }
        topology.register(ConcatClass())
        topology.register(StripeClass())
        // The disks come back in another order: tasting does not care.
        for index in [2, 0, 1] { _ = try FileDisk.create(in: topology, name: "f\(index)", path: "\(directory)/f\(index).img") }
        topology.settle()
        let provider = try #require(topology.provider(named: "g0"))
        let device = try BlockDevice(opening: provider, in: topology, writable: false)
        defer { device.close() }
        #expect(try await device.read(at: 1 << 20, count: data.count) == data)
    }

    @Test func losingAComponentFailsRequestsCleanly() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "loss\($0)", size: 1 << 20) }
        let stripe = try StripeGeom.create(in: topology, name: "lossy", over: disks.map(\.provider), stripeSize: 4096)
        let device = try BlockDevice(opening: stripe.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await device.write([UInt8](repeating: 1, count: 8192), at: 0)
        topology.wither(disks[1])
        topology.settle()
        do {
            _ = try await device.read(at: 0, count: 8192)
            Issue.record("a read of a stripe with a lost component succeeded")
        } catch let error as StrataError {
            #expect(error.code == .noDevice)
        }
    }

    @Test func aComponentWithAnotherGeomsLabelIsRefused() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "own\($0)", size: 1 << 20) }
        let first = try ConcatGeom.create(in: topology, name: "first", over: [disks[0].provider])
        topology.wither(first)
        #expect(topology.waitUntilGone(first))
        do {
            try StripeGeom.create(in: topology, name: "second", over: disks.map(\.provider), stripeSize: 4096)
            Issue.record("a labelled component was taken over")
        } catch let error as StrataError {
            #expect(error.message.contains("own0 carries the metadata of concat first"), "\(error)")
        }
    }

    @Test func badStripeParametersAreRefusedByName() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "bad\($0)", size: 1 << 20) }
        for (size, message) in [(Int64(3000), "stripe-size '3000': must be a power of two of at least 512"),
                                (256, "stripe-size '256': must be a power of two of at least 512"),
                                (4 << 20, "stripe-size '4MiB': is larger than the smallest component")] {
            do {
                try StripeGeom.create(in: topology, name: "s-\(size)", over: disks.map(\.provider), stripeSize: size)
                Issue.record("stripe-size \(size) accepted")
            } catch let error as SettingError {
                #expect("\(error)".hasPrefix(message), "\(error)")
            }
        }
        #expect(throws: StrataError.self) { try StripeGeom.create(in: topology, name: "one", over: [disks[0].provider]) }
    }
}
