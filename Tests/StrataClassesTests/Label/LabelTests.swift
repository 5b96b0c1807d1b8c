import Foundation
import Strata
import StrataClasses
import StrataDisks
import Testing

@Suite struct LabelTests {
    @Test func aLabelIsAnAliasOneSectorSmallerThatPassesDataStraightThrough() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "plain", size: 1 << 20)
        let label = try LabelGeom.create(in: topology, label: "home", on: disk.provider)
        let alias = try #require(topology.provider(named: "label/home"))
        #expect(alias === label.providers[0])
        #expect(alias.mediaSize == (1 << 20) - 512)
        let device = try BlockDevice(opening: alias, in: topology, writable: true)
        try await device.write([UInt8](repeating: 0x4c, count: 4096), at: 8192)
        device.close()
        let direct = try BlockDevice(opening: disk.provider, in: topology, writable: false)
        defer { direct.close() }
        #expect(try await direct.read(at: 8192, count: 4096) == [UInt8](repeating: 0x4c, count: 4096))
    }

    @Test func aLabelFindsItsDiskWhateverTheDiskIsCalled() async throws {
        let directory = NSTemporaryDirectory() + "strata-label-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let topology = Topology()
            let disk = try FileDisk.create(in: topology, name: "sdb", path: directory + "/a.img", size: 2 << 20)
            try LabelGeom.create(in: topology, label: "data", on: disk.provider)
            #expect(topology.shutdown())
        }
        let topology = Topology()
        defer { topology.shutdown() }
        topology.register(LabelClass())
        _ = try FileDisk.create(in: topology, name: "sdc", path: directory + "/a.img")
        topology.settle()
        let alias = try #require(topology.provider(named: "label/data"))
        #expect(alias.mediaSize == (2 << 20) - 512)
    }

    @Test(arguments: ["", "a/b", String(repeating: "x", count: 64)])
    func badLabelNamesAreRefused(name: String) throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "named", size: 1 << 20)
        #expect(throws: StrataError.self) { try LabelGeom.create(in: topology, label: name, on: disk.provider) }
    }
}
