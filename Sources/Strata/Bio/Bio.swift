import Synchronization

/// The issuer's handle on a request: the consumer side of `struct bio`.
///
/// Whoever allocates or clones a request holds a `Bio`, fills it in, and gives it up
/// with `Consumer.request(_:)`. When the provider delivers it, the handle comes back to
/// the done routine. The handle cannot be copied, and dropping one that was neither
/// submitted nor destroyed stops the process: a request is completed or freed exactly
/// once, and a leak shows where it happens.
///
/// The consumer-private fields (`caller1`, `caller2`, `consumerFlags`) are here; the
/// provider-private ones are only on `ProviderBio`.
public struct Bio: ~Copyable, BioFields, @unchecked Sendable {
    @usableFromInline let header: UnsafeMutablePointer<BioHeader>

    @usableFromInline init(header: UnsafeMutablePointer<BioHeader>) {
        self.header = header
    }

    @inlinable public var storage: BioStorage { BioStorage(header) }

    deinit {
        fatalError("request leaked: a Bio was dropped without being requested, destroyed or handed on (\(summary))")
    }

    // MARK: Fields the issuer sets

    @inlinable public var command: BioCommand {
        get { header.pointee.command }
        nonmutating set { header.pointee.command = newValue }
    }
    @inlinable public var offset: Int64 {
        get { header.pointee.offset }
        nonmutating set { header.pointee.offset = newValue }
    }
    @inlinable public var length: Int64 {
        get { header.pointee.length }
        nonmutating set { header.pointee.length = newValue }
    }
    /// Request flags (FUA, preflush, …). Status flags are read-only here.
    @inlinable public var flags: BioFlags {
        get { header.pointee.flags }
        nonmutating set {
            header.pointee.flags = header.pointee.flags.subtracting(.requestFlags)
                .union(newValue.intersection(.requestFlags))
        }
    }
    @inlinable public var data: BioData {
        get { header.pointee.data }
        nonmutating set { header.pointee.data = newValue }
    }
    @inlinable public var attribute: BioAttribute? {
        get { header.pointee.attribute }
        nonmutating set { header.pointee.attribute = newValue }
    }
    @inlinable public var done: BioDone {
        get { header.pointee.done }
        nonmutating set { header.pointee.done = newValue }
    }
    /// `bio_caller1`: private to the consumer.
    @inlinable public var caller1: UnsafeMutableRawPointer? {
        get { header.pointee.caller1 }
        nonmutating set { header.pointee.caller1 = newValue }
    }
    /// `bio_caller2`: private to the consumer.
    @inlinable public var caller2: UnsafeMutableRawPointer? {
        get { header.pointee.caller2 }
        nonmutating set { header.pointee.caller2 = newValue }
    }
    /// `bio_cflags`: private to the consumer.
    @inlinable public var consumerFlags: UInt32 {
        get { header.pointee.consumerFlags }
        nonmutating set { header.pointee.consumerFlags = newValue }
    }
    /// `bio_completed`: bytes the provider completed (after delivery).
    @inlinable public var completed: Int64 { header.pointee.completed.load(ordering: .relaxed) }

    // MARK: Data

    /// Points the request at one buffer, using its first segment slot.
    public func setData(_ buffer: UnsafeMutableRawBufferPointer) {
        precondition(header.pointee.segmentCapacity >= 1, "request was allocated with no segment slots")
        let slots = BioHeader.segmentSlots(header)
        slots[0] = IOSegment(buffer)
        header.pointee.segmentsUsed = 1
        header.pointee.data = BioData(segments: slots, segmentCount: 1, headOffset: 0, count: buffer.count)
    }

    /// Adds one segment to the request's scatter/gather list (up to `segmentCapacity`).
    public func appendSegment(_ buffer: UnsafeMutableRawBufferPointer) {
        let used = Int(header.pointee.segmentsUsed)
        precondition(used < segmentCapacity, "request has all \(segmentCapacity) segment slots in use")
        let slots = BioHeader.segmentSlots(header)
        slots[used] = IOSegment(buffer)
        header.pointee.segmentsUsed = Int32(used + 1)
        header.pointee.data = BioData(segments: slots, segmentCount: used + 1)
    }

    // MARK: Life cycle

    /// `g_reset_bio` / `bio_reset`: back to the initial state between transactions,
    /// keeping the allocation, its segment slots and its front pad.
    public func reset() {
        precondition(header.pointee.state != .inFlight, "reset of a request in flight: \(summary)")
        header.pointee.reset()
    }

    /// `g_destroy_bio` / `bio_put`: frees the request. A clone destroyed before it was
    /// submitted is taken off its parent's count of children.
    public consuming func destroy() {
        let header = self.header
        discard self
        BioAllocator.destroy(header)
    }

    /// Gives up the handle without freeing the request, for keeping it in a collection;
    /// `UnmanagedBio.takeBio()` takes it back. Whoever holds the reference owns it.
    public consuming func unmanaged() -> UnmanagedBio {
        let header = self.header
        discard self
        return UnmanagedBio(header: header)
    }

    @usableFromInline consuming func release() -> UnsafeMutablePointer<BioHeader> {
        let header = self.header
        discard self
        return header
    }
}

/// A copyable, unowned reference to a request, for queues and tables. It carries no
/// guarantee: taking it back twice completes a request twice, which the request's state
/// checks then stop.
@frozen public struct UnmanagedBio: @unchecked Sendable, Hashable {
    @usableFromInline let header: UnsafeMutablePointer<BioHeader>
    @usableFromInline init(header: UnsafeMutablePointer<BioHeader>) { self.header = header }

    /// The issuer's handle back.
    public func takeBio() -> Bio { Bio(header: header) }
    /// The provider's handle back, for a request that arrived in `start` and was queued.
    public func takeProviderBio() -> ProviderBio { ProviderBio(header: header) }

    /// The reference as a plain pointer, for an interface that carries one word per
    /// operation (io_uring's user data).
    public var opaque: UnsafeMutableRawPointer { UnsafeMutableRawPointer(header) }
    /// The reference `opaque` gave; nil for a null pointer.
    public init?(opaque: UnsafeMutableRawPointer?) {
        guard let opaque else { return nil }
        header = opaque.assumingMemoryBound(to: BioHeader.self)
    }
}
