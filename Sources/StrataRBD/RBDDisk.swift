import CRBD
import Glibc
import Dispatch
import Strata
import StrataDisks
import Synchronization

/// A disk whose provider is an RBD image of a Ceph cluster, through librbd's
/// asynchronous calls: each request becomes one librbd operation (two or three with
/// PREFLUSH and FUA, which become flushes) whose completion, on librbd's own thread,
/// delivers it. Writable images are held under RBD's exclusive lock, so a second client
/// cannot write them (docs: `rbd.md`).
public final class RBDDisk: Disk, @unchecked Sendable {
    public struct Options: Sendable, Equatable {
        /// The `ceph.conf` to read; nil for librados' default places.
        public var configuration: String?
        /// The client's name without `client.`.
        public var clientID = "admin"
        /// A keyring other than the one the configuration names.
        public var keyring: String?
        /// The size to create a missing image with; an existing image must have it.
        public var size: Int64?
        /// Seconds an operation may take before it fails with ETIMEDOUT (and the longest
        /// the connection at start may take); 0 waits for ever.
        public var timeoutSeconds = 30
        public var readOnly = false
        public var sectorSize = 512

        public init() {}
    }

    public let spec: RBDImageSpec
    public let options: Options
    /// Whether the image is open read-only (a snapshot, or `read-only`).
    public let isReadOnly: Bool
    private let context: rados_ioctx_t
    private let image: rbd_image_t
    /// The cluster connection, let go once the image is closed.
    private let connection: Mutex<RBDCluster?>
    /// Block status walks the image with librbd's synchronous diff; it runs here, off
    /// the threads that bring requests.
    private let statusQueue: DispatchQueue
    private let failures = Mutex(Failures())
    private let failureCount = Atomic<Int>(0)

    /// The failures of the disk's requests, for `strata status` and the log.
    struct Failures {
        var last: String?
        var lastAt: ContinuousClock.Instant?
        var loggedAt: ContinuousClock.Instant?
        var unlogged = 0
    }

    private init(name: String, spec: RBDImageSpec, options: Options, cluster: RBDCluster,
                 context: rados_ioctx_t, image: rbd_image_t, readOnly: Bool) {
        self.spec = spec
        self.options = options
        self.context = context
        self.image = image
        self.isReadOnly = readOnly
        connection = Mutex(cluster)
        statusQueue = DispatchQueue(label: "strata.rbd.\(name).status")
        super.init(name: name, className: "RBD", ident: "rbd:\(cluster.fsid)/\(spec)", canDelete: !readOnly)
    }

    /// Connects to the cluster, opens the image (creating it with `options.size` when it
    /// is missing), takes its exclusive lock unless read-only, and adds the disk.
    /// - Throws: `StrataError` saying what failed; nothing is left open or locked.
    public static func create(in topology: Topology, name: String, spec: RBDImageSpec, options: Options) throws -> RBDDisk {
        let cluster = try RBDCluster.connection(for: RBDCluster.Key(
            configuration: options.configuration, clientID: options.clientID, keyring: options.keyring,
            timeoutSeconds: options.timeoutSeconds))
        let context = try cluster.ioContext(pool: spec.pool, namespace: spec.namespace)
        let readOnly = options.readOnly || spec.snapshot != nil
        let image: rbd_image_t
        do {
            image = try open(spec, in: context, readOnly: readOnly, size: options.size)
        } catch {
            rados_ioctx_destroy(context)
            throw error
        }
        let mediaSize: Int64
        do {
            mediaSize = try checkedSize(of: image, spec, options.size)
            if !readOnly { try lock(image, spec) }
        } catch {
            rbd_close(image)
            rados_ioctx_destroy(context)
            throw error
        }
        let disk = RBDDisk(name: name, spec: spec, options: options, cluster: cluster,
                           context: context, image: image, readOnly: readOnly)
        try disk.install(in: topology, mediaSize: mediaSize, sectorSize: options.sectorSize, readOnly: readOnly)
        return disk
    }

