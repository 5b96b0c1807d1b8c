#if canImport(Glibc)
import Glibc
#endif
import Strata
import StrataDisks
import Testing

/// A topology, a temporary directory, and (once opened) a file disk with an issuer.
final class FileDiskFixture {
    let topology: Topology
    let directory: TemporaryDirectory
    private(set) var disk: FileDisk?
    private(set) var issuer: Issuer?
    private var serial = 0

    /// - Parameter log: receives the topology's messages (the disk's errors among them).
    init(log: (@Sendable (LogLevel, String) -> Void)? = nil) throws {
        topology = Topology(log: log)
        directory = try TemporaryDirectory("strata-filedisk")
    }

    /// Opens (or creates) `name` in the directory as a file disk, with an issuer on it.
    @discardableResult
    func open(_ name: String = "disk.img", size: Int64? = nil, sectorSize: Int = 512, engine: FileDisk.Engine = .automatic,
              workers: Int = 4, cache: FileDisk.Cache = .writeback) throws -> (disk: FileDisk, issuer: Issuer) {
        let disk = try FileDisk.create(in: topology, name: "fd0", path: directory.file(name), size: size,
                                       sectorSize: sectorSize, engine: engine, workers: workers, cache: cache)
        serial += 1
        let issuer = try Issuer(on: disk.provider, in: topology, name: "t-issuer-\(serial)")
        self.disk = disk
        self.issuer = issuer
        return (disk, issuer)
    }

    /// Closes the issuer and withers the disk; returns whether the disk left the
    /// topology (its threads stopped and its descriptor closed).
    @discardableResult
    func closeDisk() -> Bool {
        guard let disk else { return true }
        try? issuer?.close()
        issuer = nil
        self.disk = nil
        return witherAndWait(disk, in: topology)
    }

    func tearDown() {
        closeDisk()
        directory.remove()
    }
}

@Suite struct FileDiskTests {
    // MARK: Opening

