import Strata
import StrataDisks
import Testing

@Suite struct MemoryDiskTests {
    /// A topology with one memory disk and an issuer opened read-write on it.
    struct Fixture {
        let topology = Topology()
        let disk: MemoryDisk
        let issuer: Issuer

        init(size: Int64 = 4 << 20, sectorSize: Int = 512, name: String = "md0") throws {
            disk = try MemoryDisk.create(in: topology, name: name, size: size, sectorSize: sectorSize)
            issuer = try Issuer(on: disk.provider, in: topology)
        }
    }

    @Test func patternsWrittenAtManyOffsetsAndSizesReadBackInPlace() throws {
        let fixture = try Fixture(size: 8 << 20)
        let issuer = fixture.issuer
        // Sizes from one sector to many pages, at offsets aligned and not aligned to a page,
        // including ranges that cross page boundaries and the last sectors of the media.
        let cases: [(offset: Int64, count: Int)] = [
            (0, 512), (512, 512), (3584, 1024), (4096, 4096), (8192 - 512, 8192 + 1024),
            (65536 + 1536, 3 * 4096 + 512), (1 << 20, 128 << 10), ((2 << 20) + 512, 1 << 20),
            ((8 << 20) - 4096, 4096), ((8 << 20) - 512, 512),
            // Just under and at the length from which writes stream past the cache.
            ((5 << 20) + 512, (64 << 10) - 512), ((6 << 20) + 512, 64 << 10),
        ]
        for (index, item) in cases.enumerated() {
            try issuer.write(pattern(count: item.count, at: item.offset, seed: UInt8(index)), at: item.offset)
        }
        for (index, item) in cases.enumerated() {
            // Later writes overwrite the overlapping parts of earlier ones.
            var expected = pattern(count: item.count, at: item.offset, seed: UInt8(index))
            for (later, other) in cases.enumerated() where later > index {
                let start = max(item.offset, other.offset)
                let end = min(item.offset + Int64(item.count), other.offset + Int64(other.count))
                guard start < end else { continue }
                for at in start..<end {
                    expected[Int(at - item.offset)] = patternByte(at: at, seed: UInt8(later))
                }
            }
            let back = try issuer.bytes(at: item.offset, count: item.count)
            #expect(firstMismatch(back, expected) == nil, "case \(index) at \(item.offset)+\(item.count)")
        }
        // A read that spans written and never-written pages sees data, then zeros
        // (case 7 ends at 3 MiB + 512).
        let spanning = try issuer.bytes(at: (3 << 20) - 4096, count: 12288)
        #expect(firstMismatch(spanning, pattern(count: 4096 + 512, at: (3 << 20) - 4096, seed: 7) + zeros(8192 - 512)) == nil)
    }

    @Test func neverWrittenRangeReadsAsZerosAndReportsAHole() throws {
        let fixture = try Fixture()
        let read = try fixture.issuer.read(at: 1 << 20, count: 64 << 10, fill: 0x5C)
        #expect(read.bytes == zeros(64 << 10))
        #expect(read.completed == 64 << 10)
        #expect(!read.flags.contains(.readAsZeros))
        let extents = try fixture.issuer.extents(at: 0, length: 4 << 20)
        #expect(extents == [BioExtent(offset: 0, length: 4 << 20, kind: [.hole, .zero])])
    }

