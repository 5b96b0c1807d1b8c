import Strata
import StrataDisks
import Testing

/// POWERCUT: the log a power-cut disk keeps and the crash images it gives.
@Suite struct PowerCutDiskTests {
    /// A topology with power-cut disks sharing one log, and an issuer on each.
    struct Fixture {
        let topology = Topology()
        let log = PowerCutLog()
        let disks: [PowerCutDisk]
        let issuers: [Issuer]

        init(disks count: Int = 1, size: Int64 = 1 << 20, sectorSize: Int = 512) throws {
            let (topology, log) = (self.topology, self.log)
            disks = try (0..<count).map {
                try PowerCutDisk.create(in: topology, name: "pc\($0)", size: size, sectorSize: sectorSize, log: log)
            }
            issuers = try disks.map { try Issuer(on: $0.provider, in: topology, name: "t-\($0.name)") }
        }

        var issuer: Issuer { issuers[0] }

        /// The image of pc0 at `point` keeping `subset`.
        func image(at point: Int, keeping subset: CrashSubset = .none, disk: String = "pc0") throws -> [UInt8] {
            try log.crashImage(of: disk, at: point, keeping: subset)
        }
    }

    static func bytes(_ image: [UInt8], _ offset: Int64, _ count: Int) -> [UInt8] {
        Array(image[Int(offset)..<(Int(offset) + count)])
    }