    @Test func missingFileWithASizeIsCreatedSparse() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, _) = try fixture.open(size: 8 << 20)
        let status = try #require(fileStatus(disk.path))
        #expect(status.st_mode & S_IFMT == S_IFREG)
        #expect(status.st_size == 8 << 20)
        #expect(status.st_blocks <= 8, "a new backing file should allocate nothing, has \(status.st_blocks) blocks")
        #expect(disk.provider.mediaSize == 8 << 20)
        #expect(disk.path == fixture.directory.file("disk.img"))
        #expect(!disk.isBlockDevice)
    }

    @Test func missingFileWithoutASizeIsRefusedWithThePath() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("absent.img")
        let error = #expect(throws: StrataError.self) {
            _ = try FileDisk.create(in: fixture.topology, name: "fd0", path: path)
        }
        let description = error.map { String(describing: $0) } ?? ""
        #expect(description.contains(path))
        #expect(description.contains("does not exist"))
        #expect(error?.code == BioError(errno: ENOENT))
        #expect(fileStatus(path) == nil, "no file may be created")
        #expect(fixture.topology.geom(named: "fd0") == nil)
    }

    @Test func existingFileOpenedWithAnotherSizeIsRefusedNamingThePathAndBothSizes() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("existing.img")
        try writeFile(path, pattern(count: 65536, at: 0))
        let error = #expect(throws: StrataError.self) {
            _ = try FileDisk.create(in: fixture.topology, name: "fd0", path: path, size: 131072)
        }
        let description = error.map { String(describing: $0) } ?? ""
        #expect(description.contains(path))
        #expect(description.contains("65536"))
        #expect(description.contains("131072"))
        #expect(error?.code == .invalid)
        // The file is left as it was.
        #expect(fileSize(path) == 65536)
        #expect(readFile(path) == pattern(count: 65536, at: 0))
    }

    @Test func existingFileOpenedWithoutASizeUsesItsOwnSizeAndContents() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        try writeFile(fixture.directory.file("existing.img"), pattern(count: 98304, at: 0, seed: 4))
        let (disk, issuer) = try fixture.open("existing.img")
        #expect(disk.provider.mediaSize == 98304)
        #expect(try issuer.bytes(at: 0, count: 98304) == pattern(count: 98304, at: 0, seed: 4))
        // The same size given explicitly is accepted too.
        fixture.closeDisk()
        let again = try fixture.open("existing.img", size: 98304)
        #expect(again.disk.provider.mediaSize == 98304)
    }

    @Test func existingFileSmallerThanOneSectorIsRefused() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("tiny.img")
        try writeFile(path, pattern(count: 100, at: 0))
        let error = #expect(throws: StrataError.self) {
            _ = try FileDisk.create(in: fixture.topology, name: "fd0", path: path)
        }
        #expect(error.map { String(describing: $0).contains(path) } == true)
    }

    @Test func directoryPathIsRefused() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("subdir")
        #expect(mkdir(path, 0o755) == 0)
        let error = #expect(throws: StrataError.self) {
            _ = try FileDisk.create(in: fixture.topology, name: "fd0", path: path)
        }
        #expect(error.map { String(describing: $0).contains(path) } == true)
        let withSize = #expect(throws: StrataError.self) {
            _ = try FileDisk.create(in: fixture.topology, name: "fd0", path: path, size: 1 << 20)
        }
        #expect(withSize != nil)
        #expect(fixture.topology.geom(named: "fd0") == nil)
    }

    @Test func nonPositiveSizeAndBadSectorSizeAreRefused() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("never.img")
        let zero = #expect(throws: StrataError.self) {
            _ = try FileDisk.create(in: fixture.topology, name: "fd0", path: path, size: 0)
        }
        #expect(zero?.code == .invalid)
        let sector = #expect(throws: StrataError.self) {
            _ = try FileDisk.create(in: fixture.topology, name: "fd0", path: path, size: 1 << 20, sectorSize: 1000)
        }
        #expect(sector?.code == .invalid)
        #expect(fileStatus(path) == nil)
    }

    @Test func identIsThePathAndCanDeleteIsOne() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 1 << 20)
        #expect(try issuer.attributeString(.ident) == disk.path)
        #expect(try issuer.attributeInt32(.canDelete) == 1)
    }

    // MARK: Data

    @Test(arguments: FileDisk.Engine.runnable)
    func dataWrittenSurvivesWitheringAndReopening(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let size: Int64 = 4 << 20
        let writes: [(offset: Int64, count: Int)] = [(0, 4096), (512, 1024), (65536 + 512, 12288), (3 << 20, 1 << 20)]
        do {
            let (_, issuer) = try fixture.open(size: size, engine: engine)
            for (index, item) in writes.enumerated() {
                try issuer.write(pattern(count: item.count, at: item.offset, seed: UInt8(index + 1)), at: item.offset)
            }
        }
        #expect(fixture.closeDisk(), "the disk should leave the topology once withered")
        #expect(fixture.topology.geom(named: "fd0") == nil)

        // What a reader of the file sees, byte for byte.
        var expected = zeros(Int(size))
        for (index, item) in writes.enumerated() {
            let bytes = pattern(count: item.count, at: item.offset, seed: UInt8(index + 1))
            expected.replaceSubrange(Int(item.offset)..<Int(item.offset) + item.count, with: bytes)
        }
        let onFile = try #require(readFile(fixture.directory.file("disk.img")))
        #expect(firstMismatch(onFile, expected) == nil)

        let (disk, issuer) = try fixture.open(engine: engine)
        #expect(disk.provider.mediaSize == size)
        let back = try issuer.bytes(at: 0, count: Int(size))
        #expect(firstMismatch(back, expected) == nil)
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func fuaWritePreflushWriteAndFlushSucceed(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: 1 << 20, engine: engine)
        #expect(try issuer.write(pattern(count: 8192, at: 4096), at: 4096, flags: .fua) == 8192)
        #expect(try issuer.write(pattern(count: 4096, at: 65536), at: 65536, flags: [.preflush, .fua]) == 4096)
        #expect(try issuer.write(pattern(count: 512, at: 0), at: 0, flags: .preflush) == 512)
        try issuer.flush()
        #expect(try issuer.bytes(at: 4096, count: 8192) == pattern(count: 8192, at: 4096))
        #expect(try issuer.bytes(at: 65536, count: 4096) == pattern(count: 4096, at: 65536))
        #expect(try issuer.bytes(at: 0, count: 512) == pattern(count: 512, at: 0))
    }

    @Test func deletePunchesAHoleThatReadsAsZeros() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 4 << 20)
        try issuer.write(pattern(count: 2 << 20, at: 1 << 20), at: 1 << 20)
        try issuer.flush()
        let before = try #require(fileStatus(disk.path)).st_blocks
        #expect(before >= 4096, "2 MiB written should allocate at least 4096 512-byte blocks, got \(before)")

        try issuer.send(.delete, at: 1 << 20, length: 1 << 20)
        try issuer.flush()
        let after = try #require(fileStatus(disk.path)).st_blocks
        #expect(after < before)
        #expect(before - after >= 2048 - 64, "1 MiB deleted should free about 2048 blocks: \(before) -> \(after)")
        #expect(fileSize(disk.path) == 4 << 20, "DELETE keeps the file size")

        #expect(try issuer.bytes(at: 1 << 20, count: 1 << 20) == zeros(1 << 20))
        #expect(try issuer.bytes(at: 2 << 20, count: 1 << 20) == pattern(count: 1 << 20, at: 2 << 20))
        let extents = try issuer.extents(at: 1 << 20, length: 1 << 20)
        #expect(extents == [BioExtent(offset: 1 << 20, length: 1 << 20, kind: [.hole, .zero])])
    }

    @Test func deleteOfPartOfABlockZeroesOnlyThatPart() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: 1 << 20)
        try issuer.write(pattern(count: 16384, at: 0), at: 0)
        try issuer.send(.delete, at: 4096 + 512, length: 1024)
        var expected = pattern(count: 16384, at: 0)
        for index in (4096 + 512)..<(4096 + 1536) { expected[index] = 0 }
        #expect(firstMismatch(try issuer.bytes(at: 0, count: 16384), expected) == nil)
    }

    @Test func writeZeroesWithNoHoleReadsZerosAndStaysAllocated() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 4 << 20)
        try issuer.write(pattern(count: 1 << 20, at: 0), at: 0)
        try issuer.flush()
        let before = try #require(fileStatus(disk.path)).st_blocks
        #expect(before >= 2048)

        try issuer.send(.writeZeroes, at: 0, length: 1 << 20, flags: .noHole)
        try issuer.flush()
        #expect(try issuer.bytes(at: 0, count: 1 << 20) == zeros(1 << 20))
        let after = try #require(fileStatus(disk.path)).st_blocks
        #expect(after >= before, "NO_HOLE must keep the range allocated: \(before) -> \(after) blocks")

        // FAST_ZERO is fine where the file system zeroes ranges itself.
        try issuer.write(pattern(count: 8192, at: 2 << 20), at: 2 << 20)
        try issuer.send(.writeZeroes, at: 2 << 20, length: 8192, flags: [.noHole, .fastZero])
        #expect(try issuer.bytes(at: 2 << 20, count: 8192) == zeros(8192))
    }

    @Test func writeZeroesWithoutNoHolePunchesAHole() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 4 << 20)
        try issuer.write(pattern(count: 1 << 20, at: 0), at: 0)
        try issuer.flush()
        let before = try #require(fileStatus(disk.path)).st_blocks
        try issuer.send(.writeZeroes, at: 0, length: 1 << 20)
        try issuer.flush()
        let after = try #require(fileStatus(disk.path)).st_blocks
        #expect(after < before)
        #expect(try issuer.bytes(at: 0, count: 1 << 20) == zeros(1 << 20))
        #expect(try issuer.extents(at: 0, length: 1 << 20) == [BioExtent(offset: 0, length: 1 << 20, kind: [.hole, .zero])])
    }

    // MARK: Extents

    @Test func extentsReportHolesForNeverWrittenSpaceAndDataForWrittenSpace() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: 4 << 20)
        let size: Int64 = 4 << 20
        #expect(try issuer.extents(at: 0, length: size) == [BioExtent(offset: 0, length: size, kind: [.hole, .zero])])

        let dataStart: Int64 = 1 << 20
        let dataLength: Int64 = 64 << 10
        try issuer.write(pattern(count: Int(dataLength), at: dataStart), at: dataStart)
        let extents = try issuer.extents(at: 0, length: size)
        #expect(extentsTile(extents, 0..<size), "\(extents)")
        #expect(extents.allSatisfy { $0.isHole || $0.isData }, "\(extents)")
        // Never-written space before and after is a hole; the written range is data.
        #expect(extents.first == BioExtent(offset: 0, length: dataStart, kind: [.hole, .zero]), "\(extents)")
        #expect(extents.last?.isHole == true && extents.last?.end == size, "\(extents)")
        for at in stride(from: dataStart, to: dataStart + dataLength, by: 512) {
            #expect(extentKind(at: at, in: extents) == [], "byte \(at) is written: \(extents)")
        }
        // Exactly one data extent, starting where the data starts.
        let data = extents.filter(\.isData)
        #expect(data.count == 1 && data.first?.offset == dataStart, "\(extents)")
        // On file systems with 4 KiB blocks the data extent is the written range exactly.
        #expect(extents.count == 3, "\(extents)")
    }

    @Test func extentsOfARangeStartingInsideAHoleOrInsideData() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: 4 << 20)
        try issuer.write(pattern(count: 65536, at: 1 << 20), at: 1 << 20)
        // Starts in the hole, ends inside the data.
        let head = try issuer.extents(at: (1 << 20) - 8192, length: 16384)
        #expect(head == [
            BioExtent(offset: (1 << 20) - 8192, length: 8192, kind: [.hole, .zero]),
            BioExtent(offset: 1 << 20, length: 8192, kind: []),
        ])
        // Starts inside the data, which reaches past the range.
        let inner = try issuer.extents(at: (1 << 20) + 4096, length: 8192)
        #expect(inner == [BioExtent(offset: (1 << 20) + 4096, length: 8192, kind: [])])
        // An extents request whose answer buffer holds one record gets one.
        let limited = try issuer.extents(at: 0, length: 4 << 20, limit: 1)
        #expect(limited == [BioExtent(offset: 0, length: 1 << 20, kind: [.hole, .zero])])
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func dataAndExtentsAtTheEndOfTheFile(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let size: Int64 = 4 << 20
        let (disk, issuer) = try fixture.open(size: size, engine: engine)
        try issuer.write(pattern(count: 4096, at: size - 4096, seed: 3), at: size - 4096)
        #expect(try issuer.bytes(at: size - 4096, count: 4096) == pattern(count: 4096, at: size - 4096, seed: 3))
        #expect(fileSize(disk.path) == size, "writing the last block keeps the size")

        let tail = try issuer.extents(at: size - 65536, length: 65536)
        #expect(tail == [
            BioExtent(offset: size - 65536, length: 65536 - 4096, kind: [.hole, .zero]),
            BioExtent(offset: size - 4096, length: 4096, kind: []),
        ])
        // A range running past the end is cut at the end.
        let past = try issuer.extents(at: size - 8192, length: 1 << 30)
        #expect(past == [
            BioExtent(offset: size - 8192, length: 4096, kind: [.hole, .zero]),
            BioExtent(offset: size - 4096, length: 4096, kind: []),
        ])
        // A read running past the end completes the part inside the media.
        let read = try issuer.read(at: size - 4096, count: 8192, fill: 0xAA)
        #expect(read.completed == 4096)
        #expect(Array(read.bytes.prefix(4096)) == pattern(count: 4096, at: size - 4096, seed: 3))
        // A write running past the end does not grow the file.
        #expect(try issuer.write(pattern(count: 8192, at: size - 4096, seed: 5), at: size - 4096) == 4096)
        #expect(fileSize(disk.path) == size)
        #expect(try issuer.bytes(at: size - 4096, count: 4096) == pattern(count: 4096, at: size - 4096, seed: 5))
        // Starting beyond the end is an error.
        #expect(errorCode { _ = try issuer.read(at: size + 512, count: 512) } == .io)
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func fileWhoseSizeIsNotAMultipleOfTheSectorEndsAtTheLastWholeSector(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let size: Int64 = (1 << 20) + 1000
        let (disk, issuer) = try fixture.open(size: size, engine: engine)
        let media: Int64 = (1 << 20) + 512
        #expect(disk.provider.mediaSize == media)
        #expect(fileSize(disk.path) == size)
        try issuer.write(pattern(count: 512, at: media - 512), at: media - 512)
        let extents = try issuer.extents(at: media - 4096, length: 4096)
        #expect(extentsTile(extents, (media - 4096)..<media), "\(extents)")
        #expect(extents.last?.isData == true, "\(extents)")
        #expect(try issuer.bytes(at: media - 512, count: 512) == pattern(count: 512, at: media - 512))

        // Reopened without a size, the same file gives the same media.
        fixture.closeDisk()
        let (again, reissuer) = try fixture.open(engine: engine)
        #expect(again.provider.mediaSize == media)
        #expect(try reissuer.bytes(at: media - 512, count: 512) == pattern(count: 512, at: media - 512))
    }

    // MARK: Sector size

    @Test(arguments: FileDisk.Engine.runnable)
    func fourKilobyteSectorsWorkAndMisalignedRequestsGetEINVAL(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: (1 << 20) + 2048, sectorSize: 4096, engine: engine)
        #expect(disk.provider.sectorSize == 4096)
        #expect(disk.provider.mediaSize == 1 << 20)
        try issuer.write(pattern(count: 16384, at: 8192), at: 8192)
        #expect(try issuer.bytes(at: 8192, count: 16384) == pattern(count: 16384, at: 8192))
        #expect(errorCode { try issuer.write(pattern(count: 512, at: 512), at: 512) } == .invalid)
        #expect(errorCode { try issuer.write(pattern(count: 512, at: 4096), at: 4096) } == .invalid)
        #expect(errorCode { _ = try issuer.read(at: 8192 + 512, count: 4096) } == .invalid)
        #expect(errorCode { try issuer.send(.writeZeroes, at: 8192, length: 2048) } == .invalid)
        #expect(try issuer.bytes(at: 0, count: 8192) == zeros(8192))
        #expect(try issuer.bytes(at: 8192, count: 16384) == pattern(count: 16384, at: 8192))
        let extents = try issuer.extents(at: 0, length: 1 << 20)
        #expect(extents.first == BioExtent(offset: 0, length: 8192, kind: [.hole, .zero]), "\(extents)")
        #expect(extents.dropFirst().first == BioExtent(offset: 8192, length: 16384, kind: []), "\(extents)")
    }

    @Test
    func missingFileCreatedSmallerThanOneSectorIsRefused() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("tiny-new.img")
        // An existing 100-byte file is refused ("less than one 512-byte sector"); creating
        // one should be too, and leave no file behind.
        var made: FileDisk?
        let error = #expect(throws: StrataError.self) {
            made = try FileDisk.create(in: fixture.topology, name: "fd-tiny", path: path, size: 100)
        }
        if let made { witherAndWait(made, in: fixture.topology) }
        #expect(error?.code == .invalid)
        #expect(fileStatus(path) == nil)
    }

    @Test
    func fileDiskWhoseProviderCannotBeMadeIsNotLeftInTheTopology() async {
        // In a child process: with the bug, the second destroyed() frees the zero
        // buffer twice and the process aborts.
        await #expect(processExitsWith: .success) {
            let topology = Topology()
            let directory = try TemporaryDirectory("strata-filedisk-leftover")
            defer { directory.remove() }
            let holder = Geom(name: "holder", className: "TEST")
            try topology.add(holder)
            try topology.createProvider(for: holder, name: "taken", mediaSize: 1 << 20, sectorSize: 512, announce: false)
            do {
                _ = try FileDisk.create(in: topology, name: "taken", path: directory.file("d.img"), size: 1 << 20)
                exit(3)
            } catch {}
            directory.remove() // now: a crash below skips the deferred removal
            guard let leftover = topology.geom(named: "taken") else { return }
            // The geom that failed to install is still there: take it away.
            topology.wither(leftover)
            _ = topology.waitUntilGone(leftover)
            exit(4)
        }
    }
}
