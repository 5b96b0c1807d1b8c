#if canImport(Glibc)
import Glibc
#endif
import CStrataSystem
import Strata
import Synchronization

/// A disk backed by a regular file or a block device.
///
/// How the I/O is done is the disk's `engine` (see `Engine`): a file in memory (tmpfs)
/// is read and written on the caller's thread, as a memory disk copies; elsewhere
/// READ, WRITE and FLUSH go through io_uring (`FileRing`), whose submitter takes what
/// the page cache answered at once, and the other commands, or everything where the
/// kernel refuses io_uring, go to a few worker threads, so no caller's thread blocks on
/// a device. FLUSH is fdatasync; FUA writes use RWF_DSYNC; DELETE punches a hole;
/// WRITE_ZEROES punches a hole or zeroes the range in place (NO_HOLE) without writing
/// zeros where the file system can. Failures are reported once through the topology's
/// log with the path and errno, and delivered as that errno.
///
/// With `cache: .direct` (`cache: none`, as qemu's `cache=none`) the file is opened
/// `O_DIRECT`: requests whose memory is aligned go to the kernel as they are, the others
/// are copied through an aligned buffer (`DirectAlignment`, `FileDisk+Direct.swift`).
///
/// The disk holds an open file description lock on the whole file while it is open:
/// exclusive if it writes, shared if it is read-only, so a second opener, in this
/// process or another, is refused at once (`InUse`).
public final class FileDisk: Disk, @unchecked Sendable {
    public let path: String
    public let isBlockDevice: Bool
    /// Opened `O_RDONLY` under a shared lock; its provider is read-only, so no write
    /// reaches it.
    public let isReadOnly: Bool
    /// How the I/O is done: `.inline`, `.uring` or `.threads`, never `.automatic`.
    public let engine: Engine
    /// Whether the page cache is used; with `.direct`, the alignment the file needs.
    public let cache: Cache
    public let directAlignment: DirectAlignment?
    /// The engine the disk was asked for (`.automatic` unless one was named), to write
    /// its entry back.
    public private(set) var requestedEngine = Engine.automatic
    let descriptor: Int32
    /// Writes held in memory while the topology is assembled (`holdWritesWhileAssembling`);
    /// nil once they are on the file. `isStaging` says so without the lock.
    let staged = Mutex<StagedWrites?>(nil)
    let isStaging = Atomic<Bool>(false)
    /// The io_uring engine, when `engine` is `.uring`.
    let ring: FileRing?
    private let lock = ConditionLock()
    private var queue = BioQueue()
    private var stopping = false
    private var runningWorkers = 0
    /// Zeros to write where the file system cannot zero a range itself.
    private static let zeroChunk = 1 << 20
    private let zeros: UnsafeMutableRawPointer

