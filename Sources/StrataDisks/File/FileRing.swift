#if canImport(Glibc)
import Glibc
#endif
import CStrataSystem
import Strata

/// A file disk's reads, writes and flushes through io_uring.
///
/// Whoever calls `submit` queues the request in the ring, enters the kernel and takes
/// what has already completed, all under one lock, then delivers outside it. A read the
/// page cache holds completes inside that system call, so it costs the caller one
/// `io_uring_enter` and no thread hop. What the kernel finishes later is taken by the
/// reaper thread, which sleeps in the kernel only while something is outstanding.
///
/// A request's progress lives in the request itself: `completed` counts the bytes
/// moved (a short transfer or a multi-segment buffer continues from there) and a
/// provider flag notes that a PREFLUSH write's flush is done.
///
/// On a file opened O_DIRECT (`alignment`), a request whose memory is not aligned for
/// it moves through a bounce buffer, kept in `driver1` while the request is in the ring
/// and taken from, and given back to, spares kept under the ring's lock, which every
/// submission holds anyway: no allocation once the spares have grown to the load, and
/// no other lock.
final class FileRing: @unchecked Sendable {
    /// Submission entries; the completion ring is twice as large, and no more than this
    /// many operations are ever outstanding, so completions cannot overflow.
    static let entries: UInt32 = 256
    /// The most one operation moves (the kernel takes 32-bit lengths).
    static let largestTransfer = 1 << 30
    /// Provider flag: this PREFLUSH write's fdatasync has completed.
    static let preflushDone: UInt32 = 1 << 0
    /// Provider flag: this request's memory is not aligned for O_DIRECT; it moves
    /// through a bounce buffer.
    static let bounced: UInt32 = 1 << 1
    /// User data of the no-op that wakes the reaper to stop.
    static let wakeUp: UInt64 = 0

    private let descriptor: Int32
    /// The file's direct I/O alignment, when it is opened O_DIRECT.
    let alignment: FileDisk.DirectAlignment?
    private let ring: UnsafeMutablePointer<strata_uring>
    /// Delivers a failed request with its errno and the call that failed (the disk logs
    /// it with its path). Set once, before the first request.
    var failed: (consuming ProviderBio, Int32, String) -> Void = { bio, failure, _ in bio.deliver(BioError(errno: failure)) }
    private let lock = ConditionLock()
    // Under `lock`:
    private var outstanding = 0
    private var waiting = BioQueue()
    private var reaperParked = false
    private var stopping = false
    private var reaperRunning = true
    private var mostWaitingSeen = 0
    private var completionsHeld = false
    private var bounces: BouncePool
    private var bouncedCount = 0
    private var entered = 0

    /// Sets up the ring and starts its reaper; throws the errno where the kernel has no
    /// io_uring or forbids it.
    init(descriptor: Int32, alignment: FileDisk.DirectAlignment? = nil) throws(BioError) {
        self.descriptor = descriptor
        self.alignment = alignment
        bounces = BouncePool(alignment: alignment?.memory ?? 4096, most: Int(FileRing.entries))
        ring = .allocate(capacity: 1)
        let result = strata_uring_open(ring, FileRing.entries)
        guard result == 0 else {
            ring.deallocate()
            throw BioError(errno: -result)
        }
        startWorkerThread { [self] in reap() }
    }

    /// The most requests that have waited at once for room in the ring.
    var mostWaiting: Int { lock.withLock { mostWaitingSeen } }

    /// Times the kernel has been entered (`io_uring_enter`) to submit operations.
    var enterCount: Int { lock.withLock { entered } }

    /// Requests that have moved through a bounce buffer, and the bounce buffers made.
    var bounceCounts: (requests: Int, buffers: Int) { lock.withLock { (bouncedCount, bounces.made) } }

    /// While true, completions stay in the kernel's ring, untaken, so that a test can
    /// fill the ring and see what waits for room. Setting it back takes them all.
    var holdingCompletions: Bool {
        get { lock.withLock { completionsHeld } }
        set {
            lock.withLock {
                completionsHeld = newValue
                lock.broadcast()
            }
            if !newValue {
                var nothing = BioQueue()
                drive(&nothing)
            }
        }
    }

    /// Whether a ring can be set up here.
    static var isAvailable: Bool {
        var probe = strata_uring()
        guard strata_uring_open(&probe, 1) == 0 else { return false }
        strata_uring_close(&probe)
        return true
    }

    /// Waits for every outstanding operation, stops the reaper and closes the ring.
    func stop() {
        lock.withLock {
            stopping = true
            outstanding += 1
            _ = strata_uring_queue_nop(ring, FileRing.wakeUp)
            _ = strata_uring_submit(ring)
            lock.broadcast()
            while reaperRunning { lock.wait() }
            bounces.freeAll()
        }
        strata_uring_close(ring)
        ring.deallocate()
    }

