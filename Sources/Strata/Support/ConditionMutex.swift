/// A value reachable only under its lock, as with `Mutex`, plus a condition for threads
/// that must sleep until the value (or something beside it) lets them go on. For slow
/// paths that wait, such as a mirror's rebuild; a hot path that takes it pays a lock.
public final class ConditionMutex<Value: ~Copyable>: @unchecked Sendable {
    private let lock = ConditionLock()
    private var value: Value

    public init(_ value: consuming Value) {
        self.value = value
    }

    /// Runs `body` with the value, under the lock.
    public func withLock<Result: ~Copyable>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    /// Sleeps, with the lock released, until `ready` is true; it is tested under the lock,
    /// at once and after each `wakeWaiters()`. The lock is released on return, so `ready`
    /// still holds afterwards only if nothing else can undo it.
    public func wait(until ready: (borrowing Value) -> Bool) {
        lock.lock()
        defer { lock.unlock() }
        while !ready(value) { lock.wait() }
    }

    /// `wait(until:)` for at most `seconds`. Returns whether `ready` held.
    @discardableResult
    public func wait(until ready: (borrowing Value) -> Bool, seconds: Double) -> Bool {
        let deadline = monotonicSeconds() + seconds
        lock.lock()
        defer { lock.unlock() }
        while !ready(value) {
            let left = deadline - monotonicSeconds()
            if left <= 0 { return false }
            lock.wait(seconds: left)
        }
        return true
    }

    /// Wakes every thread in `wait(until:)` to test its condition again. Call it after a
    /// change that may let a waiter go on, outside `withLock`. It takes the lock, so a
    /// waiter between its test and its sleep cannot miss the wake-up, even when the
    /// change was not made under the lock (an atomic counter a waiter's test reads).
    public func wakeWaiters() {
        lock.lock()
        lock.broadcast()
        lock.unlock()
    }
}