    /// Opens (or creates) a file disk and adds it to `topology`.
    ///
    /// - Parameters:
    ///   - path: a regular file or a block device.
    ///   - size: the size to create a missing file with (sparse). For an existing file,
    ///     nil takes its size; a different size is an error.
    ///   - sectorSize: 512 or 4096 (any power of two from 512 to 65536).
    ///   - engine: how the I/O is done; `.automatic` chooses `.inline` for a file in
    ///     memory (tmpfs, ramfs), else `.uring` where the kernel allows it, else `.threads`.
    ///   - workers: threads doing the I/O that io_uring does not (all of it with `.threads`).
    ///   - readOnly: open the file `O_RDONLY` under a shared lock (it must exist), and
    ///     make the provider read-only: every write, DELETE and WRITE_ZEROES is refused
    ///     with EPERM, and opening it for writing with EROFS.
    ///   - cache: `.writeback` (through the page cache) or `.direct` (`O_DIRECT`).
    /// - Throws: `InUse` when another opener holds a conflicting lock on the file;
    ///   `DirectIORefused` when `.direct` cannot be had (a file in memory, a file system
    ///   without O_DIRECT, a sector size below its alignment, the inline engine);
    ///   `StrataError` naming the path and the failing call; with `.uring`, also when the
    ///   kernel refuses io_uring.
    public static func create(in topology: Topology, name: String, path: String, size: Int64? = nil,
                              sectorSize: Int = 512, engine: Engine = .automatic, workers: Int = 4,
                              readOnly: Bool = false, cache: Cache = .writeback) throws -> FileDisk {
        try Disk.validate(sectorSize: sectorSize, for: name)
        if cache == .direct && engine == .inline {
            throw DirectIORefused(path: path, key: "io", value: "inline",
                                  problem: "cannot go with cache: none: every read and write would wait for the device on the caller's thread; use automatic, uring or threads")
        }
        let opened = try FileDisk.open(path: path, size: size, sectorSize: sectorSize, readOnly: readOnly)
        var alignment: DirectAlignment?
        if cache == .direct {
            do {
                alignment = try FileDisk.enableDirectIO(opened.descriptor, path: path, sectorSize: sectorSize,
                                                        isBlockDevice: opened.isBlockDevice)
            } catch {
                close(opened.descriptor)
                if opened.created { unlink(path) }
                throw error
            }
        }
        let workerCount = max(workers, 1)
        var chosen = engine
        var ring: FileRing?
        var refusal: BioError?
        if engine == .automatic && alignment == nil && !opened.isBlockDevice && FileDisk.isInMemory(opened.descriptor) {
            chosen = .inline
        } else if engine == .automatic || engine == .uring {
            do throws(BioError) {
                ring = try FileRing(descriptor: opened.descriptor, alignment: alignment)
                chosen = .uring
            } catch {
                if engine == .uring {
                    close(opened.descriptor)
                    if opened.created { unlink(path) }
                    throw StrataError(error, "io_uring for file disk \(path)")
                }
                refusal = error
                chosen = .threads
            }
        }
        let disk = FileDisk(name: name, path: path, descriptor: opened.descriptor, isBlockDevice: opened.isBlockDevice,
                            isReadOnly: readOnly, engine: chosen, cache: cache, alignment: alignment, ring: ring,
                            workers: chosen == .inline ? 0 : workerCount)
        disk.requestedEngine = engine
        // Nothing is written to a read-only disk, so there is nothing to hold.
        if !readOnly { try disk.holdWritesWhileAssembling(topology, sectorSize: sectorSize, created: opened.created) }
        try disk.install(in: topology, mediaSize: opened.size, sectorSize: sectorSize, readOnly: readOnly,
                         memoryAlignment: alignment?.memory ?? 1)
        if let refusal {
            topology.emit(.notice, "file disk \(name): io_uring unavailable (\(refusal)); using \(workerCount) threads")
        }
        return disk
    }

    /// How a file disk does its I/O.
    public enum Engine: String, Sendable, CaseIterable {
        /// `.inline` for a file in memory, else `.uring` where the kernel allows it, else
        /// `.threads`.
        case automatic
        /// Every call on the caller's thread, as a memory disk copies: for files whose
        /// reads and writes never wait for a device (tmpfs, ramfs), where a hop to
        /// another thread would cost more than the copy.
        case inline
        /// READ, WRITE and FLUSH through io_uring (by the raw system calls); the other
        /// commands on worker threads. Creating the disk fails where the kernel refuses it.
        case uring
        /// Worker threads calling pread, pwrite and fdatasync.
        case threads
    }

    /// Whether `descriptor` is a file whose pages are the medium itself (tmpfs, ramfs).
    static func isInMemory(_ descriptor: Int32) -> Bool {
        let tmpfs: Int64 = 0x0102_1994, ramfs: Int64 = 0x8584_58f6
        let type = strata_file_system_type(descriptor)
        return type == tmpfs || type == ramfs
    }

    /// Whether this kernel lets the process set up an io_uring (it may have none, or a
    /// seccomp filter or `kernel.io_uring_disabled` may forbid it).
    public static let isUringAvailable: Bool = FileRing.isAvailable

