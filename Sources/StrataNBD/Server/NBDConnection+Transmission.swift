import NIOCore
import Strata
import StrataNBDProtocol

/// What the connection keeps about one request in flight.
struct RequestSlot {
    var header: NBDRequestHeader
    var command: NBDCommand
    /// A READ's reply, header space first and the data read in place after it; or a
    /// WRITE's payload, kept alive while the provider copies from it.
    var buffer: ByteBuffer?
    /// A WRITE's payload gathered from several reads, its pieces kept alive while the
    /// provider copies from them.
    var gathered: GatheredPayload?
    /// Bytes of `buffer` reserved for the reply header.
    var headerSpace = 0
    /// A block-status answer buffer.
    var answer: UnsafeMutableRawBufferPointer?
    /// Bytes this request counts against the connection's limit.
    var bytes = 0
    /// A TRIM or WRITE_ZEROES with FUA whose flush is under way.
    var flushing = false
    /// How the request reaches the provider. One byte, in the slot's padding: a case
    /// holding the read-modify-write itself made every slot larger, and every aligned
    /// request's insertion and removal with it.
    var route = Route.sent

    enum Route: UInt8 {
        /// As one request of its own: every aligned request.
        case sent
        /// An aligned write parked behind a read-modify-write of its sectors, not sent yet.
        case parked
        /// An unaligned write, done by a read-modify-write (`UnalignedWrite`, kept in
        /// the connection's `rewrites`).
        case rewrite
    }

    /// What a free place in the table holds.
    static var vacant: RequestSlot {
        RequestSlot(header: NBDRequestHeader(flags: [], type: 0, cookie: 0, offset: 0, length: 0), command: .flush)
    }
}

/// A BLOCK_STATUS whose selected contexts are being asked one after another: how many
/// have answered, and their chunks.
struct PartialStatusReply {
    var answered = 0
    var chunks: ByteBuffer?
}

/// The requests of one connection, by slot; a request's slot number travels in its
/// `caller1`.
///
/// Slots are stored whole, not as optionals, and read in place: reading a field through
/// an optional's unwrapping copied the whole slot, retaining and releasing its buffer,
/// several times per request. A free slot holds `RequestSlot.vacant`.
struct RequestTable {
    private var slots: [RequestSlot] = []
    private var free: [Int] = []
    private(set) var count = 0
    private(set) var bytes = 0

    /// Puts `slot` in a free place (moved in, not copied: a copy would retain its buffer).
    mutating func insert(_ slot: consuming RequestSlot) -> Int {
        count += 1
        bytes += slot.bytes
        if let index = free.popLast() {
            slots[index] = consume slot
            return index
        }
        slots.append(consume slot)
        return slots.count - 1
    }

    /// Marks the request in `index` as flushing and returns true if it is a TRIM or
    /// WRITE_ZEROES with FUA whose flush has not been sent yet.
    mutating func beginFlushForFUA(_ index: Int) -> Bool {
        let command = slots[index].command
        guard slots[index].header.flags.contains(.fua), command == .trim || command == .writeZeroes,
              !slots[index].flushing else { return false }
        slots[index].flushing = true
        return true
    }

    /// The command of the request in `index`.
    func command(_ index: Int) -> NBDCommand { slots[index].command }

    /// The header of the request in `index`.
    func header(_ index: Int) -> NBDRequestHeader { slots[index].header }

    /// The block-status answer buffer of the request in `index`.
    func answer(_ index: Int) -> UnsafeMutableRawBufferPointer? { slots[index].answer }

    /// Sets how the request in `index` reaches the provider.
    mutating func route(_ index: Int, _ route: RequestSlot.Route) { slots[index].route = route }

    /// The payload bytes the request in `index` counts against the limits.
    func bytes(of index: Int) -> Int { slots[index].bytes }

    /// The writes (WRITE, TRIM, WRITE_ZEROES) sent to the provider as themselves whose
    /// range overlaps `range`: what a read-modify-write of it must wait for.
    func sentWrites(overlapping range: Range<UInt64>) -> [Int] {
        slots.indices.filter { index in
            let slot = slots[index]
            guard slot.route == .sent, slot.command.writesData else { return false }
            return slot.header.offset < range.upperBound && range.lowerBound < slot.header.offset + slot.header.length
        }
    }

