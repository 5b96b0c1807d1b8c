#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The path of a request down a stack and back up.
///
/// - `request` (`g_io_request`): checks the request once against its consumer and
///   provider, then dispatches it.
/// - `dispatch` (`submit_bio_noacct`): runs the target's `start`. Only one `start` runs
///   per thread at a time; what it submits is queued and run after it returns, lower
///   providers first, so stack depth does not grow with the height of the stack.
/// - `deliver` (`g_io_deliver`): marks the request complete and runs its done routine;
///   done routines that complete further requests queue them the same way, so
///   completion does not recurse either.
enum IOPath {
    // MARK: Down

    static func request(_ header: UnsafeMutablePointer<BioHeader>, on consumer: Consumer) {
        precondition(header.pointee.state == .idle, "request submitted while in flight: \(BioStorage(header).summary)")
        precondition(header.pointee.doneRoutine.isSet, "request has no done routine: \(BioStorage(header).summary)")
        header.pointee.from = Unmanaged.passUnretained(consumer)
        header.pointee.state = .inFlight
        header.pointee.flags.subtract(.statusFlags)
        header.pointee.error = 0
        header.pointee.completed.store(0, ordering: .relaxed)
        // A request sent again after it completed (a mirror retrying a read on another
        // component) starts with no clones: those of its last trip all came back.
        header.pointee.children = 0
        header.pointee.inbed.store(0, ordering: .relaxed)
        // Counted before anything is read from the consumer; the count falls only after
        // the done routine has returned, so a consumer whose count reads zero has no
        // request of its users still using it.
        let thread = ThreadState.current
        consumer.inFlight.begin(slot: thread.pointee.statisticsSlot)
        guard let target = consumer.providerReference else {
            // Detached (its geom withered away under a user still holding it).
            header.pointee.to = nil
            deliver(header, error: ENXIO)
            return
        }
        header.pointee.to = target
        target._withUnsafeGuaranteedRef { provider in
            switch check(header, consumer: consumer, provider: provider) {
            case .start:
                header.pointee.startTime = provider.statistics.started(at: entryClock(thread),
                                                                       slot: thread.pointee.statisticsSlot)
                dispatch(header)
            case .completeEmpty:
                deliver(header, error: 0)
            case .fail(let error):
                provider.statistics.refused(header.pointee.command, slot: thread.pointee.statisticsSlot)
                deliver(header, error: error)
            }
        }
    }

    /// The time a request enters a provider. Requests entering providers on this thread
    /// share one reading, as Linux's plug shares one for a batch, until a `start` routine
    /// that may do work runs (a geom whose start only passes requests on does not end
    /// it): a request passed down through a nop and a stripe is timed in from the one
    /// reading taken as it entered the nop. A reading taken here always goes on into
    /// `dispatch`, which drops it when its run ends (see `ThreadState.clock`).
    @inline(__always)
    static func entryClock(_ thread: UnsafeMutablePointer<ThreadState>) -> UInt64 {
        if thread.pointee.clock != 0 { return thread.pointee.clock }
        let now = ProviderStatistics.now()
        thread.pointee.clock = now
        return now
    }

    /// The time a request is delivered. Deliveries that follow one another on this
    /// thread within a submission or completion run, with no working `start` routine run
    /// between them (a clone folded into its parent, that parent into its own), share
    /// one reading; a start routine may do the disk's work, so running one invalidates
    /// the reading (see `ThreadState.clock`).
    @inline(__always)
    static func deliveryClock(_ thread: UnsafeMutablePointer<ThreadState>) -> UInt64 {
        if thread.pointee.clock != 0 { return thread.pointee.clock }
        let now = ProviderStatistics.now()
        if thread.pointee.submitting || thread.pointee.delivering { thread.pointee.clock = now }
        return now
    }

    enum CheckResult { case start, completeEmpty, fail(Int32) }

