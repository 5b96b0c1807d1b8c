import Synchronization

/// Where a request is in its life; checked so that completion happens exactly once.
@usableFromInline enum BioState: UInt8 {
    /// Allocated (or reset, or delivered and back with its issuer): may be submitted.
    case idle
    /// Submitted and not yet delivered.
    case inFlight
}

/// The storage of one request: every `g_bio(9)` field plus the set's bookkeeping.
///
/// It lives at the start of a single allocation, followed by the request's own
/// segment slots (`nr_iovecs`) and the owning set's front pad, so a request with its
/// per-layer private space costs one allocation. Handles (`Bio`, `ProviderBio`) point
/// here; nothing else in the library touches these fields directly.
@usableFromInline struct BioHeader: ~Copyable {
    // Fields of the request, as g_bio(9) names them.
    @usableFromInline var command: BioCommand = .read
    @usableFromInline var flags: BioFlags = []
    @usableFromInline var consumerFlags: UInt32 = 0
    @usableFromInline var providerFlags: UInt32 = 0
    @usableFromInline var offset: Int64 = 0
    @usableFromInline var length: Int64 = 0
    @usableFromInline var data: BioData = .none
    @usableFromInline var error: Int32 = 0
    /// `bio_done`, kept without reference counting (read and set it through `done`).
    @usableFromInline var doneRoutine: DoneRoutine = .unset
    @usableFromInline var driver1: UnsafeMutableRawPointer? = nil
    @usableFromInline var driver2: UnsafeMutableRawPointer? = nil
    @usableFromInline var caller1: UnsafeMutableRawPointer? = nil
    @usableFromInline var caller2: UnsafeMutableRawPointer? = nil
    @usableFromInline var attribute: BioAttribute? = nil
    /// The consumer and provider of the request's current hop, unretained: the
    /// consumer stays attached, and the provider alive, while the request is in flight.
    @usableFromInline var from: Unmanaged<Consumer>? = nil
    @usableFromInline var to: Unmanaged<Provider>? = nil
    /// Bytes completed; children add to it concurrently, so it is atomic.
    @usableFromInline let completed = Atomic<Int64>(0)
    /// Clones made of this request. Set by the provider that owns it before any clone
    /// is submitted, read by the children's completions.
    @usableFromInline var children: Int32 = 0
    /// Clones that have completed.
    @usableFromInline let inbed = Atomic<Int32>(0)
    @usableFromInline var parent: UnsafeMutablePointer<BioHeader>? = nil
    /// Clones not yet folded in, plus one while the provider still holds the request
    /// (released by `awaitChildren`). Whoever brings it to zero delivers the request, so
    /// a clone completing before its siblings exist cannot deliver the parent early.
    @usableFromInline let outstanding = Atomic<Int32>(0)

    // How this request's children are combined (the provider's choice).
    @usableFromInline var combine: BioCombine = .firstError
    @usableFromInline let firstChildError = Atomic<Int32>(0)
    @usableFromInline let childSuccesses = Atomic<Int32>(0)

    // Bookkeeping, not visible to classes.
    @usableFromInline var state: BioState = .idle
    /// Link for the per-thread submission and completion lists and worker queues.
    @usableFromInline var next: UnsafeMutablePointer<BioHeader>? = nil
    /// The pool this request returns to, or nil for a plainly allocated request. Held
    /// unmanaged: pools live for the life of the process (their registry holds them),
    /// and freeing a request then costs no reference counting.
    @usableFromInline let pool: Unmanaged<BioPool>?
    /// Segment slots that follow the header in the same allocation.
    @usableFromInline let segmentCapacity: Int32
    @usableFromInline var segmentsUsed: Int32 = 0
    /// When the request passed its entry checks (monotonic nanoseconds), or 0: the
    /// provider's statistics count it at delivery.
    @usableFromInline var startTime: UInt64 = 0

    @usableFromInline init(pool: Unmanaged<BioPool>?, segmentCapacity: Int32) {
        self.pool = pool
        self.segmentCapacity = segmentCapacity
    }

    /// Whether this request came from `pool`.
    func isFrom(_ pool: BioPool) -> Bool {
        self.pool?.toOpaque() == Unmanaged.passUnretained(pool).toOpaque()
    }

    /// The segment slots of this request (`bi_inline_vecs`).
    @usableFromInline static func segmentSlots(_ header: UnsafeMutablePointer<BioHeader>) -> UnsafeMutablePointer<IOSegment> {
        UnsafeMutableRawPointer(header).advanced(by: BioLayout.segmentsOffset).assumingMemoryBound(to: IOSegment.self)
    }

    /// `bio_done`. Setting it gives back a closure routine it replaces.
    @inlinable var done: BioDone {
        get {
            switch doneRoutine {
            case .unset: .unset
            case .standard: .standard
            case .handler(let handler): BioDone(kind: .handler(handler))
            case .closure(let box): BioDone(kind: .closure(box.takeUnretainedValue().body))
            }
        }
        set {
            releaseDone()
            doneRoutine = DoneRoutine(newValue)
        }
    }

    /// Gives back the reference the header holds on a closure routine, leaving it unset.
    /// Everything that ends a header's use (reset, free) calls it: the header itself is
    /// plain memory and has nothing else to release.
    @inlinable mutating func releaseDone() {
        if case .closure(let box) = doneRoutine { box.release() }
        doneRoutine = .unset
    }

    /// Back to the initial state, keeping the pool and segment capacity
    /// (`g_reset_bio`, `bio_reset`). Built from the initializer, so a field added later
    /// is reset to its declared default without being listed here.
    @usableFromInline mutating func reset() {
        releaseDone()
        self = BioHeader(pool: pool, segmentCapacity: segmentCapacity)
    }
}

/// Offsets inside one request allocation: header, then segment slots, then front pad.
@usableFromInline enum BioLayout {
    @usableFromInline static let segmentsOffset: Int = {
        let end = MemoryLayout<BioHeader>.size
        let align = MemoryLayout<IOSegment>.alignment
        return (end + align - 1) / align * align
    }()

    /// Bytes from the start of the allocation to the front pad, for `segments` slots
    /// and a pad of the given alignment.
    static func padOffset(segments: Int, padAlignment: Int) -> Int {
        let end = segmentsOffset + segments * MemoryLayout<IOSegment>.stride
        return (end + padAlignment - 1) / padAlignment * padAlignment
    }

    static let alignment = max(16, MemoryLayout<BioHeader>.alignment)
}