    @Test func readsSeeEveryWriteAndTheLogHoldsEachRequestInOrder() throws {
        let fixture = try Fixture()
        let issuer = fixture.issuer
        try issuer.write(pattern(count: 8192, at: 0, seed: 1), at: 0)
        try issuer.write(pattern(count: 1024, at: 4096, seed: 2), at: 4096, flags: .fua)
        try issuer.send(.writeZeroes, at: 6144, length: 512)
        try issuer.send(.delete, at: 16384, length: 4096, flags: .fua)
        try issuer.flush()
        try issuer.write(pattern(count: 512, at: 0, seed: 3), at: 0, flags: .preflush)

        var expected = pattern(count: 512, at: 0, seed: 3) + pattern(count: 3584, at: 512, seed: 1)
        expected += pattern(count: 1024, at: 4096, seed: 2) + pattern(count: 1024, at: 5120, seed: 1)
        expected += zeros(512) + pattern(count: 1536, at: 6656, seed: 1)
        #expect(firstMismatch(try issuer.bytes(at: 0, count: 8192), expected) == nil, "reads see the latest of overlapping writes")

        let entries = fixture.log.entries
        #expect(entries.map(\.sequence) == Array(0..<7))
        #expect(entries.map(\.operation) == [.write, .write, .writeZeroes, .delete, .flush, .flush, .write],
                "a PREFLUSH write is a flush, then the write")
        #expect(entries.map(\.fua) == [false, true, false, true, false, false, false])
        #expect(entries.map(\.offset) == [0, 4096, 6144, 16384, 0, 0, 0])
        #expect(entries.map(\.length) == [8192, 1024, 512, 4096, 0, 0, 512])
        #expect(entries[1].data == pattern(count: 1024, at: 4096, seed: 2))
        #expect(entries[2].data.isEmpty && entries.allSatisfy { $0.disk == "pc0" })
        #expect(fixture.log.count == 7 && fixture.log.disks == ["pc0"])
        #expect(entries[1].description == "#1 pc0 WRITE|FUA 4096+1024")
    }

    @Test func flushedChangesAreKeptAndLaterOnesMayBeLost() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 4096, at: 0, seed: 1), at: 0)
        try fixture.issuer.flush()
        try fixture.issuer.write(pattern(count: 4096, at: 8192, seed: 2), at: 8192)
        let log = fixture.log

        #expect(try log.unflushed(at: 1) == [0], "acknowledged but not flushed")
        #expect(try Self.bytes(fixture.image(at: 1), 0, 4096) == zeros(4096))
        #expect(try Self.bytes(fixture.image(at: 1, keeping: CrashSubset(whole: [0])), 0, 4096) == pattern(count: 4096, at: 0, seed: 1))

        #expect(try log.unflushed(at: 2) == [], "the flush made it durable")
        #expect(try log.unflushed(at: 3) == [2])
        let lost = try fixture.image(at: 3)
        #expect(Self.bytes(lost, 0, 4096) == pattern(count: 4096, at: 0, seed: 1), "flushed: kept whatever the subset")
        #expect(Self.bytes(lost, 8192, 4096) == zeros(4096))
        let kept = try fixture.image(at: 3, keeping: CrashSubset(whole: [2]))
        #expect(Self.bytes(kept, 0, 4096) == pattern(count: 4096, at: 0, seed: 1))
        #expect(Self.bytes(kept, 8192, 4096) == pattern(count: 4096, at: 8192, seed: 2))
        #expect(try fixture.image(at: 0) == zeros(1 << 20), "nothing acknowledged: the disk as it started")
    }

    @Test func fuaChangesAreKeptWithoutAFlush() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 2048, at: 512, seed: 4), at: 512, flags: .fua)
        try fixture.issuer.write(pattern(count: 512, at: 4096, seed: 5), at: 4096)
        try fixture.issuer.send(.writeZeroes, at: 1024, length: 512, flags: .fua)
        #expect(try fixture.log.unflushed(at: 3) == [1])
        let image = try fixture.image(at: 3)
        #expect(Self.bytes(image, 512, 2048) == pattern(count: 512, at: 512, seed: 4) + zeros(512) + pattern(count: 1024, at: 1536, seed: 4))
        #expect(Self.bytes(image, 4096, 512) == zeros(512))
        #expect(try Self.bytes(fixture.image(at: 1), 512, 2048) == pattern(count: 2048, at: 512, seed: 4),
                "durable as soon as it was acknowledged")
    }

    @Test func anySubsetOfTheUnflushedChangesMayHaveReachedTheMedia() throws {
        let fixture = try Fixture()
        let offsets: [Int64] = [0, 16384, 65536]
        for (index, offset) in offsets.enumerated() {
            try fixture.issuer.write(pattern(count: 4096, at: offset, seed: UInt8(index)), at: offset)
        }
        #expect(try fixture.log.unflushed(at: 3) == [0, 1, 2])
        for mask in 0..<8 {
            let kept = Set((0..<3).filter { mask & (1 << $0) != 0 })
            let image = try fixture.image(at: 3, keeping: CrashSubset(whole: kept))
            for (index, offset) in offsets.enumerated() {
                let expected = kept.contains(index) ? pattern(count: 4096, at: offset, seed: UInt8(index)) : zeros(4096)
                #expect(Self.bytes(image, offset, 4096) == expected, "subset \(kept.sorted()), write \(index)")
            }
        }
    }

    @Test func overlappingChangesKeepTheirOrderWhenBothReachTheMedia() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 4096, at: 0, seed: 1), at: 0)
        try fixture.issuer.write(pattern(count: 1024, at: 1024, seed: 2), at: 1024)
        try fixture.issuer.send(.delete, at: 1536, length: 1024)
        let current = try fixture.issuer.bytes(at: 0, count: 4096)
        let all = try fixture.image(at: 3, keeping: CrashSubset(whole: [0, 1, 2]))
        #expect(Self.bytes(all, 0, 4096) == current, "everything kept: the image reads as the disk did")
        let firstOnly = try fixture.image(at: 3, keeping: CrashSubset(whole: [0]))
        #expect(Self.bytes(firstOnly, 0, 4096) == pattern(count: 4096, at: 0, seed: 1))
        let secondOnly = try fixture.image(at: 3, keeping: CrashSubset(whole: [1]))
        #expect(Self.bytes(secondOnly, 0, 4096) == zeros(1024) + pattern(count: 1024, at: 1024, seed: 2) + zeros(2048))
        let firstAndDelete = try fixture.image(at: 3, keeping: CrashSubset(whole: [0, 2]))
        #expect(Self.bytes(firstAndDelete, 0, 4096)
                == pattern(count: 1536, at: 0, seed: 1) + zeros(1024) + pattern(count: 1536, at: 2560, seed: 1))
    }

    @Test func aTornWriteKeepsOnlyItsListedSectors() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 4096, at: 0, seed: 1), at: 0)
        try fixture.issuer.flush()
        try fixture.issuer.write(pattern(count: 4096, at: 0, seed: 2), at: 0)
        let torn = try fixture.image(at: 3, keeping: CrashSubset(torn: [2: [1..<3, 7..<8]]))
        var expected: [UInt8] = []
        for sector in 0..<8 {
            let seed: UInt8 = [1, 2, 7].contains(sector) ? 2 : 1
            expected += pattern(count: 512, at: Int64(sector) * 512, seed: seed)
        }
        #expect(firstMismatch(Self.bytes(torn, 0, 4096), expected) == nil, "sectors 1, 2 and 7 new, the rest old")
    }

    @Test func flushesArePerDiskAndOneSequenceOrdersEveryDisk() throws {
        let fixture = try Fixture(disks: 2)
        try fixture.issuers[0].write(pattern(count: 512, at: 0, seed: 1), at: 0)
        try fixture.issuers[1].write(pattern(count: 512, at: 0, seed: 2), at: 0)
        try fixture.issuers[1].flush()
        try fixture.issuers[0].write(pattern(count: 512, at: 512, seed: 3), at: 512)
        let entries = fixture.log.entries
        #expect(entries.map(\.disk) == ["pc0", "pc1", "pc1", "pc0"])
        #expect(fixture.log.disks == ["pc0", "pc1"])
        #expect(try fixture.log.unflushed(at: 4) == [0, 3], "pc1's flush leaves pc0's writes unflushed")
        let images = try fixture.log.crashImages(for: CrashState(point: 4, subset: .none))
        #expect(images.keys.sorted() == ["pc0", "pc1"])
        #expect(Self.bytes(images["pc0"]!, 0, 1024) == zeros(1024))
        #expect(Self.bytes(images["pc1"]!, 0, 512) == pattern(count: 512, at: 0, seed: 2))
    }

    @Test func theGeneratorIsSeededAndStartsWithEverythingKeptThenNothing() throws {
        let fixture = try Fixture()
        for index in 0..<6 {
            try fixture.issuer.write(pattern(count: 4096, at: Int64(index) * 8192, seed: UInt8(index)), at: Int64(index) * 8192)
            if index == 1 { try fixture.issuer.flush() }
        }
        let log = fixture.log
        let points = Array(0...log.count)
        let states = try log.crashStates(at: points, subsetsPerPoint: 6, seed: 42)
        #expect(try states == log.crashStates(at: points, subsetsPerPoint: 6, seed: 42), "the same seed, the same states")
        #expect(try states != log.crashStates(at: points, subsetsPerPoint: 6, seed: 43))
        #expect(try log.crashStates(at: [5], subsetsPerPoint: 6, seed: 42) == states.filter { $0.point == 5 },
                "a point's states do not depend on the other points")
        #expect(Set(states).count == states.count, "no state twice")
        for point in points {
            let here = states.filter { $0.point == point }
            let unflushed = try log.unflushed(at: point)
            #expect(here.first?.subset == CrashSubset(whole: Set(unflushed)))
            #expect(unflushed.isEmpty ? here.count == 1 : (2...6).contains(here.count), "point \(point): \(here.count) states")
            if !unflushed.isEmpty { #expect(here[1].subset == .none) }
            for state in here { _ = try log.crashImages(for: state) }
        }
        #expect(states.contains { !$0.subset.torn.isEmpty }, "some random subsets tear a write")
        let untorn = try log.crashStates(at: points, subsetsPerPoint: 6, seed: 42, tearing: false)
        #expect(untorn.allSatisfy { $0.subset.torn.isEmpty })
        #expect(log.crashPoints(sampling: 3, seed: 7) == log.crashPoints(sampling: 3, seed: 7))
        #expect(log.crashPoints(sampling: 3, seed: 7).count == 3)
        #expect(log.crashPoints(sampling: 100, seed: 7) == points)
    }

    @Test func statesThatDoNotFitTheLogAreRefused() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 1024, at: 0), at: 0, flags: .fua)
        try fixture.issuer.write(pattern(count: 1024, at: 0), at: 0)
        let log = fixture.log
        #expect(throws: StrataError.self, "past the end") { try log.unflushed(at: 3) }
        #expect(throws: StrataError.self, "a FUA write is not unflushed") {
            try log.crashImage(of: "pc0", at: 2, keeping: CrashSubset(whole: [0]))
        }
        #expect(throws: StrataError.self, "not acknowledged at that point") {
            try log.crashImage(of: "pc0", at: 1, keeping: CrashSubset(whole: [1]))
        }
        #expect(throws: StrataError.self, "a torn run beyond the write's two sectors") {
            try log.crashImage(of: "pc0", at: 2, keeping: CrashSubset(torn: [1: [1..<3]]))
        }
        #expect(throws: StrataError.self, "no such disk") { try log.crashImage(of: "nope", at: 2, keeping: .none) }
        #expect(throws: StrataError.self, "a name records once per log") {
            try PowerCutDisk.create(in: Topology(), name: "pc0", size: 1 << 20, log: log)
        }
        #expect(throws: StrataError.self) { try PowerCutDisk.create(in: fixture.topology, name: "tiny", size: 100) }
        #expect(fixture.log.disks == ["pc0"])
    }

    @Test func aCrashStateRestoresAsMemoryDisksToAssembleOver() throws {
        let fixture = try Fixture(disks: 2, sectorSize: 4096)
        try fixture.issuers[0].write(pattern(count: 8192, at: 8192, seed: 1), at: 8192)
        try fixture.issuers[1].write(pattern(count: 4096, at: 0, seed: 2), at: 0, flags: .fua)
        let state = CrashState(point: 2, subset: CrashSubset(whole: [0]))
        let images = try fixture.log.crashImages(for: state)
        let topology = Topology()
        defer { topology.shutdown() }
        let restored = try fixture.log.restore(state, in: topology)
        #expect(restored.map(\.name) == ["pc0", "pc1"])
        #expect(restored.map(\.provider.sectorSize) == [4096, 4096])
        #expect(restored.map(\.provider.mediaSize) == [1 << 20, 1 << 20])
        for disk in restored {
            let issuer = try Issuer(on: disk.provider, in: topology, write: 0, name: "r-\(disk.name)")
            #expect(try issuer.bytes(at: 0, count: 1 << 20) == images[disk.name]!)
            let data = try issuer.extents(at: 0, length: 1 << 20).filter(\.isData)
            let expected: [BioExtent] = disk.name == "pc0" ? [BioExtent(offset: 8192, length: 8192, kind: [])]
                : [BioExtent(offset: 0, length: 4096, kind: [])]
            #expect(data == expected, "pages of zeros stay holes")
        }
    }

    @Test func aDiskMadeFromAnImageCrashesBackToIt() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let initial = pattern(count: 65536, at: 0, seed: 9)
        let disk = try PowerCutDisk.create(in: topology, name: "img", contents: initial)
        let issuer = try Issuer(on: disk.provider, in: topology)
        #expect(try issuer.bytes(at: 0, count: 65536) == initial)
        try issuer.send(.delete, at: 0, length: 65536)
        #expect(try issuer.bytes(at: 0, count: 65536) == zeros(65536))
        #expect(try disk.log.crashImage(of: "img", at: 1, keeping: .none) == initial)
        #expect(try disk.log.crashImage(of: "img", at: 1, keeping: CrashSubset(whole: [0])) == zeros(65536))
        #expect(try issuer.attributeString(.ident) == "powercut:img")
    }

    @Test func crashImagesAreWrittenAsSparseFilesWithAListOfTheStates() throws {
        let fixture = try Fixture(disks: 2, size: 4 << 20)
        try fixture.issuers[0].write(pattern(count: 8192, at: 1 << 20, seed: 1), at: 1 << 20)
        try fixture.issuers[0].flush()
        try fixture.issuers[1].write(pattern(count: 4096, at: 0, seed: 2), at: 0)
        let states = try fixture.log.crashStates(at: [fixture.log.count], subsetsPerPoint: 2, seed: 1)
        let directory = try TemporaryDirectory("strata-powercut")
        defer { directory.remove() }
        let folders = try fixture.log.writeCrashImages(states, to: directory.file("out"))
        #expect(folders == [directory.file("out/00001"), directory.file("out/00002")])
        for (folder, state) in zip(folders, states) {
            let images = try fixture.log.crashImages(for: state)
            for disk in ["pc0", "pc1"] {
                let path = folder + "/" + disk + ".img"
                #expect(readFile(path) == images[disk], "\(path) holds the image of \(state)")
                let blocks = try #require(fileStatus(path)).st_blocks
                #expect(blocks * 512 <= 64 << 10, "\(path): pages of zeros are holes (\(blocks) blocks)")
            }
        }
        let manifest = String(decoding: readFile(directory.file("out/states.txt")) ?? [], as: UTF8.self)
        #expect(manifest == "00001 \(states[0])\n00002 \(states[1])\n")
        #expect(states.map(\.subset) == [CrashSubset(whole: [2]), .none])
        #expect(fixture.log.dataBytes == 8192 + 4096)
    }

    @Test func aCrashStateDescribesItself() {
        let state = CrashState(point: 17, subset: CrashSubset(whole: [15, 12], torn: [16: [0..<3, 5..<6]]))
        #expect(state.description == "crash at 17; kept #12 #15; torn #16[0..<3,5..<6]")
        #expect(CrashState(point: 3, subset: .none).description == "crash at 3; nothing unflushed kept")
    }
}
