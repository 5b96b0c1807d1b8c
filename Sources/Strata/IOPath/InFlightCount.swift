/// How many requests are in flight on a consumer or a provider, counted per thread like
/// Linux's per-CPU `in_flight`: the hot path writes only a cache line of the calling
/// thread's own, so two threads driving the same stack never pass a line between them.
///
/// Each thread's slot has two counters that only grow: requests that began on the
/// thread and requests that ended on it. A request may end on another thread than it
/// began (a worker completes it), so one slot's difference means nothing; the sums over
/// the slots give the count.
///
/// Reading the count sums the ended counters first, then the begun ones. Both only
/// grow, and a request ends after it begins, so the ends read are at most those at the
/// moment between the two passes and the begins read at least those: a count of zero
/// means that at that moment every request that had begun had also ended, with its
/// end's writes visible to the reader. A count read while requests move can be too
/// high, never falsely zero.
struct InFlightCount: ~Copyable {
    private let counters = PerThreadCounters(count: InFlightFields.count)
    private let fields = InFlightFields(base: 0)

    /// A request began on the thread owning `slot`.
    @inline(__always)
    func begin(slot: Int) { fields.begin(counters.shard(slot)) }

    /// A request ended on the thread owning `slot`.
    @inline(__always)
    func end(slot: Int) { fields.end(counters.shard(slot)) }

    /// Requests begun and not yet ended.
    var current: Int { fields.current(in: counters) }
}

/// The fields of an in-flight count (`InFlightCount`) at `base` among other per-thread
/// counters, so that a request's other counts share their cache line (the provider's
/// statistics keep them beside the counts of reads).
struct InFlightFields {
    /// Fields taken, from `base`.
    static let count = 3
    private static let begun = 0
    private static let ended = 1
    /// The time of the latest end on the slot's thread, for `latestEnd`.
    private static let lastEnd = 2
    let base: Int

    @inline(__always)
    func begin(_ shard: PerThreadCounters.Shard) { shard.add(base &+ Self.begun, 1) }

    @inline(__always)
    func end(_ shard: PerThreadCounters.Shard) { shard.add(base &+ Self.ended, 1) }

    /// A request ended at `time`: counted, and the time kept for `latestEnd`.
    @inline(__always)
    func end(_ shard: PerThreadCounters.Shard, at time: Int) {
        shard.set(base &+ Self.lastEnd, to: time)
        shard.add(base &+ Self.ended, 1)
    }

    /// Requests begun and not yet ended (ends summed first: see `InFlightCount`).
    func current(in counters: borrowing PerThreadCounters) -> Int {
        let ended = counters.total(base &+ Self.ended)
        return counters.total(base &+ Self.begun) &- ended
    }

    /// The latest time given to `end(_:at:)` on any thread (on the shared slot, the
    /// last writer's), or 0.
    func latestEnd(in counters: borrowing PerThreadCounters) -> Int { max(0, counters.maximum(base &+ Self.lastEnd)) }
}
