import Dispatch
import Strata
import Synchronization

/// How a mirror's writes reach its remote components (HAST's replication modes).
public enum MirrorReplication: Sendable, Equatable {
    /// A write is acknowledged once every component has it.
    case sync
    /// A write is acknowledged once the local components have it; remote ones get it in
    /// the background, and writes wait while they are `lag` bytes behind.
    case async(lag: Int64)

    public static let defaultLag: Int64 = 64 << 20

    /// The setting's word, without the lag.
    public enum Mode: String, Sendable, CaseIterable {
        case sync, async
    }

    public var mode: Mode {
        switch self {
        case .sync: .sync
        case .async: .async
        }
    }
}

/// A write a remote component is yet to take under `async` replication: its own copy of
/// the data, since the client's buffer is given back when the local copy is written.
struct LaggingWrite: @unchecked Sendable {
    let sequence: UInt64
    let slot: Int
    let command: BioCommand
    let range: Range<Int64>
    let flags: BioFlags
    let data: UnsafeMutableRawBufferPointer?

    /// What the component lacks until it is done (a flush changes no data).
    var bytes: Int64 { command == .flush ? 0 : Int64(range.count) }
}

/// The remote components' backlog. Writes to one component that overlap go in the
/// order the mirror acknowledged them (the server may reorder what it has at once); a
/// flush goes once every earlier write to its component is done, so it covers them.
/// Writes are looked up by 1 MiB bucket, so a new write is compared only with its
/// neighbours.
struct ReplicationQueue: ~Copyable {
    private struct BucketKey: Hashable {
        let slot: Int
        let bucket: Int64
    }

    private static let bucketShift: Int64 = 20

    /// Bytes the remote components lack, summed over them.
    private(set) var lag: Int64 = 0
    private var nextSequence: UInt64 = 0
    /// Every write not yet done, sent or waiting.
    private var writes: [UInt64: LaggingWrite] = [:]
    private var sent: Set<UInt64> = []
    /// The data writes touching each bucket of each component, oldest first.
    private var buckets: [BucketKey: [UInt64]] = [:]
    /// Each component's data writes oldest first (done ones are skipped lazily from
    /// `head`), and its flushes waiting for them.
    private var order: [Int: (sequences: [UInt64], head: Int)] = [:]
    private var waitingFlushes: [Int: [UInt64]] = [:]
    /// Mirror writes waiting for the lag to come down.
    var parked = BioQueue()

    var isEmpty: Bool { writes.isEmpty }

    /// Takes a write in; returns it if it can be sent at once.
    mutating func admit(slot: Int, command: BioCommand, range: Range<Int64>, flags: BioFlags,
                        data: UnsafeMutableRawBufferPointer?) -> LaggingWrite? {
        let write = LaggingWrite(sequence: nextSequence, slot: slot, command: command, range: range, flags: flags, data: data)
        nextSequence += 1
        writes[write.sequence] = write
        lag += write.bytes
        if command == .flush {
            waitingFlushes[slot, default: []].append(write.sequence)
        } else {
            for bucket in bucketRange(of: write) { buckets[BucketKey(slot: slot, bucket: bucket), default: []].append(write.sequence) }
            order[slot, default: ([], 0)].sequences.append(write.sequence)
        }
        return take(ifReady: write)
    }