    /// Takes the slot out (swapped with a vacant one, not copied: a copy would retain its
    /// buffer).
    mutating func remove(_ index: Int) -> RequestSlot {
        var slot = RequestSlot.vacant
        swap(&slot, &slots[index])
        free.append(index)
        count -= 1
        bytes -= slot.bytes
        return slot
    }
}

extension NBDConnectionHandler {
    // MARK: Requests

    func handleRequest(_ header: NBDRequestHeader, payload: ByteBuffer?, gathered: GatheredPayload? = nil) {
        requestsThisRead &+= 1
        let decision = lifecycle.requestArrived()
        guard decision != .drop else { return }
        guard let served, let consumer else {
            violation("request before transmission")
            return
        }
        guard let command = NBDCommand(rawValue: header.type) else {
            refuse(header, .invalid, "unknown command \(header.type)")
            return
        }
        if command == .disconnect {
            logger.debug("client disconnects")
            perform(lifecycle.disconnectRequested(inFlight: requests.count))
            return
        }
        if decision == .refuseShuttingDown {
            refuse(header, .shutdown, "the server is shutting down", command: command, log: false)
            return
        }
        if let refusal = check(header, command: command, served: served) {
            refuse(header, refusal.error, refusal.reason, command: command)
            return
        }
        if command == .cache {
            // The providers have no cache to fill: the range is valid, so it is done.
            sendSuccess(header)
            return
        }
        // The one branch on alignment. A FLUSH's range is zero, so it is aligned.
        let aligned = (header.offset | header.length) & served.sectorMask == 0
        var payload = payload
        if let gathered {
            if aligned && !served.sectorLocks.isActive {
                issue(header, gathered: gathered, served: served, consumer: consumer)
                return
            }
            // A read-modify-write works on one contiguous payload.
            payload = gathered.joined()
        }
        if !aligned {
            issueUnaligned(header, command: command, payload: payload, served: served, consumer: consumer)
            return
        }
        if command.writesData && served.sectorLocks.isActive {
            // A read-modify-write holds sectors of this provider: this write may have to
            // wait for it (`SectorLocks`).
            issueBesideHolds(header, command: command, payload: payload, served: served, consumer: consumer)
            return
        }
        issue(header, command: command, payload: payload, served: served, consumer: consumer)
    }

    /// The NBD checks, once, before anything reaches the provider.
    private func check(_ header: NBDRequestHeader, command: NBDCommand, served: ServedExport) -> (error: NBDError, reason: String)? {
        var allowed: NBDCommandFlags = [.fua]
        switch command {
        case .read: allowed.insert(.dontFragment)
        case .writeZeroes: allowed.formUnion([.noHole, .fastZero])
        case .blockStatus: allowed.insert(.requestOne)
        case .write where extendedHeaders: allowed.insert(.payloadLength)
        default: break
        }
        let stray = header.flags.subtracting(allowed)
        if !stray.isEmpty {
            return (.invalid, "flags 0x\(String(stray.rawValue, radix: 16)) are not valid on \(command)")
        }
        if command == .write && extendedHeaders && !header.flags.contains(.payloadLength) {
            return (.invalid, "WRITE without a payload length")
        }
        if header.flags.contains(.dontFragment) && !structuredReplies {
            return (.invalid, "DF needs structured replies")
        }
        let changes = command.writesData
        if command == .flush {
            // The spec reserves a FLUSH's offset and length: both must be zero. Checking
            // them also means every request that reaches `prepare` has a range that fits
            // the export, so its offset and length convert to Int64 without a trap.
            if header.offset != 0 || header.length != 0 {
                return (.invalid, "FLUSH at \(header.offset)+\(header.length): offset and length must be zero")
            }
        } else {
            if header.length == 0 { return (.invalid, "\(command) of no bytes") }
            if header.offset > served.size || header.length > served.size - header.offset {
                return (changes ? .noSpace : .invalid,
                        "\(command) at \(header.offset)+\(header.length) runs past the end (\(served.size) bytes)")
            }
        }
        if command == .read && header.length > UInt64(served.maximumPayload) {
            // The spec's answer to a request over the advertised maximum payload.
            return (.overflow, "READ of \(header.length) bytes is over the \(served.maximumPayload)-byte maximum")
        }
        if command == .blockStatus && metaContexts.isEmpty {
            return (.invalid, "BLOCK_STATUS without a metadata context selected for this export")
        }
        if changes && served.export.readOnly {
            return (.permission, "\(command) on a read-only export")
        }
        return nil
    }