    private static func open(_ spec: RBDImageSpec, in context: rados_ioctx_t, readOnly: Bool, size: Int64?) throws -> rbd_image_t {
        var image: rbd_image_t?
        var result = readOnly ? rbd_open_read_only(context, spec.image, &image, spec.snapshot)
                              : rbd_open(context, spec.image, &image, nil)
        if result == -ENOENT, !readOnly, let size {
            var order: Int32 = 0  // librbd's default object size
            result = rbd_create(context, spec.image, UInt64(size), &order)
            guard result == 0 || result == -EEXIST else {
                throw StrataError(.io, "cannot create image \(spec): \(RBDError.describe(result))")
            }
            result = rbd_open(context, spec.image, &image, nil)
        }
        guard result == 0, let image else {
            if result == -ENOENT {
                let missing = spec.snapshot.map { "snapshot \($0) of \(spec.pool)/\(spec.image)" } ?? "image \(spec)"
                throw StrataError(.invalid, readOnly || spec.snapshot != nil
                                  ? "\(missing) does not exist"
                                  : "\(missing) does not exist; give size: to create it")
            }
            throw StrataError(.io, "cannot open image \(spec): \(RBDError.describe(result))")
        }
        return image
    }

    private static func checkedSize(of image: rbd_image_t, _ spec: RBDImageSpec, _ wanted: Int64?) throws -> Int64 {
        var size: UInt64 = 0
        let result = rbd_get_size(image, &size)
        guard result == 0 else { throw StrataError(.io, "cannot read the size of image \(spec): \(RBDError.describe(result))") }
        if let wanted, wanted != Int64(size) {
            throw StrataError(.invalid, "image \(spec) is \(size) bytes, not \(wanted) as size says")
        }
        return Int64(size)
    }

    /// Takes RBD's exclusive lock for good: librbd then refuses writes from any other
    /// client (EROFS) instead of passing the lock back and forth between writers.
    private static func lock(_ image: rbd_image_t, _ spec: RBDImageSpec) throws {
        let result = rbd_lock_acquire(image, RBD_LOCK_MODE_EXCLUSIVE)
        if result == 0 { return }
        if result == -EINVAL {
            throw StrataError(.invalid, "image \(spec) lacks the exclusive-lock feature, which keeps a second writer out: run `rbd feature enable \(spec) exclusive-lock`, or open it read-only")
        }
        let owners = lockOwners(image)
        throw StrataError(.busy, "image \(spec) is in use: \(owners.isEmpty ? "another client" : owners.joined(separator: ", ")) holds its exclusive lock (\(RBDError.describe(result)))")
    }

    private static func lockOwners(_ image: rbd_image_t) -> [String] {
        var mode = RBD_LOCK_MODE_EXCLUSIVE
        var owners = [UnsafeMutablePointer<CChar>?](repeating: nil, count: 8)
        var count = owners.count
        guard rbd_lock_get_owners(image, &mode, &owners, &count) == 0 else { return [] }
        defer { rbd_lock_get_owners_cleanup(&owners, count) }
        return owners.prefix(count).compactMap { $0.map { String(cString: $0) } }
    }

    override public func destroyed() {
        // Closing writes back librbd's cache, waits for what is in flight and lets go
        // of the exclusive lock.
        let result = rbd_close(image)
        if result < 0 {
            topology?.emit(.error, "rbd disk \(name): closing image \(spec): \(RBDError.describe(result))")
        }
        rados_ioctx_destroy(context)
        connection.withLock { $0 = nil }
    }

    // MARK: Requests

    override public func read(_ bio: consuming ProviderBio) { issue(bio) }
    override public func write(_ bio: consuming ProviderBio) { issue(bio) }
    override public func delete(_ bio: consuming ProviderBio) { issue(bio) }
    override public func flush(_ bio: consuming ProviderBio) { issue(bio) }
    override public func writeZeroes(_ bio: consuming ProviderBio) {
        // Zeros that must stay allocated are written out: never fast.
        if bio.flags.contains(.noHole) && bio.flags.contains(.fastZero) { return bio.deliver(.notSupported) }
        issue(bio)
    }

    /// `providerFlags` bits: which of a request's operations are done.
    private static let preflushDone: UInt32 = 1
    private static let commandDone: UInt32 = 2

