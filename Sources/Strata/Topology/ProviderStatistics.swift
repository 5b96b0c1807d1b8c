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
/// The counters are kept per thread, like Linux's per-CPU disk statistics: each thread
/// doing I/O owns a shard (`StatisticsSlots`) and adds to it with a plain load and store,
/// so counting a request takes no locked instruction and no cache line moves between
/// threads. A reader sums the shards. Threads beyond the owned shards share shard 0 and
/// add to it atomically. Requests in flight and busy time stay single atomics: busy time
/// needs to see the provider's total go from and to zero.
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

    /// One shard: four counters per kind (operations, bytes, errors, nanoseconds), then
    /// the latency buckets kind after kind; padded to whole cache lines so that two
    /// threads never write the same line.
    private static let bucketsBase = 4 * kinds
    private static let shardFields = bucketsBase + latencyBucketCount * kinds
    private static let shardStride = (shardFields + 7) / 8 * 8
    private let shards: UnsafeMutablePointer<Atomic<Int>>
    private let inFlight = Atomic<Int>(0)
    private let busySince = Atomic<Int>(0)
    private let busyNanoseconds = Atomic<Int>(0)

    init() {
        let total = StatisticsSlots.shardCount * Self.shardStride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: total * MemoryLayout<Atomic<Int>>.stride, alignment: 64)
        shards = raw.bindMemory(to: Atomic<Int>.self, capacity: total)
        for index in 0..<total { (shards + index).initialize(to: Atomic(0)) }
    }

    deinit {
        shards.deinitialize(count: StatisticsSlots.shardCount * Self.shardStride)
        UnsafeMutableRawPointer(shards).deallocate()
    }

    /// The bucket a request that took `nanoseconds` falls in.
    @inline(__always)
    public static func latencyBucket(_ nanoseconds: UInt64) -> Int {
        let scaled = nanoseconds >> 10
        return Swift.min(UInt64.bitWidth - scaled.leadingZeroBitCount, latencyBucketCount - 1)
    }

    /// Adds to field `field` of shard `slot`: a plain load and store when the calling
    /// thread owns the shard, an atomic add on the shared shard 0.
    @inline(__always)
    private func add(_ field: Int, _ amount: Int, slot: Int) {
        let counter = shards + (slot &* Self.shardStride &+ field)
        if slot == StatisticsSlots.shared {
            counter.pointee.wrappingAdd(amount, ordering: .relaxed)
        } else {
            counter.pointee.store(counter.pointee.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
        }
    }

    @inline(__always)
    private static func field(_ counter: Counter, _ kind: Int) -> Int { counter.rawValue &* kinds &+ kind }

    /// Field `field` summed over the shards.
    private func total(_ field: Int) -> Int {
        var sum = 0
        for slot in 0..<StatisticsSlots.shardCount {
            sum &+= shards[slot * Self.shardStride + field].load(ordering: .relaxed)
        }
        return sum
    }

    private func values(_ counter: Counter) -> [Int] {
        (0..<Self.kinds).map { total(Self.field(counter, $0)) }
    }

    /// A request passed the entry checks at `now` and goes to the provider. Returns
    /// its start time.
    @inline(__always)
    func started(at now: UInt64) -> UInt64 {
        if inFlight.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
            busySince.store(Int(now), ordering: .relaxed)
        }
        return now
    }

    /// A request that `started(at:)` at `start` was delivered at `now`, counted in the
    /// shard of the delivering thread (`slot`).
    @inline(__always)
    func finished(_ command: BioCommand, bytes count: Int64, failed: Bool, start: UInt64, now: UInt64, slot: Int) {
        let kind = Kind(command).rawValue
        add(Self.field(.operations, kind), 1, slot: slot)
        add(Self.field(.bytes, kind), Int(count), slot: slot)
        // A shared reading may precede a start read later in another run by a hair.
        let elapsed = now > start ? now - start : 0
        add(Self.field(.nanoseconds, kind), Int(truncatingIfNeeded: elapsed), slot: slot)
        add(Self.bucketsBase &+ kind &* Self.latencyBucketCount &+ Self.latencyBucket(elapsed), 1, slot: slot)
        if failed { add(Self.field(.errors, kind), 1, slot: slot) }
        if inFlight.wrappingSubtract(1, ordering: .relaxed).oldValue == 1 {
            busyNanoseconds.wrappingAdd(Int(now) &- busySince.load(ordering: .relaxed), ordering: .relaxed)
        }
    }

    /// A request refused by the entry checks: counted as a failed operation of its kind.
    func refused(_ command: BioCommand, slot: Int) {
        let kind = Kind(command).rawValue
        add(Self.field(.operations, kind), 1, slot: slot)
        add(Self.field(.errors, kind), 1, slot: slot)
    }

    /// The counters now.
    public var snapshot: Snapshot {
        let now = ProviderStatistics.now()
        var busy = busyNanoseconds.load(ordering: .relaxed)
        if inFlight.load(ordering: .relaxed) > 0 { busy += Int(now) - busySince.load(ordering: .relaxed) }
        return Snapshot(
            time: now,
            operations: values(.operations),
            bytes: values(.bytes),
            errors: values(.errors),
            nanoseconds: values(.nanoseconds),
            inFlight: inFlight.load(ordering: .relaxed),
            busyNanoseconds: busy,
            latencyBuckets: (0..<(Self.latencyBucketCount * Self.kinds)).map { total(Self.bucketsBase + $0) })
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

    /// Nanoseconds on the monotonic clock.
    @inline(__always)
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }
}