    func issue(_ header: NBDRequestHeader, command: NBDCommand, payload: ByteBuffer?, served: ServedExport,
               consumer: Consumer) {
        let bio = AnyBioSet.shared.alloc(segments: 1)
        // The slot goes straight into the table, which then holds the only reference
        // to its buffer: a memory disk completes inside `request`, and the reply
        // writes its header in place (a second reference would copy the whole buffer).
        let slot = prepare(bio, header, command: command, payload: payload, served: served)
        send(bio, slot, consumer: consumer)
    }

    /// Issues a WRITE whose payload came in pieces as one request with a segment for
    /// each piece, so the provider copies each byte once, from where the read left it.
    func issue(_ header: NBDRequestHeader, gathered: GatheredPayload, served: ServedExport, consumer: Consumer) {
        let bio = Self.gatheredWrites.alloc(segments: gathered.pieces.count)
        bio.offset = Int64(header.offset)
        bio.length = Int64(header.length)
        bio.command = .write
        if header.flags.contains(.fua) { bio.flags = .fua }
        for piece in gathered.pieces {
            bio.appendSegment(piece.withUnsafeReadableBytes { UnsafeMutableRawBufferPointer(mutating: $0) })
        }
        var slot = RequestSlot(header: header, command: .write)
        slot.gathered = gathered
        slot.bytes = gathered.count
        send(bio, slot, consumer: consumer)
    }

    /// Requests with a gathered payload: a segment slot for each of its pieces.
    static let gatheredWrites = BioSet(name: "nbd-gathered-writes", reserve: 16, segments: NBDServerInput.mostPieces)

    /// Enters the request in the table and sends it to the provider.
    private func send(_ bio: consuming Bio, _ slot: consuming RequestSlot, consumer: Consumer) {
        let command = slot.command
        let length = slot.header.length
        let index = requests.insert(slot)
        core.charge(requests.bytes(of: index))
        bio.caller1 = UnsafeMutableRawPointer(bitPattern: index + 1)
        bio.done = .handler(self)
        updateReading()
        if command == .read && length >= Self.offloadedReadLength, let largeReadQueue {
            // The disk's copy of a large read (a memory disk's memcpy) costs as much as
            // the kernel's copy of the reply into the socket. Sent from another thread,
            // the disk's copy of one read overlaps the socket write of the one before,
            // where on the event loop both copies would take turns on one core. The hop
            // costs microseconds against the copies' hundreds.
            let request = bio.unmanaged()
            largeReadQueue.async { consumer.request(request.takeBio()) }
            return
        }
        consumer.request(bio)
    }

    /// Reads at least this long are sent to the provider from `largeReadQueue`.
    static let offloadedReadLength: UInt64 = 256 << 10

