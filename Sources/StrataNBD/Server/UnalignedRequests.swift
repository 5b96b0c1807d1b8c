import NIOCore
import Strata
import StrataNBDProtocol

/// An unaligned READ's completion: the provider read the sectors that cover the
/// request into a buffer of their own, and the bytes asked for are copied from there
/// into the reply, which then completes as any READ does.
///
/// The copy is the price of a range the sectors do not fit; aligned READs read straight
/// into their reply. Retained from its request's issue until that request completes.
final class UnalignedRead: BioDoneHandler, @unchecked Sendable {
    private let connection: NBDConnectionHandler
    /// The covering sectors.
    private let sectors: UnsafeMutableRawBufferPointer
    /// Where the requested bytes start in `sectors`.
    private let skip: Int
    /// The reply's data.
    private let destination: UnsafeMutableRawBufferPointer

    init(connection: NBDConnectionHandler, sectors: UnsafeMutableRawBufferPointer, skip: Int,
         destination: UnsafeMutableRawBufferPointer) {
        self.connection = connection
        self.sectors = sectors
        self.skip = skip
        self.destination = destination
    }

    /// Runs on whatever thread the provider completed on: the reply's buffer belongs to
    /// the request until the connection takes it back in `bioDone`.
    func bioDone(_ bio: consuming Bio) {
        // A range the provider read as zeros is answered as a hole: nothing to copy.
        if bio.error == nil && !bio.flags.contains(.readAsZeros) {
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: sectors[skip..<(skip + destination.count)]))
        }
        sectors.deallocate()
        let connection = self.connection
        Unmanaged.passUnretained(self).release()
        connection.bioDone(bio)
    }
}

/// An unaligned WRITE, WRITE_ZEROES or TRIM, under a hold on its range (`SectorLocks`).
///
/// WRITE and WRITE_ZEROES are read-modify-writes: the first and last sectors the request
/// covers only in part are read, the request's bytes (or zeros) laid over them, and the
/// whole covered range written back, with FUA and NO_HOLE as asked. A WRITE's sectors in
/// between come straight from its payload, as the middle segment of one write. TRIM is
/// advisory (the spec lets a server ignore it), so an unaligned one trims only the whole
/// sectors it covers: zeroing the partial ones would cost a read and a write for a hint.
///
/// Everything here runs on the connection's event loop: completions from other threads
/// hop to it. The connection holds this object (`rewrites`) until `finish`, whose last
/// step gives it up.
final class UnalignedWrite: BioDoneHandler, @unchecked Sendable {
    enum Stage {
        /// Waiting for the hold.
        case queued
        case reading(left: Int)
        case writing(left: Int)
        /// A TRIM or WRITE_ZEROES with FUA: the flush that makes it durable.
        case flushing
    }

    let connection: NBDConnectionHandler
    private let index: Int
    private let header: NBDRequestHeader
    private let command: NBDCommand
    /// The WRITE's payload; kept alive by the request's slot.
    private let data: UnsafeRawBufferPointer
    private let sectorSize: UInt64
    private let locks: SectorLocks
    /// The range held and written: the sectors the request touches (for TRIM, the whole
    /// sectors it covers).
    private let range: Range<UInt64>
    /// Whether the first and the last sector of `range` are covered in part, and so
    /// read first. A request within one sector has only a first.
    private let partialFirst: Bool
    private let partialLast: Bool
    /// The partial first sector, then the partial last one.
    private let sectors: UnsafeMutableRawBufferPointer?
    private var hold: UInt64 = 0
    private var stage = Stage.queued
    private var failure: BioError?

