#if canImport(Glibc)
import Glibc
#endif
import Strata

/// The record of every change and flush the power-cut disks sharing it took, in order,
/// and the disk images a power cut at any point of it could leave.
///
/// Disks that take part in one stack (the components of a mirror) share a log, so that
/// one sequence orders all of them and a crash point cuts every disk at the same moment.
///
/// The rules, for each disk, at crash point N (the first N entries acknowledged):
/// - what the disk took before its last FLUSH before N is on the media;
/// - a FUA write (or WRITE_ZEROES, DELETE) acknowledged before N is on the media;
/// - any subset of its other changes before N may have reached the media, whole or,
///   when torn, sector by sector;
/// - what reached the media is applied in log order, so of two overlapping changes that
///   both reached it, the later one wins.
public final class PowerCutLog: @unchecked Sendable {
    /// A disk recording into the log, and what it held before its first entry.
    struct Media {
        let size: Int64
        let sectorSize: Int
        /// nil: zeros.
        let initial: [UInt8]?
    }

    private let lock = ConditionLock()
    private var recorded: [PowerCutEntry] = []
    private var media: [String: Media] = [:]
    private var order: [String] = []
    /// Each disk's FLUSH entries, in order: finding the last one before a point is a
    /// binary search, not a walk through the log.
    private var flushes: [String: [Int]] = [:]
    private var loggedBytes = 0

    public init() {}

    /// How many entries the log holds: the next entry's sequence number, and the last
    /// crash point (crash points run from 0, nothing acknowledged, to `count`).
    public var count: Int { lock.withLock { recorded.count } }

    /// Every entry so far.
    public var entries: [PowerCutEntry] { lock.withLock { recorded } }

    /// The names of the disks recording here, in the order they joined.
    public var disks: [String] { lock.withLock { order } }

    /// The bytes of written data the log holds (its memory, near enough).
    public var dataBytes: Int { lock.withLock { loggedBytes } }

    // MARK: Recording (for PowerCutDisk)

    func register(_ name: String, size: Int64, sectorSize: Int, initial: [UInt8]?) throws {
        try lock.withLock {
            guard media[name] == nil else {
                throw StrataError(.exists, "power-cut log: a disk named \(name) already records here")
            }
            media[name] = Media(size: size, sectorSize: sectorSize, initial: initial)
            order.append(name)
        }
    }

    func unregister(_ name: String) {
        lock.withLock {
            media[name] = nil
            order.removeAll { $0 == name }
        }
    }

    /// Changes the media with `change` and appends the entry it describes, as one step:
    /// the log's order is the order in which the disks' media changed, so reads and
    /// replays agree on which of two overlapping writes came last.
    func append(_ disk: String, _ operation: PowerCutEntry.Operation, offset: Int64 = 0, length: Int64 = 0,
                fua: Bool = false, change: () -> [UInt8] = { [] }) {
        lock.withLock {
            let data = change()
            if operation == .flush { flushes[disk, default: []].append(recorded.count) }
            loggedBytes += data.count
            recorded.append(PowerCutEntry(sequence: recorded.count, disk: disk, operation: operation, offset: offset,
                                          length: length, fua: fua, data: data))
        }
    }

    /// Runs `body` while no entry can be appended (reads of the current media).
    func withoutChanges<T>(_ body: () -> T) -> T {
        lock.withLock(body)
    }

    // MARK: Crash states

    /// The sequence numbers of the changes that may or may not be on the media at crash
    /// point `point`: on every disk, those after its last FLUSH before the point, except
    /// FUA ones.
    public func unflushed(at point: Int) throws -> [Int] {
        try lock.withLock {
            try check(point)
            return unflushedLocked(at: point)
        }
    }

    private func unflushedLocked(at point: Int) -> [Int] {
        var lastFlush: [String: Int] = [:]
        for name in order {
            let mine = flushes[name, default: []]
            // The number of this disk's flushes before the point, by binary search.
            var (low, high) = (0, mine.count)
            while low < high {
                let middle = (low + high) / 2
                if mine[middle] < point { low = middle + 1 } else { high = middle }
            }
            lastFlush[name] = low > 0 ? mine[low - 1] : -1
        }
        // Nothing before the earliest of those flushes can be unflushed.
        let first = (lastFlush.values.min() ?? -1) + 1
        return recorded[min(first, point)..<point].filter { $0.changesMedia && !$0.fua && $0.sequence > lastFlush[$0.disk]! }
            .map(\.sequence)
    }

    private func check(_ point: Int) throws {
        guard (0...recorded.count).contains(point) else {
            throw StrataError(.invalid, "crash point \(point) is outside the log (0 to \(recorded.count))")
        }
    }

