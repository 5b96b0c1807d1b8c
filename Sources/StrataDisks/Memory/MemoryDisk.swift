#if canImport(Glibc)
import Glibc
#endif
import CStrataSystem
import Foundation
import Strata
import Synchronization

/// A sparse disk in memory (GEOM's md, nbdkit's memory plugin).
///
/// The media is one anonymous mapping reserved without commitment, so untouched
/// ranges cost no memory. A bitmap with one bit per 4 KiB page records what was
/// written: never-written ranges read as zeros and report as holes, and DELETE gives
/// whole pages back to the kernel. Reads and writes take no lock: the mapping never
/// moves, and a read racing a delete of the same range sees old data or zeros, never
/// freed memory.
public final class MemoryDisk: Disk, @unchecked Sendable {
    static let pageSize = 4096
    /// The media's first byte: one mapping that never moves (the disk resuming a read
    /// before another disk's reads fetches their sources from it).
    let base: UnsafeMutableRawPointer
    private let mappedBytes: Int
    private let written: UnsafeMutablePointer<Atomic<UInt64>>
    private let wordCount: Int

    /// Adds a memory disk of `size` bytes to `topology`; with `hugePages`, its media is
    /// backed by transparent huge pages where the kernel can find them.
    /// - Throws: `SettingError` (key `huge-pages`) when huge pages are asked for and the
    ///   kernel gives none.
    public static func create(in topology: Topology, name: String, size: Int64, sectorSize: Int = 512,
                              hugePages: Bool = false) throws -> MemoryDisk {
        try create(in: topology, name: name, size: size, sectorSize: sectorSize, hugePages: hugePages) { _ in }
    }

    /// Adds a memory disk holding `contents` (as many bytes as it has) to `topology`.
    /// Pages of zeros stay holes, as if never written.
    public static func create(in topology: Topology, name: String, contents: [UInt8], sectorSize: Int = 512) throws -> MemoryDisk {
        try create(in: topology, name: name, size: Int64(contents.count), sectorSize: sectorSize) { disk in
            contents.withUnsafeBytes { disk.load($0, at: 0) }
        }
    }

    /// Adds a memory disk whose media `fill` writes (with `load` and `punch`) before the
    /// provider exists, so no taster can see it half-filled.
    static func create(in topology: Topology, name: String, size: Int64, sectorSize: Int, hugePages: Bool = false,
                       fill: (MemoryDisk) -> Void) throws -> MemoryDisk {
        let disk = try MemoryDisk(name: name, size: size, hugePages: hugePages)
        fill(disk)
        try disk.install(in: topology, mediaSize: size, sectorSize: sectorSize)
        return disk
    }

    /// Whether the media was asked of the kernel in transparent huge pages.
    public let hugePages: Bool

    /// The size of a transparent huge page on x86-64 and of the media's alignment when
    /// they are asked for: the kernel backs only aligned 2 MiB ranges with one.
    static let hugePageSize = 2 << 20

    private init(name: String, size: Int64, hugePages: Bool) throws {
        guard size > 0 else { throw StrataError(.invalid, "memory disk \(name): size \(size) is not positive") }
        if hugePages, let refusal = MemoryDisk.hugePageRefusal() {
            throw SettingError(key: "huge-pages", value: "true", problem: refusal)
        }
        let pages = (Int(size) + MemoryDisk.pageSize - 1) / MemoryDisk.pageSize
        mappedBytes = pages * MemoryDisk.pageSize
        base = try MemoryDisk.map(mappedBytes, alignment: hugePages ? MemoryDisk.hugePageSize : MemoryDisk.pageSize, name: name)
        if hugePages && madvise(base, mappedBytes, MADV_HUGEPAGE) != 0 {
            let error = errno
            munmap(base, mappedBytes)
            throw SettingError(key: "huge-pages", value: "true", problem: "madvise(MADV_HUGEPAGE) failed: \(String(cString: strerror(error)))")
        }
        self.hugePages = hugePages
        wordCount = (pages + 63) / 64
        written = .allocate(capacity: wordCount)
        for index in 0..<wordCount { (written + index).initialize(to: Atomic(0)) }
        super.init(name: name, className: "MEMORY", ident: "memory:\(name)", canDelete: true)
    }

