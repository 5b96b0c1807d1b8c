import CStrataClock
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a provider has done, like GEOM's devstat: per kind of request, how many
/// completed, how many bytes, how many failed and how long they took; requests in flight;
/// and how long the provider has had at least one request in flight (busy time); and a
/// latency histogram per kind whose buckets double from 1024 ns to 2^30 ns (about 1 s).
///
/// Counters only grow; a reader takes two snapshots and divides the difference by the
/// time between them (`strata stat` does, once a second).
///
/// The counters are kept per thread, like Linux's per-CPU disk statistics
/// (`PerThreadCounters`): counting a request takes no locked instruction and no cache
/// line moves between threads. Requests in flight are counted per thread the same way
/// (`InFlightFields`), in the line that also holds the counts of reads.
///
/// Busy time is accounted as Linux accounts `io_ticks`: a shared stamp marks the time up
/// to which it is accounted, and a request starting or finishing moves the stamp only
/// once it is `busyQuantum` old, adding the part of the time since the stamp that the
/// provider was busy. Most requests only read the stamp, so threads sharing a provider
/// write its line once per quantum, not per request. The figure is exact to about a
/// quantum per busy period: an idle provider gains none, and a request held for a long
/// time counts the whole of it.
public final class ProviderStatistics: @unchecked Sendable {
    /// The kinds of request counted apart.
    public enum Kind: Int, CaseIterable, Sendable {
        case read, write, delete, flush, other

        init(_ command: BioCommand) {
            switch command {
            case .read: self = .read
            case .write: self = .write
            case .delete, .writeZeroes: self = .delete
            case .flush: self = .flush
            case .getattr: self = .other
            }
        }

        public var name: String {
            switch self {
            case .read: "read"
            case .write: "write"
            case .delete: "delete"
            case .flush: "flush"
            case .other: "other"
            }
        }
    }

    private static let kinds = Kind.allCases.count
    private enum Counter: Int { case operations, bytes, errors, nanoseconds }

    /// Latency buckets per kind. Bucket `k` counts requests that took less than
    /// `1024 << k` ns and at least the bound below it; the last bucket has no upper bound.
    /// Powers of two let the I/O path pick a bucket with one shift and a bit count.
    public static let latencyBucketCount = 22

    /// The upper bound of each latency bucket but the last, in nanoseconds.
    public static var latencyBucketBounds: [UInt64] { (0..<(latencyBucketCount - 1)).map { 1024 << UInt64($0) } }

    /// The counters: requests in flight (`InFlightFields`) and one spare field; four
    /// per kind (operations, bytes, errors, nanoseconds) kind after kind; then the
    /// latency buckets kind after kind. A read touches the first cache line and its
    /// bucket's.
    private static let kindsBase = InFlightFields.count + 1
    private static let bucketsBase = kindsBase + 4 * kinds
    private let counters = PerThreadCounters(count: bucketsBase + latencyBucketCount * kinds)
    private let inFlight = InFlightFields(base: 0)
    /// The time up to which busy time is accounted (`bd_stamp`).
    private let busyStamp = Atomic<Int>(0)
    private let busyNanoseconds = Atomic<Int>(0)
    /// How old the stamp gets before a request moves it: 2^16 ns, about 66 µs.
    static let busyQuantum = 1 << 16

    /// The bucket a request that took `nanoseconds` falls in.
    @inline(__always)
    public static func latencyBucket(_ nanoseconds: UInt64) -> Int {
        let scaled = nanoseconds >> 10
        return Swift.min(UInt64.bitWidth - scaled.leadingZeroBitCount, latencyBucketCount - 1)
    }

    /// A kind's four counters sit side by side, so counting a request touches one cache
    /// line for them.
    @inline(__always)
    private static func field(_ counter: Counter, _ kind: Int) -> Int { kindsBase &+ kind &* 4 &+ counter.rawValue }

    private func values(_ counter: Counter) -> [Int] {
        (0..<Self.kinds).map { counters.total(Self.field(counter, $0)) }
    }

    /// A request passed the entry checks at `now` on the thread owning `slot` and goes
    /// to the provider. Returns its start time.
    @inline(__always)
    func started(at now: UInt64, slot: Int) -> UInt64 {
        accountBusyTime(now: Int(truncatingIfNeeded: now), finishing: false)
        inFlight.begin(counters.shard(slot))
        return now
    }

    /// Moves the busy stamp to `now` if it is a quantum old; `finishing` tells a request
    /// finishing now from one starting.
    @inline(__always)
    private func accountBusyTime(now: Int, finishing: Bool) {
        let stamp = busyStamp.load(ordering: .relaxed)
        if now &- stamp >= Self.busyQuantum { moveBusyStamp(from: stamp, to: now, finishing: finishing) }
    }

