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
    private static let begun = 0
    private static let ended = 1
    /// The time of the latest end on the slot's thread, for `latestEnd`.
    private static let lastEnd = 2
    private let counters = PerThreadCounters(count: 3)

    /// A request began on the thread owning `slot`.
    @inline(__always)
    func begin(slot: Int) { counters.add(Self.begun, 1, slot: slot) }

    /// A request ended on the thread owning `slot`.
    @inline(__always)
    func end(slot: Int) { counters.add(Self.ended, 1, slot: slot) }

    /// A request ended at `time` on the thread owning `slot`: counted, and the time kept
    /// for `latestEnd`.
    @inline(__always)
    func end(slot: Int, at time: Int) {
        let shard = counters.shard(slot)
        shard.set(Self.lastEnd, to: time)
        shard.add(Self.ended, 1)
    }

    /// Requests begun and not yet ended.
    var current: Int {
        let ended = counters.total(Self.ended)
        return counters.total(Self.begun) &- ended
    }

    /// The latest time given to `end(slot:at:)` on any thread (on the shared slot, the
    /// last writer's), or 0.
    var latestEnd: Int { max(0, counters.maximum(Self.lastEnd)) }
}
