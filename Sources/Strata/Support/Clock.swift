import CStrataClock
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds on the monotonic clock.
public func monotonicSeconds() -> Double {
    Double(monotonicNanoseconds()) / 1e9
}

/// Nanoseconds on the monotonic clock, read afresh (`IOClock` instead answers a reading
/// shared within an I/O run).
public func monotonicNanoseconds() -> UInt64 {
    strata_clock_monotonic()
}

extension Duration {
    /// The duration in whole nanoseconds, a negative one as 0.
    public var wholeNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }
}

/// Sleeps at least `seconds`, resuming after signals.
public func sleepSeconds(_ seconds: Double) {
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(seconds.truncatingRemainder(dividingBy: 1) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 { request = remaining }
}

/// The I/O path's clock, for issuers and classes that time requests: nanoseconds on the
/// monotonic clock. Within a submission or completion run on this thread it answers the
/// run's shared reading (see `IOPath.entryClock`), so timing a request in a done routine
/// costs no clock reading of its own, as Linux's `blk_time_get_ns` answers from the plug.
/// Outside a run it reads the clock.
public enum IOClock {
    public static func nanoseconds() -> UInt64 {
        IOPath.deliveryClock(ThreadState.current)
    }
}