    /// Once per quantum: the thread that moves the stamp adds the time since it that the
    /// provider was busy. A request finishing now, or others in flight, mean busy up to
    /// now; otherwise busy up to the latest end, idle since.
    @inline(never)
    private func moveBusyStamp(from stamp: Int, to now: Int, finishing: Bool) {
        guard busyStamp.compareExchange(expected: stamp, desired: now, ordering: .relaxed).exchanged else { return }
        let busy = busyUntil(now: now, finishing: finishing) &- stamp
        if busy > 0 { busyNanoseconds.wrappingAdd(busy, ordering: .relaxed) }
    }

    /// The end of the provider's latest busy time before `now`.
    private func busyUntil(now: Int, finishing: Bool) -> Int {
        if finishing || inFlight.current(in: counters) > 0 { return now }
        return min(inFlight.latestEnd(in: counters), now)
    }

    /// A request that `started(at:)` at `start` was delivered at `now`, counted in the
    /// shard of the delivering thread (`slot`).
    @inline(__always)
    func finished(_ command: BioCommand, bytes count: Int64, failed: Bool, start: UInt64, now: UInt64, slot: Int) {
        let kind = Kind(command).rawValue
        let shard = counters.shard(slot)
        shard.add(Self.field(.operations, kind), 1)
        shard.add(Self.field(.bytes, kind), Int(count))
        // A shared reading may precede a start read later in another run by a hair.
        let elapsed = now > start ? now - start : 0
        shard.add(Self.field(.nanoseconds, kind), Int(truncatingIfNeeded: elapsed))
        shard.add(Self.bucketsBase &+ kind &* Self.latencyBucketCount &+ Self.latencyBucket(elapsed), 1)
        if failed { shard.add(Self.field(.errors, kind), 1) }
        accountBusyTime(now: Int(truncatingIfNeeded: now), finishing: true)
        inFlight.end(shard, at: Int(truncatingIfNeeded: now))
    }

    /// A request refused by the entry checks: counted as a failed operation of its kind.
    func refused(_ command: BioCommand, slot: Int) {
        let kind = Kind(command).rawValue
        counters.add(Self.field(.operations, kind), 1, slot: slot)
        counters.add(Self.field(.errors, kind), 1, slot: slot)
    }

    /// The counters now.
    public var snapshot: Snapshot {
        let now = ProviderStatistics.now()
        let requestsInFlight = inFlight.current(in: counters)
        // The busy time accounted, and that since the stamp, which the next request to
        // move the stamp will account (a stamp from a reading shared by a run on another
        // thread may be a hair ahead of this reading).
        let pending = busyUntil(now: Int(now), finishing: false) - busyStamp.load(ordering: .relaxed)
        let busy = busyNanoseconds.load(ordering: .relaxed) + max(0, pending)
        return Snapshot(
            time: now,
            operations: values(.operations),
            bytes: values(.bytes),
            errors: values(.errors),
            nanoseconds: values(.nanoseconds),
            inFlight: requestsInFlight,
            busyNanoseconds: busy,
            latencyBuckets: (0..<(Self.latencyBucketCount * Self.kinds)).map { counters.total(Self.bucketsBase + $0) })
    }

    /// Counters at one moment, indexed by `Kind.rawValue`.
    public struct Snapshot: Sendable, Equatable {
        public var time: UInt64
        public var operations: [Int]
        public var bytes: [Int]
        public var errors: [Int]
        public var nanoseconds: [Int]
        public var inFlight: Int
        public var busyNanoseconds: Int
        /// `latencyBucketCount` counts per kind, kind after kind; not cumulative.
        public var latencyBuckets: [Int]

        public func operations(_ kind: Kind) -> Int { operations[kind.rawValue] }
        public func bytes(_ kind: Kind) -> Int { bytes[kind.rawValue] }
        public func errors(_ kind: Kind) -> Int { errors[kind.rawValue] }
        public func nanoseconds(_ kind: Kind) -> Int { nanoseconds[kind.rawValue] }
        public func latencyBuckets(_ kind: Kind) -> [Int] {
            let count = ProviderStatistics.latencyBucketCount
            return Array(latencyBuckets[(kind.rawValue * count)..<((kind.rawValue + 1) * count)])
        }
    }

    /// Nanoseconds on the monotonic clock, from the time-stamp counter where the kernel
    /// keeps time by it (`CStrataClock`).
    @inline(__always)
    static func now() -> UInt64 {
        strata_clock_nanoseconds()
    }
}
