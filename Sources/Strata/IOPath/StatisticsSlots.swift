/// Which shard of every provider's statistics a thread owns (`ProviderStatistics`).
///
/// A thread claims a slot when its thread state is made and gives it back when it
/// exits, so a shard has one writer at a time; the counts a shard holds stay when its
/// owner changes (they are totals). When every slot is taken, a thread counts in the
/// shared shard 0, atomically.
@usableFromInline enum StatisticsSlots {
    /// Shards per provider: the shared one and 31 owned. Threads doing I/O are a few
    /// per core (event loops, workers, rescuers); more than 31 at once only costs the
    /// extra ones an atomic add.
    static let shardCount = 32
    /// The shard of threads without a slot of their own.
    @inlinable static var shared: Int { 0 }

    // A pthread lock, not Synchronization's Mutex: ThreadSanitizer does not see the
    // futex that Mutex uses on Linux, and reports the list as raced.
    private static let lock = ConditionLock()
    nonisolated(unsafe) private static var free = Array((1..<shardCount).reversed())

    /// A slot for the calling thread: the lowest free one, or `shared`.
    static func claim() -> Int {
        lock.withLock { free.popLast() ?? shared }
    }

    /// Gives back a thread's slot when it exits.
    static func release(_ slot: Int) {
        guard slot != shared else { return }
        lock.withLock { free.append(slot) }
    }
}