    /// Fills in the request for an NBD command and returns what the connection keeps
    /// about it until completion.
    func prepare(_ bio: borrowing Bio, _ header: NBDRequestHeader, command: NBDCommand, payload: ByteBuffer?,
                 served: ServedExport) -> RequestSlot {
        bio.offset = Int64(header.offset)
        bio.length = Int64(header.length)
        var slot = RequestSlot(header: header, command: command)
        switch command {
        case .read:
            bio.command = .read
            let headerSpace = structuredReplies ? ByteBuffer.nbdChunkHeaderSize(extended: extendedHeaders) + 8 : 16
            let length = Int(header.length)
            let alignment = served.provider.memoryAlignment
            var buffer = readReplyBuffers.take(capacity: alignment - 1 + headerSpace + length, allocator: allocator)
            if alignment > 1 {
                // The data goes where the provider takes it as it is (a file disk with
                // cache: none reads straight into it), the header right before it, and
                // the bytes before the header are left out of the reply.
                let start = buffer.withUnsafeMutableWritableBytes { UInt(bitPattern: $0.baseAddress) }
                let skipped = Int((0 &- (start &+ UInt(headerSpace))) & UInt(alignment - 1))
                buffer.moveWriterIndex(forwardBy: skipped)
                buffer.moveReaderIndex(forwardBy: skipped)
            }
            buffer.moveWriterIndex(forwardBy: headerSpace)
            // The provider reads straight into the reply. The buffer is owned by the
            // slot alone until completion, so its storage stays where it is.
            let data = buffer.withUnsafeMutableWritableBytes { UnsafeMutableRawBufferPointer(rebasing: $0.prefix(length)) }
            bio.setData(data)
            if structuredReplies && !header.flags.contains(.dontFragment) { bio.flags = .zeroHint }
            slot.buffer = buffer
            slot.headerSpace = headerSpace
            slot.bytes = length
        case .write:
            bio.command = .write
            let payload = payload!
            let data = payload.withUnsafeReadableBytes { UnsafeMutableRawBufferPointer(mutating: $0) }
            bio.setData(data)
            if header.flags.contains(.fua) { bio.flags = .fua }
            slot.buffer = payload
            slot.bytes = payload.readableBytes
        case .flush:
            bio.command = .flush
            bio.offset = 0
            bio.length = 0
        case .trim:
            bio.command = .delete
        case .writeZeroes:
            bio.command = .writeZeroes
            var flags: BioFlags = []
            if header.flags.contains(.noHole) { flags.insert(.noHole) }
            if header.flags.contains(.fastZero) { flags.insert(.fastZero) }
            bio.flags = flags
        case .blockStatus:
            // At most one extent a sector, the range touching one more than it fills.
            let blocks = header.length / UInt64(served.sectorSize) + 2
            let records = header.flags.contains(.requestOne) ? 1 : Int(min(UInt64(NBDLimits.maximumExtents), blocks))
            let answer = UnsafeMutableRawBufferPointer.allocate(byteCount: records * BioExtent.encodedSize, alignment: 8)
            ask(bio, about: header, in: metaContexts[0], served: served, answer: answer)
            slot.answer = answer
        case .cache, .disconnect:
            preconditionFailure("\(command) is answered without a request")
        }
        return slot
    }

    /// Fills in the GETATTR that asks what `context` reports of a BLOCK_STATUS's range,
    /// its extents answered into `answer`.
    func ask(_ bio: borrowing Bio, about header: NBDRequestHeader, in context: SelectedMetaContext, served: ServedExport,
             answer: UnsafeMutableRawBufferPointer) {
        bio.command = .getattr
        bio.attribute = context.attribute
        // The provider answers for whole sectors: the ones the range touches. The reply
        // starts the first extent at the client's offset (`writeStatusChunk`).
        let lower = header.offset & ~served.sectorMask
        bio.offset = Int64(lower)
        bio.length = Int64((header.offset + header.length + served.sectorMask) & ~served.sectorMask - lower)
        bio.setData(answer)
    }

    // MARK: Completion

    func bioDone(_ bio: consuming Bio) {
        if eventLoop.inEventLoop {
            complete(bio)
            return
        }
        let request = bio.unmanaged()
        let first = completedElsewhere.withLockedValue { waiting in
            waiting.append(request)
            return waiting.count == 1
        }
        if first { eventLoop.execute { self.answerCompletedElsewhere() } }
    }

    /// Answers every request that completed on another thread since the last drain, and
    /// flushes the replies once.
    private func answerCompletedElsewhere() {
        completedElsewhere.withLockedValue { swap(&$0, &drained) }
        flushing.completionsBegan()
        for request in drained { complete(request.takeBio()) }
        let unflushed = flushing.completionsEnded()
        drained.removeAll(keepingCapacity: true)
        if unflushed { flushReplies() }
    }

    private func complete(_ bio: consuming Bio) {
        let index = Int(bitPattern: bio.caller1) - 1
        let error = bio.error
        let flags = bio.flags
        // The consumer is bound only for a flush: binding it retains it, and this is
        // every request's completion. (Without a consumer the channel has closed, and
        // nothing is acknowledged.)
        if error == nil, requests.beginFlushForFUA(index), let consumer {
            // FUA on TRIM and WRITE_ZEROES: acknowledged means durable, so flush first.
            bio.reset()
            bio.command = .flush
            bio.caller1 = UnsafeMutableRawPointer(bitPattern: index + 1)
            bio.done = .handler(self)
            consumer.request(bio)
            return
        }
        if requests.command(index) == .blockStatus {
            statusAnswered(bio, index: index)
            return
        }
        bio.destroy()
        finish(index, error: error, readAsZeros: flags.contains(.readAsZeros), status: nil)
    }