    private init(name: String, path: String, descriptor: Int32, isBlockDevice: Bool, isReadOnly: Bool, engine: Engine,
                 cache: Cache, alignment: DirectAlignment?, ring: FileRing?, workers: Int) {
        self.path = path
        self.descriptor = descriptor
        self.isBlockDevice = isBlockDevice
        self.isReadOnly = isReadOnly
        self.engine = engine
        self.cache = cache
        self.directAlignment = alignment
        self.ring = ring
        // Aligned for direct I/O too: written as it is, in whole sectors.
        self.zeros = .allocate(byteCount: FileDisk.zeroChunk, alignment: max(4096, alignment?.memory ?? 0))
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: FileDisk.zeroChunk)
        super.init(name: name, className: "FILE", ident: path, canDelete: true)
        ring?.failed = { [unowned self] bio, failure, call in finish(bio, failure: failure, call: call) }
        runningWorkers = workers
        for _ in 0..<runningWorkers {
            startWorkerThread { [self] in work() }
        }
    }

    private static func open(path: String, size: Int64?, sectorSize: Int, readOnly: Bool)
        throws -> (descriptor: Int32, size: Int64, isBlockDevice: Bool, created: Bool) {
        if let size, size < Int64(sectorSize) {
            throw StrataError(.invalid, "file disk \(path): size \(size) is less than one \(sectorSize)-byte sector")
        }
        var descriptor = retryingOnInterrupt { Glibc.open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC) }
        if descriptor < 0 && errno == ENOENT {
            if readOnly {
                throw StrataError(BioError(errno: ENOENT), "open \(path): the file does not exist (a read-only disk is not created)")
            }
            guard let size else {
                throw StrataError(BioError(errno: ENOENT), "open \(path): the file does not exist and no size was given to create it")
            }
            descriptor = retryingOnInterrupt { Glibc.open(path, O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0o644) }
            guard descriptor >= 0 else { throw StrataError(BioError(errno: errno), "create \(path)") }
            do {
                try lock(descriptor, path: path, exclusive: true)
            } catch {
                // Another process opened the new file meanwhile: it is theirs to remove.
                close(descriptor)
                throw error
            }
            guard ftruncate(descriptor, off_t(size)) == 0 else {
                let error = BioError(errno: errno)
                close(descriptor)
                unlink(path)
                throw StrataError(error, "ftruncate \(path) to \(size) bytes")
            }
            return (descriptor, size, false, true)
        }
        guard descriptor >= 0 else {
            let error = BioError(errno: errno)
            if !readOnly && [EACCES, EPERM, EROFS].contains(error.errno) {
                let why = error.errno == EROFS ? "its file system is read-only" : "permission denied"
                throw StrataError(error, "open \(path) for writing: \(why) (a read-only disk opens it read-only)")
            }
            throw StrataError(error, "open \(path)")
        }
        do {
            try lock(descriptor, path: path, exclusive: !readOnly)
        } catch {
            close(descriptor)
            throw error
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            let error = BioError(errno: errno)
            close(descriptor)
            throw StrataError(error, "fstat \(path)")
        }
        switch status.st_mode & S_IFMT {
        case S_IFREG:
            let actual = Int64(status.st_size)
            if let size, size != actual {
                close(descriptor)
                throw StrataError(.invalid, "file disk \(path) is \(actual) bytes but its size is given as \(size)")
            }
            guard actual >= Int64(sectorSize) else {
                close(descriptor)
                throw StrataError(.invalid, "file disk \(path) is \(actual) bytes, less than one \(sectorSize)-byte sector")
            }
            return (descriptor, actual, false, false)
        case S_IFBLK:
            var bytes: UInt64 = 0
            var logical: Int32 = 0
            guard strata_block_size(descriptor, &bytes) == 0, strata_block_sector_size(descriptor, &logical) == 0 else {
                let error = BioError(errno: errno)
                close(descriptor)
                throw StrataError(error, "size of block device \(path)")
            }
            guard sectorSize >= Int(logical), sectorSize % Int(logical) == 0 else {
                close(descriptor)
                throw StrataError(.invalid, "block device \(path) has \(logical)-byte sectors; sector size \(sectorSize) is not a multiple")
            }
            if let size, size > Int64(bytes) {
                close(descriptor)
                throw StrataError(.invalid, "block device \(path) is \(bytes) bytes, less than the size given, \(size)")
            }
            return (descriptor, size ?? Int64(bytes), true, false)
        default:
            close(descriptor)
            throw StrataError(.invalid, "file disk \(path) is neither a regular file nor a block device")
        }
    }

    override public func destroyed() {
        ring?.stop()
        lock.withLock {
            stopping = true
            lock.broadcast()
            while runningWorkers > 0 { lock.wait() }
        }
        // A clean close leaves nothing in the page cache that was not on stable storage.
        if fdatasync(descriptor) != 0 {
            topology?.emit(.error, "fdatasync \(path) on close: \(BioError(errno: errno))")
        }
        close(descriptor)
        zeros.deallocate()
    }

    // MARK: Queueing

    override public func start(_ bio: consuming ProviderBio) {
        if isStaging.load(ordering: .relaxed) {
            startStaged(bio)
            return
        }
        dispatch(bio)
    }

    /// Sends a request to the engine.
    func dispatch(_ bio: consuming ProviderBio) {
        if engine == .inline {
            super.start(bio)
            return
        }
        if let ring, bio.command == .read || bio.command == .write || bio.command == .flush {
            if BioPlug.isPlugged {
                // Submitted with the others of the plug, in one system call (`resume`).
                bio.deferToPlug()
                return
            }
            ring.submit(bio)
            return
        }
        lock.lock()
        queue.append(bio)
        lock.signal()
        lock.unlock()
    }

    /// A request put off under the plug: queued in the ring, which is entered once for
    /// the run of this disk's requests the plug put off, at the last of them.
    override public func resume(_ bio: consuming ProviderBio) {
        let last = !BioPlug.nextDeferredGoesWith(bio)
        ring!.submit(bio, entering: last)
    }

    private func work() {
        // This worker's buffer for direct I/O from memory that is not aligned.
        var bounce = AlignedBuffer(alignment: directAlignment?.memory ?? 4096)
        while true {
            let next: ProviderBio? = lock.withLock {
                while queue.isEmpty && !stopping { lock.wait() }
                return queue.popFirst()
            }
            guard let bio = next else { break }
            if let error = provider.error {
                // The disk is going away: what was queued fails like what is new.
                bio.deliver(error)
                continue
            }
            let command = bio.command
            switch command {
            case .read: read(bio, bounce: &bounce)
            case .write: write(bio, bounce: &bounce)
            default: super.start(bio)
            }
        }
        lock.withLock {
            runningWorkers -= 1
            lock.broadcast()
        }
    }

    // MARK: Commands (on worker threads)

    override public func read(_ bio: consuming ProviderBio) {
        var bounce = AlignedBuffer(alignment: directAlignment?.memory ?? 4096)
        read(bio, bounce: &bounce)
    }

    private func read(_ bio: consuming ProviderBio, bounce: inout AlignedBuffer) {
        finish(bio, failure: read(into: bio.data, at: bio.offset, bounce: &bounce), call: "pread")
    }

    /// Reads `data.count` bytes at `offset` into `data`, through `bounce` where the file
    /// is opened O_DIRECT and `data` is not aligned for it. Returns 0 or the errno.
    func read(into data: BioData, at offset: Int64, bounce: inout AlignedBuffer) -> Int32 {
        if let directAlignment, !directAlignment.admits(data) {
            let buffer = UnsafeMutableRawBufferPointer(start: bounce.reserve(data.count), count: data.count)
            let failure = read(into: buffer, at: offset)
            if failure == 0 { data.copy(from: buffer.baseAddress!) }
            return failure
        }
        var at = offset
        var failure: Int32 = 0
        data.forEachSegment { piece in
            guard failure == 0 else { return }
            failure = read(into: piece, at: at)
            at += Int64(piece.count)
        }
        return failure
    }

    /// Reads one segment fully at `offset`. Returns 0 or the errno.
    private func read(into piece: UnsafeMutableRawBufferPointer, at offset: Int64) -> Int32 {
        var done = 0
        while done < piece.count {
            let count = pread(descriptor, piece.baseAddress! + done, piece.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if count == 0 {
                // The file shrank under us: past its end reads as zeros.
                (piece.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: piece.count - done)
                break
            }
            done += count
        }
        return 0
    }

    override public func write(_ bio: consuming ProviderBio) {
        var bounce = AlignedBuffer(alignment: directAlignment?.memory ?? 4096)
        write(bio, bounce: &bounce)
    }

    private func write(_ bio: consuming ProviderBio, bounce: inout AlignedBuffer) {
        if bio.flags.contains(.preflush), fdatasync(descriptor) != 0 {
            finish(bio, failure: errno, call: "fdatasync")
            return
        }
        let durable = bio.flags.contains(.fua)
        var at = bio.offset
        var failure: Int32 = 0
        if let directAlignment, !directAlignment.admits(bio.data) {
            let buffer = UnsafeMutableRawBufferPointer(start: bounce.reserve(bio.data.count), count: bio.data.count)
            bio.data.copy(to: buffer.baseAddress!)
            finish(bio, failure: write(buffer, at: at, durable: durable), call: "pwrite")
            return
        }
        bio.data.forEachSegment { piece in
            guard failure == 0 else { return }
            failure = write(piece, at: at, durable: durable)
            at += Int64(piece.count)
        }
        finish(bio, failure: failure, call: "pwrite")
    }

    /// Writes one segment fully at `offset`; durable when it returns if `durable`.
    /// Returns 0 or the errno.
    func write(_ piece: UnsafeMutableRawBufferPointer, at offset: Int64, durable: Bool) -> Int32 {
        var done = 0
        var syncAfter = false
        while done < piece.count {
            let count: Int
            if durable && !syncAfter {
                var vector = iovec(iov_base: piece.baseAddress! + done, iov_len: piece.count - done)
                count = strata_pwritev_dsync(descriptor, &vector, 1, offset + Int64(done))
                if count < 0 && errno == EOPNOTSUPP {
                    // No RWF_DSYNC here: write plainly, then make it durable below.
                    syncAfter = true
                    continue
                }
            } else {
                count = pwrite(descriptor, piece.baseAddress! + done, piece.count - done, off_t(offset) + off_t(done))
            }
            if count < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += count
        }
        if syncAfter && fdatasync(descriptor) != 0 { return errno }
        return 0
    }

    override public func flush(_ bio: consuming ProviderBio) {
        let failure: Int32 = fdatasync(descriptor) == 0 ? 0 : errno
        finish(bio, failure: failure, call: "fdatasync")
    }

    override public func delete(_ bio: consuming ProviderBio) {
        let result = isBlockDevice
            ? strata_block_discard(descriptor, UInt64(bio.offset), UInt64(bio.length))
            : strata_punch_hole(descriptor, bio.offset, bio.length)
        // DELETE is advice: a file system that cannot punch holes keeps the data.
        let failure: Int32 = result == 0 || errno == EOPNOTSUPP ? 0 : errno
        finish(bio, failure: failure, call: isBlockDevice ? "BLKDISCARD" : "fallocate(PUNCH_HOLE)")
    }

    override public func writeZeroes(_ bio: consuming ProviderBio) {
        let offset = bio.offset
        let length = bio.length
        let fast = bio.flags.contains(.fastZero)
        if isBlockDevice {
            if fast {
                bio.deliver(.notSupported)
                return
            }
            let failure: Int32 = strata_block_zeroout(descriptor, UInt64(offset), UInt64(length)) == 0 ? 0 : errno
            finish(bio, failure: failure, call: "BLKZEROOUT")
            return
        }
        if !bio.flags.contains(.noHole) && strata_punch_hole(descriptor, offset, length) == 0 {
            finish(bio, failure: 0, call: "fallocate(PUNCH_HOLE)")
            return
        }
        if strata_zero_range(descriptor, offset, length) == 0 {
            finish(bio, failure: 0, call: "fallocate(ZERO_RANGE)")
            return
        }
        if fast {
            bio.deliver(.notSupported)
            return
        }
        finish(bio, failure: writeZeros(offset: offset, length: length), call: "pwrite")
    }

    private func writeZeros(offset: Int64, length: Int64) -> Int32 {
        var done: Int64 = 0
        while done < length {
            let chunk = Int(min(Int64(FileDisk.zeroChunk), length - done))
            let count = pwrite(descriptor, zeros, chunk, off_t(offset + done))
            if count < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += Int64(count)
        }
        return 0
    }

    override public func extents(_ bio: consuming ProviderBio) {
        let range = bio.extentRange(mediaSize: provider.mediaSize)
        guard !range.isEmpty else {
            bio.deliverAttribute(extents: [])
            return
        }
        let capacity = bio.extentCapacity
        let sector = Int64(provider.sectorSize)
        var extents: [BioExtent] = []
        var at = range.lowerBound
        while at < range.upperBound && extents.count < capacity {
            if isBlockDevice {
                extents.append(BioExtent(offset: at, length: range.upperBound - at, kind: []))
                break
            }
            let data = strata_seek_data(descriptor, at)
            if data < 0 {
                if errno == ENXIO {
                    // No data from here to the end of the file.
                    extents.append(BioExtent(offset: at, length: range.upperBound - at, kind: [.hole, .zero]))
                } else {
                    // The file system cannot tell: report data.
                    extents.append(BioExtent(offset: at, length: range.upperBound - at, kind: []))
                }
                break
            }
            if data > at {
                let end = min(data / sector * sector, range.upperBound)
                if end > at {
                    extents.append(BioExtent(offset: at, length: end - at, kind: [.hole, .zero]))
                    at = end
                    continue
                }
            }
            let hole = strata_seek_hole(descriptor, at)
            var end = hole < 0 ? range.upperBound : min((hole + sector - 1) / sector * sector, range.upperBound)
            if end <= at { end = min(at + sector, range.upperBound) }
            extents.append(BioExtent(offset: at, length: end - at, kind: []))
            at = end
        }
        bio.deliverAttribute(extents: extents)
    }

    func finish(_ bio: consuming ProviderBio, failure: Int32, call: String) {
        if failure == 0 {
            bio.deliverAll()
            return
        }
        let error = BioError(errno: failure)
        topology?.emit(.error, "\(call) \(path) at \(bio.offset)+\(bio.length): \(error)")
        bio.deliver(error)
    }
}

/// Retries a system call while it fails with EINTR.
@inline(__always)
func retryingOnInterrupt(_ call: () -> Int32) -> Int32 {
    while true {
        let result = call()
        if result >= 0 || errno != EINTR { return result }
    }
}