    /// - Parameter range: `header`'s range widened to whole sectors (WRITE,
    ///   WRITE_ZEROES) or narrowed to them (TRIM); not empty.
    init(connection: NBDConnectionHandler, index: Int, header: NBDRequestHeader, command: NBDCommand,
         payload: ByteBuffer?, sectorSize: Int, locks: SectorLocks, range: Range<UInt64>) {
        self.connection = connection
        self.index = index
        self.header = header
        self.command = command
        data = payload?.withUnsafeReadableBytes { UnsafeRawBufferPointer($0) } ?? UnsafeRawBufferPointer(start: nil, count: 0)
        self.sectorSize = UInt64(sectorSize)
        self.locks = locks
        self.range = range
        let end = header.offset + header.length
        if command == .trim {
            (partialFirst, partialLast) = (false, false)
        } else if range.count == sectorSize {
            (partialFirst, partialLast) = (true, false)
        } else {
            (partialFirst, partialLast) = (header.offset != range.lowerBound, end != range.upperBound)
        }
        sectors = partialFirst || partialLast
            ? UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * sectorSize, alignment: 4096) : nil
    }

    /// Queues for the hold; `start` follows once the range is this request's alone.
    func begin() {
        let (hold, actions) = locks.acquire(self, range: range)
        self.hold = hold
        locks.perform(actions, inline: true)
    }

    /// Reads the partial sectors. Called on the connection's event loop.
    func start() {
        let reads = (partialFirst ? 1 : 0) + (partialLast ? 1 : 0)
        guard reads > 0, let sectors else { return write() }
        stage = .reading(left: reads)
        // The last request sent may complete inline and move on: nothing follows it.
        if partialFirst {
            send(.read, offset: range.lowerBound, length: sectorSize, data: [slice(sectors, 0)])
        }
        if partialLast {
            send(.read, offset: range.upperBound - sectorSize, length: sectorSize, data: [slice(sectors, 1)])
        }
    }

    func bioDone(_ bio: consuming Bio) {
        let loop = connection.eventLoop
        if loop.inEventLoop {
            completed(bio)
            return
        }
        let request = bio.unmanaged()
        loop.execute { self.completed(request.takeBio()) }
    }

    private func completed(_ bio: consuming Bio) {
        if let error = bio.error, failure == nil { failure = error }
        bio.destroy()
        switch stage {
        case .reading(let left) where left > 1:
            stage = .reading(left: left - 1)
        case .reading:
            write()
        case .writing(let left) where left > 1:
            stage = .writing(left: left - 1)
        case .writing:
            written()
        case .flushing:
            finish()
        case .queued:
            preconditionFailure("a read-modify-write completed a request before it started")
        }
    }

    /// Lays the request over the partial sectors and writes the range back.
    private func write() {
        guard failure == nil else { return finish() }
        let lower = range.lowerBound, upper = range.upperBound, offset = header.offset, end = offset + header.length
        let fua: BioFlags = command == .write && header.flags.contains(.fua) ? .fua : []
        switch command {
        case .write:
            var segments: [UnsafeMutableRawBufferPointer] = []
            var middle = 0..<data.count
            if let sectors, partialFirst {
                let first = slice(sectors, 0)
                let count = Int(min(end, lower + sectorSize) - offset)
                first.baseAddress!.advanced(by: Int(offset - lower)).copyMemory(from: data.baseAddress!, byteCount: count)
                segments.append(first)
                middle = count..<data.count
            }
            if let sectors, partialLast {
                let last = slice(sectors, 1)
                let start = Int(upper - sectorSize - offset)
                last.baseAddress!.copyMemory(from: data.baseAddress!.advanced(by: start), byteCount: data.count - start)
                middle = middle.lowerBound..<start
                if !middle.isEmpty { segments.append(UnsafeMutableRawBufferPointer(mutating: UnsafeRawBufferPointer(rebasing: data[middle]))) }
                segments.append(last)
            } else if !middle.isEmpty {
                segments.append(UnsafeMutableRawBufferPointer(mutating: UnsafeRawBufferPointer(rebasing: data[middle])))
            }
            stage = .writing(left: 1)
            send(.write, offset: lower, length: upper - lower, data: segments, flags: fua)
        case .writeZeroes:
            var interior = lower..<upper
            var writes: [(offset: UInt64, data: UnsafeMutableRawBufferPointer)] = []
            if let sectors, partialFirst {
                let first = slice(sectors, 0)
                let from = Int(offset - lower)
                (first.baseAddress! + from).initializeMemory(as: UInt8.self, repeating: 0, count: Int(min(end, lower + sectorSize) - offset))
                writes.append((lower, first))
                interior = (lower + sectorSize)..<max(lower + sectorSize, upper)
            }
            if let sectors, partialLast {
                let last = slice(sectors, 1)
                last.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: Int(end - (upper - sectorSize)))
                writes.append((upper - sectorSize, last))
                interior = interior.lowerBound..<(upper - sectorSize)
            }
            let zeroes = interior.isEmpty ? 0 : 1
            stage = .writing(left: writes.count + zeroes)
            if zeroes == 1 {
                var flags: BioFlags = []
                if header.flags.contains(.noHole) { flags.insert(.noHole) }
                send(.writeZeroes, offset: interior.lowerBound, length: UInt64(interior.count), data: [], flags: flags)
            }
            for write in writes { send(.write, offset: write.offset, length: sectorSize, data: [write.data]) }
        case .trim:
            stage = .writing(left: 1)
            send(.delete, offset: lower, length: upper - lower, data: [])
        default:
            preconditionFailure("\(command) is not written by a read-modify-write")
        }
    }

    /// The range is written: a TRIM or WRITE_ZEROES with FUA is flushed before it is
    /// acknowledged, as the aligned ones are.
    private func written() {
        guard failure == nil, command != .write, header.flags.contains(.fua) else { return finish() }
        stage = .flushing
        send(.flush, offset: 0, length: 0, data: [])
    }

    /// Gives the range back and answers the request. The connection holds this object
    /// until then: the answer, last, may free it.
    private func finish() {
        let actions = locks.release(hold)
        sectors?.deallocate()
        locks.perform(actions, inline: false)
        let (connection, index, failure) = (self.connection, self.index, self.failure)
        connection.finishRewrite(index, error: failure)
    }

    /// Sends one request of the read-modify-write to the export's provider.
    private func send(_ command: BioCommand, offset: UInt64, length: UInt64, data: [UnsafeMutableRawBufferPointer],
                      flags: BioFlags = []) {
        guard let consumer = connection.consumer else {
            // The export is given back only once nothing is in flight; this is.
            preconditionFailure("a read-modify-write outlived its connection's consumer")
        }
        let bio = AnyBioSet.shared.alloc(segments: max(data.count, 1))
        bio.command = command
        bio.offset = Int64(offset)
        bio.length = Int64(length)
        bio.flags = flags
        for (position, segment) in data.enumerated() {
            if position == 0 { bio.setData(segment) } else { bio.appendSegment(segment) }
        }
        bio.done = .handler(self)
        consumer.request(bio)
    }

    /// The first (0) or last (1) partial sector's room in `sectors`.
    private func slice(_ sectors: UnsafeMutableRawBufferPointer, _ which: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: sectors[(which * Int(sectorSize))..<((which + 1) * Int(sectorSize))])
    }
}