    /// Starts a READ, WRITE or FLUSH. Without `entering`, it only waits in the ring's
    /// queue until a later submission enters the kernel: the caller submits more right
    /// after (a plug's batch), the last of them entering.
    func submit(_ bio: consuming ProviderBio, entering: Bool = true) {
        bio.completed = 0
        bio.driver1 = nil
        let aligned = alignment.map { $0.admits(bio.data) } ?? true
        bio.providerFlags = aligned || bio.command == .flush ? 0 : FileRing.bounced
        guard entering else {
            lock.lock()
            waiting.append(bio)
            lock.unlock()
            return
        }
        var next = BioQueue()
        next.append(bio)
        drive(&next)
    }

    // MARK: Driving the ring

    /// Queues `next` (and what waited for room), submits, and delivers or continues
    /// whatever has completed, until nothing completed is left to take.
    private func drive(_ next: inout BioQueue) {
        withUnsafeTemporaryAllocation(of: strata_uring_completion.self, capacity: FileRing.reapAtOnce) { completions in
          withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer.self, capacity: FileRing.reapAtOnce) { released in
            // Bounce buffers of requests delivered since the lock was last held.
            var releasedCount = 0
            while true {
                let taken: Int = lock.withLock {
                    for index in 0..<releasedCount { bounces.give(released[index]) }
                    releasedCount = 0
                    while let bio = next.popFirst() { waiting.append(bio) }
                    while outstanding < Int(FileRing.entries), let bio = waiting.popFirst() {
                        queue(bio)
                    }
                    mostWaitingSeen = max(mostWaitingSeen, waiting.count)
                    let submitted = strata_uring_submit(ring)
                    precondition(submitted >= 0, "io_uring_enter failed: \(BioError(errno: -submitted))")
                    if submitted > 0 { entered += 1 }
                    let taken = completionsHeld ? 0 : Int(strata_uring_reap(ring, completions.baseAddress!, UInt32(completions.count)))
                    outstanding -= taken
                    // Something is left to the kernel: make sure the reaper is waiting for it.
                    if outstanding > 0 && reaperParked { lock.broadcast() }
                    return taken
                }
                if taken == 0 { return }
                for index in 0..<taken {
                    complete(completions[index], continuing: &next, releasing: released, count: &releasedCount)
                }
            }
          }
        }
    }

    /// Completions taken at once; each gives back at most one bounce buffer.
    private static let reapAtOnce = 32

    /// Queues the next operation of `bio` (under `lock`; the ring has room).
    private func queue(_ bio: consuming ProviderBio) {
        outstanding += 1
        let queued: Int32
        if FileRing.isSyncing(bio) {
            queued = strata_uring_queue_fdatasync(ring, descriptor, FileRing.userData(bio.unmanaged()))
        } else if bio.providerFlags & FileRing.bounced != 0 {
            // The rest of the request, or as much as the largest bounce buffer holds:
            // the buffer stands for `data[completed ..< completed + count]`.
            let done = Int(bio.completed)
            let rest = bio.data.count - done
            if bio.driver1 == nil {
                bio.driver1 = bounces.take(min(rest, BouncePool.largest))
                bouncedCount += 1
            }
            let bounce = bio.driver1!
            let count = min(rest, BouncePool.largest)
            if bio.command == .write { bio.data.slice(offset: done, count: count).copy(to: bounce) }
            queued = strata_uring_queue_rw(ring, bio.command == .write ? 1 : 0, descriptor, bounce, UInt32(count),
                                           UInt64(bio.offset + bio.completed), bio.flags.contains(.fua) ? 1 : 0,
                                           FileRing.userData(bio.unmanaged()))
        } else {
            let done = Int(bio.completed)
            let piece = bio.data.slice(offset: done, count: bio.data.count - done).firstSegment
            let write: Int32 = bio.command == .write ? 1 : 0
            let dsync: Int32 = bio.flags.contains(.fua) ? 1 : 0
            let offset = UInt64(bio.offset + bio.completed)
            queued = strata_uring_queue_rw(ring, write, descriptor, piece.baseAddress,
                                           UInt32(min(piece.count, FileRing.largestTransfer)), offset, dsync,
                                           FileRing.userData(bio.unmanaged()))
        }
        precondition(queued == 0, "io_uring submission ring full with \(outstanding) outstanding")
    }

    /// Whether the next operation of `bio` is an fdatasync: a FLUSH, or a PREFLUSH
    /// write whose flush has not completed.
    private static func isSyncing(_ bio: borrowing ProviderBio) -> Bool {
        bio.command == .flush || (bio.flags.contains(.preflush) && bio.providerFlags & FileRing.preflushDone == 0)
    }

    private static func userData(_ request: UnmanagedBio) -> UInt64 {
        UInt64(UInt(bitPattern: request.opaque))
    }

    /// Takes one completion: delivers its request, or puts its next operation in `next`.
    /// A bounce buffer of a request that ends goes to `released[count]` (given back to
    /// the spares under the lock, by `drive`).
    private func complete(_ completion: strata_uring_completion, continuing next: inout BioQueue,
                          releasing released: UnsafeMutableBufferPointer<UnsafeMutableRawPointer>, count: inout Int) {
        guard completion.user_data != FileRing.wakeUp,
              let request = UnmanagedBio(opaque: UnsafeMutableRawPointer(bitPattern: UInt(completion.user_data))) else {
            return
        }
        let bio = request.takeProviderBio()
        let result = completion.result
        if bio.providerFlags & FileRing.bounced != 0, let bounce = bio.driver1 {
            let ends = result != -EINTR && result != -EAGAIN && !FileRing.isSyncing(bio)
                && (result <= 0 || bio.completed + Int64(result) >= bio.length)
            if result > 0 && bio.command == .read {
                bio.data.slice(offset: Int(bio.completed), count: Int(result)).copy(from: bounce)
            }
            if ends {
                released[count] = bounce
                count += 1
                bio.driver1 = nil
            }
        }
        if result == -EINTR || result == -EAGAIN {
            next.append(bio)
            return
        }
        if FileRing.isSyncing(bio) {
            guard result >= 0 else {
                failed(bio, -result, "fdatasync")
                return
            }
            if bio.command == .flush {
                bio.deliverAll()
            } else {
                bio.providerFlags |= FileRing.preflushDone
                next.append(bio)
            }
            return
        }
        let call = bio.command == .write ? "pwrite" : "pread"
        guard result > 0 else {
            if result == 0 && bio.command == .read {
                // The file shrank under us: past its end reads as zeros.
                bio.data.slice(offset: Int(bio.completed), count: Int(bio.length - bio.completed)).zero()
                bio.deliverAll()
            } else {
                // A write that moves nothing would never finish: report it as an I/O error.
                failed(bio, result == 0 ? EIO : -result, call)
            }
            return
        }
        bio.completed += Int64(result)
        if bio.completed < bio.length {
            next.append(bio)
        } else {
            bio.deliverAll()
        }
    }

    // MARK: The reaper

    /// Waits in the kernel while operations are outstanding and takes their completions.
    private func reap() {
        var nothing = BioQueue()
        while true {
            let stop: Bool = lock.withLock {
                while (outstanding == 0 || completionsHeld) && !stopping {
                    reaperParked = true
                    lock.wait()
                    reaperParked = false
                }
                return stopping && outstanding == 0
            }
            if stop { break }
            let woken = strata_uring_wait(ring)
            precondition(woken == 0 || woken == -EINTR, "io_uring_enter (wait) failed: \(BioError(errno: -woken))")
            drive(&nothing)
        }
        lock.withLock {
            reaperRunning = false
            lock.broadcast()
        }
    }
}

