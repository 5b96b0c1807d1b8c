#if canImport(Glibc)
import Glibc
#endif
import CStrataSystem
import Strata
import Synchronization

/// Busy polling for one event loop: after answering, a connection that expects the
/// client's next request soon asks the kernel for it for a few microseconds before the
/// loop goes to sleep in `epoll_wait` (Linux's `busy_poll` for sockets, KVM's halt
/// polling for virtual CPUs).
///
/// Why: a request that finds its server asleep pays for waking it. On a virtual machine
/// the sleeping CPU has halted and is woken through the hypervisor, and at queue depth
/// 1 that cost is most of a round trip: fio's 4 KiB writes at QD1 took 53,000 IOPS with
/// the loop sleeping and 70,000 with it polling (`docs/PERFORMANCE.md`). Polling spends
/// the CPU time the loop would have slept; it pays only when the next request comes
/// within the window, so the window adapts as KVM's does, judged once the input comes:
/// - a poll that finds input keeps the window;
/// - input that comes within the limit of the wait's start, after a poll that timed
///   out or a wait without one, widens it (a closed window opens at a quarter of the
///   limit, then doubles): a longer poll would have caught it;
/// - input that comes later halves it, and below a sixteenth of the limit it closes:
///   no poll the limit allows would have.
///
/// A window cut as soon as a poll times out never grows back: each miss halving it
/// and each quick arrival doubling it leaves it where it was, too short for the
/// client's turn. On a machine whose round trip at queue depth 1 took 25 to 30 µs,
/// a 50 µs limit then ran at 17,000 to 26,000 IOPS, and at 34,000 to 41,000 judged
/// when the input came.
///
/// A poll whose first check finds input saved no sleep: the request came before the
/// loop would have slept, as it does when a client keeps several in flight but they
/// reach the server one per read. After 8 such polls in a row the next 56 are skipped,
/// so that such a client pays for a `poll` on one read in eight rather than on each;
/// at queue depth 1 a first check never finds the next request, which the client
/// sends only once answered. On a machine whose system calls are dear
/// the server made 0.47 polls a request at fio's QD32, 98.7% of them found at once.
///
/// A read that brings two requests or more shows a client that keeps several in flight:
/// it does not wait for each answer before sending the next, so a poll saves it no
/// round trip and spins for nothing while its requests come at their own pace (fio at a
/// fixed rate with 32 in flight paid 1.2 to 2.5 µs of server CPU per request for polls).
/// Such a read skips the next 56 polls as well; a client at queue depth 1 never sends
/// two requests in one read.
///
/// Only a loop serving one connection polls, and only while that connection has
/// nothing in flight: a poll watches one socket, and must not hold up another
/// connection's input or a completion handed over from another thread. The same loop
/// keeps the connection's `InputCoalescer`, whose naps follow the same rule. Confined
/// to its event loop, like the connections that use it.
final class BusyPoller: @unchecked Sendable {
    /// The longest a poll lasts, in nanoseconds.
    let limit: UInt64
    /// How long the next poll may last, in nanoseconds: 0 to `limit`.
    private(set) var window: UInt64
    /// Connections on this loop that can poll (those accepted by the server's listeners).
    /// A change starts the coalescer afresh: its measures were another client's.
    var connections = 0 {
        didSet {
            if let nap = coalescer?.nap { coalescer = InputCoalescer(nap: .nanoseconds(nap), now: monotonicNanoseconds()) }
        }
    }
    /// Input coalescing (`coalesce-us`), nil when off.
    private(set) var coalescer: InputCoalescer?
    var coalesces: Bool { coalescer != nil }
    /// Naps taken after a read (`InputCoalescer`). Only the loop adds to it.
    let naps = Atomic<Int>(0)
    /// When the loop began waiting for input that a poll did not find (the poll's start,
    /// or the moment it decided not to poll); 0 while it is not waiting.
    private var waitingSince: UInt64 = 0
    /// Polls that found input, and polls that timed out. Only the loop adds to them
    /// (a plain load and store); atomic so that `NBDServer.busyPolls` may read them.
    let hits = Atomic<Int>(0)
    let misses = Atomic<Int>(0)
    /// Polls in a row whose first check found input, and polls left to skip.
    private var promptHits = 0
    private var skipsLeft = 0
    static let promptHitsBeforeSkipping = 8
    static let pollsSkipped = 56

    init(limit: Duration, coalescing: Duration = .zero) {
        self.limit = limit.wholeNanoseconds
        window = self.limit
        if coalescing > .zero { coalescer = InputCoalescer(nap: coalescing, now: monotonicNanoseconds()) }
    }

    /// Whether a connection may poll now: the loop polls at all and serves only it.
    var mayPoll: Bool { limit > 0 && connections == 1 }

    /// A read brought `requests` requests and they are answered; `idle` says the
    /// connection has nothing in flight and would wait for its client. Naps when the
    /// coalescer says so and the loop serves this connection alone.
    func readEnded(requests: Int, idle: Bool) {
        guard var coalescer else { return }
        let mayNap = idle && requests > 1 && connections == 1
        let nap = coalescer.readEnded(requests: requests, mayNap: mayNap, now: monotonicNanoseconds())
        self.coalescer = coalescer
        guard nap > 0 else { return }
        naps.store(naps.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        strata_nap(nap)
    }

    /// Polls `descriptor` for input for up to the window. Returns whether input came
    /// (or the socket reports an error or hang-up, which the loop then handles).
    func awaitInput(on descriptor: Int32) -> Bool {
        // A skipped poll is not a wait the window is judged by: the input was coming.
        if skipsLeft > 0 {
            skipsLeft -= 1
            return false
        }
        let start = monotonicNanoseconds()
        waitingSince = start
        guard window > 0 else { return false }
        let deadline = start &+ window
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        // The clock is read afresh: with `IOClock`'s reading, shared within an I/O run,
        // a deadline might never come.
        var now = start
        var firstCheck = true
        repeat {
            if poll(&entry, 1, 0) != 0 {
                hits.store(hits.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
                waitingSince = 0
                promptHits = firstCheck ? promptHits + 1 : 0
                if promptHits == Self.promptHitsBeforeSkipping { skipPolls() }
                return true
            }
            firstCheck = false
            // Any other thread ready to run on this CPU (the client itself, on a busy
            // machine) goes first, as the kernel's own busy polling stops when the
            // scheduler wants the CPU: a poll must not keep the request it waits for
            // from being sent.
            sched_yield()
            now = monotonicNanoseconds()
        } while now < deadline
        misses.store(misses.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        promptHits = 0
        return false
    }

    /// A read brought more than one request: the client does not wait for answers.
    func clientPipelines() {
        skipPolls()
    }

    private func skipPolls() {
        skipsLeft = Self.pollsSkipped
        promptHits = 0
    }

    /// Input arrived. After a wait that no poll ended, the window widens if the input
    /// came within the limit of the wait's start, and narrows if it came later.
    func inputArrived() {
        guard waitingSince != 0 else { return }
        let waited = monotonicNanoseconds() &- waitingSince
        waitingSince = 0
        if waited < limit {
            window = min(limit, max(window &* 2, limit / 4))
        } else if window > 0 {
            window /= 2
            if window < limit / 16 { window = 0 }
        }
    }
}
