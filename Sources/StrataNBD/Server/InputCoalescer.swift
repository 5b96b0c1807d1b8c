/// Input coalescing for a client that keeps many requests in flight, as a network card
/// moderates its interrupts (ethtool's adaptive-rx, NAPI's deferred interrupts): after
/// answering a read that brought several requests, the event loop naps for a few
/// microseconds before it waits for more, so that the next read brings more requests.
///
/// Why: at a moderate rate a pipelining client's requests reach the server two or three
/// per read, and each read costs a wakeup, an `epoll_wait`, a `read` and a `write`. The
/// kernel's side of that is most of the server's CPU per request: a server in C that
/// does nothing but the framing and a memcpy (`scripts/compare-peers`' floor) spends
/// 0.67x of nbdkit's CPU on a 4 KiB write at fio's fixed 60,000 IOPS. Napping 100 µs
/// after such a read took Strata from 0.82x to 0.49x (docs/PERFORMANCE.md).
///
/// The nap delays the answers to the requests that arrive during it, and costs
/// throughput when the client is waiting on the server: one with two or four requests
/// in flight has sent them all and then sits idle, and naps cut its rate by four. So the
/// coalescer measures rather than guesses. A trial times `phaseRequests` requests
/// without naps, as many with them, and as many without again; it naps from then on
/// only if the requests with naps came nearly as fast (`toleratedSlowdown`) as the
/// faster of the two parts without (timing both keeps a slow start, or a client that
/// changed pace, from passing for a client that naps do not slow), and if it napped
/// after one read in `leastNapsPerRequests` requests at least: a client at queue depth 2
/// brings one request per read as often as two, and a trial that seldom napped would
/// pass it, after which every nap has it send its two together and earns the next.
/// While napping, a trial comes again every `trialInterval`. After a failed trial
/// the client gets no naps, and the next trial waits twice as long as the one before,
/// from `firstBackoff` to `longestBackoff`; a client that passed is tried again in case
/// it changed. A client at queue depth 1 never brings two requests in a read, and so
/// is never tried.
///
/// A value type, kept by its event loop's `BusyPoller`: only a loop serving one
/// connection naps, so the measures are that connection's.
struct InputCoalescer {
    /// How long a nap lasts, in nanoseconds.
    let nap: UInt64
    private(set) var phase: Phase
    /// How long after a failed trial the next one begins, in nanoseconds.
    private(set) var backoff = Self.firstBackoff

    enum Phase: Equatable {
        /// Not napping; the next trial begins with the first read that may nap from
        /// `until` on.
        case resting(until: UInt64)
        case trial(Trial)
        /// Napping after each read of several requests, since when.
        case napping(since: UInt64)
    }

    /// A trial under way: the part being timed, since when, its requests so far, and
    /// what the parts done took (per `phaseRequests` requests).
    struct Trial: Equatable {
        enum Part { case plainBefore, naps, plainAfter }
        var part = Part.plainBefore
        var since: UInt64
        var requests = 0
        var plain: UInt64 = 0
        var withNaps: UInt64 = 0
        /// Naps taken in the part with naps.
        var naps = 0
    }

    static let phaseRequests = 256
    static let leastNapsPerRequests = 16
    static let trialInterval: UInt64 = 1_000_000_000
    static let firstBackoff: UInt64 = 100_000_000
    static let longestBackoff: UInt64 = 4_000_000_000
    /// The slowdown a trial forgives: the requests with naps may take an eighth longer
    /// than those without (a rate client's own jitter), no more.
    static let toleratedSlowdown: UInt64 = 8

    init(nap: Duration, now: UInt64) {
        self.nap = UInt64(nap.wholeNanoseconds)
        // A client's first requests come slower than the rest (fio's start took 5 ms
        // for 256 reads where the next 256 took 2), which a trial then would take for
        // the client's pace.
        phase = .resting(until: now &+ Self.firstBackoff)
    }

    /// Whether naps are in use: napping, or in the part of a trial with naps.
    var isNapping: Bool {
        switch phase {
        case .napping: true
        case .trial(let trial): trial.part == .naps
        case .resting: false
        }
    }

    /// A read brought `requests` requests (one or more) and they are answered; `mayNap`
    /// says the loop could nap now (several requests, nothing in flight, nothing else
    /// on the loop). Returns how long to nap, in nanoseconds: 0 for not at all.
    mutating func readEnded(requests: Int, mayNap: Bool, now: UInt64) -> UInt64 {
        switch phase {
        case .resting(let until):
            guard mayNap, now >= until else { return 0 }
            phase = .trial(Trial(since: now))
            return 0
        case .trial(var trial):
            trial.requests += requests
            if trial.part == .naps && mayNap { trial.naps += 1 }
            if trial.requests >= Self.phaseRequests {
                let took = (now &- trial.since) * UInt64(Self.phaseRequests) / UInt64(trial.requests)
                switch trial.part {
                case .plainBefore:
                    trial.plain = took
                    trial.part = .naps
                case .naps:
                    trial.withNaps = took
                    trial.part = .plainAfter
                case .plainAfter:
                    judge(trial, plainAfter: took, now: now)
                    return isNapping && mayNap ? nap : 0
                }
                trial.since = now
                trial.requests = 0
            }
            phase = .trial(trial)
            return trial.part == .naps && mayNap ? nap : 0
        case .napping(let since):
            guard now &- since < Self.trialInterval else {
                phase = .trial(Trial(since: now))
                return 0
            }
            return mayNap ? nap : 0
        }
    }

    /// Ends a trial: naps from now on if they cost the client nothing, else rests.
    private mutating func judge(_ trial: Trial, plainAfter: UInt64, now: UInt64) {
        let plain = min(trial.plain, plainAfter)
        if trial.naps * Self.leastNapsPerRequests >= Self.phaseRequests,
           trial.withNaps <= plain + plain / Self.toleratedSlowdown {
            phase = .napping(since: now)
            backoff = Self.firstBackoff
        } else {
            phase = .resting(until: now &+ backoff)
            backoff = min(backoff * 2, Self.longestBackoff)
        }
    }
}