    /// A selected context has answered a BLOCK_STATUS: its chunk is written, and the next
    /// context asked with the same request, one after another in the order selected, the
    /// last chunk DONE. With one context selected (the usual `base:allocation` alone) that
    /// is all; with several, the chunks so far wait in `statusReplies`. An error, the
    /// provider's or an answer that says nothing of the range, answers the request
    /// instead, and no chunk goes out.
    private func statusAnswered(_ bio: consuming Bio, index: Int) {
        var error = bio.error
        var reply = metaContexts.count == 1 ? PartialStatusReply()
            : statusReplies.removeValue(forKey: index) ?? PartialStatusReply()
        let header = requests.header(index)
        let context = metaContexts[reply.answered]
        let last = reply.answered + 1 == metaContexts.count
        if error == nil,
           !writeStatusChunk(header, extents: bio.attributeExtents, of: context, done: last, into: &reply.chunks) {
            logger.notice("request refused", metadata: ["cookie": "\(header.cookie)",
                                                        "reason": "\(context.name): no extents reported past the offset"])
            error = .io
        }
        reply.answered += 1
        // Once the channel has closed nothing is answered: the contexts left are not asked.
        guard error == nil, !last, lifecycle.channelIsOpen, let consumer, let served,
              let answer = requests.answer(index) else {
            bio.destroy()
            finish(index, error: error, readAsZeros: false, status: reply.chunks)
            return
        }
        statusReplies[index] = reply
        bio.reset()
        ask(bio, about: header, in: metaContexts[reply.answered], served: served, answer: answer)
        bio.caller1 = UnsafeMutableRawPointer(bitPattern: index + 1)
        bio.done = .handler(self)
        consumer.request(bio)
    }

    /// Answers the request in `index` (unless the connection is closing) and lets go of
    /// it: its slot, its bytes, and the read-modify-writes that waited for it. Inlined
    /// into `complete`, every request's path, as it was written there.
    @inline(__always)
    func finish(_ index: Int, error: BioError?, readAsZeros: Bool, status: ByteBuffer?) {
        let slot = requests.remove(index)
        core.refund(slot.bytes)
        slot.answer?.deallocate()
        if let gathered = slot.gathered { input.recycle(gathered) }
        switch lifecycle.requestCompleted(inFlight: requests.count) {
        case .answer(let then):
            if let error {
                refuse(slot.header, NBDError(errno: error.errno), "\(slot.command) failed: \(error)", command: slot.command,
                       log: false)
            } else {
                reply(to: consume slot, readAsZeros: readAsZeros, status: status)
            }
            updateReading()
            perform(then)
        case .discard(let then):
            perform(then)
        }
        // The read-modify-writes that waited for this write may start (as tasks of
        // their own). One load when none waits.
        if fencedWrites != 0 { releaseFences(of: index) }
    }

    // MARK: Replies

    /// READ replies up to this long go into the reply batch, copied; longer ones are
    /// written from their own buffer. Around 16 KiB the copy costs what a write of its
    /// own through the channel does.
    static let batchedReadLength = 8 << 10
    /// The room a reply batch is made with: 15 replies to 4 KiB reads, or thousands
    /// without data.
    static let replyBatchCapacity = 64 << 10

