import Strata

extension MirrorGeom {
    /// How the mirror counts a clone until it completes, kept in the clone's `caller2`: a
    /// rebuild must know which writes may still change what it copies.
    enum WriteTracking: BioCallerTag, Equatable {
        /// A read: nothing is counted.
        case none
        /// A write that began while no rebuild ran, counted in `untrackedWrites`: a rebuild
        /// that starts waits for these to finish.
        case untracked
        /// A write the rebuild gate registered (`RebuildGate.register`).
        case tracked(TrackingID)

        // The word: 0 (what a request never tagged holds) is `none`, 1 is `untracked`, and
        // from 2 on, a tracking id plus 2.
        init(rawBits: UInt) {
            switch rawBits {
            case 0: self = .none
            case 1: self = .untracked
            default: self = .tracked(TrackingID(value: rawBits - 2))
            }
        }

        var rawBits: UInt {
            switch self {
            case .none: 0
            case .untracked: 1
            case .tracked(let id): id.value + 2
            }
        }
    }

    /// Names a write registered with the rebuild gate, from its registration until its last
    /// clone completes.
    struct TrackingID: Hashable {
        /// Ids count up from 0; a mirror would have to take 2^64 writes in one rebuild
        /// for one to reach the top of the word.
        fileprivate let value: UInt
    }

    /// While a rebuild runs, every write registers the range it covers, and a write over the
    /// chunk being copied waits (parked) until the chunk is copied; the copy of a chunk
    /// waits for registered writes over it to finish. So no write lands between the copy's
    /// read of a chunk and its write. Part of the mirror's lock-held state.
    struct RebuildGate: ~Copyable {
        /// The chunk being copied, if any.
        var copying: Range<Int64>?
        /// Writes that overlapped `copying`, started again once it is copied.
        var parked = BioQueue()
        private var tracked: [TrackingID: TrackedWrite] = [:]
        private var nextID: UInt = 0

        private struct TrackedWrite {
            let range: Range<Int64>
            /// Clones still to complete; 1 from registration until the write sends its clones
            /// (`expect`), so that a write that ends before sending any is let go by one
            /// `finish`.
            var unfinished = 1
        }

        /// Registers a write over `range`; nil when it overlaps the chunk being copied, and the
        /// caller parks it. A flush covers no data and never waits.
        mutating func register(_ range: Range<Int64>, isFlush: Bool) -> TrackingID? {
            if !isFlush, let copying, copying.overlaps(range) { return nil }
            let id = TrackingID(value: nextID)
            nextID += 1
            tracked[id] = TrackedWrite(range: range)
            return id
        }

        /// The write `id` sends `clones` clones; each completion calls `finish`.
        mutating func expect(clones: Int, for id: TrackingID) {
            tracked[id]!.unfinished = clones
        }

        /// One clone of write `id` completed, or the write ended without sending any. True
        /// when the write no longer counts: a copy waiting for it may go on.
        mutating func finish(_ id: TrackingID) -> Bool {
            guard let write = tracked[id] else { preconditionFailure("a tracked write finished more often than it has clones") }
            if write.unfinished > 1 {
                tracked[id]!.unfinished -= 1
                return false
            }
            tracked[id] = nil
            return true
        }

        /// Whether a registered write covers any of `range`.
        func overlapsTrackedWrite(_ range: Range<Int64>) -> Bool {
            tracked.values.contains { $0.range.overlaps(range) }
        }

        /// The parked writes, leaving none.
        mutating func takeParked() -> BioQueue {
            var taken = BioQueue()
            swap(&taken, &parked)
            return taken
        }
    }
}
