import CStrataThreadState

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What each thread keeps for the I/O path: the submission lists that turn recursion
/// into iteration (`current->bio_list`), the completion list that does the same
/// upward, and its LIFO caches in front of each bio pool.
///
/// It is a plain struct in memory of its own, reached through a C thread-local, so the
/// hot path pays neither reference counting, exclusivity checks nor a call to find it.
/// A pthread key with a destructor gives it back when the thread exits.
@usableFromInline struct ThreadState {
    /// A `start` routine is running on this thread: new submissions are queued.
    @usableFromInline var submitting = false
    /// Requests submitted by the `start` routine now running (`bio_list_on_stack[0]`).
    @usableFromInline var fresh = BioList()
    /// Requests submitted earlier that wait their turn (`bio_list_on_stack[1]`).
    @usableFromInline var rest = BioList()
    /// A done routine is running on this thread: new completions are queued.
    @usableFromInline var delivering = false
    @usableFromInline var completions = BioList()
    /// Plugs held on this thread (`BioPlug`), and the requests providers put off until
    /// the outermost ends, oldest first.
    @usableFromInline var plugDepth = 0
    @usableFromInline var deferred = BioList()
    /// The clock reading shared by the entries and deliveries of a submission or
    /// completion run since the last `start` routine that may work ran here, or 0
    /// (`IOPath.entryClock`, `IOPath.deliveryClock`). Nonzero only during a run.
    @usableFromInline var clock: UInt64 = 0
    /// One cache per pool, indexed by pool id; grown when a new pool is first used.
    @usableFromInline var caches: UnsafeMutablePointer<LocalCache>? = nil
    @usableFromInline var cacheSlots = 0
    /// The shard of provider statistics this thread counts in (`StatisticsSlots`).
    @usableFromInline var statisticsSlot = StatisticsSlots.shared

    /// This thread's state, made on first use.
    @inlinable @inline(__always)
    static var current: UnsafeMutablePointer<ThreadState> {
        if let raw = strata_thread_state() {
            return raw.assumingMemoryBound(to: ThreadState.self)
        }
        return makeCurrent()
    }

    @usableFromInline static func makeCurrent() -> UnsafeMutablePointer<ThreadState> {
        let state = UnsafeMutablePointer<ThreadState>.allocate(capacity: 1)
        state.initialize(to: ThreadState())
        state.pointee.statisticsSlot = StatisticsSlots.claim()
        strata_set_thread_state(state)
        // Only for the destructor: the key's value is never read.
        pthread_setspecific(threadStateKey, state)
        return state
    }

    /// The cache for `poolID`, growing the table if needed.
    @inlinable @inline(__always)
    mutating func cache(for poolID: Int) -> UnsafeMutablePointer<LocalCache> {
        if poolID < cacheSlots { return caches! + poolID }
        return growCaches(to: poolID)
    }

    @usableFromInline mutating func growCaches(to poolID: Int) -> UnsafeMutablePointer<LocalCache> {
        let newSlots = max(poolID + 1, cacheSlots * 2, 8)
        let grown = UnsafeMutablePointer<LocalCache>.allocate(capacity: newSlots)
        if let caches {
            grown.moveInitialize(from: caches, count: cacheSlots)
            caches.deallocate()
        }
        (grown + cacheSlots).initialize(repeating: LocalCache(), count: newSlots - cacheSlots)
        caches = grown
        cacheSlots = newSlots
        return grown + poolID
    }

    /// Runs when a thread exits: its cached requests go back to their pools.
    static func threadExited(_ raw: UnsafeMutableRawPointer) {
        let state = raw.assumingMemoryBound(to: ThreadState.self)
        if let caches = state.pointee.caches {
            for poolID in 0..<state.pointee.cacheSlots where caches[poolID].count > 0 {
                BioPool.pool(withID: poolID).takeBack(from: caches + poolID)
                caches[poolID].items?.deallocate()
            }
            caches.deallocate()
        }
        StatisticsSlots.release(state.pointee.statisticsSlot)
        strata_set_thread_state(nil)
        state.deinitialize(count: 1)
        state.deallocate()
    }
}

/// A thread's LIFO stack of free requests of one pool.
@usableFromInline struct LocalCache {
    @usableFromInline var items: UnsafeMutablePointer<UnsafeMutableRawPointer>? = nil
    @usableFromInline var count = 0
}

/// The key whose destructor gives a thread's state back when the thread exits.
let threadStateKey: pthread_key_t = {
    var key = pthread_key_t()
    let result = pthread_key_create(&key) { raw in
        guard let raw else { return }
        ThreadState.threadExited(raw)
    }
    precondition(result == 0, "pthread_key_create failed: \(result)")
    return key
}()
