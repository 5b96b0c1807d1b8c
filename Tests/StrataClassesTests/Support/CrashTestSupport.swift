import Foundation
import Strata
import StrataDisks

// Helpers for the crash-point tests. Images are tens of MiB and the tests run in debug
// builds, so bytes are compared with memcmp, never element by element.

/// Whether `a[aOffset..<aOffset+count]` equals `b[bOffset..<bOffset+count]`.
func sameBytes(_ a: [UInt8], _ aOffset: Int, _ b: [UInt8], _ bOffset: Int, count: Int) -> Bool {
    a.withUnsafeBytes { left in
        b.withUnsafeBytes { right in memcmp(left.baseAddress! + aOffset, right.baseAddress! + bOffset, count) == 0 }
    }
}

private let zeroChunk = [UInt8](repeating: 0, count: 1 << 20)

/// Whether `bytes[range]` is all zeros.
func allZeros(_ bytes: [UInt8], _ range: Range<Int>) -> Bool {
    var at = range.lowerBound
    while at < range.upperBound {
        let count = min(zeroChunk.count, range.upperBound - at)
        if !sameBytes(bytes, at, zeroChunk, 0, count: count) { return false }
        at += count
    }
    return true
}

/// Bytes that differ with their place on the disk and with `seed`, so a sector that
/// lands in the wrong place, or an older copy, does not match.
func placedPattern(_ count: Int, at offset: Int64, seed: Int) -> [UInt8] {
    (0..<count).map { index in
        let position = offset + Int64(index)
        return UInt8(truncatingIfNeeded: (position &* 31) ^ (position >> 9) ^ (position >> 17) &+ Int64(seed) &* 7 &+ 1)
    }
}

/// A read-only consumer of a provider, for reading what a recovered stack holds.
struct Reader {
    let topology: Topology
    let geom: Geom
    let consumer: Consumer

    init(_ provider: Provider, in topology: Topology) throws {
        self.topology = topology
        geom = Geom(name: "crash-reader-\(provider.name)", className: "TEST")
        try topology.add(geom)
        consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: provider)
        try topology.access(consumer, read: 1, write: 0, exclusive: 0)
    }

    /// Fills `bytes[range]` from the same range of the provider.
    func read(into bytes: inout [UInt8], _ range: Range<Int>) throws {
        try bytes.withUnsafeMutableBytes { buffer in
            _ = try consumer.performSync(.read, offset: Int64(range.lowerBound), length: Int64(range.count),
                                         buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[range]))
        }
    }

    /// Whether the provider holds `bytes[0..<count]`, read 1 MiB at a time into `chunk`.
    func holds(_ bytes: [UInt8], count: Int, chunk: inout [UInt8]) throws -> Bool {
        var at = 0
        while at < count {
            let length = min(chunk.count, count - at)
            try chunk.withUnsafeMutableBytes { buffer in
                _ = try consumer.performSync(.read, offset: Int64(at), length: Int64(length),
                                             buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]))
            }
            if !sameBytes(chunk, 0, bytes, at, count: length) { return false }
            at += length
        }
        return true
    }

    func close() {
        try? topology.access(consumer, read: -1, write: 0, exclusive: 0)
        topology.wither(geom)
    }
}

/// What a workload did, by position in the power-cut log, and what a crash at any
/// point must have kept of it.
final class WorkloadRecord: @unchecked Sendable {
    struct Write {
        let offset: Int64
        let data: [UInt8]
        let fua: Bool
        /// The log's count before the write was issued: no entry of it comes earlier.
        let start: Int
        /// The log's count after it completed: a crash at or after this point happened
        /// after the acknowledgement.
        let acknowledged: Int
    }

    struct Flush {
        let start: Int
        let acknowledged: Int
    }

    let sectorSize: Int
    private(set) var writes: [Write] = []
    private(set) var flushes: [Flush] = []

    init(sectorSize: Int) { self.sectorSize = sectorSize }

    func record(_ write: Write) { writes.append(write) }
    func record(_ flush: Flush) { flushes.append(flush) }

    /// Durable at `point`: acknowledged, and FUA or followed by a FLUSH issued after the
    /// acknowledgement and itself acknowledged before the point.
    func isDurable(_ write: Write, at point: Int) -> Bool {
        guard write.acknowledged <= point else { return false }
        return write.fua || flushes.contains { $0.start >= write.acknowledged && $0.acknowledged <= point }
    }

    /// The writes covering each sector, in the order they were issued.
    private lazy var covering: [Int: [Int]] = {
        var covering: [Int: [Int]] = [:]
        for (index, write) in writes.enumerated() {
            let first = Int(write.offset) / sectorSize
            for sector in first..<(first + write.data.count / sectorSize) { covering[sector, default: []].append(index) }
        }
        return covering
    }()

    /// What is wrong with `bytes` (the whole volume, read after recovery) for a crash at
    /// `point`. Each sector must hold the last write to it that was durable (zeros if
    /// none was) or a later write that had started; a sector never written, zeros.
    /// Call it once the workload is over.
    func problems(in bytes: [UInt8], at point: Int, limit: Int = 3) -> [String] {
        var problems: [String] = []
        let durable = writes.map { isDurable($0, at: point) }
        let zeroSector = [UInt8](repeating: 0, count: sectorSize)
        let sectors = covering.keys.sorted()
        for sector in sectors where problems.count < limit {
            let indices = covering[sector]!
            let at = sector * sectorSize
            let lastDurable = indices.lastIndex { durable[$0] }
            let later = indices[((lastDurable ?? -1) + 1)...].filter { writes[$0].start < point }
            var matches = lastDurable == nil && sameBytes(bytes, at, zeroSector, 0, count: sectorSize)
            for index in (lastDurable.map { [indices[$0]] } ?? []) + later where !matches {
                matches = sameBytes(bytes, at, writes[index].data, at - Int(writes[index].offset), count: sectorSize)
            }
            if !matches {
                let last = lastDurable.map { "write #\(indices[$0]) at \(writes[indices[$0]].offset) was durable" } ?? "no write was durable"
                problems.append("sector \(sector) (byte \(at)) holds none of what it may hold (\(last))")
            }
        }
        var at = 0
        for sector in sectors + [bytes.count / sectorSize] where problems.count < limit {
            let start = sector * sectorSize
            if start > at && !allZeros(bytes, at..<start) { problems.append("bytes \(at)..<\(start), never written, are not zeros") }
            at = start + sectorSize
        }
        return problems
    }
}