    /// `g_io_check`: the only place the I/O path validates a request. Classes may rely
    /// on every request reaching `start` being permitted, aligned and inside the media.
    @inline(__always)
    static func check(_ header: UnsafeMutablePointer<BioHeader>, consumer: Consumer, provider: Provider) -> CheckResult {
        let command = header.pointee.command
        if command.needsWriteAccess {
            if consumer.writeCount == 0 { return .fail(EPERM) }
        } else if consumer.readCount == 0 {
            return .fail(EPERM)
        }
        if consumer.isOrphaned { return .fail(ENXIO) }
        let providerError = provider.errorCode
        if providerError != 0 { return .fail(providerError) }
        guard command.addressesMedia else { return .start }

        let mediaSize = provider.mediaSize
        if mediaSize == 0 { return .fail(ENXIO) }
        let offset = header.pointee.offset
        var length = header.pointee.length
        // Sector sizes are powers of two (`Topology.createProvider` checks), so a mask
        // tests alignment without the two divisions a remainder would cost.
        let sectorMask = Int64(provider.sectorSize) &- 1
        if (offset | length) & sectorMask != 0 || length < 0 { return .fail(EINVAL) }
        if offset < 0 || offset > mediaSize { return .fail(EIO) }
        if command == .read || command == .write {
            precondition(header.pointee.data.count == length,
                         "request data holds \(header.pointee.data.count) bytes for length \(length)")
        }
        if length > mediaSize - offset {
            length = mediaSize - offset
            header.pointee.length = length
            if command == .read || command == .write {
                header.pointee.data = header.pointee.data.slice(offset: 0, count: Int(length))
            }
        }
        return length == 0 ? .completeEmpty : .start
    }

    /// Runs the target provider's `start` for a checked request, iteratively.
    ///
    /// - Parameter onWorker: the caller is the down worker serving a queued geom, so the
    ///   first request's `start` runs here rather than being queued again.
    static func dispatch(_ header: UnsafeMutablePointer<BioHeader>, onWorker: Bool = false) {
        let thread = ThreadState.current
        if thread.pointee.submitting {
            thread.pointee.fresh.append(header)
            return
        }
        thread.pointee.submitting = true
        var direct = onWorker
        var next: UnsafeMutablePointer<BioHeader>? = header
        // `fresh` collects what the running start submits and is empty between starts;
        // `rest` holds what was submitted earlier and waits its turn. Both stay in thread
        // state while start runs: the rescuer may take requests from either.
        while let bio = next {
            let target = bio.pointee.to!
            startOne(bio, on: target, direct: direct, thread: thread)
            direct = false
            // What this start submitted runs next: requests to other (lower) providers
            // first, then those to the same provider, then what was already waiting.
            // A start that passed on one request (every pass-through class) needs no
            // reordering: that request simply goes first.
            if let only = thread.pointee.fresh.head, only.pointee.next == nil {
                thread.pointee.fresh = BioList()
                next = only
                continue
            }
            if !thread.pointee.fresh.isEmpty {
                var submitted = thread.pointee.fresh
                thread.pointee.fresh = BioList()
                let targetAddress = target.toOpaque()
                var ordered = submitted.extract { $0.pointee.to?.toOpaque() != targetAddress }
                ordered.append(contentsOf: submitted)
                ordered.append(contentsOf: thread.pointee.rest)
                thread.pointee.rest = ordered
            }
            next = thread.pointee.rest.popFirst()
        }
        thread.pointee.submitting = false
        thread.pointee.clock = 0
    }

    @inline(__always)
    static func startOne(_ header: UnsafeMutablePointer<BioHeader>, on provider: Unmanaged<Provider>, direct: Bool,
                         thread: UnsafeMutablePointer<ThreadState>) {
        provider._withUnsafeGuaranteedRef { provider in
            provider.withGeom { geom in
                if !direct && geom.dispatchMode == .queued {
                    IOWorkers.shared.down.enqueue(header)
                } else {
                    // This start may do the disk's work: what enters or is delivered
                    // from here on reads the clock anew.
                    if !geom.startOnlyPassesOn { thread.pointee.clock = 0 }
                    geom.start(ProviderBio(header: header))
                }
            }
        }
    }

