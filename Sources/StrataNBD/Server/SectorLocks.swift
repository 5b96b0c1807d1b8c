import NIOConcurrencyHelpers
import Synchronization

/// Orders the read-modify-writes of unaligned requests against every other write of one
/// provider, from every connection of every export that serves it.
///
/// An unaligned WRITE reads the sectors it covers in part, lays its bytes over them and
/// writes them back. A write of those sectors that lands between that read and that
/// write is lost under the stale copy, and of two read-modify-writes of one sector one
/// loses the other's bytes. So each read-modify-write holds its range alone:
///
/// - Holds queue in arrival order; one starts once no earlier hold overlaps it.
/// - Before a starting hold reads, the aligned writes already sent to the provider over
///   its range complete. Each connection on the provider is asked, on its own event loop
///   (where its table of requests lives), which of its writes in flight overlap the
///   range (`NBDConnectionHandler.fence`); the hold waits for those.
/// - An aligned write looks at `isActive`, one relaxed load; while nothing is held that
///   is all it costs. Otherwise it asks `admit`, and one that overlaps a hold is parked
///   behind it, as a hold of its own, and sent when the holds before it are gone.
///
/// Why asking the connections rather than counting aligned writes in flight: a count
/// costs each aligned write two atomic read-modify-writes (sent, completed) on a line
/// the connections share. Asking costs the aligned path nothing, and a
/// read-modify-write one task per other connection on the provider.
///
/// Why a write that read "nothing held" is always found: the count is raised, under the
/// lock, before any connection is asked. A connection's loop that has run the question
/// sees the raised count (the task went through its loop's queue, after the raise), so
/// its later writes take the slow path; a write it decided before running the question
/// was put in its table in the same turn of the loop, so the question finds it.
final class SectorLocks: Sendable {
    /// What holds or waits for a range.
    enum Holder {
        /// An unaligned request's read-modify-write.
        case rewrite(UnalignedWrite)
        /// An aligned write waiting behind a hold, on `connection`.
        case parkedWrite(NBDConnectionHandler)
    }

    enum Stage: Equatable {
        /// Waiting for an earlier, overlapping hold to go.
        case queued
        /// A read-modify-write waiting for the connections' answers and for the writes
        /// they named to complete.
        case fencing(connections: Int, writes: Int)
        /// Running: the read-modify-write is under way, or the parked write is being sent.
        case started
    }

    struct Hold {
        let id: UInt64
        let range: Range<UInt64>
        let holder: Holder
        var stage: Stage
    }

    /// What a change asks of the connections, done once the lock is let go.
    enum Action {
        /// Ask `connection` which of its writes in flight overlap `range`.
        case fence(NBDConnectionHandler, hold: UInt64, range: Range<UInt64>)
        /// Send the write parked as `hold` on `connection`.
        case send(NBDConnectionHandler, hold: UInt64)
        /// Start the read-modify-write: nothing can overwrite its range meanwhile.
        case start(UnalignedWrite)
    }

    struct State {
        var connections: [ObjectIdentifier: NBDConnectionHandler] = [:]
        /// In arrival order: the unaligned requests in flight and the aligned writes
        /// parked behind them. A change looks only at the holds that overlap the one it
        /// adds or removes, then at those before them.
        var holds: [Hold] = []
        var nextID: UInt64 = 1

        /// Starts the queued hold at `index` if no earlier hold overlaps it.
        mutating func startIfFree(_ index: Int, into actions: inout [Action]) {
            let range = holds[index].range
            if holds[..<index].contains(where: { $0.range.overlaps(range) }) { return }
            let id = holds[index].id
            switch holds[index].holder {
            case .rewrite(let rewrite):
                if connections.isEmpty {
                    holds[index].stage = .started
                    actions.append(.start(rewrite))
                    return
                }
                holds[index].stage = .fencing(connections: connections.count, writes: 0)
                for connection in connections.values { actions.append(.fence(connection, hold: id, range: range)) }
            case .parkedWrite(let connection):
                holds[index].stage = .started
                actions.append(.send(connection, hold: id))
            }
        }

        /// A fencing hold whose answers are all in and whose writes have all completed
        /// starts.
        mutating func update(_ id: UInt64, into actions: inout [Action],
                             _ change: (inout Int, inout Int) -> Void) {
            guard let index = holds.firstIndex(where: { $0.id == id }),
                  case .fencing(var connections, var writes) = holds[index].stage,
                  case .rewrite(let rewrite) = holds[index].holder else { return }
            change(&connections, &writes)
            if connections == 0 && writes == 0 {
                holds[index].stage = .started
                actions.append(.start(rewrite))
            } else {
                holds[index].stage = .fencing(connections: connections, writes: writes)
            }
        }