    /// Reserves `bytes` of anonymous memory, without commitment, at an address that is a
    /// multiple of `alignment` (a power of two, at least a page): the mapping is made
    /// larger by the alignment and trimmed at both ends.
    private static func map(_ bytes: Int, alignment: Int, name: String) throws -> UnsafeMutableRawPointer {
        let slack = alignment - MemoryDisk.pageSize
        let mapped = mmap(nil, bytes + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw StrataError(BioError(errno: errno), "memory disk \(name): mmap of \(bytes) bytes")
        }
        let start = Int(bitPattern: mapped)
        let aligned = (start + alignment - 1) & ~(alignment - 1)
        let head = aligned - start
        if head > 0 { munmap(mapped, head) }
        if slack > head { munmap(UnsafeMutableRawPointer(bitPattern: aligned + bytes), slack - head) }
        return UnsafeMutableRawPointer(bitPattern: aligned)!
    }

    /// Why the kernel would give no transparent huge pages, or nil if it may: its
    /// policy (`/sys/kernel/mm/transparent_hugepage/enabled`) must be `madvise` or
    /// `always`, and a kernel built without them has no such file.
    static func hugePageRefusal() -> String? {
        let path = "/sys/kernel/mm/transparent_hugepage/enabled"
        guard let file = FileHandle(forReadingAtPath: path) else {
            return "this kernel has no transparent huge pages (no \(path))"
        }
        defer { try? file.close() }
        let policy = String(decoding: (try? file.readToEnd()) ?? Data(), as: UTF8.self)
        if policy.contains("[never]") {
            return "the kernel's policy for transparent huge pages is never (\(path))"
        }
        return nil
    }

    // Freed with the disk, not when it leaves the topology (`destroyed`): a topology
    // dropped without `shutdown` frees its geoms without withering them.
    deinit {
        munmap(base, mappedBytes)
        written.deinitialize(count: wordCount)
        written.deallocate()
    }

    private static let zeroPage = [UInt8](repeating: 0, count: pageSize)

    /// Copies `bytes` to `offset` of the media, page by page; a page of zeros that lands
    /// on a hole is skipped, so it stays a hole and costs no memory.
    func load(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        let page = MemoryDisk.pageSize
        MemoryDisk.zeroPage.withUnsafeBytes { zero in
            var done = 0
            while done < bytes.count {
                let at = offset + done
                let count = min(page - at % page, bytes.count - done)
                let source = bytes.baseAddress! + done
                if isWritten(page: at / page) || memcmp(source, zero.baseAddress!, count) != 0 {
                    (base + at).copyMemory(from: source, byteCount: count)
                    markWritten(pages(of: Int64(at), Int64(count)))
                }
                done += count
            }
        }
    }

    // MARK: Page bitmap

    private func pages(of offset: Int64, _ length: Int64) -> Range<Int> {
        let first = Int(offset) / MemoryDisk.pageSize
        let end = (Int(offset + length) + MemoryDisk.pageSize - 1) / MemoryDisk.pageSize
        return first..<end
    }

    private func isWritten(page: Int) -> Bool {
        written[page >> 6].load(ordering: .relaxed) & (1 << UInt64(page & 63)) != 0
    }

    private func anyWritten(_ pages: Range<Int>) -> Bool {
        for page in pages where isWritten(page: page) { return true }
        return false
    }

    private func markWritten(_ pages: Range<Int>) {
        for page in pages where !isWritten(page: page) {
            written[page >> 6].bitwiseOr(1 << UInt64(page & 63), ordering: .relaxed)
        }
    }

    private func markHole(page: Int) {
        written[page >> 6].bitwiseAnd(~(1 << UInt64(page & 63)), ordering: .relaxed)
    }

    // MARK: Commands

    // Under a plug (`BioPlug`), a read is put off. When the plug ends the copies run one
    // after another, and before each the disk starts fetching the next one's source (its
    // page walk and first line, without waiting), so the next copy's misses overlap this
    // one's, as in a plain loop of copies. Fetched when the read was put off instead, a
    // whole batch earlier, the page walk held the processor up in the stack's own work
    // and the reads ran about 6% slower. Writes are not put off: a copy's stores do not
    // hold the processor up as its loads do, and measured, putting them off cost more
    // than it gained.