    /// `ProviderBio.passOn`: `parent` gives up its hold and `clone`, its only clone, goes
    /// to `consumer`.
    @inline(__always)
    static func passOn(_ clone: UnsafeMutablePointer<BioHeader>, of parent: UnsafeMutablePointer<BioHeader>,
                       on consumer: Consumer) {
        precondition(clone.pointee.parent == parent && parent.pointee.children == 1,
                     "passOn with a request that is not the only clone: \(BioStorage(parent).summary)")
        // The clone has not been submitted, so nothing else reads or writes the count.
        parent.pointee.outstanding.store(1, ordering: .relaxed)
        request(clone, on: consumer)
    }

    /// Hands this thread's queued, un-submitted requests of `pool` to its rescuer.
    static func rescuePending(of pool: BioPool) {
        let thread = ThreadState.current
        guard thread.pointee.submitting else { return }
        var punted = thread.pointee.fresh.extract { $0.pointee.isFrom(pool) }
        punted.append(contentsOf: thread.pointee.rest.extract { $0.pointee.isFrom(pool) })
        if !punted.isEmpty { pool.rescuer.punt(punted) }
    }

    // MARK: Up

    static func deliver(_ header: UnsafeMutablePointer<BioHeader>, error: Int32) {
        precondition(header.pointee.state == .inFlight,
                     "request delivered twice, or never submitted: \(BioStorage(header).summary)")
        let children = header.pointee.children
        precondition(header.pointee.inbed.load(ordering: .acquiring) == children,
                     "request delivered with clones outstanding: \(BioStorage(header).summary)")
        header.pointee.state = .idle
        header.pointee.flags.insert(.done)
        if error != 0 {
            header.pointee.flags.insert(.error)
            header.pointee.error = error
        }
        let start = header.pointee.startTime
        if start != 0, let provider = header.pointee.to {
            header.pointee.startTime = 0
            let thread = ThreadState.current
            let now = deliveryClock(thread)
            provider._withUnsafeGuaranteedRef {
                $0.statistics.finished(header.pointee.command, bytes: header.pointee.completed.load(ordering: .relaxed),
                                       failed: error != 0, start: start, now: now, slot: thread.pointee.statisticsSlot)
            }
        }
        if let consumer = header.pointee.from, consumer._withUnsafeGuaranteedRef({ $0.completesQueued }) {
            IOWorkers.shared.up.enqueue(header)
            return
        }
        complete(header)
    }

    /// Runs done routines iteratively: one at a time per thread.
    static func complete(_ header: UnsafeMutablePointer<BioHeader>) {
        let thread = ThreadState.current
        if thread.pointee.delivering {
            thread.pointee.completions.append(header)
            return
        }
        thread.pointee.delivering = true
        if !thread.pointee.submitting { thread.pointee.clock = 0 }
        runDone(header, thread: thread)
        while let next = thread.pointee.completions.popFirst() {
            runDone(next, thread: thread)
        }
        thread.pointee.delivering = false
        // Inside a submission run the reading stays for the requests the done routines
        // submitted; the run drops it before any start that may work.
        if !thread.pointee.submitting { thread.pointee.clock = 0 }
    }

    static func runDone(_ header: UnsafeMutablePointer<BioHeader>, thread: UnsafeMutablePointer<ThreadState>) {
        // The consumer stays attached while it has requests in flight; it is released
        // only after the done routine has finished with the request.
        let consumer = header.pointee.from!
        switch header.pointee.doneRoutine {
        case .standard:
            standardDone(header)
        case .handler(let handler):
            handler.run(header)
        case .closure(let box):
            // Its own reference to the closure: the routine may free the request, and
            // the box with it, while it runs.
            let body = box.takeUnretainedValue().body
            body(Bio(header: header))
        case .unset:
            preconditionFailure("request has no done routine: \(BioStorage(header).summary)")
        }
        consumer._withUnsafeGuaranteedRef { $0.inFlight.end(slot: thread.pointee.statisticsSlot) }
    }