/// Bounce buffers for direct I/O, kept for reuse by size: powers of two from 4 KiB to
/// `largest`. Only under the ring's lock. At most one is out per operation in the ring,
/// so each size's spares never pass the ring's size, and its arrays, reserved that
/// large, never grow.
struct BouncePool {
    static let smallest = 4096
    static let largest = 4 << 20
    private static let sizes = (largest / smallest).trailingZeroBitCount + 1
    let alignment: Int
    private var spares: [[UnsafeMutableRawPointer]]
    /// Buffers made so far (none are made once the spares cover the load).
    private(set) var made = 0

    init(alignment: Int, most: Int) {
        self.alignment = max(alignment, 4096)
        spares = (0..<BouncePool.sizes).map { _ in
            var spare: [UnsafeMutableRawPointer] = []
            spare.reserveCapacity(most)
            return spare
        }
    }

    /// The size index of a buffer for `count` bytes (at most `largest`).
    private static func size(for count: Int) -> Int {
        count <= smallest ? 0 : (Int.bitWidth - (count - 1).leadingZeroBitCount) - smallest.trailingZeroBitCount
    }

    /// A buffer of at least `count` bytes (at most `largest`). Its size is kept in the
    /// word before it, in the allocation's first alignment unit.
    mutating func take(_ count: Int) -> UnsafeMutableRawPointer {
        let index = BouncePool.size(for: count)
        if let buffer = spares[index].popLast() { return buffer }
        made += 1
        let bytes = BouncePool.smallest << index
        let start = UnsafeMutableRawPointer.allocate(byteCount: alignment + bytes, alignment: alignment)
        let buffer = start + alignment
        buffer.storeBytes(of: index, toByteOffset: -MemoryLayout<Int>.size, as: Int.self)
        return buffer
    }

    mutating func give(_ buffer: UnsafeMutableRawPointer) {
        let index = buffer.load(fromByteOffset: -MemoryLayout<Int>.size, as: Int.self)
        spares[index].append(buffer)
    }

    mutating func freeAll() {
        for index in spares.indices {
            for buffer in spares[index] { (buffer - alignment).deallocate() }
            spares[index].removeAll()
        }
    }
}
