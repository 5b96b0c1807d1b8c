/// A value per I/O thread, for what a layer may neither share between threads nor make
/// per request: a cipher's contexts, a cache of buffers.
///
/// Each thread that does I/O owns a statistics slot (`StatisticsSlots`) and uses that
/// slot's value with no lock and no atomic. Threads beyond the owned slots share one
/// value under a lock. A slot's value outlives the thread and serves the next thread
/// to claim the slot. `body` must not use the same `PerThread` again (the shared value's
/// lock is not recursive).
public final class PerThread<Value>: @unchecked Sendable {
    private let values: UnsafeMutableRawPointer
    /// Bytes between two slots' values: whole cache lines, so that threads never write
    /// the same line.
    private let stride: Int
    private let make: () -> Value
    private let sharedLock = ConditionLock()

    /// - Parameter make: makes a slot's value, on the thread that first needs it.
    public init(_ make: @escaping @Sendable () -> Value) {
        self.make = make
        stride = (MemoryLayout<Value?>.stride + 63) / 64 * 64
        values = UnsafeMutableRawPointer.allocate(byteCount: stride * StatisticsSlots.shardCount, alignment: 64)
        for slot in 0..<StatisticsSlots.shardCount {
            (values + slot * stride).initializeMemory(as: Value?.self, repeating: nil, count: 1)
        }
    }

    deinit {
        for slot in 0..<StatisticsSlots.shardCount {
            (values + slot * stride).assumingMemoryBound(to: Value?.self).deinitialize(count: 1)
        }
        values.deallocate()
    }

    /// Runs `body` with the calling thread's value.
    @inline(__always)
    public func withCurrent<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        let slot = ThreadState.current.pointee.statisticsSlot
        if slot == StatisticsSlots.shared {
            return try sharedLock.withLock { try use(slot, body) }
        }
        return try use(slot, body)
    }

    @inline(__always)
    private func use<Result>(_ slot: Int, _ body: (inout Value) throws -> Result) rethrows -> Result {
        let value = (values + slot * stride).assumingMemoryBound(to: Value?.self)
        if value.pointee == nil { value.pointee = make() }
        return try body(&value.pointee!)
    }
}