    /// Whether the next operation of `bio` is a flush: a FLUSH, the flush before a
    /// PREFLUSH request, or the flush after a FUA one.
    private static func isFlushing(_ bio: borrowing ProviderBio) -> Bool {
        bio.command == .flush
            || (bio.flags.contains(.preflush) && bio.providerFlags & preflushDone == 0)
            || bio.providerFlags & commandDone != 0
    }

    /// Hands the next operation of `bio` to librbd.
    private func issue(_ bio: consuming ProviderBio) {
        if bio.length == 0 && bio.command != .flush { return bio.deliverAll() }
        let flushing = RBDDisk.isFlushing(bio)
        let command = bio.command
        let offset = UInt64(bio.offset)
        let length = Int(bio.length)
        let flags = bio.flags
        let data = bio.data
        bio.driver2 = Unmanaged.passUnretained(self).toOpaque()
        var vector: UnsafeMutablePointer<iovec>?
        let first = data.firstSegment
        let segments = first.count == data.count ? 1 : RBDDisk.segmentCount(data)
        if command == .read && segments > 1 && !flushing {
            // librbd reads into the vector when the data arrives: it lives until then.
            vector = .allocate(capacity: segments)
            RBDDisk.fill(vector!, from: data)
            bio.driver1 = UnsafeMutableRawPointer(vector!)
        }
        let request = bio.unmanaged()
        var completion: rbd_completion_t?
        rbd_aio_create_completion(request.opaque, RBDDisk.completed, &completion)
        let result: Int32
        if flushing {
            result = rbd_aio_flush(image, completion)
        } else {
            switch command {
            case .read:
                if let vector {
                    result = rbd_aio_readv(image, vector, Int32(segments), offset, completion)
                } else {
                    result = rbd_aio_read(image, offset, length, first.baseAddress!, completion)
                }
            case .write:
                if segments == 1 {
                    result = rbd_aio_write(image, offset, length, first.baseAddress!, completion)
                } else {
                    // librbd takes a write's vector in before returning.
                    result = withUnsafeTemporaryAllocation(of: iovec.self, capacity: segments) { vector in
                        RBDDisk.fill(vector.baseAddress!, from: data)
                        return rbd_aio_writev(image, vector.baseAddress!, Int32(segments), offset, completion)
                    }
                }
            case .delete:
                result = rbd_aio_discard(image, offset, UInt64(length), completion)
            case .writeZeroes:
                let zeroFlags = flags.contains(.noHole) ? Int32(RBD_WRITE_ZEROES_FLAG_THICK_PROVISION) : 0
                result = rbd_aio_write_zeroes(image, offset, length, completion, zeroFlags, 0)
            case .flush, .getattr:
                preconditionFailure("\(command) is not an image operation")
            }
        }
        if result < 0 {
            rbd_aio_release(completion)
            finished(request.takeProviderBio(), result: Int(result))
        }
    }

    private static func segmentCount(_ data: BioData) -> Int {
        var count = 0
        data.forEachSegment { _ in count += 1 }
        return count
    }

    private static func fill(_ vector: UnsafeMutablePointer<iovec>, from data: BioData) {
        var index = 0
        data.forEachSegment { piece in
            vector[index] = iovec(iov_base: piece.baseAddress, iov_len: piece.count)
            index += 1
        }
    }

    /// librbd's completion callback, on one of its threads.
    private static let completed: rbd_callback_t = { completion, argument in
        let result = rbd_aio_get_return_value(completion)
        rbd_aio_release(completion)
        let bio = UnmanagedBio(opaque: argument)!.takeProviderBio()
        let disk = Unmanaged<RBDDisk>.fromOpaque(bio.driver2!).takeUnretainedValue()
        disk.finished(bio, result: result)
    }