    @Test func writtenRangeReportsDataBetweenHoles() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 8192, at: 1 << 20), at: 1 << 20)
        let extents = try fixture.issuer.extents(at: 0, length: 4 << 20)
        #expect(extents == [
            BioExtent(offset: 0, length: 1 << 20, kind: [.hole, .zero]),
            BioExtent(offset: 1 << 20, length: 8192, kind: []),
            BioExtent(offset: (1 << 20) + 8192, length: (3 << 20) - 8192, kind: [.hole, .zero]),
        ])
        // A range starting inside the data reports from its own start.
        let inner = try fixture.issuer.extents(at: (1 << 20) + 512, length: 4096)
        #expect(inner == [BioExtent(offset: (1 << 20) + 512, length: 4096, kind: [])])
    }

    @Test func extentsStopAtTheAnswerBufferCapacityAndAtTheMediaEnd() throws {
        let fixture = try Fixture(size: 1 << 20)
        // Every other page written: 256 alternating runs.
        for page in stride(from: Int64(0), to: 1 << 20, by: 8192) {
            try fixture.issuer.write(pattern(count: 4096, at: page), at: page)
        }
        let limited = try fixture.issuer.extents(at: 0, length: 1 << 20, limit: 3)
        #expect(limited == [
            BioExtent(offset: 0, length: 4096, kind: []),
            BioExtent(offset: 4096, length: 4096, kind: [.hole, .zero]),
            BioExtent(offset: 8192, length: 4096, kind: []),
        ])
        let pastEnd = try fixture.issuer.extents(at: (1 << 20) - 8192, length: 1 << 30)
        #expect(pastEnd == [
            BioExtent(offset: (1 << 20) - 8192, length: 4096, kind: []),
            BioExtent(offset: (1 << 20) - 4096, length: 4096, kind: [.hole, .zero]),
        ])
    }

    @Test func aDiskMadeFromContentsReadsThemAndKeepsPagesOfZerosAsHoles() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        // Data in the second page and in the partial last page; the rest zeros.
        let contents = zeros(4096) + pattern(count: 4096, at: 4096, seed: 3) + zeros(8192) + pattern(count: 512, at: 16384, seed: 4)
        let disk = try MemoryDisk.create(in: topology, name: "mc0", contents: contents)
        #expect(disk.provider.mediaSize == 16896)
        let issuer = try Issuer(on: disk.provider, in: topology)
        #expect(try issuer.bytes(at: 0, count: contents.count) == contents)
        #expect(try issuer.extents(at: 0, length: 16896) == [
            BioExtent(offset: 0, length: 4096, kind: [.hole, .zero]),
            BioExtent(offset: 4096, length: 4096, kind: []),
            BioExtent(offset: 8192, length: 8192, kind: [.hole, .zero]),
            BioExtent(offset: 16384, length: 512, kind: []),
        ])
        #expect(throws: StrataError.self) { try MemoryDisk.create(in: topology, name: "empty", contents: []) }
    }

    @Test func deleteOfWholePagesMakesThemHolesThatReadAsZeros() throws {
        let fixture = try Fixture()
        let issuer = fixture.issuer
        try issuer.write(pattern(count: 64 << 10, at: 0), at: 0)
        try issuer.send(.delete, at: 16 << 10, length: 16 << 10)
        #expect(try issuer.bytes(at: 16 << 10, count: 16 << 10) == zeros(16 << 10))
        #expect(try issuer.bytes(at: 0, count: 16 << 10) == pattern(count: 16 << 10, at: 0))
        #expect(try issuer.bytes(at: 32 << 10, count: 32 << 10) == pattern(count: 32 << 10, at: 32 << 10))
        let extents = try issuer.extents(at: 0, length: 64 << 10)
        #expect(extents == [
            BioExtent(offset: 0, length: 16 << 10, kind: []),
            BioExtent(offset: 16 << 10, length: 16 << 10, kind: [.hole, .zero]),
            BioExtent(offset: 32 << 10, length: 32 << 10, kind: []),
        ])
        // Written again, a deleted page holds the new data.
        try issuer.write(pattern(count: 4096, at: 20 << 10, seed: 9), at: 20 << 10)
        #expect(try issuer.bytes(at: 20 << 10, count: 4096) == pattern(count: 4096, at: 20 << 10, seed: 9))
        #expect(try issuer.bytes(at: 16 << 10, count: 4096) == zeros(4096))
    }

    @Test func deleteOfPartOfAPageZeroesOnlyThatPartAndKeepsTheNeighbours() throws {
        let fixture = try Fixture()
        let issuer = fixture.issuer
        try issuer.write(pattern(count: 16384, at: 0), at: 0)
        // 1 KiB inside page 1, then a range from inside page 2 to inside page 3.
        try issuer.send(.delete, at: 4096 + 1024, length: 1024)
        try issuer.send(.delete, at: 8192 + 3072, length: 2048)
        var expected = pattern(count: 16384, at: 0)
        for index in (4096 + 1024)..<(4096 + 2048) { expected[index] = 0 }
        for index in (8192 + 3072)..<(8192 + 3072 + 2048) { expected[index] = 0 }
        let back = try issuer.bytes(at: 0, count: 16384)
        #expect(firstMismatch(back, expected) == nil)
        // Partly deleted pages still hold data, so they are not holes.
        let extents = try issuer.extents(at: 0, length: 16384)
        #expect(extents == [BioExtent(offset: 0, length: 16384, kind: [])])
    }

    @Test func deleteFromMidPageAcrossWholePagesZeroesTheEndsAndPunchesTheMiddle() throws {
        let fixture = try Fixture()
        let issuer = fixture.issuer
        try issuer.write(pattern(count: 20480, at: 0), at: 0)
        // 2048 ..< 18432: the tail of page 0, pages 1-3 whole, the head of page 4.
        try issuer.send(.delete, at: 2048, length: 16384)
        var expected = pattern(count: 20480, at: 0)
        for index in 2048..<18432 { expected[index] = 0 }
        #expect(firstMismatch(try issuer.bytes(at: 0, count: 20480), expected) == nil)
        let extents = try issuer.extents(at: 0, length: 20480)
        #expect(extents == [
            BioExtent(offset: 0, length: 4096, kind: []),
            BioExtent(offset: 4096, length: 12288, kind: [.hole, .zero]),
            BioExtent(offset: 16384, length: 4096, kind: []),
        ])
    }

    @Test func writeZeroesPunchesAHoleUnlessNoHoleIsSet() throws {
        let fixture = try Fixture()
        let issuer = fixture.issuer
        try issuer.write(pattern(count: 32768, at: 0), at: 0)

        try issuer.send(.writeZeroes, at: 0, length: 8192)
        #expect(try issuer.bytes(at: 0, count: 8192) == zeros(8192))
        #expect(try issuer.extents(at: 0, length: 8192) == [BioExtent(offset: 0, length: 8192, kind: [.hole, .zero])])

        try issuer.send(.writeZeroes, at: 16384, length: 8192, flags: .noHole)
        #expect(try issuer.bytes(at: 16384, count: 8192) == zeros(8192))
        #expect(try issuer.extents(at: 16384, length: 8192) == [BioExtent(offset: 16384, length: 8192, kind: [])])

        // The pages in between keep their data.
        #expect(try issuer.bytes(at: 8192, count: 8192) == pattern(count: 8192, at: 8192))
        #expect(try issuer.bytes(at: 24576, count: 8192) == pattern(count: 8192, at: 24576))

        // WRITE_ZEROES with NO_HOLE on never-written space allocates it: data that reads as zeros.
        try issuer.send(.writeZeroes, at: 1 << 20, length: 4096, flags: .noHole)
        #expect(try issuer.extents(at: 1 << 20, length: 4096) == [BioExtent(offset: 1 << 20, length: 4096, kind: [])])
        #expect(try issuer.bytes(at: 1 << 20, count: 4096) == zeros(4096))
    }

    @Test func readWithZeroHintOfNeverWrittenRangeCompletesAsZerosWithoutTouchingTheBuffer() throws {
        let fixture = try Fixture()
        let read = try fixture.issuer.read(at: 1 << 20, count: 8192, fill: 0xAA, flags: .zeroHint)
        #expect(read.flags.contains(.readAsZeros))
        #expect(read.completed == 8192)
        #expect(read.bytes == [UInt8](repeating: 0xAA, count: 8192))
    }

    @Test func readWithoutZeroHintOfNeverWrittenRangeZeroFillsTheBuffer() throws {
        let fixture = try Fixture()
        let read = try fixture.issuer.read(at: 1 << 20, count: 8192, fill: 0xAA)
        #expect(!read.flags.contains(.readAsZeros))
        #expect(read.completed == 8192)
        #expect(read.bytes == zeros(8192))
    }

    @Test func readWithZeroHintOfWrittenRangeCopiesTheData() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 4096, at: 8192), at: 8192)
        // One written page among never-written ones: the whole range is copied.
        let read = try fixture.issuer.read(at: 4096, count: 12288, fill: 0xAA, flags: .zeroHint)
        #expect(!read.flags.contains(.readAsZeros))
        #expect(read.bytes == zeros(4096) + pattern(count: 4096, at: 8192) + zeros(4096))
    }

    @Test func fourKilobyteSectorsWorkAndMisalignedRequestsGetEINVAL() throws {
        let fixture = try Fixture(size: 1 << 20, sectorSize: 4096)
        let issuer = fixture.issuer
        #expect(fixture.disk.provider.sectorSize == 4096)
        try issuer.write(pattern(count: 8192, at: 4096), at: 4096)
        #expect(try issuer.bytes(at: 4096, count: 8192) == pattern(count: 8192, at: 4096))

        #expect(errorCode { try issuer.write(pattern(count: 512, at: 512), at: 512) } == .invalid)
        #expect(errorCode { try issuer.write(pattern(count: 512, at: 0), at: 0) } == .invalid)
        #expect(errorCode { _ = try issuer.read(at: 4096 + 512, count: 4096) } == .invalid)
        #expect(errorCode { try issuer.send(.delete, at: 4096, length: 512) } == .invalid)
        // The failed requests changed nothing.
        #expect(try issuer.bytes(at: 0, count: 4096) == zeros(4096))
        #expect(try issuer.bytes(at: 4096, count: 8192) == pattern(count: 8192, at: 4096))
    }

    @Test func sectorSizesThatAreNotPowersOfTwoFromHalfAKilobyteAreRefused() {
        let topology = Topology()
        for size in [0, 256, 1000, 3072, 131072] {
            let error = #expect(throws: StrataError.self) {
                _ = try MemoryDisk.create(in: topology, name: "md-\(size)", size: 1 << 20, sectorSize: size)
            }
            #expect(error?.code == .invalid)
        }
        #expect(throws: StrataError.self) { _ = try MemoryDisk.create(in: topology, name: "md-empty", size: 0) }
    }

    @Test func sizeThatIsNotAMultipleOfTheSectorIsRoundedDown() throws {
        let fixture = try Fixture(size: (1 << 20) + 1000)
        #expect(fixture.disk.provider.mediaSize == (1 << 20) + 512)
        let big = try Fixture(size: (1 << 20) + 4000, sectorSize: 4096, name: "md1")
        #expect(big.disk.provider.mediaSize == 1 << 20)

        // The last whole sector is usable; a read past it is cut at the media end.
        let issuer = fixture.issuer
        try issuer.write(pattern(count: 512, at: 1 << 20), at: 1 << 20)
        let read = try issuer.read(at: 1 << 20, count: 1024)
        #expect(read.completed == 512)
        #expect(Array(read.bytes.prefix(512)) == pattern(count: 512, at: 1 << 20))
        // Starting past the end is an error.
        #expect(errorCode { _ = try issuer.read(at: (1 << 20) + 1024, count: 512) } == .io)
    }

    @Test func canDeleteIsOneAndIdentNamesTheMemoryDisk() throws {
        let fixture = try Fixture(name: "scratch7")
        #expect(try fixture.issuer.attributeInt32(.canDelete) == 1)
        #expect(try fixture.issuer.attributeString(.ident) == "memory:scratch7")
        #expect(fixture.disk.ident == "memory:scratch7")
        #expect(fixture.disk.provider.name == "scratch7")
        #expect(errorCode { _ = try fixture.issuer.attributeInt32(BioAttribute("GEOM::nosuch")) } == .notSupported)
    }

    @Test func witheredDiskLeavesTheTopologyAndItsProviderName() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 4096, at: 0), at: 0)
        try fixture.issuer.close()
        #expect(witherAndWait(fixture.disk, in: fixture.topology))
        #expect(fixture.topology.provider(named: "md0") == nil)
        #expect(fixture.topology.geom(named: "md0") == nil)
        // The name can be used again, and the new disk starts empty.
        let again = try MemoryDisk.create(in: fixture.topology, name: "md0", size: 1 << 20)
        let issuer = try Issuer(on: again.provider, in: fixture.topology, name: "t-issuer-2")
        #expect(try issuer.bytes(at: 0, count: 4096) == zeros(4096))
    }

    @Test
    func failedCreateLeavesNoGeomBehind() throws {
        let topology = Topology()
        // A provider named "taken" served by a geom of another name.
        let owner = try MemoryDisk.create(in: topology, name: "owner", size: 1 << 20)
        let holder = Geom(name: "holder", className: "TEST")
        try topology.add(holder)
        try topology.createProvider(for: holder, name: "taken", mediaSize: 1 << 20, sectorSize: 512, announce: false)
        _ = owner

        let error = #expect(throws: StrataError.self) {
            _ = try MemoryDisk.create(in: topology, name: "taken", size: 1 << 20)
        }
        #expect(error != nil)
        // The failed disk must not linger as a geom (it holds the name and, for a
        // memory disk, its mapping is never released).
        #expect(topology.geom(named: "taken") == nil)
    }
}