    /// What `disk` holds after a power cut at `point` that let `subset` of the unflushed
    /// changes reach the media.
    /// - Throws: `StrataError` when no such disk records here, the point is outside the
    ///   log, or the subset names an entry that is not unflushed at that point or a
    ///   torn run outside its entry.
    public func crashImage(of disk: String, at point: Int, keeping subset: CrashSubset) throws -> [UInt8] {
        let plan = try replay(CrashState(point: point, subset: subset))
        guard let media = plan.media[disk] else {
            throw StrataError(.noDevice, "power-cut log: no disk named \(disk) (disks: \(plan.order.joined(separator: ", ")))")
        }
        return plan.image(of: disk, media)
    }

    /// What each disk holds after the power cut `state`, by name.
    public func crashImages(for state: CrashState) throws -> [String: [UInt8]] {
        let plan = try replay(state)
        var images: [String: [UInt8]] = [:]
        for name in plan.order { images[name] = plan.image(of: name, plan.media[name]!) }
        return images
    }

    /// Makes a memory disk in `topology` for each disk of the log, named and sized as it
    /// was, holding what it holds after the power cut `state`: a fresh machine to taste
    /// and assemble after the crash. Disks are made in the order they joined the log.
    /// Pages the crash leaves all zeros cost no memory.
    @discardableResult
    public func restore(_ state: CrashState, in topology: Topology) throws -> [MemoryDisk] {
        let plan = try replay(state)
        return try plan.order.map { name in
            let media = plan.media[name]!
            return try MemoryDisk.create(in: topology, name: name, size: media.size, sectorSize: media.sectorSize) { disk in
                media.initial?.withUnsafeBytes { disk.load($0, at: 0) }
                plan.apply(to: name, media) { offset, length, bytes in
                    if let bytes { disk.load(bytes, at: offset) } else { disk.punch(offset: offset, length: length) }
                }
            }
        }
    }

    /// A crash state checked against the log, with what is needed to replay it outside
    /// the lock: the entries are values, so a copy of the array is enough.
    struct Replay {
        let state: CrashState
        let entries: ArraySlice<PowerCutEntry>
        let unflushed: Set<Int>
        let media: [String: Media]
        let order: [String]

        /// Calls `change` with each piece of a change to `disk` that is on the media after
        /// the crash, in log order: offset, length, and the bytes (nil for zeros).
        func apply(to disk: String, _ media: Media, _ change: (Int, Int, UnsafeRawBufferPointer?) -> Void) {
            for entry in entries where entry.disk == disk && entry.changesMedia {
                if !unflushed.contains(entry.sequence) || state.subset.whole.contains(entry.sequence) {
                    piece(of: entry, 0..<Int(entry.length), change)
                } else if let runs = state.subset.torn[entry.sequence] {
                    for run in runs {
                        piece(of: entry, (run.lowerBound * media.sectorSize)..<(run.upperBound * media.sectorSize), change)
                    }
                }
            }
        }

        private func piece(of entry: PowerCutEntry, _ bytes: Range<Int>, _ change: (Int, Int, UnsafeRawBufferPointer?) -> Void) {
            guard !bytes.isEmpty else { return }
            let offset = Int(entry.offset) + bytes.lowerBound
            if entry.operation == .write {
                entry.data.withUnsafeBytes { change(offset, bytes.count, UnsafeRawBufferPointer(rebasing: $0[bytes])) }
            } else {
                change(offset, bytes.count, nil)
            }
        }

