import Synchronization

/// Which regions of the mirror a component may lack: one bit a region, set by the writes
/// the component did not take (it was out, or its rebuild had not reached them) and
/// cleared by the rebuild as it copies them. So a component that comes back after a
/// while away (a remote leg whose link was cut) gets only what changed meanwhile, and a
/// new one gets everything (every bit set).
///
/// Bits are set from I/O threads without a lock; the rebuild reads and clears them
/// behind the rebuild gate, which orders them with the writes over the same range.
final class MirrorRegionMap: @unchecked Sendable {
    /// Bytes a bit stands for: 1 MiB, or more for mirrors over 8 TiB, so the map stays
    /// within 1 MiB.
    let regionSize: Int64
    let regionCount: Int
    private let words: UnsafeMutablePointer<Atomic<UInt64>>
    private let wordCount: Int

    init(mediaSize: Int64) {
        var size: Int64 = MirrorGeom.chunk
        while (mediaSize + size - 1) / size > 1 << 23 { size *= 2 }
        regionSize = size
        regionCount = Int((max(mediaSize, 1) + size - 1) / size)
        wordCount = (regionCount + 63) / 64
        words = .allocate(capacity: wordCount)
        for index in 0..<wordCount { (words + index).initialize(to: Atomic(0)) }
    }

    deinit {
        words.deinitialize(count: wordCount)
        words.deallocate()
    }

    /// Marks the regions `range` touches.
    func mark(_ range: Range<Int64>) {
        guard !range.isEmpty, range.lowerBound >= 0 else { return }
        let first = Int(range.lowerBound / regionSize)
        let last = min(Int((range.upperBound - 1) / regionSize), regionCount - 1)
        guard first <= last else { return }
        setBits(first...last)
    }

    /// Marks every region from `offset` to the end.
    func mark(from offset: Int64) {
        let first = Int(max(offset, 0) / regionSize)
        guard first < regionCount else { return }
        setBits(first...(regionCount - 1))
    }

    func clearAll() {
        for index in 0..<wordCount { words[index].store(0, ordering: .releasing) }
    }

    func clear(region: Int) {
        words[region / 64].bitwiseAnd(~(1 << UInt64(region % 64)), ordering: .acquiringAndReleasing)
    }

    /// Whether any region `range` touches is marked.
    func isMarked(_ range: Range<Int64>) -> Bool {
        guard !range.isEmpty, range.lowerBound >= 0 else { return false }
        let last = min(Int((range.upperBound - 1) / regionSize), regionCount - 1)
        var region = Int(range.lowerBound / regionSize)
        while region <= last {
            if isMarked(region: region) { return true }
            region += 1
        }
        return false
    }

    func isMarked(region: Int) -> Bool {
        words[region / 64].load(ordering: .acquiring) & (1 << UInt64(region % 64)) != 0
    }

    /// Bytes the marked regions stand for (the last region counts whole).
    var markedBytes: Int64 {
        var regions = 0
        for index in 0..<wordCount { regions += words[index].load(ordering: .relaxed).nonzeroBitCount }
        return Int64(regions) * regionSize
    }

    private func setBits(_ regions: ClosedRange<Int>) {
        var region = regions.lowerBound
        while region <= regions.upperBound {
            let word = region / 64
            let from = region % 64
            let to = min(63, from + regions.upperBound - region)
            let span = to - from + 1
            let mask: UInt64 = (span == 64 ? ~0 : ((1 << UInt64(span)) - 1)) << UInt64(from)
            // Most writes land in regions already marked: a load spares the cache line.
            if words[word].load(ordering: .relaxed) & mask != mask {
                words[word].bitwiseOr(mask, ordering: .acquiringAndReleasing)
            }
            region += span
        }
    }
}
