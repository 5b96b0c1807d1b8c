/// The one thread that carries out topology events (GEOM's `g_event`): tasting new
/// providers, telling geoms about orphaned and spoiled consumers, and washing away
/// withered geoms. Events run one at a time with the topology locked; the I/O path
/// never waits for them.
final class EventQueue: @unchecked Sendable {
    private let lock = ConditionLock()
    private var events: [@Sendable () -> Void] = []
    private var running = false
    private var stopped = false
    /// Run between events and, while it reports unfinished work, every few
    /// milliseconds (requests in flight end without posting events).
    private let idleWork: @Sendable () -> Bool

    init(idleWork: @escaping @Sendable () -> Bool) {
        self.idleWork = idleWork
        startWorkerThread { [self] in run() }
    }

    func post(_ event: @escaping @Sendable () -> Void) {
        lock.withLock {
            events.append(event)
            lock.broadcast()
        }
    }

    /// Waits until no event is queued or running (`g_waitidle`).
    func waitIdle() {
        lock.withLock {
            while running || !events.isEmpty { lock.wait() }
        }
    }

    func stop() {
        lock.withLock {
            stopped = true
            lock.broadcast()
        }
    }

    private func run() {
        var pendingWork = false
        while true {
            let batch: [@Sendable () -> Void] = lock.withLock {
                while events.isEmpty && !stopped {
                    if pendingWork {
                        lock.wait(seconds: 0.002)
                        break
                    }
                    lock.wait()
                }
                let taken = events
                events.removeAll()
                running = true
                return taken
            }
            if stopped && batch.isEmpty { return }
            for event in batch { event() }
            pendingWork = idleWork()
            lock.withLock {
                running = false
                lock.broadcast()
            }
        }
    }
}