        /// The flat image of `disk`, with bulk copies only (images are megabytes, and
        /// tests run unoptimized).
        func image(of disk: String, _ media: Media) -> [UInt8] {
            let size = Int(media.size)
            return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
                let base = UnsafeMutableRawPointer(buffer.baseAddress!)
                if let initial = media.initial {
                    initial.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: size) }
                } else {
                    memset(base, 0, size)
                }
                apply(to: disk, media) { offset, length, bytes in
                    if let bytes {
                        (base + offset).copyMemory(from: bytes.baseAddress!, byteCount: length)
                    } else {
                        memset(base + offset, 0, length)
                    }
                }
                initialized = size
            }
        }
    }

    /// Checks `state` against the log and takes what replaying it needs.
    private func replay(_ state: CrashState) throws -> Replay {
        try lock.withLock {
            try check(state.point)
            let unflushed = Set(unflushedLocked(at: state.point))
            for sequence in state.subset.named.sorted() where !unflushed.contains(sequence) {
                throw StrataError(.invalid, "\(state): entry #\(sequence) is not an unflushed change at point \(state.point)")
            }
            for (sequence, runs) in state.subset.torn {
                let entry = recorded[sequence]
                let sectors = Int(entry.length) / media[entry.disk]!.sectorSize
                if let bad = runs.first(where: { $0.lowerBound < 0 || $0.upperBound > sectors }) {
                    throw StrataError(.invalid, "\(state): torn run \(bad) lies outside entry #\(sequence) (\(sectors) sectors)")
                }
            }
            return Replay(state: state, entries: recorded[0..<state.point], unflushed: unflushed, media: media, order: order)
        }
    }

    // MARK: Choosing crash states

    /// `count` distinct crash points drawn with `seed` from `ranges` (default: the whole
    /// log, 0 to `self.count`), in order; all of them when there are no more than `count`.
    public func crashPoints(sampling count: Int, seed: UInt64, within ranges: [Range<Int>]? = nil) -> [Int] {
        let last = self.count
        let candidates = Set((ranges ?? [0..<(last + 1)]).flatMap { $0.clamped(to: 0..<(last + 1)) }).sorted()
        guard count < candidates.count else { return candidates }
        var generator = SplitMix64(seed: seed)
        var chosen = Set<Int>()
        while chosen.count < count { chosen.insert(candidates.randomElement(using: &generator)!) }
        return chosen.sorted()
    }

    /// Up to `subsetsPerPoint` distinct crash states at each of `points`: every unflushed
    /// change kept, none kept, then random subsets drawn with `seed`. With `tearing`, a
    /// random subset keeps each change whole, drops it or tears it (keeps random runs of
    /// its sectors: a change of several sectors need not reach the media at once), one
    /// time in three each; without, it keeps or drops each change, one time in two.
    /// A point's states depend only on the seed and the point, not on the other points.
    public func crashStates(at points: some Sequence<Int>, subsetsPerPoint: Int, seed: UInt64,
                            tearing: Bool = true) throws -> [CrashState] {
        try lock.withLock {
            var states: [CrashState] = []
            for point in points {
                try check(point)
                let unflushed = unflushedLocked(at: point)
                var generator = SplitMix64(seed: seed ^ (UInt64(point) &* 0x9E37_79B9_7F4A_7C15))
                var subsets: [CrashSubset] = [CrashSubset(whole: Set(unflushed)), .none]
                var attempts = 0
                while subsets.count < subsetsPerPoint && attempts < subsetsPerPoint * 4 {
                    attempts += 1
                    subsets.append(randomSubset(of: unflushed, tearing: tearing, using: &generator))
                }
                var seen = Set<CrashSubset>()
                for subset in subsets where seen.count < subsetsPerPoint && seen.insert(subset).inserted {
                    states.append(CrashState(point: point, subset: subset))
                }
            }
            return states
        }
    }

    private func randomSubset(of unflushed: [Int], tearing: Bool, using generator: inout SplitMix64) -> CrashSubset {
        var subset = CrashSubset()
        for sequence in unflushed {
            let entry = recorded[sequence]
            let sectors = Int(entry.length) / media[entry.disk]!.sectorSize
            switch Int.random(in: 0..<(tearing && sectors >= 2 ? 3 : 2), using: &generator) {
            case 0: subset.whole.insert(sequence)
            case 1: break
            default: subset.torn[sequence] = tornRuns(sectors: sectors, using: &generator)
            }
        }
        return subset
    }

    /// Runs of sectors of a torn change: the change cut in up to five pieces at random
    /// sectors, each piece kept or not, at least one of each.
    private func tornRuns(sectors: Int, using generator: inout SplitMix64) -> [Range<Int>] {
        var cuts = Set<Int>()
        for _ in 0..<Int.random(in: 1...4, using: &generator) { cuts.insert(Int.random(in: 1..<sectors, using: &generator)) }
        let bounds = [0] + cuts.sorted() + [sectors]
        let pieces = zip(bounds, bounds.dropFirst()).map { $0..<$1 }
        var kept = pieces.map { _ in Bool.random(using: &generator) }
        if kept.allSatisfy({ $0 }) { kept[0] = false }
        if kept.allSatisfy({ !$0 }) { kept[pieces.count - 1] = true }
        // Neighbouring kept pieces are one run.
        var runs: [Range<Int>] = []
        for (piece, keep) in zip(pieces, kept) where keep {
            if let last = runs.last, last.upperBound == piece.lowerBound {
                runs[runs.count - 1] = last.lowerBound..<piece.upperBound
            } else {
                runs.append(piece)
            }
        }
        return runs
    }
}