    /// A write is done; returns the ones that can now be sent.
    mutating func complete(_ done: LaggingWrite) -> [LaggingWrite] {
        writes[done.sequence] = nil
        sent.remove(done.sequence)
        lag -= done.bytes
        guard done.command != .flush else { return [] }
        // The writes it held back: waiting in its buckets, overlapping it; oldest first.
        var candidates: [UInt64] = []
        for bucket in bucketRange(of: done) {
            let key = BucketKey(slot: done.slot, bucket: bucket)
            buckets[key]!.removeAll { $0 == done.sequence }
            for sequence in buckets[key]! where !sent.contains(sequence) && writes[sequence]!.range.overlaps(done.range)
                && !candidates.contains(sequence) {
                candidates.append(sequence)
            }
            if buckets[key]!.isEmpty { buckets[key] = nil }
        }
        var ready: [LaggingWrite] = []
        for sequence in candidates.sorted() {
            if let write = take(ifReady: writes[sequence]!) { ready.append(write) }
        }
        let oldest = oldestWrite(of: done.slot)
        if var flushes = waitingFlushes[done.slot] {
            while let first = flushes.first, oldest.map({ first < $0 }) ?? true {
                flushes.removeFirst()
                sent.insert(first)
                ready.append(writes[first]!)
            }
            waitingFlushes[done.slot] = flushes.isEmpty ? nil : flushes
        }
        return ready
    }

    /// Marks the write sent and returns it, unless an earlier one holds it back.
    private mutating func take(ifReady write: LaggingWrite) -> LaggingWrite? {
        if write.command == .flush {
            if let oldest = oldestWrite(of: write.slot), oldest < write.sequence { return nil }
            waitingFlushes[write.slot]?.removeAll { $0 == write.sequence }
            if waitingFlushes[write.slot]?.isEmpty == true { waitingFlushes[write.slot] = nil }
        } else {
            for bucket in bucketRange(of: write) {
                for earlier in buckets[BucketKey(slot: write.slot, bucket: bucket)]! {
                    guard earlier < write.sequence else { break }
                    if writes[earlier]!.range.overlaps(write.range) { return nil }
                }
            }
        }
        sent.insert(write.sequence)
        return write
    }

    /// The oldest data write to `slot` not yet done.
    private mutating func oldestWrite(of slot: Int) -> UInt64? {
        guard var entry = order[slot] else { return nil }
        while entry.head < entry.sequences.count, writes[entry.sequences[entry.head]] == nil { entry.head += 1 }
        if entry.head == entry.sequences.count {
            order[slot] = nil
            return nil
        }
        if entry.head > 1024 {
            entry.sequences.removeFirst(entry.head)
            entry.head = 0
        }
        order[slot] = entry
        return entry.sequences[entry.head]
    }

    /// The buckets a write touches (a range: nothing allocated per write).
    private func bucketRange(of write: LaggingWrite) -> ClosedRange<Int64> {
        let first = write.range.lowerBound >> Self.bucketShift
        let last = (max(write.range.upperBound, write.range.lowerBound + 1) - 1) >> Self.bucketShift
        return first...last
    }
}

extension MirrorGeom {
    /// Bytes the remote components lack under `async` replication.
    public var replicationLag: Int64 { replicationQueue.withLock { $0.lag } }

    /// Under `async`: parks a write while the remote components are the whole allowed
    /// lag behind. And while they are behind at all with no local component left, parks
    /// every request: writes would go to them as they come and could pass older ones,
    /// reads could find old data. Returns true if it kept the request.
    func parksForLag(_ held: inout ProviderBio?, isWrite: Bool) -> Bool {
        guard case .async(let bound) = replication else { return false }
        let lag = laggingBytes.load(ordering: .relaxed)
        if lag == 0 { return false }
        let hasLocalTarget = hasLocalTarget
        if hasLocalTarget && (!isWrite || lag < bound) { return false }
        return replicationQueue.withLock { queue in
            guard (isWrite && queue.lag >= bound) || (queue.lag > 0 && !hasLocalTarget) else { return false }
            queue.parked.append(held.take()!)
            return true
        }
    }

    /// Parks a write until the remote components have every write on its way to them;
    /// returns false, keeping nothing, if they have them already.
    func parkUntilCaughtUp(_ held: inout ProviderBio?) -> Bool {
        replicationQueue.withLock { queue in
            guard queue.lag > 0 else { return false }
            queue.parked.append(held.take()!)
            return true
        }
    }

    /// An up-to-date local component takes writes here: remote ones may then lag behind.
    var hasLocalTarget: Bool {
        slots.prefix(expected).contains { !$0.isRemote && $0.state == .active }
    }

