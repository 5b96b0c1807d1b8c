#if canImport(Glibc)
import Glibc
#endif
import Strata

/// A memory disk that records every change and flush it takes in a `PowerCutLog`, for
/// crash testing in the manner of Linux's dm-log-writes.
///
/// It serves like a correct disk: a read sees every write completed before it. The log
/// then gives the images a power cut at any point could have left, following the
/// rules of a disk with a volatile write cache (see `PowerCutLog`). Requests complete in
/// the caller's thread, one at a time, in log order, so a FLUSH covers every change
/// logged before it.
public final class PowerCutDisk: Disk, @unchecked Sendable {
    /// Where this disk's entries go; shared by the disks of one stack.
    public let log: PowerCutLog
    private let media: UnsafeMutableRawPointer
    private let mappedBytes: Int

    /// Adds a power-cut disk of `size` bytes, all zeros, to `topology`, recording into
    /// `log`.
    /// - Throws: `StrataError` when the size is not positive, or `log` or `topology`
    ///   already has a disk of that name.
    public static func create(in topology: Topology, name: String, size: Int64, sectorSize: Int = 512,
                              log: PowerCutLog = PowerCutLog()) throws -> PowerCutDisk {
        try make(in: topology, name: name, size: size, sectorSize: sectorSize, contents: nil, log: log)
    }

    /// Adds a power-cut disk holding `contents` (as many bytes as it has) to `topology`:
    /// crash states start from that image, for instance a file system made beforehand.
    public static func create(in topology: Topology, name: String, contents: [UInt8], sectorSize: Int = 512,
                              log: PowerCutLog = PowerCutLog()) throws -> PowerCutDisk {
        try make(in: topology, name: name, size: Int64(contents.count), sectorSize: sectorSize, contents: contents, log: log)
    }

    private static func make(in topology: Topology, name: String, size: Int64, sectorSize: Int, contents: [UInt8]?,
                             log: PowerCutLog) throws -> PowerCutDisk {
        try Disk.validate(sectorSize: sectorSize, for: name)
        let mediaSize = size / Int64(sectorSize) * Int64(sectorSize)
        guard mediaSize > 0 else {
            throw StrataError(.invalid, "power-cut disk \(name): size \(size) holds no \(sectorSize)-byte sector")
        }
        try log.register(name, size: mediaSize, sectorSize: sectorSize, initial: contents.map { Array($0.prefix(Int(mediaSize))) })
        do {
            let disk = try PowerCutDisk(name: name, size: mediaSize, log: log)
            if let contents { disk.media.copyMemory(from: contents, byteCount: Int(mediaSize)) }
            try disk.install(in: topology, mediaSize: mediaSize, sectorSize: sectorSize)
            return disk
        } catch {
            log.unregister(name)
            throw error
        }
    }

    private init(name: String, size: Int64, log: PowerCutLog) throws {
        mappedBytes = Int(size)
        // Reserved without commitment, as a memory disk's: untouched ranges cost nothing.
        let mapped = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw StrataError(BioError(errno: errno), "power-cut disk \(name): mmap of \(size) bytes")
        }
        media = mapped
        self.log = log
        super.init(name: name, className: "POWERCUT", ident: "powercut:\(name)", canDelete: true)
    }

    override public func destroyed() {
        munmap(media, mappedBytes)
    }

    // MARK: Commands

    override public func read(_ bio: consuming ProviderBio) {
        let data = bio.data
        let at = media + Int(bio.offset)
        log.withoutChanges { data.copy(from: at) }
        bio.deliverAll()
    }

    override public func write(_ bio: consuming ProviderBio) {
        let (offset, length, flags, data) = (bio.offset, Int(bio.length), bio.flags, bio.data)
        if flags.contains(.preflush) { log.append(name, .flush) }
        let at = media + Int(offset)
        log.append(name, .write, offset: offset, length: Int64(length), fua: flags.contains(.fua)) {
            data.copy(to: at)
            return [UInt8](unsafeUninitializedCapacity: length) { buffer, initialized in
                UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: at, byteCount: length)
                initialized = length
            }
        }
        bio.deliverAll()
    }

    override public func delete(_ bio: consuming ProviderBio) {
        zero(bio.offset, bio.length, as: .delete, fua: bio.flags.contains(.fua))
        bio.deliverAll()
    }

    override public func writeZeroes(_ bio: consuming ProviderBio) {
        zero(bio.offset, bio.length, as: .writeZeroes, fua: bio.flags.contains(.fua))
        bio.deliverAll()
    }

    /// DELETE and WRITE_ZEROES both leave zeros, as on a memory disk, so that a crash
    /// image shows either the old data or zeros.
    private func zero(_ offset: Int64, _ length: Int64, as operation: PowerCutEntry.Operation, fua: Bool) {
        log.append(name, operation, offset: offset, length: length, fua: fua) {
            punch(Int(offset), Int(length))
            return []
        }
    }

    /// Zeros a range: whole pages go back to the kernel (a DELETE of the whole disk, as
    /// mkfs issues, costs no memory), partial pages are zeroed in place.
    private func punch(_ offset: Int, _ length: Int) {
        let page = Int(getpagesize())
        let end = offset + length
        let firstWhole = (offset + page - 1) / page * page
        let endWhole = end / page * page
        guard firstWhole < endWhole else {
            memset(media + offset, 0, length)
            return
        }
        memset(media + offset, 0, firstWhole - offset)
        memset(media + endWhole, 0, end - endWhole)
        madvise(media + firstWhole, endWhole - firstWhole, MADV_DONTNEED)
    }

    override public func flush(_ bio: consuming ProviderBio) {
        log.append(name, .flush)
        bio.deliverAll()
    }
}