    override public func read(_ bio: consuming ProviderBio) {
        if !anyWritten(pages(of: bio.offset, bio.length)) {
            bio.deliverZeros()
            return
        }
        if BioPlug.isPlugged {
            bio.deferToPlug()
            return
        }
        copyOut(bio)
    }

    /// A read put off under the plug. The next one may be another memory disk's (the
    /// other side of a stripe); its type is checked by identity, which costs no cast.
    override public func resume(_ bio: consuming ProviderBio) {
        if let (geom, offset) = BioPlug.nextDeferred(),
           geom._withUnsafeGuaranteedRef({ ObjectIdentifier(type(of: $0)) == ObjectIdentifier(MemoryDisk.self) }) {
            strata_prefetch(unsafeDowncast(geom.takeUnretainedValue(), to: MemoryDisk.self).base + Int(offset))
        }
        copyOut(bio)
    }

    private func copyOut(_ bio: consuming ProviderBio) {
        bio.data.copy(from: base + Int(bio.offset))
        bio.deliverAll()
    }

    /// Writes at least this long are copied with streaming stores
    /// (`strata_copy_streaming`): a large write's media is seldom in the cache, and an
    /// ordinary copy reads each line of it in before writing it over, a third of the
    /// copy's time. Shorter writes, which may land on lines still cached, copy as usual.
    static let streamingWriteLength: Int64 = 64 << 10

    override public func write(_ bio: consuming ProviderBio) {
        markWritten(pages(of: bio.offset, bio.length))
        if bio.length >= MemoryDisk.streamingWriteLength {
            var at = base + Int(bio.offset)
            bio.data.forEachSegment { piece in
                strata_copy_streaming(at, piece.baseAddress!, piece.count)
                at += piece.count
            }
        } else {
            bio.data.copy(to: base + Int(bio.offset))
        }
        bio.deliverAll()
    }

    override public func delete(_ bio: consuming ProviderBio) {
        punch(offset: Int(bio.offset), length: Int(bio.length))
        bio.deliverAll()
    }

    override public func writeZeroes(_ bio: consuming ProviderBio) {
        if bio.flags.contains(.noHole) {
            markWritten(pages(of: bio.offset, bio.length))
            (base + Int(bio.offset)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(bio.length))
        } else {
            punch(offset: Int(bio.offset), length: Int(bio.length))
        }
        bio.deliverAll()
    }

    /// Makes the range read as zeros: whole pages go back to the kernel and become
    /// holes; the partial pages at either end are zeroed in place.
    func punch(offset: Int, length: Int) {
        let page = MemoryDisk.pageSize
        let end = offset + length
        let firstWhole = (offset + page - 1) / page * page
        let endWhole = end / page * page
        if firstWhole >= endWhole {
            (base + offset).initializeMemory(as: UInt8.self, repeating: 0, count: length)
            return
        }
        if offset < firstWhole {
            (base + offset).initializeMemory(as: UInt8.self, repeating: 0, count: firstWhole - offset)
        }
        if endWhole < end {
            (base + endWhole).initializeMemory(as: UInt8.self, repeating: 0, count: end - endWhole)
        }
        for index in (firstWhole / page)..<(endWhole / page) { markHole(page: index) }
        madvise(base + firstWhole, endWhole - firstWhole, MADV_DONTNEED)
    }

    override public func extents(_ bio: consuming ProviderBio) {
        let range = bio.extentRange(mediaSize: provider.mediaSize)
        var extents: [BioExtent] = []
        let capacity = bio.extentCapacity
        var at = range.lowerBound
        while at < range.upperBound && extents.count < capacity {
            let page = Int(at) / MemoryDisk.pageSize
            let data = isWritten(page: page)
            var runEnd = Int64(page + 1) * Int64(MemoryDisk.pageSize)
            while runEnd < range.upperBound && isWritten(page: Int(runEnd) / MemoryDisk.pageSize) == data {
                runEnd += Int64(MemoryDisk.pageSize)
            }
            runEnd = min(runEnd, range.upperBound)
            extents.append(BioExtent(offset: at, length: runEnd - at, kind: data ? [] : [.hole, .zero]))
            at = runEnd
        }
        bio.deliverAttribute(extents: extents)
    }
}
