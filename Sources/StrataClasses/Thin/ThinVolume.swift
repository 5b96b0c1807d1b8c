import Strata
import Synchronization

/// A volume or snapshot of a pool. The I/O path reads `root` and `size` without a lock;
/// the rest is the pool's metadata thread's.
final class ThinVolume: @unchecked Sendable {
    let id: UInt32
    let isSnapshot: Bool
    /// The root node's entry (`ThinNode.entry(retaining:)`), 0 while nothing is mapped.
    let root = Atomic<UInt64>(0)
    private let sizeStorage: Atomic<Int64>
    // Metadata thread only:
    var name: String
    var origin: UInt32
    var created: UInt64
    /// Levels of the tree: enough for `size`.
    var depth: Int
    /// The provider that serves it, once made.
    var provider: Provider?

    init(id: UInt32, name: String, isSnapshot: Bool, size: Int64, depth: Int, origin: UInt32, created: UInt64) {
        self.id = id
        self.name = name
        self.isSnapshot = isSnapshot
        sizeStorage = Atomic(size)
        self.depth = depth
        self.origin = origin
        self.created = created
    }

    deinit { ThinNode.release(root.load(ordering: .relaxed)) }

    var size: Int64 {
        get { sizeStorage.load(ordering: .relaxed) }
        set { sizeStorage.store(newValue, ordering: .relaxed) }
    }

    var rootNode: ThinNode? { ThinNode.child(root.load(ordering: .acquiring)) }
}

/// Where things are in a pool, fixed when it is formatted; every thread reads it.
struct ThinGeometry: Sendable {
    let chunkSize: Int64
    let chunkShift: Int
    let dataStart: Int64
    let dataChunks: Int64
    let metadataBlocks: Int64

    init(chunkSize: Int64, dataStart: Int64, dataChunks: Int64, metadataBlocks: Int64) {
        self.chunkSize = chunkSize
        chunkShift = chunkSize.trailingZeroBitCount
        self.dataStart = dataStart
        self.dataChunks = dataChunks
        self.metadataBlocks = metadataBlocks
    }

    /// The byte on the pool's provider where data chunk `chunk` starts.
    @inline(__always) func offset(ofChunk chunk: Int64) -> Int64 { dataStart + chunk << Int64(chunkShift) }

    /// How many entries one entry of a node at `level` covers.
    @inline(__always) static func span(_ level: Int) -> Int64 {
        switch level {
        case 0: 1
        case 1: Int64(ThinFormat.fanout)
        case 2: Int64(ThinFormat.fanout) * Int64(ThinFormat.fanout)
        default: Int64(ThinFormat.fanout) * Int64(ThinFormat.fanout) * Int64(ThinFormat.fanout)
        }
    }

    /// The entry of a node at `level` that leads to virtual chunk `chunk`.
    @inline(__always) static func index(of chunk: Int64, at level: Int) -> Int {
        Int((chunk / span(level)) % Int64(ThinFormat.fanout))
    }
}