    /// Sends the write to the remote components in `remotes` in the background.
    func sendLagging(_ bio: borrowing ProviderBio, to remotes: SlotMask) {
        var remotes = remotes
        var ready: [LaggingWrite] = []
        while let index = remotes.popFirst() {
            var data: UnsafeMutableRawBufferPointer?
            if bio.command == .write {
                let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(bio.length), alignment: 4096)
                bio.data.copy(to: copy.baseAddress!)
                data = copy
            }
            slots[index].laggingWrites.wrappingAdd(1, ordering: .relaxed)
            let range = bio.offset..<(bio.offset + max(bio.length, 0))
            let admitted = replicationQueue.withLock { queue -> LaggingWrite? in
                let write = queue.admit(slot: index, command: bio.command, range: range, flags: bio.flags, data: data)
                laggingBytes.store(queue.lag, ordering: .relaxed)
                return write
            }
            if let admitted { ready.append(admitted) }
        }
        for write in ready { issue(write) }
    }

    /// Sends a lagging write to its component; one whose component is out by now is
    /// recorded as missed instead.
    private func issue(_ write: LaggingWrite) {
        let slot = slots[write.slot]
        guard slot.state == .active, let consumer = slot.consumer else {
            return lagged(write, error: .noDevice)
        }
        let bio = AnyBioSet.shared.alloc(segments: 1)
        bio.command = write.command
        bio.offset = write.range.lowerBound
        bio.length = Int64(write.range.count)
        bio.flags = write.flags
        if let data = write.data { bio.setData(data) }
        bio.done = .closure { [self] bio in
            let error = bio.error
            bio.destroy()
            lagged(write, error: error)
        }
        consumer.request(bio)
    }

    /// A lagging write is done. One that failed is recorded in the component's map of
    /// missed regions and the component is ejected: taking it back copies what it lacks.
    private func lagged(_ write: LaggingWrite, error: BioError?) {
        var finished = [(write, error)]
        while let (write, error) = finished.popLast() {
            let slot = slots[write.slot]
            if let error, !(write.command == .flush && error == .notSupported) {
                if write.command == .flush { slot.missed!.mark(from: 0) } else { slot.missed!.mark(write.range) }
                eject(slot, because: error)
            }
            write.data?.deallocate()
            var held = BioQueue()
            let (ready, drained) = replicationQueue.withLock { queue -> ([LaggingWrite], Bool) in
                let ready = queue.complete(write)
                laggingBytes.store(queue.lag, ordering: .relaxed)
                if case .async(let bound) = replication, queue.lag < bound { swap(&held, &queue.parked) }
                return (ready, queue.isEmpty)
            }
            let left = slot.laggingWrites.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue
            if left == 0 || drained { replicationQueue.wakeWaiters() }
            for next in ready {
                // One whose component is out is finished here, not recursively.
                if slots[next.slot].state == .active && slots[next.slot].consumer != nil {
                    issue(next)
                } else {
                    finished.append((next, .noDevice))
                }
            }
            if !held.isEmpty {
                // Parked writes go on off this completion path (a connection's thread).
                let parked = held.unmanagedList()
                DispatchQueue.global().async { [self] in
                    for bio in parked { start(bio.takeProviderBio()) }
                }
            }
        }
    }

    /// Waits until the remote components have every write sent to them in the
    /// background (all of them, or `slot`'s).
    func waitForLaggingWrites(of slot: Slot? = nil) {
        guard case .async = replication else { return }
        replicationQueue.wait(until: { queue in
            if let slot { slot.laggingWrites.load(ordering: .acquiring) == 0 } else { queue.isEmpty }
        })
    }
}

extension BioQueue {
    /// Empties the queue into plain references, to carry to another thread.
    mutating func unmanagedList() -> [UnmanagedBio] {
        var list: [UnmanagedBio] = []
        while let bio = popFirst() { list.append(bio.unmanaged()) }
        return list
    }
}