    /// `g_std_done`: folds a completed clone into its parent with the parent's combine
    /// rule, frees the clone, and delivers the parent when its last clone is in and its
    /// provider has let go of it.
    static func standardDone(_ child: UnsafeMutablePointer<BioHeader>) {
        guard let parent = child.pointee.parent else {
            preconditionFailure("standard done on a request with no parent: \(BioStorage(child).summary)")
        }
        let error = child.pointee.error
        let completed = child.pointee.completed.load(ordering: .relaxed)
        // The acquiring load first: seeing 1 means the provider has let go (its release
        // orders its writes to `children` before this read of it).
        if parent.pointee.outstanding.load(ordering: .acquiring) == 1 && parent.pointee.children == 1 {
            finishOnlyClone(child, of: parent, error: error, completed: completed)
            return
        }
        if error != 0 {
            _ = parent.pointee.firstChildError.compareExchange(expected: 0, desired: error, ordering: .relaxed)
        } else {
            parent.pointee.childSuccesses.wrappingAdd(1, ordering: .relaxed)
        }
        switch parent.pointee.combine {
        case .firstError:
            parent.pointee.completed.wrappingAdd(completed, ordering: .relaxed)
        case .anySuccess:
            var current = parent.pointee.completed.load(ordering: .relaxed)
            while completed > current {
                let (exchanged, seen) = parent.pointee.completed.compareExchange(
                    expected: current, desired: completed, ordering: .relaxed)
                if exchanged { break }
                current = seen
            }
        }
        foldReadAsZeros(child, into: parent)
        BioAllocator.free(child)
        parent.pointee.inbed.wrappingAdd(1, ordering: .relaxed)
        releaseHold(on: parent)
    }

    /// `standardDone` for the only clone of a parent whose provider has let go of it
    /// (`awaitChildren` done, so no clone can be added): nothing else can touch the
    /// parent, so it is folded in with plain loads and stores rather than the four
    /// locked instructions of the general case. This is every request a pass-through
    /// class (nop, part, a stripe's request within one stripe) passes on. With one
    /// child, both combine rules give the child's error.
    @inline(__always)
    static func finishOnlyClone(_ child: UnsafeMutablePointer<BioHeader>, of parent: UnsafeMutablePointer<BioHeader>,
                                error: Int32, completed: Int64) {
        let before = parent.pointee.completed.load(ordering: .relaxed)
        switch parent.pointee.combine {
        case .firstError: parent.pointee.completed.store(before &+ completed, ordering: .relaxed)
        case .anySuccess: parent.pointee.completed.store(max(before, completed), ordering: .relaxed)
        }
        foldReadAsZeros(child, into: parent)
        BioAllocator.free(child)
        parent.pointee.inbed.store(1, ordering: .relaxed)
        parent.pointee.outstanding.store(0, ordering: .relaxed)
        deliver(parent, error: error)
    }

    /// A clone read as zeros without touching its buffer: the parent reads as zeros too
    /// when the clone was all of it; otherwise the clone's part is zeroed now.
    @inline(__always)
    static func foldReadAsZeros(_ child: UnsafeMutablePointer<BioHeader>, into parent: UnsafeMutablePointer<BioHeader>) {
        guard child.pointee.flags.contains(.readAsZeros) else { return }
        if child.pointee.length == parent.pointee.length && parent.pointee.children == 1 {
            parent.pointee.flags.insert(.readAsZeros)
        } else {
            child.pointee.data.zero()
        }
    }

    /// Drops one hold on a parent (a clone folded in, or the provider's own hold given
    /// up by `awaitChildren`); the last one delivers the parent with its combined error.
    static func releaseHold(on parent: UnsafeMutablePointer<BioHeader>) {
        guard parent.pointee.outstanding.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 else {
            return
        }
        let combined: Int32
        switch parent.pointee.combine {
        case .firstError:
            combined = parent.pointee.firstChildError.load(ordering: .relaxed)
        case .anySuccess:
            combined = parent.pointee.childSuccesses.load(ordering: .relaxed) > 0
                ? 0 : parent.pointee.firstChildError.load(ordering: .relaxed)
        }
        deliver(parent, error: combined)
    }
}

extension Bio {
    /// Runs `g_std_done` on this completed clone: for a class's own done routine that
    /// has finished its own work and now folds the clone into its parent.
    public consuming func finishClone() {
        let header = release()
        IOPath.standardDone(header)
    }
}
