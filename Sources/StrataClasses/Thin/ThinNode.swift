import Strata
import Synchronization

/// A node of a volume's map in memory: 508 entries, read without a lock by the I/O path
/// and changed only by the pool's metadata thread.
///
/// A leaf's entries are what a leaf block holds (0, or a data chunk plus one). An inner
/// node's entries are its children's addresses (`Unmanaged<ThinNode>` bits), each
/// holding one reference on its child. `parents` counts the inner entries and volume
/// roots that point at the node: a node with more than one is shared between volumes
/// (a snapshot and its origin) and is never changed in place; a write through one of
/// them copies it first (`ThinMap.exclusive`).
final class ThinNode: @unchecked Sendable {
    let level: Int
    let entries: UnsafeMutablePointer<Atomic<UInt64>>
    let parents = Atomic<Int>(1)
    // Metadata thread only:
    /// The block holding the node as of the last commit it was written in; 0 before.
    var block: UInt64 = 0
    /// Changed since it was last written: the next commit writes it to a new block.
    var dirty = true
    /// The commit that last gave it a block (so a node reached twice is written once).
    var writtenInCommit: UInt64 = 0

    /// Bytes a node takes in memory: its entries and the object.
    static let memorySize = ThinFormat.fanout * 8 + 64

    init(level: Int) {
        self.level = level
        entries = .allocate(capacity: ThinFormat.fanout)
        for index in 0..<ThinFormat.fanout { (entries + index).initialize(to: Atomic(0)) }
    }

    deinit {
        if level > 0 {
            for index in 0..<ThinFormat.fanout { ThinNode.release(self[index]) }
        }
        entries.deinitialize(count: ThinFormat.fanout)
        entries.deallocate()
    }

    @inline(__always) subscript(index: Int) -> UInt64 {
        get { entries[index].load(ordering: .acquiring) }
        set { entries[index].store(newValue, ordering: .releasing) }
    }

    /// The child an inner entry points at.
    @inline(__always) static func child(_ entry: UInt64) -> ThinNode? {
        guard entry != 0 else { return nil }
        return Unmanaged<ThinNode>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(entry))!).takeUnretainedValue()
    }

    /// An entry pointing at `node`, holding a reference on it.
    static func entry(retaining node: ThinNode) -> UInt64 {
        UInt64(UInt(bitPattern: Unmanaged.passRetained(node).toOpaque()))
    }

    /// The bits every entry pointing at `node` holds, without taking a reference.
    static func entry(unretained node: ThinNode) -> UInt64 {
        UInt64(UInt(bitPattern: Unmanaged.passUnretained(node).toOpaque()))
    }

    /// Gives back the reference an entry (or a root) held.
    static func release(_ entry: UInt64) {
        guard entry != 0 else { return }
        Unmanaged<ThinNode>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(entry))!).release()
    }

    /// A copy of this node for a volume that writes through it: same level and entries,
    /// so every child (or data chunk) it points at gains a parent.
    func copy() -> ThinNode {
        let copy = ThinNode(level: level)
        for index in 0..<ThinFormat.fanout {
            let value = self[index]
            guard value != 0 else { continue }
            if level > 0 {
                let child = ThinNode.child(value)!
                child.parents.add(1, ordering: .relaxed)
                copy[index] = ThinNode.entry(retaining: child)
            } else {
                copy[index] = value
            }
        }
        return copy
    }

    /// Visits every non-zero entry: (index, value).
    func forEachEntry(_ body: (Int, UInt64) throws -> Void) rethrows {
        for index in 0..<ThinFormat.fanout {
            let value = self[index]
            if value != 0 { try body(index, value) }
        }
    }
}

/// Which requests may still be using what the metadata thread took out of the maps
/// (a node, a data chunk): each request enters the current epoch before it reads a map
/// and leaves when it completes, and `synchronize` waits until every request that
/// entered before it has left. What was taken out before that is free to reuse: no
/// request can still reach it. (Two counters by epoch parity, as in sleepable RCU.)
final class ThinEpochs: Sendable {
    private let epoch = Atomic<Int>(0)
    private let even = Atomic<Int>(0)
    private let odd = Atomic<Int>(0)

    @inline(__always) private func add(_ delta: Int, to parity: Int) {
        if parity == 0 {
            even.add(delta, ordering: .sequentiallyConsistent)
        } else {
            odd.add(delta, ordering: .sequentiallyConsistent)
        }
    }

    /// Enters the current epoch; give the parity back to `leave`.
    @inline(__always) func enter() -> Int {
        while true {
            let current = epoch.load(ordering: .sequentiallyConsistent)
            let parity = current & 1
            add(1, to: parity)
            if epoch.load(ordering: .sequentiallyConsistent) == current { return parity }
            add(-1, to: parity)
        }
    }

    @inline(__always) func leave(_ parity: Int) {
        add(-1, to: parity)
    }

    /// Waits until every request that entered before the call has left. One caller at a
    /// time (the pool's metadata thread).
    func synchronize() {
        let current = epoch.load(ordering: .sequentiallyConsistent)
        waitUntilIdle((current + 1) & 1)
        epoch.store(current + 1, ordering: .sequentiallyConsistent)
        waitUntilIdle(current & 1)
    }

    private func waitUntilIdle(_ parity: Int) {
        var spins = 0
        while (parity == 0 ? even.load(ordering: .sequentiallyConsistent) : odd.load(ordering: .sequentiallyConsistent)) != 0 {
            spins += 1
            if spins > 100 { sleepSeconds(0.000_05) }
        }
    }
}

/// Delivers the requests the metadata thread finished, from a thread of its own: an
/// issuer's done routine may send its next request at once (a load generator's does),
/// and must not run on, and hold, the metadata thread while it does.
final class ThinCompletions: Sendable {
    private struct State {
        var finished: [(UnmanagedBio, BioError?)] = []
        var stopping = false
        var stopped = false
    }

    private let state = ConditionMutex(State())

    init() {
        startWorkerThread { [self] in run() }
    }

    func deliver(_ bio: consuming ProviderBio, _ error: BioError?) {
        let reference = bio.unmanaged()
        state.withLock { $0.finished.append((reference, error)) }
        state.wakeWaiters()
    }

    private func run() {
        while true {
            var batch: [(UnmanagedBio, BioError?)] = []
            state.wait { !$0.finished.isEmpty || $0.stopping }
            let stop = state.withLock { state in
                swap(&batch, &state.finished)
                return state.stopping && batch.isEmpty
            }
            for (reference, error) in batch {
                if let error { reference.takeProviderBio().deliver(error) } else { reference.takeProviderBio().deliverAll() }
            }
            if stop { break }
        }
        state.withLock { $0.stopped = true }
        state.wakeWaiters()
    }

    /// Delivers what is left, then ends the thread.
    func stop() {
        state.withLock { $0.stopping = true }
        state.wakeWaiters()
        state.wait { $0.stopped }
    }
}