/// Reading a volume's map without a lock: the I/O path's view. Every caller is inside an
/// epoch (`ThinEpochs.enter`), so no node it reaches is freed under it.
enum ThinLookup {
    /// The entries of the node an entry points at, without reference counting (the
    /// caller is inside an epoch: the node outlives the look).
    @inline(__always) static func entries(of entry: UInt64) -> UnsafeMutablePointer<Atomic<UInt64>> {
        Unmanaged<ThinNode>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(entry))!)._withUnsafeGuaranteedRef { $0.entries }
    }

    @inline(__always) static func level(of entry: UInt64) -> Int {
        Unmanaged<ThinNode>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(entry))!)._withUnsafeGuaranteedRef { $0.level }
    }

    @inline(__always) static func isShared(_ entry: UInt64) -> Bool {
        Unmanaged<ThinNode>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(entry))!)._withUnsafeGuaranteedRef {
            $0.parents.load(ordering: .acquiring) != 1
        }
    }

    /// The leaf entry for virtual chunk `chunk` (0: unmapped; else data chunk + 1).
    @inline(__always) static func entry(root: UInt64, chunk: Int64) -> UInt64 {
        guard root != 0 else { return 0 }
        var level = level(of: root)
        guard chunk / ThinGeometry.span(level) < Int64(ThinFormat.fanout) else { return 0 }
        var entry = root
        while true {
            let next = entries(of: entry)[ThinGeometry.index(of: chunk, at: level)].load(ordering: .acquiring)
            if level == 0 || next == 0 { return next }
            entry = next
            level -= 1
        }
    }

    /// The data chunk of `chunk` when a write may go to it in place: every node on the
    /// way and the chunk itself belong to this volume alone. Nil otherwise (unmapped,
    /// or shared with a snapshot: the write must allocate).
    @inline(__always) static func exclusiveChunk(root: UInt64, chunk: Int64,
                                                 references: UnsafeMutablePointer<Atomic<UInt32>>) -> Int64? {
        guard root != 0 else { return nil }
        var level = level(of: root)
        guard chunk / ThinGeometry.span(level) < Int64(ThinFormat.fanout) else { return nil }
        var entry = root
        while true {
            guard !isShared(entry) else { return nil }
            let next = entries(of: entry)[ThinGeometry.index(of: chunk, at: level)].load(ordering: .acquiring)
            guard next != 0 else { return nil }
            if level == 0 {
                guard references[Int(next - 1)].load(ordering: .acquiring) == 1 else { return nil }
                return Int64(next - 1)
            }
            entry = next
            level -= 1
        }
    }

    /// Calls `body` with each run of virtual chunks from `first` up to `end`, whether
    /// mapped: (first chunk, count, mapped). Unmapped subtrees are skipped whole.
    static func runs(root: UInt64, from first: Int64, to end: Int64, _ body: (Int64, Int64, Bool) -> Bool) {
        differences(0, root, from: first, to: end, body)
    }

    /// Calls `body` with runs of virtual chunks from `first` up to `end` that differ
    /// (`true`) or not between two volumes' maps: a chunk differs when the two map it to
    /// different data chunks (or one maps it and the other not). Subtrees the two share
    /// are skipped whole, as are subtrees neither maps. `body` returns false to stop.
    static func differences(_ older: UInt64, _ newer: UInt64, from first: Int64, to end: Int64,
                            _ body: (Int64, Int64, Bool) -> Bool) {
        withoutActuallyEscaping(body) { body in
            var runs = RunCollector(start: first, body: body)
            let a = ThinNode.child(older)
            let b = ThinNode.child(newer)
            // A tree grown by a resize has its old root under entry 0 of each new level:
            // the walk goes down from the taller tree's height, and a shorter tree's root
            // stands for itself on the way down entry 0.
            let height = max(a?.level ?? 0, b?.level ?? 0, ThinFormat.depth(forChunks: end) - 1)
            walkDifferences(a, b, level: height, base: 0, first: first, end: end, runs: &runs)
            runs.finish(at: end)
        }
    }

    private static func descend(_ node: ThinNode?, level: Int, index: Int) -> ThinNode? {
        guard let node else { return nil }
        if node.level < level { return index == 0 ? node : nil }
        return ThinNode.child(node[index])
    }

    private static func walkDifferences(_ a: ThinNode?, _ b: ThinNode?, level: Int, base: Int64, first: Int64, end: Int64,
                                        runs: inout RunCollector) {
        let span = ThinGeometry.span(level)
        let lower = max(base, first)
        let upper = min(base + span * Int64(ThinFormat.fanout), end)
        guard lower < upper, !runs.stopped else { return }
        if a === b {
            runs.add(lower, upper - lower, differs: false)
            return
        }
        for index in 0..<ThinFormat.fanout {
            let start = base + Int64(index) * span
            guard start < upper, !runs.stopped else { break }
            guard start + span > lower else { continue }
            if level == 0 {
                let entryA = a.map { $0[index] } ?? 0
                let entryB = b.map { $0[index] } ?? 0
                runs.add(start, 1, differs: entryA != entryB)
            } else {
                walkDifferences(descend(a, level: level, index: index), descend(b, level: level, index: index),
                                level: level - 1, base: start, first: first, end: end, runs: &runs)
            }
        }
    }

    /// Joins adjacent chunks of one kind into runs for `body`.
    private struct RunCollector {
        var start: Int64
        var differs: Bool?
        var stopped = false
        let body: (Int64, Int64, Bool) -> Bool

        init(start: Int64, body: @escaping (Int64, Int64, Bool) -> Bool) {
            self.start = start
            self.body = body
        }

        mutating func add(_ at: Int64, _ count: Int64, differs kind: Bool) {
            guard !stopped else { return }
            if let differs, differs != kind {
                if !body(start, at - start, differs) { stopped = true; return }
                start = at
            }
            differs = kind
        }

        mutating func finish(at end: Int64) {
            guard !stopped, let differs, end > start else { return }
            _ = body(start, end - start, differs)
        }
    }
}
