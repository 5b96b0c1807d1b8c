/// A set of requests to allocate from (`struct bio_set`): a pool with a reserve of
/// `min_nr` preallocated requests, `nr_iovecs` segment slots in each, and a front pad.
///
/// `new` (`g_new_bio`) never waits and may return nil; `alloc` (`g_alloc_bio`,
/// `bio_alloc_bioset` with a blocking mask) always succeeds, provided each caller holds
/// at most one un-submitted request from the set at a time (the manual page's rule).
/// `AnyBioSet.unpooled` allocates plainly, like a NULL `bs`.
public class AnyBioSet: @unchecked Sendable {
    /// The pool, unmanaged so that the allocation path costs no reference counting
    /// (the pools' registry keeps every pool for the life of the process); nil for the
    /// unpooled set.
    private let poolReference: Unmanaged<BioPool>?
    let unpooledSegments: Int

    init(pool: BioPool?, unpooledSegments: Int = 0) {
        self.poolReference = pool.map { Unmanaged.passUnretained($0) }
        self.unpooledSegments = unpooledSegments
    }

    /// The pool behind this set, or nil for the unpooled set.
    var pool: BioPool? { poolReference?.takeUnretainedValue() }

    /// The set clones come from unless a class names its own: no front pad, four
    /// segment slots, a reserve of 256.
    public static let shared = AnyBioSet(pool: BioPool(
        name: "shared", reserve: 256, capacity: nil, segments: 4, padSize: 0, padAlignment: 1,
        padTemplate: nil, cacheCapacity: 256))

    /// No pool: every allocation comes from the heap and goes back to it (the page's
    /// NULL `bs`). Cannot run out, so `new` never returns nil.
    public static let unpooled = AnyBioSet(pool: nil, unpooledSegments: 64)

    /// Segment slots in each request (`nr_iovecs` at most).
    public var segmentCapacity: Int { pool?.segmentCapacity ?? unpooledSegments }

    /// `g_new_bio`: a new, empty request, or nil if none can be had without waiting.
    /// - Parameter segments: the segment slots needed (`nr_iovecs`); at most the set's.
    public func new(segments: Int? = nil) -> Bio? {
        allocateHeader(segments: segments ?? segmentCapacity, wait: false).map { Bio(header: $0) }
    }

    /// `g_alloc_bio` / `bio_alloc_bioset(GFP_NOIO, ...)`: a new, empty request; waits
    /// for one to come back to the reserve if need be.
    public func alloc(segments: Int? = nil) -> Bio {
        Bio(header: allocateHeader(segments: segments ?? segmentCapacity, wait: true)!)
    }

    @inline(__always)
    func allocateHeader(segments: Int, wait: Bool) -> UnsafeMutablePointer<BioHeader>? {
        if let poolReference {
            return poolReference._withUnsafeGuaranteedRef { $0.allocate(segments: segments, wait: wait) }
        }
        return BioAllocator.allocatePlain(segments: segments)
    }

    /// Counters of the set's slow paths.
    public var statistics: BioSetStatistics {
        guard let pool else { return BioSetStatistics() }
        let counts = pool.freeCounts
        return BioSetStatistics(
            allocated: counts.total, inReserve: counts.reserve, inSharedList: counts.shared,
            reserveDraws: pool.reserveDraws.load(ordering: .relaxed), waits: pool.waits.load(ordering: .relaxed),
            failures: pool.failures.load(ordering: .relaxed), rescued: pool.rescued.load(ordering: .relaxed))
    }
}

/// What a bio set's slow paths have done.
public struct BioSetStatistics: Sendable, Equatable {
    init(allocated: Int, inReserve: Int, inSharedList: Int, reserveDraws: Int, waits: Int, failures: Int, rescued: Int) {
        (self.allocated, self.inReserve, self.inSharedList) = (allocated, inReserve, inSharedList)
        (self.reserveDraws, self.waits, self.failures, self.rescued) = (reserveDraws, waits, failures, rescued)
    }

    /// Requests the pool holds in all (free or not).
    public var allocated = 0
    /// Free requests in the reserve.
    public var inReserve = 0
    /// Free requests in the shared list (not counting per-thread caches).
    public var inSharedList = 0
    public init() {}