    /// One operation of `bio` ended with `result` (negative: an errno).
    private func finished(_ bio: consuming ProviderBio, result: Int) {
        let flushed = RBDDisk.isFlushing(bio)
        if let vector = bio.driver1, bio.command == .read {
            vector.deallocate()
            bio.driver1 = nil
        }
        guard result >= 0 else { return failed(bio, errno: Int32(-result), flushing: flushed) }
        if flushed && bio.command != .flush && bio.providerFlags & RBDDisk.commandDone == 0 {
            bio.providerFlags |= RBDDisk.preflushDone
            return issue(bio)
        }
        if !flushed && bio.flags.contains(.fua) {
            bio.providerFlags |= RBDDisk.commandDone
            return issue(bio)
        }
        bio.deliverAll()
    }

    // MARK: Failures

    private func failed(_ bio: consuming ProviderBio, errno: Int32, flushing: Bool) {
        let operation = flushing ? "FLUSH" : "\(bio.command)"
        let message = "rbd disk \(name): \(operation) at \(bio.offset)+\(bio.length) of image \(spec) failed: \(RBDError.describe(-errno))"
        failureCount.add(1, ordering: .relaxed)
        let now = ContinuousClock.now
        let report: String? = failures.withLock { failures in
            failures.last = message
            failures.lastAt = now
            // At most one line a second: a cluster gone away fails every request.
            if let logged = failures.loggedAt, now - logged < .seconds(1) {
                failures.unlogged += 1
                return nil
            }
            let more = failures.unlogged > 0 ? " (and \(failures.unlogged) more failures since the last report)" : ""
            failures.loggedAt = now
            failures.unlogged = 0
            return message + more
        }
        if let report { topology?.emit(.error, report) }
        bio.deliver(BioError(errno: errno))
    }

    /// How the disk stands: FAILING while its last failure is under a minute old.
    public var status: (state: String, detail: String, failures: Int) {
        let (last, lastAt) = failures.withLock { ($0.last, $0.lastAt) }
        let count = failureCount.load(ordering: .relaxed)
        guard let last, let lastAt else { return ("ONLINE", "ONLINE", count) }
        let age = ContinuousClock.now - lastAt
        let seconds = age.components.seconds
        return (age < .seconds(60) ? "FAILING" : "ONLINE", "last failure \(seconds) s ago: \(last)", count)
    }

    // MARK: Block status

    override public func extents(_ bio: consuming ProviderBio) {
        let range = bio.extentRange(mediaSize: provider.mediaSize)
        let request = bio.unmanaged()
        statusQueue.async { [self] in
            let bio = request.takeProviderBio()
            guard !range.isEmpty else { return bio.deliverAttribute(extents: []) }
            var found = ExtentWalk(start: range.lowerBound)
            let result = withUnsafeMutablePointer(to: &found) { walk in
                rbd_diff_iterate2(image, nil, UInt64(range.lowerBound), UInt64(range.count), 1, 0, RBDDisk.allocated, walk)
            }
            guard result >= 0 else { return failed(bio, errno: Int32(-result), flushing: false) }
            found.add(hole: range.upperBound)
            bio.deliverAttribute(extents: found.extents)
        }
    }

    /// The extents found so far by a diff walk, holes filled in between.
    struct ExtentWalk {
        var extents: [BioExtent] = []
        var next: Int64

        init(start: Int64) { next = start }

        /// A hole from where the walk is up to `end`.
        mutating func add(hole end: Int64) {
            if end > next { append(BioExtent(offset: next, length: end - next, kind: [.hole, .zero])) }
            next = max(next, end)
        }

        mutating func append(_ extent: BioExtent) {
            if let last = extents.last, last.kind == extent.kind, last.offset + last.length == extent.offset {
                extents[extents.count - 1].length += extent.length
            } else {
                extents.append(extent)
            }
        }
    }

    /// librbd's diff callback: one allocated (or, with `exists` 0, discarded) range.
    private static let allocated: @convention(c) (UInt64, Int, Int32, UnsafeMutableRawPointer?) -> Int32 = { offset, length, exists, walk in
        let walk = walk!.assumingMemoryBound(to: ExtentWalk.self)
        walk.pointee.add(hole: Int64(offset))
        walk.pointee.append(BioExtent(offset: Int64(offset), length: Int64(length), kind: exists != 0 ? [] : [.hole, .zero]))
        walk.pointee.next = Int64(offset) + Int64(length)
        return 0
    }
}