        /// Takes a hold away and starts those behind it that only it held back: the ones
        /// that overlap it (the others wait for what they waited for before).
        mutating func remove(_ id: UInt64, into actions: inout [Action]) {
            guard let index = holds.firstIndex(where: { $0.id == id }) else { return }
            let range = holds.remove(at: index).range
            for later in index..<holds.count where holds[later].stage == .queued && holds[later].range.overlaps(range) {
                startIfFree(later, into: &actions)
            }
        }
    }

    /// A pthread lock (NIO's), not Synchronization's `Mutex`: ThreadSanitizer sees it.
    private let state = NIOLockedValueBox(State())
    /// `state.holds.count`, read without the lock by every aligned write.
    private let holdCount = Atomic<Int>(0)

    init() {}

    /// Whether anything holds or waits for a range: aligned writes then ask `admit`.
    var isActive: Bool { holdCount.load(ordering: .relaxed) != 0 }

    func register(_ connection: NBDConnectionHandler) {
        state.withLockedValue { $0.connections[ObjectIdentifier(connection)] = connection }
    }

    func unregister(_ connection: NBDConnectionHandler) {
        _ = state.withLockedValue { $0.connections.removeValue(forKey: ObjectIdentifier(connection)) }
    }

    /// Queues a read-modify-write of `range`; its `start` comes through the actions.
    func acquire(_ rewrite: UnalignedWrite, range: Range<UInt64>) -> (hold: UInt64, actions: [Action]) {
        state.withLockedValue { state in
            let id = state.nextID
            state.nextID += 1
            state.holds.append(Hold(id: id, range: range, holder: .rewrite(rewrite), stage: .queued))
            holdCount.store(state.holds.count, ordering: .relaxed)
            var actions: [Action] = []
            state.startIfFree(state.holds.count - 1, into: &actions)
            return (id, actions)
        }
    }

    /// For an aligned write over `range` while something is held: nil when nothing held
    /// overlaps it (send it now), else the hold it is parked as; `send` comes through a
    /// later change's actions, always on the connection's event loop as a task of its own.
    func admit(_ connection: NBDConnectionHandler, range: Range<UInt64>) -> UInt64? {
        state.withLockedValue { state in
            guard state.holds.contains(where: { $0.range.overlaps(range) }) else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.holds.append(Hold(id: id, range: range, holder: .parkedWrite(connection), stage: .queued))
            holdCount.store(state.holds.count, ordering: .relaxed)
            return id
        }
    }

    /// A connection named the `writes` of its own that `hold` waits for.
    func fenced(_ hold: UInt64, writes: Int) -> [Action] {
        state.withLockedValue { state in
            var actions: [Action] = []
            state.update(hold, into: &actions) { connections, waiting in
                connections -= 1
                waiting += writes
            }
            return actions
        }
    }

    /// A write that `holds` waited for has completed.
    func writeCompleted(awaitedBy holds: [UInt64]) -> [Action] {
        state.withLockedValue { state in
            var actions: [Action] = []
            for hold in holds {
                state.update(hold, into: &actions) { _, waiting in waiting -= 1 }
            }
            return actions
        }
    }

    /// The parked write `hold` was sent, or the read-modify-write `hold` is done: the
    /// range is free for the holds behind it.
    func release(_ hold: UInt64) -> [Action] {
        state.withLockedValue { state in
            var actions: [Action] = []
            state.remove(hold, into: &actions)
            holdCount.store(state.holds.count, ordering: .relaxed)
            return actions
        }
    }

    /// Carries out `actions`, each on its connection's event loop. `inline` runs those
    /// for the calling loop at once (the change came from a request being handled
    /// there); otherwise every one is a task of its own, so that a chain of holds
    /// released one after another does not nest on the stack.
    func perform(_ actions: [Action], inline: Bool) {
        for action in actions {
            switch action {
            case .fence(let connection, let hold, let range):
                if inline && connection.eventLoop.inEventLoop {
                    connection.fence(hold, range: range, for: self)
                } else {
                    connection.eventLoop.execute { connection.fence(hold, range: range, for: self) }
                }
            case .send(let connection, let hold):
                // Always a task: `admit` returned before the connection recorded the hold.
                connection.eventLoop.execute { connection.sendParkedWrite(hold) }
            case .start(let rewrite):
                let loop = rewrite.connection.eventLoop
                if inline && loop.inEventLoop {
                    rewrite.start()
                } else {
                    loop.execute { rewrite.start() }
                }
            }
        }
    }
}
