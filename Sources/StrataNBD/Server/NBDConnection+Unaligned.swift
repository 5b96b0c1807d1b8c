import NIOCore
import Strata
import StrataNBDProtocol

extension NBDCommand {
    /// WRITE, TRIM and WRITE_ZEROES: what changes the export.
    var writesData: Bool { self == .write || self == .trim || self == .writeZeroes }
}

extension NBDConnectionHandler {
    // MARK: Requests the sectors do not fit

    /// A request whose offset or length is not a multiple of the provider's sector size.
    /// The export advertises a minimum block size of 1, as the spec asks of a server
    /// whose clients may not negotiate one; the providers take whole sectors only.
    func issueUnaligned(_ header: NBDRequestHeader, command: NBDCommand, payload: ByteBuffer?, served: ServedExport,
                        consumer: Consumer) {
        let mask = served.sectorMask
        let end = header.offset + header.length
        let covering = (header.offset & ~mask)..<((end + mask) & ~mask)
        guard covering.upperBound <= UInt64(served.provider.mediaSize) else {
            refuse(header, .invalid, "\(command) at \(header.offset)+\(header.length) reaches into the export's last sector, "
                + "which is not whole")
            return
        }
        switch command {
        case .read:
            issueUnalignedRead(header, covering: covering, served: served, consumer: consumer)
        case .write, .writeZeroes:
            if header.flags.contains(.fastZero) {
                // Zeroing part of a sector is a read and a write: no faster than the
                // client writing the zeros itself, which FAST_ZERO asks to be told.
                refuse(header, .notSupported, "WRITE_ZEROES of part of a sector is not fast", command: command, log: false)
                return
            }
            rewrite(header, command: command, payload: payload, range: covering, served: served)
        case .trim:
            // Advisory: only the whole sectors it covers are trimmed.
            let (lower, upper) = ((header.offset + mask) & ~mask, end & ~mask)
            guard lower < upper else {
                sendSuccess(header)
                return
            }
            rewrite(header, command: command, payload: nil, range: lower..<upper, served: served)
        case .blockStatus:
            // The provider is asked about the sectors the range touches (`prepare`).
            issue(header, command: command, payload: payload, served: served, consumer: consumer)
        case .flush, .cache, .disconnect:
            preconditionFailure("\(command) has no range to align")
        }
    }

    /// Reads the sectors covering the request into a buffer of their own; the bytes
    /// asked for are copied into the reply as it completes (`UnalignedRead`).
    private func issueUnalignedRead(_ header: NBDRequestHeader, covering: Range<UInt64>, served: ServedExport,
                                    consumer: Consumer) {
        let bio = AnyBioSet.shared.alloc(segments: 1)
        var slot = prepare(bio, header, command: .read, payload: nil, served: served)
        let destination = bio.data.firstSegment
        let sectors = UnsafeMutableRawBufferPointer.allocate(byteCount: covering.count, alignment: 4096)
        bio.offset = Int64(covering.lowerBound)
        bio.length = Int64(covering.count)
        bio.setData(sectors)
        // The sectors' buffer is memory this request holds too.
        slot.bytes += covering.count
        let index = requests.insert(slot)
        core.charge(requests.bytes(of: index))
        bio.caller1 = UnsafeMutableRawPointer(bitPattern: index + 1)
        let reader = UnalignedRead(connection: self, sectors: sectors, skip: Int(header.offset - covering.lowerBound),
                                   destination: destination)
        // Released by its completion.
        bio.done = .handler(Unmanaged.passRetained(reader).takeUnretainedValue())
        updateReading()
        consumer.request(bio)
    }

    /// An unaligned WRITE, WRITE_ZEROES or TRIM of `range` (whole sectors), done under a
    /// hold on it (`UnalignedWrite`).
    private func rewrite(_ header: NBDRequestHeader, command: NBDCommand, payload: ByteBuffer?, range: Range<UInt64>,
                         served: ServedExport) {
        var slot = RequestSlot(header: header, command: command)
        slot.buffer = payload
        slot.bytes = payload?.readableBytes ?? 0
        let index = requests.insert(slot)
        let rewrite = UnalignedWrite(connection: self, index: index, header: header, command: command, payload: payload,
                                     sectorSize: served.sectorSize, locks: served.sectorLocks, range: range)
        requests.route(index, .rewrite)
        rewrites[index] = rewrite
        core.charge(requests.bytes(of: index))
        updateReading()
        rewrite.begin()
    }

    /// The end of a read-modify-write: its answer. It is let go of after that.
    func finishRewrite(_ index: Int, error: BioError?) {
        let rewrite = rewrites.removeValue(forKey: index)
        finish(index, error: error, readAsZeros: false, status: nil)
        withExtendedLifetime(rewrite) {}
    }

    // MARK: Aligned writes while sectors are held

    /// An aligned write while a read-modify-write holds sectors of the provider: sent at
    /// once unless it overlaps a hold, else parked until the holds before it are gone.
    func issueBesideHolds(_ header: NBDRequestHeader, command: NBDCommand, payload: ByteBuffer?, served: ServedExport,
                          consumer: Consumer) {
        guard let hold = served.sectorLocks.admit(self, range: header.offset..<(header.offset + header.length)) else {
            issue(header, command: command, payload: payload, served: served, consumer: consumer)
            return
        }
        var slot = RequestSlot(header: header, command: command)
        slot.buffer = payload
        slot.bytes = payload?.readableBytes ?? 0
        slot.route = .parked
        let index = requests.insert(slot)
        core.charge(requests.bytes(of: index))
        parkedWrites[hold] = index
        updateReading()
    }

    /// The holds before the parked write `hold` are gone: it is sent, then its hold let
    /// go (a read-modify-write queued behind it then finds it in flight).
    func sendParkedWrite(_ hold: UInt64) {
        guard let index = parkedWrites.removeValue(forKey: hold), let served else { return }
        if let consumer {
            let slot = requests.remove(index)
            core.refund(slot.bytes)
            issue(slot.header, command: slot.command, payload: slot.buffer, served: served, consumer: consumer)
        } else {
            // Not reached: the consumer is given back once nothing is in flight.
            finish(index, error: .noDevice, readAsZeros: false, status: nil)
        }
        served.sectorLocks.perform(served.sectorLocks.release(hold), inline: false)
    }

    /// A read-modify-write of `range` is about to start: names to `locks` the writes of
    /// this connection sent to the provider over the range, which it waits for.
    func fence(_ hold: UInt64, range: Range<UInt64>, for locks: SectorLocks) {
        let writes = requests.sentWrites(overlapping: range)
        for index in writes { fenceWaiters[index, default: []].append(hold) }
        fencedWrites = fenceWaiters.count
        locks.perform(locks.fenced(hold, writes: writes.count), inline: true)
    }

    /// The request in `index` is done: the read-modify-writes that waited for it are
    /// told.
    func releaseFences(of index: Int) {
        guard let holds = fenceWaiters.removeValue(forKey: index) else { return }
        fencedWrites = fenceWaiters.count
        guard let locks = served?.sectorLocks else { return }
        locks.perform(locks.writeCompleted(awaitedBy: holds), inline: false)
    }
}
