import Synchronization

/// Counters that the threads doing I/O add to without sharing a cache line, like Linux's
/// per-CPU counters: each statistics slot (`StatisticsSlots`) has its own copy of every
/// field, padded to whole cache lines, and a reader sums the copies.
///
/// The thread owning a slot adds with a plain load and store, no locked instruction;
/// threads without a slot share slot 0 and add atomically. Stores release and sums
/// acquire, so a reader that sees a count also sees what its writer did before it.
public struct PerThreadCounters: ~Copyable, @unchecked Sendable {
    @usableFromInline let fields: UnsafeMutablePointer<Atomic<Int>>
    /// Fields per slot, rounded up to whole cache lines.
    @usableFromInline let stride: Int

    /// `count` counters, all zero.
    public init(count: Int) {
        stride = (count + 7) / 8 * 8
        let total = StatisticsSlots.shardCount * stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: total * MemoryLayout<Atomic<Int>>.stride, alignment: 64)
        fields = raw.bindMemory(to: Atomic<Int>.self, capacity: total)
        for index in 0..<total { (fields + index).initialize(to: Atomic(0)) }
    }

    deinit {
        fields.deinitialize(count: StatisticsSlots.shardCount * stride)
        UnsafeMutableRawPointer(fields).deallocate()
    }

    /// Adds `amount` to counter `field` in the calling thread's slot.
    @inlinable @inline(__always)
    public func add(_ field: Int, _ amount: Int) {
        add(field, amount, slot: ThreadState.current.pointee.statisticsSlot)
    }

    /// Adds `amount` to counter `field` in `slot`, which the calling thread owns.
    @inlinable @inline(__always)
    func add(_ field: Int, _ amount: Int, slot: Int) {
        shard(slot).add(field, amount)
    }

    /// The counters of `slot`, which the calling thread owns, for several updates in a
    /// row: the slot's address is worked out once rather than per counter.
    @inlinable @inline(__always)
    func shard(_ slot: Int) -> Shard {
        Shard(base: fields + slot &* stride, isShared: slot == StatisticsSlots.shared)
    }

    /// The calling thread's slot, for several updates in a row.
    @inlinable @inline(__always)
    public var currentShard: Shard { shard(ThreadState.current.pointee.statisticsSlot) }

    /// One slot's copy of the counters.
    public struct Shard {
        @usableFromInline let base: UnsafeMutablePointer<Atomic<Int>>
        /// The shared slot, which threads without a slot of their own add to atomically.
        @usableFromInline let isShared: Bool

        @inlinable init(base: UnsafeMutablePointer<Atomic<Int>>, isShared: Bool) {
            self.base = base
            self.isShared = isShared
        }

        /// Adds `amount` to counter `field`.
        @inlinable @inline(__always)
        public func add(_ field: Int, _ amount: Int) {
            let counter = base + field
            if isShared {
                counter.pointee.wrappingAdd(amount, ordering: .acquiringAndReleasing)
            } else {
                counter.pointee.store(counter.pointee.load(ordering: .relaxed) &+ amount, ordering: .releasing)
            }
        }

        /// Sets field `field` to `value` (a gauge, such as a time, rather than a count; on
        /// the shared slot the last writer's value stays).
        @inline(__always)
        func set(_ field: Int, to value: Int) {
            base[field].store(value, ordering: .releasing)
        }
    }

    /// Counter `field` summed over the slots.
    public func total(_ field: Int) -> Int {
        var sum = 0
        for slot in 0..<StatisticsSlots.shardCount {
            sum &+= fields[slot &* stride &+ field].load(ordering: .acquiring)
        }
        return sum
    }

    /// The largest value of gauge `field` over the slots.
    func maximum(_ field: Int) -> Int {
        var largest = Int.min
        for slot in 0..<StatisticsSlots.shardCount {
            largest = max(largest, fields[slot &* stride &+ field].load(ordering: .acquiring))
        }
        return largest
    }
}
