#if canImport(Glibc)
import Glibc
#endif
import CStrataSystem
import Dispatch
import Strata
@testable import StrataDisks
import Synchronization
import Testing

/// Whether /tmp, where the tests' files go, is a file system O_DIRECT bypasses a page
/// cache on.
let tmpDoesDirectIO: Bool = {
    let directory = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    defer { close(directory) }
    return directory >= 0 && !FileDisk.isInMemory(directory)
}()

/// A file disk with `cache: .direct` (O_DIRECT, qemu's `cache=none`): what it reads and
/// writes from memory aligned or not, that the page cache stays out of it, and what it
/// refuses. The files are under /tmp, which must be a file system with O_DIRECT (ext4,
/// xfs, btrfs), not tmpfs.
@Suite(.enabled(if: tmpDoesDirectIO, "needs /tmp on a file system with O_DIRECT, not tmpfs"))
struct FileDiskDirectTests {

    /// The engines direct I/O runs on (inline is refused with it).
    static let engines: [FileDisk.Engine] = FileDisk.Engine.runnable.filter { $0 != .inline }

    /// Which of the file's pages at `offset ..< offset + length` the page cache holds
    /// (mincore over a mapping that is never touched, so mapping it reads nothing in).
    static func residentPages(_ path: String, offset: Int, length: Int) throws -> [Bool] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        let mapping = try #require(mmap(nil, length, PROT_READ, MAP_SHARED, descriptor, off_t(offset)))
        try #require(mapping != MAP_FAILED)
        defer { munmap(mapping, length) }
        let pages = (length + 4095) / 4096
        var vector = [UInt8](repeating: 0, count: pages)
        try #require(mincore(mapping, length, &vector) == 0)
        return vector.map { $0 & 1 != 0 }
    }

    @Test(arguments: engines)
    func writesAndReadsAtRandomPlacesReadBackWhetherTheMemoryIsAlignedOrNot(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let size: Int64 = 8 << 20
        let (disk, issuer) = try fixture.open(size: size, engine: engine, cache: .direct)
        #expect(disk.cache == .direct)
        let alignment = try #require(disk.directAlignment)
        #expect(alignment.offset >= 512 && alignment.offset <= 4096 && alignment.memory >= 1)
        var model = [UInt8](repeating: 0, count: Int(size))
        var generator = SystemRandomNumberGenerator()
        for round in 0..<120 {
            let sectors = Int.random(in: 1...256, using: &generator)
            let count = sectors * 512
            let offset = Int64(Int.random(in: 0...(Int(size) - count) / 512, using: &generator) * 512)
            // Aligned, then unaligned by a few bytes, then by a sector, in one to three pieces.
            let shift = [0, 8, 512, 100][round % 4]
            let cut = count >= 1024 ? [count / 2 / 512 * 512, count - count / 2 / 512 * 512] : [count]
            let pieces = round % 3 == 0 ? [count] : (round % 3 == 1 ? cut : [count - 512, 512].filter { $0 > 0 })
            let data = pattern(count: count, at: offset, seed: UInt8(round & 0xff))
            let written = try FileEngineTests.transfer(.write, on: issuer.consumer, at: offset, pieces: pieces, shift: shift, filling: data)
            try #require(written.error == nil, "write \(count) at \(offset), shift \(shift): \(written.error!)")
            model.replaceSubrange(Int(offset)..<(Int(offset) + count), with: data)
            let readShift = [3, 0, 4096, 64][round % 4]
            let read = try FileEngineTests.transfer(.read, on: issuer.consumer, at: offset, pieces: pieces.reversed(), shift: readShift,
                                     filling: zeros(count))
            try #require(read.error == nil)
            try #require(firstMismatch(read.bytes, data) == nil, "read back \(count) at \(offset)")
        }
        // Everything, at the end, as a plain program reads the file.
        let descriptor = open(disk.path, O_RDONLY | O_CLOEXEC)
        defer { close(descriptor) }
        var file = [UInt8](repeating: 0xee, count: Int(size))
        let count = file.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, 0) }
        #expect(count == Int(size))
        #expect(firstMismatch(file, model) == nil)
        if let ring = disk.ring {
            // Every write and read with a shift not a multiple of the memory alignment
            // bounced; those from aligned memory did not.
            let counts = ring.bounceCounts
            #expect(counts.requests > 0 && counts.requests < 240, "\(counts)")
            #expect(counts.buffers <= counts.requests)
        }
    }

    /// The ring's spares (a threads worker keeps one buffer of its own, unseen here).
    @Test(.enabled(if: FileDisk.isUringAvailable, "needs io_uring"))
    func alignedMemoryGoesStraightToTheFileAndUnalignedMemoryBouncesWithoutANewBufferEachTime() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 4 << 20, engine: .uring, cache: .direct)
        let ring = try #require(disk.ring)
        let data = pattern(count: 65536, at: 0, seed: 9)
        for _ in 0..<20 {
            #expect(try FileEngineTests.transfer(.write, on: issuer.consumer, at: 0, pieces: [65536], shift: 0, filling: data).error == nil)
        }
        #expect(ring.bounceCounts.requests == 0)
        for _ in 0..<20 {
            #expect(try FileEngineTests.transfer(.write, on: issuer.consumer, at: 65536, pieces: [65536], shift: 1, filling: data).error == nil)
            let read = try FileEngineTests.transfer(.read, on: issuer.consumer, at: 65536, pieces: [65536], shift: 1, filling: zeros(65536))
            #expect(read.error == nil && read.bytes == data)
        }
        // One at a time: the buffers are reused, not made per request. Two at most: the
        // next request may be taken before the thread that delivered the last gives its
        // buffer back.
        #expect(ring.bounceCounts.requests == 40)
        #expect(ring.bounceCounts.buffers <= 2)
    }

    @Test(arguments: [FileDisk.Cache.direct, .writeback])
    func writesThroughCacheNoneLeaveNothingInThePageCache(cache: FileDisk.Cache) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 4 << 20, cache: cache)
        try issuer.write(pattern(count: 1 << 20, at: 1 << 20), at: 1 << 20)
        _ = try issuer.bytes(at: 1 << 20, count: 1 << 20)
        let resident = try Self.residentPages(disk.path, offset: 1 << 20, length: 1 << 20)
        if cache == .direct {
            #expect(!resident.contains(true), "\(resident.filter { $0 }.count) of 256 pages in the page cache")
        } else {
            // The check sees pages where they are.
            #expect(resident.allSatisfy { $0 })
        }
    }

    @Test(arguments: engines)
    func fuaFlushTrimZeroesAndExtentsWorkUnderCacheNone(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 4 << 20, engine: engine, cache: .direct)
        let data = pattern(count: 1 << 20, at: 0, seed: 5)
        try issuer.write(data, at: 0, flags: .fua)
        try issuer.write(data, at: 2 << 20, flags: .preflush)
        try issuer.flush()
        #expect(try issuer.bytes(at: 0, count: 1 << 20) == data)
        #expect(try issuer.bytes(at: 2 << 20, count: 1 << 20) == data)
        try issuer.send(.delete, at: 0, length: 1 << 20)
        try issuer.send(.writeZeroes, at: 2 << 20, length: 4096, flags: .noHole)
        try issuer.send(.writeZeroes, at: (2 << 20) + 65536, length: 65536)
        #expect(try issuer.bytes(at: 0, count: 1 << 20) == zeros(1 << 20))
        #expect(try issuer.bytes(at: 2 << 20, count: 4096) == zeros(4096))
        #expect(try issuer.bytes(at: (2 << 20) + 65536, count: 65536) == zeros(65536))
        #expect(try issuer.bytes(at: (2 << 20) + 4096, count: 4096) == Array(data[4096..<8192]))
        let extents = try issuer.extents(at: 0, length: 4 << 20)
        #expect(extentKind(at: 0, in: extents) == [.hole, .zero])
        #expect(extentKind(at: (2 << 20) + 8192, in: extents) == [])
        #expect(resident(disk.path, at: 0, length: 4 << 20) == 0)
    }

    private func resident(_ path: String, at offset: Int, length: Int) -> Int {
        ((try? Self.residentPages(path, offset: offset, length: length)) ?? [true]).filter { $0 }.count
    }

    @Test func aFileOnTmpfsIsRefusedNamingItAndTheSetting() throws {
        try #require(FileEngineTests.mountType(of: "/dev/shm") == "tmpfs")
        let topology = Topology()
        let path = "/dev/shm/strata-direct-\(getpid()).img"
        defer { unlink(path) }
        let refusal = #expect(throws: FileDisk.DirectIORefused.self) {
            _ = try FileDisk.create(in: topology, name: "shm0", path: path, size: 1 << 20, cache: .direct)
        }
        #expect(refusal?.key == "cache" && refusal?.value == "none")
        #expect(refusal?.description.contains(path) == true)
        #expect(refusal?.problem.contains("tmpfs") == true)
        // The file this disk would have made is gone again.
        #expect(fileStatus(path) == nil)
        // Through the page cache, the same file is served.
        let disk = try FileDisk.create(in: topology, name: "shm1", path: path, size: 1 << 20)
        #expect(witherAndWait(disk, in: topology))
    }

    @Test func theInlineEngineIsRefusedWithCacheNone() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let refusal = #expect(throws: FileDisk.DirectIORefused.self) {
            try fixture.open(size: 1 << 20, engine: .inline, cache: .direct)
        }
        #expect(refusal?.key == "io" && refusal?.value == "inline")
    }

    @Test func aSectorSizeBelowTheOffsetAlignmentIsRefusedAndOneAtItIsTaken() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("disk.img")
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        try #require(descriptor >= 0 && ftruncate(descriptor, 1 << 20) == 0)
        defer { close(descriptor) }
        let alignment = try FileDisk.enableDirectIO(descriptor, path: path, sectorSize: 65536, isBlockDevice: false)
        #expect(throws: Never.self) {
            try FileDisk.checkSectorSize(alignment.offset, against: alignment, path: path)
        }
        // A device with 4 KiB logical sectors under the file.
        let refusal = #expect(throws: FileDisk.DirectIORefused.self) {
            try FileDisk.checkSectorSize(512, against: FileDisk.DirectAlignment(memory: 512, offset: 4096), path: path)
        }
        #expect(refusal?.key == "sector-size" && refusal?.value == "512")
        #expect(refusal?.problem.contains("4096-byte alignment") == true)
        #expect(refusal?.description.contains(path) == true)
    }

    @Test func probingFindsTheAlignmentStatxReports() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let path = fixture.directory.file("probe.img")
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        try #require(descriptor >= 0 && ftruncate(descriptor, 1 << 20) == 0)
        defer { close(descriptor) }
        var memory: UInt32 = 0, offset: UInt32 = 0
        try #require(strata_direct_alignment(descriptor, &memory, &offset) == 1, "statx without STATX_DIOALIGN")
        try #require(strata_set_direct(descriptor, 1) == 0)
        var probedMemory: UInt32 = 0, probedOffset: UInt32 = 0
        #expect(strata_probe_direct_alignment(descriptor, &probedMemory, &probedOffset) == 0)
        #expect(probedOffset == offset)
        // The memory alignment probed is the offset's: never less than the file needs.
        #expect(probedMemory == probedOffset && probedMemory % memory == 0)
    }
}
