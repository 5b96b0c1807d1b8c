#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds on the monotonic clock.
public func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
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
