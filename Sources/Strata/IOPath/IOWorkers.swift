/// The down and up worker threads (`g_down`, `g_up`) that serve geoms asking for
/// queued dispatch. Direct dispatch, the default, never comes here.
final class IOWorkers: Sendable {
    static let shared = IOWorkers()

    let down = WorkQueue { IOPath.dispatch($0, onWorker: true) }
    let up = WorkQueue { IOPath.complete($0) }
}

/// A FIFO of requests served by one worker thread (the down and up workers, rescuers).
final class WorkQueue: @unchecked Sendable {
    private let lock = ConditionLock()
    private var queue = BioList()
    private let handle: @Sendable (UnsafeMutablePointer<BioHeader>) -> Void

    init(handle: @escaping @Sendable (UnsafeMutablePointer<BioHeader>) -> Void) {
        self.handle = handle
        startWorkerThread { [self] in run() }
    }

    func enqueue(_ header: UnsafeMutablePointer<BioHeader>) {
        lock.withLock {
            queue.append(header)
            lock.signal()
        }
    }

    func enqueue(contentsOf list: BioList) {
        lock.withLock {
            queue.append(contentsOf: list)
            lock.signal()
        }
    }

    private func run() {
        while true {
            var work = lock.withLock {
                while queue.isEmpty { lock.wait() }
                let taken = queue
                queue = BioList()
                return taken
            }
            while let bio = work.popFirst() { handle(bio) }
        }
    }
}