    private func reply(to slot: consuming RequestSlot, readAsZeros: Bool, status: ByteBuffer?) {
        let header = slot.header
        switch slot.command {
        case .read:
            if readAsZeros {
                // Only with structured replies and without DF does a read ask for this.
                let extended = extendedHeaders
                sendBatched(bytes: ByteBuffer.nbdChunkHeaderSize(extended: extended) + 12) { chunk in
                    chunk.writeNBDChunkHeader(extended: extended, flags: NBDReplyFlags.done, type: .offsetHole,
                                              cookie: header.cookie, requestOffset: header.offset, length: 12)
                    chunk.writeInteger(header.offset)
                    chunk.writeInteger(UInt32(header.length))
                }
                return
            }
            // The slot gives up the buffer so this is its only reference: writing the
            // header into the space reserved before the data then copies nothing.
            var buffer = slot.buffer.take()!
            let length = Int(header.length)
            if length <= Self.batchedReadLength {
                // Copied behind the batch's other replies: a copy of a few KiB the disk
                // has just written costs less than a write of its own through the
                // channel, and the buffer is free again at once, still in the cache.
                buffer.moveReaderIndex(forwardBy: slot.headerSpace)
                buffer.moveWriterIndex(forwardBy: length)
                sendBatched(bytes: slot.headerSpace + length) { batch in
                    writeReadReplyHeader(header, into: &batch)
                    batch.writeImmutableBuffer(buffer)
                }
                readReplyBuffers.reuse(buffer)
                return
            }
            buffer.moveWriterIndex(to: buffer.readerIndex)
            writeReadReplyHeader(header, into: &buffer)
            assert(buffer.readableBytes == slot.headerSpace, "the reply header fills exactly the space kept for it")
            buffer.moveWriterIndex(forwardBy: length)
            send(buffer)
            readReplyBuffers.keep(buffer)
        case .blockStatus:
            // Every selected context's chunk, written as each answered (`statusAnswered`).
            if let status { send(status) }
        default:
            sendSuccess(header)
        }
    }

    /// The header of a successful READ's reply: a data chunk's header and offset, or a
    /// simple reply; `headerSpace` bytes either way.
    private func writeReadReplyHeader(_ header: NBDRequestHeader, into buffer: inout ByteBuffer) {
        if structuredReplies {
            buffer.writeNBDChunkHeader(extended: extendedHeaders, flags: NBDReplyFlags.done, type: .offsetData,
                                       cookie: header.cookie, requestOffset: header.offset, length: 8 + Int(header.length))
            buffer.writeInteger(header.offset)
        } else {
            buffer.writeNBDSimpleReply(error: 0, cookie: header.cookie)
        }
    }

    /// Writes the BLOCK_STATUS chunk of one context, from the extents its provider
    /// reported for the sectors the range touches, into `reply`, after the chunks of the
    /// contexts before it. Returns false when the extents say nothing of the range from the
    /// offset on.
    private func writeStatusChunk(_ header: NBDRequestHeader, extents: [BioExtent], of context: SelectedMetaContext,
                                  done: Bool, into reply: inout ByteBuffer?) -> Bool {
        let requestOne = header.flags.contains(.requestOne)
        let sectorSize = UInt64(served!.sectorSize)
        // Compact descriptors carry 32-bit lengths: longer extents are cut, on sector
        // boundaries, into pieces that fit.
        let largest = extendedHeaders ? UInt64.max : UInt64(UInt32.max) / sectorSize * sectorSize
        var descriptors: [(length: UInt64, status: UInt32)] = []
        let end = header.offset + header.length
        // The provider's first extent starts at the sector holding the offset; the
        // reply's starts at the offset.
        var skip = header.offset & (sectorSize - 1)
        for extent in extents {
            var remaining = UInt64(extent.length)
            let skipped = min(skip, remaining)
            remaining -= skipped
            skip -= skipped
            let status = context.status(of: extent.kind)
            while remaining > 0 {
                let piece = min(remaining, largest)
                descriptors.append((piece, status))
                remaining -= piece
            }
        }
        guard !descriptors.isEmpty else { return false }
        if requestOne {
            descriptors = [(min(descriptors[0].length, end - header.offset), descriptors[0].status)]
        }
        let count = min(descriptors.count, NBDLimits.maximumExtents)
        let length = extendedHeaders ? 8 + 16 * count : 4 + 8 * count
        // Taken out, so the buffer has one reference and grows in place.
        var chunk = reply.take() ?? allocator.buffer(capacity: 32 + length)
        chunk.writeNBDChunkHeader(extended: extendedHeaders, flags: done ? NBDReplyFlags.done : 0,
                                  type: extendedHeaders ? .blockStatusExtended : .blockStatus,
                                  cookie: header.cookie, requestOffset: header.offset, length: length)
        chunk.writeInteger(context.id)
        if extendedHeaders { chunk.writeInteger(UInt32(count)) }
        for descriptor in descriptors.prefix(count) {
            if extendedHeaders {
                chunk.writeInteger(descriptor.length)
                chunk.writeInteger(UInt64(descriptor.status))
            } else {
                chunk.writeInteger(UInt32(descriptor.length))
                chunk.writeInteger(descriptor.status)
            }
        }
        reply = chunk
        return true
    }

