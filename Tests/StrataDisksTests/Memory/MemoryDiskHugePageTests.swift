import Foundation
import Strata
@testable import StrataDisks
import Testing

/// `huge-pages: true`: the media is advised to the kernel for transparent huge pages
/// and keeps every promise of the sparse disk.
@Suite struct MemoryDiskHugePageTests {
    static let hugePage = Int64(MemoryDisk.hugePageSize)

    /// The `VmFlags` of the mapping of this process that holds `address`, from
    /// /proc/self/smaps (`hg`: advised for huge pages).
    static func mappingFlags(at address: UnsafeMutableRawPointer) throws -> [Substring] {
        let target = UInt(bitPattern: address)
        // Read to its end: a file in /proc reports no size, to be read at once.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        var inside = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = fields.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] <= target && target < bounds[1]
            } else if inside && fields.first == "VmFlags:" {
                return Array(fields.dropFirst())
            }
        }
        Issue.record("no mapping of this process holds \(address)")
        return []
    }

    @Test func theMediaIsAlignedAndAdvisedForHugePagesOrTheKernelsRefusalIsNamed() throws {
        let topology = Topology()
        if let refusal = MemoryDisk.hugePageRefusal() {
            let error = #expect(throws: SettingError.self) {
                try MemoryDisk.create(in: topology, name: "huge", size: 3 * Self.hugePage, hugePages: true)
            }
            #expect(error == SettingError(key: "huge-pages", value: "true", problem: refusal))
            #expect(topology.geom(named: "huge") == nil)
            return
        }
        let huge = try MemoryDisk.create(in: topology, name: "huge", size: 3 * Self.hugePage + 4096, hugePages: true)
        #expect(huge.hugePages)
        #expect(Int(bitPattern: huge.base) % MemoryDisk.hugePageSize == 0)
        #expect(try Self.mappingFlags(at: huge.base).contains("hg"))
        let plain = try MemoryDisk.create(in: topology, name: "plain", size: 3 * Self.hugePage)
        #expect(!plain.hugePages)
        #expect(try !Self.mappingFlags(at: plain.base).contains("hg"))
    }

    @Test(.enabled(if: MemoryDisk.hugePageRefusal() == nil, "the kernel gives no transparent huge pages"))
    func dataHolesAndDeletesBehaveAsOnASparseDisk() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "huge", size: 4 * Self.hugePage, hugePages: true)
        let issuer = try Issuer(on: disk.provider, in: topology)
        let page = Self.hugePage
        // Across the boundary between the first two huge pages, and a whole third one.
        let across = page - (64 << 10)
        try issuer.write(pattern(count: 128 << 10, at: across), at: across)
        try issuer.write(pattern(count: Int(page), at: 2 * page, seed: 3), at: 2 * page)
        #expect(try issuer.bytes(at: across, count: 128 << 10) == pattern(count: 128 << 10, at: across))
        #expect(try issuer.bytes(at: 2 * page, count: Int(page)) == pattern(count: Int(page), at: 2 * page, seed: 3))
        // Only what was written is data, in 4 KiB pages, huge pages or not.
        let written = across + (128 << 10)
        #expect(try issuer.extents(at: 0, length: 4 * page) == [
            BioExtent(offset: 0, length: across, kind: [.hole, .zero]),
            BioExtent(offset: across, length: 128 << 10, kind: []),
            BioExtent(offset: written, length: 2 * page - written, kind: [.hole, .zero]),
            BioExtent(offset: 2 * page, length: page, kind: []),
            BioExtent(offset: 3 * page, length: page, kind: [.hole, .zero]),
        ])
        // A delete inside a huge page gives back whole 4 KiB pages and zeroes the rest;
        // the data around it stays.
        try issuer.send(.delete, at: 2 * page + 4096 + 512, length: 64 << 10)
        #expect(try issuer.bytes(at: 2 * page + 4096 + 512, count: 64 << 10) == zeros(64 << 10))
        #expect(try issuer.bytes(at: 2 * page, count: 4096 + 512) == pattern(count: 4096 + 512, at: 2 * page, seed: 3))
        let after = 2 * page + 4096 + 512 + (64 << 10)
        #expect(try issuer.bytes(at: after, count: 8192) == pattern(count: 8192, at: after, seed: 3))
        // A delete of a whole huge page makes it a hole.
        try issuer.send(.delete, at: 2 * page, length: page)
        #expect(try issuer.extents(at: 2 * page, length: page) == [BioExtent(offset: 2 * page, length: page, kind: [.hole, .zero])])
        #expect(try issuer.bytes(at: 2 * page + page - 4096, count: 4096) == zeros(4096))
    }

    @Test func theKeyIsParsedAndTheDisksSettingsSayWhatItAskedFor() throws {
        let parsed = try MemoryDiskDefinition.Settings.parse([("memory", "8MiB"), ("huge-pages", "true")])
        #expect(parsed.hugePages && parsed.size == 8 << 20)
        #expect(try !MemoryDiskDefinition.Settings.parse([("memory", "8MiB")]).hugePages)
        let error = #expect(throws: SettingError.self) {
            try MemoryDiskDefinition.Settings.parse([("memory", "8MiB"), ("huge-pages", "sometimes")])
        }
        #expect(error?.key == "huge-pages" && error?.value == "sometimes")

        let topology = Topology()
        let plain = try MemoryDisk.create(in: topology, name: "plain", size: 8 << 20, sectorSize: 4096)
        let settings = try #require(MemoryDiskDefinition.settings(of: plain))
        #expect(settings.size == 8 << 20 && settings.sectorSize == 4096 && !settings.hugePages)
        if MemoryDisk.hugePageRefusal() == nil {
            let huge = try MemoryDisk.create(in: topology, name: "huge", size: 8 << 20, hugePages: true)
            #expect(try #require(MemoryDiskDefinition.settings(of: huge)).hugePages)
        }
    }
}
