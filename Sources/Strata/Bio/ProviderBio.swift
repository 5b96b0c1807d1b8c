import Synchronization

/// The provider's handle on a request: what a class's `start` receives.
///
/// The provider reads the request, may keep provider-private state in `driver1`,
/// `driver2` and `providerFlags`, and either delivers it (`deliver(_:)`) or clones it
/// and hands it to its children (`awaitChildren()`). Like `Bio`, the handle cannot be
/// copied and dropping it unfinished stops the process.
public struct ProviderBio: ~Copyable, BioFields, @unchecked Sendable {
    @usableFromInline let header: UnsafeMutablePointer<BioHeader>

    @usableFromInline init(header: UnsafeMutablePointer<BioHeader>) {
        self.header = header
    }

    @inlinable public var storage: BioStorage { BioStorage(header) }

    deinit {
        fatalError("request leaked: a ProviderBio was dropped without deliver(_:) or awaitChildren() (\(summary))")
    }

    /// `bio_driver1`: private to the provider.
    @inlinable public var driver1: UnsafeMutableRawPointer? {
        get { header.pointee.driver1 }
        nonmutating set { header.pointee.driver1 = newValue }
    }
    /// `bio_driver2`: private to the provider.
    @inlinable public var driver2: UnsafeMutableRawPointer? {
        get { header.pointee.driver2 }
        nonmutating set { header.pointee.driver2 = newValue }
    }
    /// `bio_pflags`: private to the provider.
    @inlinable public var providerFlags: UInt32 {
        get { header.pointee.providerFlags }
        nonmutating set { header.pointee.providerFlags = newValue }
    }
    /// `bio_completed`: the provider sets it before delivering.
    @inlinable public var completed: Int64 {
        get { header.pointee.completed.load(ordering: .relaxed) }
        nonmutating set { header.pointee.completed.store(newValue, ordering: .relaxed) }
    }
    /// The index its class gave the provider this request was sent to (`bio_to->index`).
    @inlinable public var providerIndex: Int {
        header.pointee.to!._withUnsafeGuaranteedRef { $0.index }
    }
    /// Counts `bytes` the provider completed itself towards `completed`, for a request
    /// it also gives to clones (a thin volume's read that fills its unmapped ranges with
    /// zeros): the clones' completions add to the same count, so call it before
    /// `awaitChildren()`.
    @inlinable public func addCompleted(_ bytes: Int64) {
        header.pointee.completed.wrappingAdd(bytes, ordering: .relaxed)
    }
    /// How this request's clones are folded together; `.firstError` unless the class
    /// chooses otherwise before cloning.
    @inlinable public var combine: BioCombine {
        get { header.pointee.combine }
        nonmutating set { header.pointee.combine = newValue }
    }

    /// Completes a read whose whole range reads as zeros: without touching the buffer
    /// when the issuer set `zeroHint`, else by filling it with zeros.
    public consuming func deliverZeros() {
        precondition(header.pointee.command == .read, "only a read can complete as zeros")
        if header.pointee.flags.contains(.zeroHint) {
            header.pointee.flags.insert(.readAsZeros)
        } else {
            header.pointee.data.zero()
        }
        deliverAll()
    }

    // MARK: Completion

    /// `g_io_deliver`: completes the request with `error` (nil for success) and runs its
    /// issuer's done routine. A request with clones still outstanding cannot be delivered.
    public consuming func deliver(_ error: BioError? = nil) {
        let header = self.header
        discard self
        IOPath.deliver(header, error: error?.errno ?? 0)
    }

    /// Completes the request successfully with all of its length done.
    public consuming func deliverAll() {
        header.pointee.completed.store(header.pointee.length, ordering: .relaxed)
        deliver(nil)
    }

    /// Gives the request to its clones: it will be delivered by the last one's
    /// completion (`g_std_done` or the class's own rule). Call it after cloning, in
    /// `start`, once every clone is made.
    public consuming func awaitChildren() {
        precondition(header.pointee.children > 0, "awaitChildren() on a request with no clones: \(summary)")
        let header = self.header
        discard self
        IOPath.releaseHold(on: header)
    }

    /// Gives the request to its only clone and sends that clone to `consumer`: what a
    /// class that passes a request on whole does (a nop, a partition, a stripe's request
    /// inside one stripe), in place of `consumer.request(clone)` then `awaitChildren()`.
    /// The provider lets go of the request before the clone goes out, when nothing else
    /// can touch the request yet, so this costs a plain store where `awaitChildren()`,
    /// which may race with clones already completing, costs a locked instruction.
    public consuming func passOn(_ clone: consuming Bio, to consumer: Consumer) {
        let header = self.header
        discard self
        IOPath.passOn(clone.release(), of: header, on: consumer)
    }

    /// Gives up the handle to keep the request in a queue; see `UnmanagedBio`.
    public consuming func unmanaged() -> UnmanagedBio {
        let header = self.header
        discard self
        return UnmanagedBio(header: header)
    }

    // MARK: Clones