    func sendSuccess(_ header: NBDRequestHeader) {
        let extended = extendedHeaders
        sendBatched(bytes: ByteBuffer.nbdChunkHeaderSize(extended: extended)) { reply in
            if extended {
                reply.writeNBDChunkHeader(extended: true, flags: NBDReplyFlags.done, type: .none, cookie: header.cookie,
                                          requestOffset: header.offset, length: 0)
            } else {
                reply.writeNBDSimpleReply(error: 0, cookie: header.cookie)
            }
        }
    }

    /// Answers a request with an error: an error chunk with a short message when
    /// structured replies are on (a READ must never get a simple reply then), else a
    /// simple reply. Refusals of bad requests are logged once.
    func refuse(_ header: NBDRequestHeader, _ error: NBDError, _ reason: String, command: NBDCommand? = nil,
                log: Bool = true) {
        if log {
            logger.notice("request refused", metadata: ["cookie": "\(header.cookie)", "reason": "\(reason)"])
        }
        let (structured, extended) = (structuredReplies, extendedHeaders)
        let message = structured ? reason.nbdMessageBytes : []
        sendBatched(bytes: ByteBuffer.nbdChunkHeaderSize(extended: extended) + 6 + message.count) { reply in
            if structured {
                reply.writeNBDChunkHeader(extended: extended, flags: NBDReplyFlags.done, type: .error,
                                          cookie: header.cookie, requestOffset: header.offset, length: 6 + message.count)
                reply.writeInteger(error.rawValue)
                reply.writeInteger(UInt16(message.count))
                reply.writeBytes(message)
            } else {
                reply.writeNBDSimpleReply(error: error.rawValue, cookie: header.cookie)
            }
        }
    }

    private func send(_ buffer: ByteBuffer) {
        guard let context, lifecycle.channelIsOpen else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
        flushWhenDue()
    }

    /// Adds a reply of at most `bytes` bytes to the batch (`replyBatch`), flushed with the
    /// input being processed, or at once when a completion arrives outside it. A batch
    /// without room for it is written to the channel first, so a batch never grows.
    private func sendBatched(bytes: Int, _ write: (inout ByteBuffer) -> Void) {
        guard let context, lifecycle.channelIsOpen else { return }
        if let batch = replyBatch, batch.writableBytes < bytes { writeReplyBatch(on: context) }
        if replyBatch == nil {
            replyBatch = replyBatchBuffers.take(capacity: max(bytes, Self.replyBatchCapacity), allocator: allocator)
        }
        write(&replyBatch!)
        flushWhenDue()
    }

    // MARK: Backpressure

    /// Stops taking requests while too much is in flight or the client is not reading
    /// its replies; starts again below half the limits. Stopping means both: no request
    /// is decoded from what was already received, and the socket is not read.
    func updateReading() {
        // Not bound to a constant: that would retain the context, twice a request.
        guard self.context != nil, lifecycle.channelIsOpen else { return }
        let limits = core.limits
        if !lifecycle.readsInput || requests.count >= limits.requests || requests.bytes >= limits.bytes || !writable {
            pauseReading()
        } else if core.budgetSpent {
            pauseReading()
            core.starve(self)
        } else if session.paused && awaitedMetaContext == nil && requests.count <= limits.requests / 2
                    && requests.bytes <= limits.bytes / 2 {
            // Its own requests allow it; the server's budget must be back to half too,
            // or the connection waits to be woken when it is.
            guard core.budgetRecovered else {
                core.starve(self)
                return
            }
            session.paused = false
            let context = self.context!
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            context.read()
            // Requests received before the pause come first. While input is being
            // processed the loop under way picks them up itself; within a batch of
            // completions their replies are flushed with the batch's.
            if !flushing.isProcessingInput {
                process(allocator.buffer(capacity: 0))
                if flushing.repliesAwaitReadEnd { flushReplies() }
            }
        }
    }

    func pauseReading() {
        guard let context, !session.paused, lifecycle.channelIsOpen else { return }
        session.paused = true
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
    }
}