    /// Allocations served from the reserve.
    public var reserveDraws = 0
    /// Allocations that slept for a request to come back.
    public var waits = 0
    /// Allocations that returned nil.
    public var failures = 0
    /// Requests handed to the rescuer.
    public var rescued = 0
}

/// An empty front pad, for sets that need no per-request private space.
public struct NoPad: BitwiseCopyable, Sendable {
    public init() {}
}

/// A bio set whose requests each carry a `Pad` in the same allocation (`front_pad`):
/// a class's per-request private state, typed, with no second allocation.
public final class BioSet<Pad: BitwiseCopyable>: AnyBioSet, @unchecked Sendable {
    /// - Parameters:
    ///   - name: shown in statistics and the rescuer thread's name.
    ///   - reserve: `min_nr`, requests preallocated and kept for forward progress.
    ///   - capacity: the most requests the set may hold (a memory budget); nil for no
    ///     limit. A set with a capacity keeps no per-thread caches.
    ///   - segments: `nr_iovecs`, segment slots in each request (0 for clone-only sets).
    ///   - initialPad: the value every new request's pad starts with.
    ///   - threadCache: requests each thread keeps in its LIFO cache.
    public init(name: String, reserve: Int, capacity: Int? = nil, segments: Int = 0,
                initialPad: Pad, threadCache: Int = 256) {
        var template = initialPad
        let pool = withUnsafeBytes(of: &template) { bytes in
            BioPool(name: name, reserve: reserve, capacity: capacity, segments: segments,
                    padSize: MemoryLayout<Pad>.size, padAlignment: MemoryLayout<Pad>.alignment,
                    padTemplate: bytes.baseAddress, cacheCapacity: threadCache)
        }
        super.init(pool: pool)
    }

    /// The front pad of a request allocated from this set.
    public func pad(of bio: borrowing Bio) -> UnsafeMutablePointer<Pad> {
        pad(header: bio.header)
    }

    func pad(header: UnsafeMutablePointer<BioHeader>) -> UnsafeMutablePointer<Pad> {
        let pool = self.pool!
        precondition(header.pointee.isFrom(pool), "request was not allocated from bio set \(pool.name)")
        return (UnsafeMutableRawPointer(header) + pool.padOffset).assumingMemoryBound(to: Pad.self)
    }
}

extension BioSet where Pad == NoPad {
    /// A set with no front pad.
    public convenience init(name: String, reserve: Int, capacity: Int? = nil, segments: Int = 0, threadCache: Int = 256) {
        self.init(name: name, reserve: reserve, capacity: capacity, segments: segments, initialPad: NoPad(),
                  threadCache: threadCache)
    }
}

/// Allocation and release of request storage, pooled or plain.
enum BioAllocator {
    static func allocatePlain(segments: Int) -> UnsafeMutablePointer<BioHeader> {
        precondition(segments >= 0 && segments <= AnyBioSet.unpooled.unpooledSegments,
                     "\(segments) segments asked of an unpooled request")
        let bytes = BioLayout.segmentsOffset + segments * MemoryLayout<IOSegment>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: BioLayout.alignment)
        let header = raw.bindMemory(to: BioHeader.self, capacity: 1)
        header.initialize(to: BioHeader(pool: nil, segmentCapacity: Int32(segments)))
        return header
    }

    /// Frees a request that is not in flight. A clone that was never submitted is taken
    /// off its parent's count of children.
    static func destroy(_ header: UnsafeMutablePointer<BioHeader>) {
        precondition(header.pointee.state != .inFlight, "destroy of a request in flight: \(BioStorage(header).summary)")
        if let parent = header.pointee.parent, !header.pointee.flags.contains(.done) {
            parent.pointee.children -= 1
            parent.pointee.outstanding.wrappingSubtract(1, ordering: .relaxed)
        }
        free(header)
    }

    @inline(__always)
    static func free(_ header: UnsafeMutablePointer<BioHeader>) {
        if let pool = header.pointee.pool {
            pool._withUnsafeGuaranteedRef { $0.free(header) }
        } else {
            header.pointee.releaseDone()
            header.deinitialize(count: 1)
            UnsafeMutableRawPointer(header).deallocate()
        }
    }
}

extension BioStorage: BioFields {
    @inlinable public var storage: BioStorage { self }
}