    /// `g_clone_bio`: a new request from `set` that copies the command, offset,
    /// length, data, attribute and request flags, with this request as its parent.
    /// Its done is `.standard`. Returns nil if `set` cannot supply one without waiting.
    public func clone(using set: AnyBioSet) -> Bio? {
        makeClone(0, header.pointee.length, set, wait: false)
    }

    /// `clone(using:)` from the shared set. Its own function, not a default argument:
    /// a default argument hands over a retained reference, and this is every
    /// transform's per-request path.
    public func clone() -> Bio? {
        makeClone(0, header.pointee.length, AnyBioSet.shared, wait: false)
    }

    /// A clone from the shared set with one data segment slot of its own, for a class
    /// that sends other bytes down in the parent's place (an encrypted copy of a
    /// write): `Bio.setData` points it at them.
    public func cloneForOwnData() -> Bio? {
        guard let child = AnyBioSet.shared.allocateHeader(segments: 1, wait: false) else { return nil }
        attachClone(child, offset: 0, length: header.pointee.length)
        return Bio(header: child)
    }

    /// `g_duplicate_bio`: like `clone(using:)` but waits for the set's reserve rather
    /// than fail.
    public func duplicate(using set: AnyBioSet = .shared) -> Bio {
        makeClone(0, header.pointee.length, set, wait: true)!
    }

    /// A clone covering `length` bytes from `relativeOffset` within this request, with
    /// the matching slice of its data. Returns nil when `set` is exhausted.
    public func clone(range relativeOffset: Int64, length: Int64, using set: AnyBioSet = .shared) -> Bio? {
        precondition(relativeOffset >= 0 && length >= 0 && relativeOffset + length <= header.pointee.length,
                     "clone range \(relativeOffset)+\(length) outside \(summary)")
        return makeClone(relativeOffset, length, set, wait: false)
    }

    /// Like `clone(range:length:using:)` but waits for the set's reserve rather than
    /// fail. Each caller may hold at most one such clone un-submitted at a time.
    public func duplicate(range relativeOffset: Int64, length: Int64, using set: AnyBioSet = .shared) -> Bio {
        precondition(relativeOffset >= 0 && length >= 0 && relativeOffset + length <= header.pointee.length,
                     "duplicate range \(relativeOffset)+\(length) outside \(summary)")
        return makeClone(relativeOffset, length, set, wait: true)!
    }

    // Inlined with `attachClone` so that the stores that set up a fresh header and the
    // stores that make it a clone are one sequence, and the first of each pair goes.
    /// Takes a request from `set` (waiting for its reserve when `wait`) and makes it
    /// the clone of `length` bytes at `relativeOffset`; nil only when not waiting.
    @inline(__always)
    private func makeClone(_ relativeOffset: Int64, _ length: Int64, _ set: AnyBioSet, wait: Bool) -> Bio? {
        guard let child = set.allocateHeader(segments: 0, wait: wait) else { return nil }
        attachClone(child, offset: relativeOffset, length: length)
        return Bio(header: child)
    }

    /// Splits the request at `relativeOffset` into two clones covering the two sides,
    /// for classes whose requests cross a boundary. Returns nil (making no clone) when
    /// `set` cannot supply both.
    public func split(at relativeOffset: Int64, using set: AnyBioSet = .shared) -> SplitBio? {
        let total = header.pointee.length
        precondition(relativeOffset > 0 && relativeOffset < total, "split at \(relativeOffset) outside \(summary)")
        guard let first = clone(range: 0, length: relativeOffset, using: set) else { return nil }
        guard let second = clone(range: relativeOffset, length: total - relativeOffset, using: set) else {
            first.destroy()
            return nil
        }
        return SplitBio(first: first, second: second)
    }

    @inline(__always)
    private func attachClone(_ child: UnsafeMutablePointer<BioHeader>, offset relativeOffset: Int64, length: Int64) {
        let parentLength = header.pointee.length
        let parentData = header.pointee.data
        child.pointee.command = header.pointee.command
        child.pointee.offset = header.pointee.offset + relativeOffset
        child.pointee.length = length
        if parentData.isEmpty || (relativeOffset == 0 && length == parentLength) {
            child.pointee.data = parentData
        } else {
            child.pointee.data = parentData.slice(offset: Int(relativeOffset), count: Int(length))
        }
        child.pointee.attribute = header.pointee.attribute
        child.pointee.flags = header.pointee.flags.intersection(.requestFlags)
        child.pointee.parent = header
        child.pointee.doneRoutine = .standard
        // The first clone also takes the provider's own hold on the request. Before it,
        // no clone exists to complete concurrently, so a plain store does.
        if header.pointee.children == 0 {
            header.pointee.outstanding.store(2, ordering: .relaxed)
        } else {
            header.pointee.outstanding.wrappingAdd(1, ordering: .relaxed)
        }
        header.pointee.children += 1
    }
}

/// The two clones `ProviderBio.split(at:using:)` makes: the range before the split
/// point and the range from it.
@frozen public struct SplitBio: ~Copyable, @unchecked Sendable {
    public var first: Bio
    public var second: Bio
}
