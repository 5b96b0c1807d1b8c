/// A bio set's rescuer: a worker thread that submits requests handed to it by a
/// thread about to sleep in an allocation from the same set.
///
/// A thread inside `start` queues what it submits until `start` returns. If it then
/// waits for the set's reserve, the requests it queued (which would free reserve
/// elements once processed) would wait for it in turn: a deadlock. The allocator hands
/// those requests here first, and this thread submits them.
final class Rescuer: Sendable {
    private let queue = WorkQueue { IOPath.dispatch($0) }
    private unowned let pool: BioPool

    init(pool: BioPool) {
        self.pool = pool
    }

    func punt(_ list: BioList) {
        guard !list.isEmpty else { return }
        pool.rescued.add(list.count, ordering: .relaxed)
        queue.enqueue(contentsOf: list)
    }
}
