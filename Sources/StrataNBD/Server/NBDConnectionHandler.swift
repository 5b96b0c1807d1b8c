import Dispatch
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Strata
import StrataNBDProtocol

/// One client connection: the handshake, then requests mapped onto bio requests sent to
/// the export's provider, replies written as requests complete, in any order.
///
/// Everything here runs on the channel's event loop, except `bioDone`, which hands a
/// request that completed on another thread (a file disk's worker or io_uring reaper, a
/// large read's queue) to it, in batches.
final class NBDConnectionHandler: ChannelInboundHandler, BioDoneHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let core: NBDServerCore
    let eventLoop: any EventLoop
    /// Where large reads are sent to the provider from (`offloadedReadLength`), or nil
    /// to send every request from the event loop.
    let largeReadQueue: DispatchQueue?
    let session = NBDSessionPhase()
    // The state below is read and written on the connection's event loop only, several
    // times per request. `@exclusivity(unchecked)`: Swift would otherwise check each
    // access to a class's stored property at run time (a thread-local lookup and a
    // record per access, about a tenth of the event loop's time under 4 KiB I/O);
    // the single-thread confinement is what keeps the accesses apart.
    @exclusivity(unchecked) var input: NBDServerInput
    @exclusivity(unchecked) var context: ChannelHandlerContext?
    /// The channel's allocator and writability, kept here as they change (set when the
    /// handler is added, and on every writability change) rather than asked of the
    /// channel per request.
    @exclusivity(unchecked) var allocator = ByteBufferAllocator()
    @exclusivity(unchecked) var writable = true
    @exclusivity(unchecked) var logger: Logger
    @exclusivity(unchecked) var peer = "unknown peer"
    /// Closes the connection if the client has not started transmission in time
    /// (`Limits.handshakeTimeout`); cancelled once it has, or once it closed.
    private var handshakeDeadline: Scheduled<Void>?

    // Negotiated in the handshake.
    @exclusivity(unchecked) var fixedNewstyle = false
    @exclusivity(unchecked) var noZeroes = false
    @exclusivity(unchecked) var structuredReplies = false
    @exclusivity(unchecked) var extendedHeaders = false
    /// The metadata contexts BLOCK_STATUS reports, in the order its chunks go out: the
    /// last SET_META_CONTEXT's, if it named the export transmission started on.
    @exclusivity(unchecked) var metaContexts: [SelectedMetaContext] = []
    /// The export the last SET_META_CONTEXT named.
    @exclusivity(unchecked) var metaContextExport: ServedExport?
    /// A LIST or SET_META_CONTEXT whose export's provider has not listed its dirty
    /// bitmaps yet. Options are not read meanwhile (`session.paused`).
    @exclusivity(unchecked) var awaitedMetaContext: MetaContextQuery?
    /// Where TLS stands on this connection (`NBD_OPT_STARTTLS`).
    @exclusivity(unchecked) var tls = ConnectionTLS.plain

    // Transmission state.
    @exclusivity(unchecked) var served: ServedExport?
    @exclusivity(unchecked) var consumer: Consumer?
    @exclusivity(unchecked) var requests = RequestTable()
    /// Where the connection is in its life, and so whether it takes requests, answers
    /// them, and when it closes (`ConnectionLifecycle`).
    @exclusivity(unchecked) var lifecycle = ConnectionLifecycle()
    /// The handler itself, from the start of transmission until the channel has closed
    /// with nothing in flight. Requests hold their done handler unowned, and a closed
    /// connection's pipeline lets go of its handler, so something must keep it until the
    /// last request is answered. Held for the whole transmission, not per request: taking
    /// and dropping it as the count of requests went through zero cost a retain and a
    /// task on the event loop per request at low queue depths.
    @exclusivity(unchecked) var heldUntilClosed: NBDConnectionHandler?
    /// Whether replies written now are flushed at once or at the end of the work under
    /// way (`ReplyFlushing`).
    @exclusivity(unchecked) var flushing = ReplyFlushing()
    /// Requests that completed on other threads, waiting for the event loop. The first
    /// one in schedules a drain, which answers all that came in by then and flushes once:
    /// one task and one socket write per batch rather than per request.
    let completedElsewhere = NIOLockedValueBox<[UnmanagedBio]>([])
    /// The drain's own array, swapped with `completedElsewhere`'s so that neither
    /// allocates once both have grown (event loop only).
    @exclusivity(unchecked) var drained: [UnmanagedBio] = []
    /// Transmission replies (successes, errors, hole chunks, short reads' data) gathered
    /// while input is processed and written as one buffer when the batch is flushed or
    /// full: one pipeline write per batch rather than per reply. Replies of different
    /// requests may go in any order, so a long READ's data written meanwhile may pass
    /// them.
    @exclusivity(unchecked) var replyBatch: ByteBuffer?
    /// Read buffers and reply batches, used again once the channel has written them (or
    /// at once, for a read whose reply was copied into a batch): no allocation per request
    /// once the connection is warm.
    @exclusivity(unchecked) var readReplyBuffers = ReplyBuffers()
    @exclusivity(unchecked) var replyBatchBuffers = ReplyBuffers()
    /// The connection's socket, for busy polling; -1 when unknown (a channel the server
    /// did not accept itself). Closed once the channel is: polling stops as soon as the
    /// connection takes no more requests, before its number can be another file's.
    let descriptor: Int32
    /// The event loop's poller, counting this connection while it is open.
    let poller: BusyPoller?
    /// Requests in the input read since the last `channelReadComplete`.
    @exclusivity(unchecked) var requestsThisRead = 0
    /// By slot: the read-modify-writes (`SectorLocks` holds) waiting for this
    /// connection's write in that slot to complete. Empty unless unaligned writes meet
    /// aligned ones on the provider.
    @exclusivity(unchecked) var fenceWaiters: [Int: [UInt64]] = [:]
    /// `fenceWaiters.count`, all a request's completion looks at: one load.
    @exclusivity(unchecked) var fencedWrites = 0
    /// The slots of aligned writes parked behind read-modify-writes, by their hold.
    @exclusivity(unchecked) var parkedWrites: [UInt64: Int] = [:]
    /// The read-modify-writes of this connection's unaligned writes, by slot.
    @exclusivity(unchecked) var rewrites: [Int: UnalignedWrite] = [:]
    /// By slot: the BLOCK_STATUS requests whose contexts are asked one after another, with
    /// the chunks of those that have answered. Empty unless several contexts are selected.
    @exclusivity(unchecked) var statusReplies: [Int: PartialStatusReply] = [:]

    init(core: NBDServerCore, eventLoop: any EventLoop, largeReadQueue: DispatchQueue? = nil,
         descriptor: Int32 = -1, poller: BusyPoller? = nil) {
        self.core = core
        self.eventLoop = eventLoop
        self.largeReadQueue = largeReadQueue
        self.descriptor = descriptor
        self.poller = descriptor >= 0 ? poller : nil
        self.logger = core.logger
        input = NBDServerInput(session: session, maximumPayload: core.limits.maximumRequest)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        allocator = context.channel.allocator
        writable = context.channel.isWritable
    }

    /// The context holds this handler, so holding the context past removal would keep
    /// both alive, with the pipeline and any buffered input, once per connection.
    /// Removal comes after `channelInactive`: every later use of `context` (a request
    /// completing on a disk's worker) finds the channel closed first.
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        peer = context.channel.remoteAddress.map { "\($0)" } ?? "local peer"
        logger[metadataKey: "peer"] = "\(peer)"
        core.register(self)
        poller?.connections += 1
        let limit = core.limits.handshakeTimeout
        handshakeDeadline = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(limit.wholeNanoseconds))) { [self] in
            switch session.phase {
            case .clientFlags, .options: break
            case .transmission, .closed: return
            }
            core.handshakeTimedOut(peer: peer, logger: logger)
            close(.now)
        }
        var greeting = context.channel.allocator.buffer(capacity: 18)
        greeting.writeNBDGreeting(flags: NBDHandshakeFlags.fixedNewstyle | NBDHandshakeFlags.noZeroes)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lifecycle.inputArrived()
        poller?.inputArrived()
        process(unwrapInboundIn(data))
    }

    /// Decodes and handles what `bytes` completes, plus anything buffered before.
    func process(_ bytes: ByteBuffer) {
        flushing.inputBegan()
        // The requests of one read go to the providers under one plug (`BioPlug`): a
        // memory disk starts fetching every read's source before it copies the first,
        // and a file disk's io_uring takes them all in one system call.
        BioPlug.withPlug {
            input.process(bytes) { received in
                switch received {
                case .message(let message): handle(message)
                case .gatheredWrite(let header, let payload): handleRequest(header, payload: nil, gathered: payload)
                }
            }
        }
        flushing.inputEnded()
        if case .starting = tls { beginTLS() }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if flushing.repliesAwaitReadEnd { flushReplies() }
        context.fireChannelReadComplete()
        let requestsRead = requestsThisRead
        requestsThisRead = 0
        if requestsRead == 1 {
            awaitNextRequest()
        } else if requestsRead > 1 {
            poller?.clientPipelines()
        }
        if requestsRead > 0, let poller, poller.coalesces {
            poller.readEnded(requests: requestsRead, idle: waitsForClient)
        }
    }

    /// Everything answered, reading on, room to reply: what comes next is the client's.
    private var waitsForClient: Bool {
        requests.count == 0 && !session.paused && writable && lifecycle.takesRequests
    }

    /// Polls for the client's next request before the loop sleeps, when the loop serves
    /// only this connection and it is idle: everything answered, reading on, room to
    /// reply. With a request in flight, what comes next is its completion, which a
    /// socket poll would not see. Called only after a read that brought one request,
    /// a client's turn at queue depth 1. A client that keeps several coming usually has
    /// sent the next before it is answered, so the loop would not sleep, and a poll would
    /// be one more system call per read (about 7% of the server's time per request at
    /// QD32); one whose requests still come one per read is caught by the poller, which
    /// skips polls while they find input at once or after a read that brought more than
    /// one request (`BusyPoller.clientPipelines`). A read that brought none is part of
    /// the handshake or of a request still arriving, and more of it is on its way anyway.
    private func awaitNextRequest() {
        guard let poller, poller.mayPoll, waitsForClient else { return }
        _ = poller.awaitInput(on: descriptor)
    }

    /// Writes the gathered small replies and flushes everything written.
    func flushReplies() {
        guard let context else { return }
        flushing.flushed()
        writeReplyBatch(on: context)
        context.flush()
        readReplyBuffers.flushed()
        replyBatchBuffers.flushed()
    }

    /// Writes the gathered small replies, if any, without flushing.
    func writeReplyBatch(on context: ChannelHandlerContext) {
        guard let batch = replyBatch.take() else { return }
        context.write(wrapOutboundOut(batch), promise: nil)
        replyBatchBuffers.keep(batch)
    }

    /// Flushes what was just written now, or leaves it to the end of the input being
    /// handled or the batch of completions being answered.
    func flushWhenDue() {
        if flushing.replyWritten() { flushReplies() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        writable = context.channel.isWritable
        updateReading()
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshakeDeadline?.cancel()
        handshakeDeadline = nil
        poller?.connections -= 1
        session.phase = .closed
        perform(lifecycle.channelClosed(inFlight: requests.count))
        core.unregister(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if case .handshaking = tls {
            core.tlsHandshakeFailed(peer: peer, error: error, logger: logger)
        } else {
            logger.info("connection error, closing", metadata: ["error": "\(error)"])
        }
        close(.now)
    }

    // MARK: Messages

    private func handle(_ message: NBDClientMessage) {
        switch message {
        case .clientFlags(let flags):
            let known = NBDHandshakeFlags.clientFixedNewstyle | NBDHandshakeFlags.clientNoZeroes
            guard flags & ~known == 0 else {
                violation("unknown client flags 0x\(String(flags, radix: 16))")
                return
            }
            fixedNewstyle = flags & NBDHandshakeFlags.clientFixedNewstyle != 0
            noZeroes = flags & NBDHandshakeFlags.clientNoZeroes != 0
            session.phase = .options
        case .option(let code, let data):
            handleOption(code: code, data: data)
        case .oversizedOption(let code, let length):
            reject(option: code, .errorTooBig, "option data of \(length) bytes is too long")
        case .request(let header, let payload):
            handleRequest(header, payload: payload)
        case .oversizedRequest(let header):
            refuse(header, .overflow, "payload of \(header.length) bytes is over the \(core.limits.maximumRequest)-byte maximum")
        case .protocolViolation(let reason):
            violation(reason)
        }
    }

    // MARK: Option haggling

    private func handleOption(code: UInt32, data: ByteBuffer) {
        if core.tlsMode == .require, !tls.isUp, code != NBDOption.startTLS.rawValue, code != NBDOption.abort.rawValue {
            guard code != NBDOption.exportName.rawValue else {
                // EXPORT_NAME has no error reply: all the server can do is hang up.
                logger.notice("refused EXPORT_NAME before TLS")
                return close(.now)
            }
            return reject(option: code, .errorTLSRequired, "TLS is required: send STARTTLS first")
        }
        guard let option = NBDOption(rawValue: code) else {
            reject(option: code, .errorUnsupported, "option \(code) is not supported")
            return
        }
        switch option {
        case .exportName:
            exportName(data)
        case .abort:
            sendOptionReply(code, .ack)
            close(.afterWrites)
        case .list:
            guard data.readableBytes == 0 else { return reject(option: code, .errorInvalid, "LIST takes no data") }
            for served in core.exports where refusal(of: served) == nil {
                // The name, then (the spec's "details") the description, which
                // `nbdinfo --list` shows.
                let name = Array(served.export.name.utf8)
                let description = Array((served.export.description ?? "").utf8)
                sendOptionReply(code, .server, payload: {
                    $0.writeInteger(UInt32(name.count))
                    $0.writeBytes(name)
                    $0.writeBytes(description)
                })
            }
            sendOptionReply(code, .ack)
        case .startTLS:
            startTLS(code: code, data: data)
        case .info, .go:
            infoOrGo(code: code, data: data, go: option == .go)
        case .structuredReply:
            guard data.readableBytes == 0 else {
                return reject(option: code, .errorInvalid, "STRUCTURED_REPLY takes no data")
            }
            structuredReplies = true
            sendOptionReply(code, .ack)
        case .extendedHeaders:
            guard data.readableBytes == 0 else {
                return reject(option: code, .errorInvalid, "EXTENDED_HEADERS takes no data")
            }
            extendedHeaders = true
            structuredReplies = true
            sendOptionReply(code, .ack)
        case .listMetaContext, .setMetaContext:
            metaContext(code: code, data: data, set: option == .setMetaContext)
        }
    }

    private func exportName(_ data: ByteBuffer) {
        var data = data
        let name = data.readString(length: data.readableBytes) ?? ""
        guard !extendedHeaders, let served = core.export(named: name), refusal(of: served) == nil else {
            // EXPORT_NAME has no error reply: all the server can do is hang up.
            logger.notice("refused EXPORT_NAME", metadata: ["export": "\(name)"])
            close(.now)
            return
        }
        guard startTransmission(served) else { return }
        var reply = context!.channel.allocator.buffer(capacity: 134)
        reply.writeInteger(served.size)
        reply.writeInteger(served.flags.rawValue)
        if !noZeroes { reply.writeRepeatingByte(0, count: 124) }
        context!.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }

    private func infoOrGo(code: UInt32, data: ByteBuffer, go: Bool) {
        var data = data
        guard let nameLength = data.readInteger(as: UInt32.self), Int(nameLength) <= data.readableBytes - 2,
              let name = data.readString(length: Int(nameLength)),
              let count = data.readInteger(as: UInt16.self), data.readableBytes == Int(count) * 2 else {
            return reject(option: code, .errorInvalid, "malformed INFO/GO request")
        }
        var requested: Set<UInt16> = []
        for _ in 0..<count { requested.insert(data.readInteger(as: UInt16.self)!) }
        guard let served = core.export(named: name) else {
            return reject(option: code, .errorUnknown, "no export named '\(name)'")
        }
        if let refusal = refusal(of: served) { return reject(option: code, refusal.reply, refusal.message) }
        if go, core.isStopping {
            return reject(option: code, .errorShutdown, "the server is shutting down")
        }
        sendOptionReply(code, .info) {
            $0.writeInteger(NBDInfo.export.rawValue)
            $0.writeInteger(served.size)
            $0.writeInteger(served.flags.rawValue)
        }
        if requested.contains(NBDInfo.name.rawValue) {
            let bytes = Array(served.export.name.utf8)
            sendOptionReply(code, .info) { $0.writeInteger(NBDInfo.name.rawValue); $0.writeBytes(bytes) }
        }
        if requested.contains(NBDInfo.description.rawValue), let description = served.export.description {
            let bytes = Array(description.utf8)
            sendOptionReply(code, .info) { $0.writeInteger(NBDInfo.description.rawValue); $0.writeBytes(bytes) }
        }
        // Always sent, for the maximum payload. The minimum is 1: any byte range is
        // served (NBD.md, "Any byte range").
        sendOptionReply(code, .info) {
            $0.writeInteger(NBDInfo.blockSize.rawValue)
            $0.writeInteger(UInt32(served.minimumBlockSize))
            $0.writeInteger(UInt32(served.preferredBlockSize))
            $0.writeInteger(UInt32(served.maximumPayload))
        }
        guard go else {
            sendOptionReply(code, .ack)
            return
        }
        guard startTransmission(served, option: code) else { return }
        sendOptionReply(code, .ack)
    }

    /// Opens the export for this connection and switches to transmission.
    private func startTransmission(_ served: ServedExport, option: UInt32? = nil) -> Bool {
        do {
            let consumer = try openConsumer(of: served, writing: !served.export.readOnly)
            self.consumer = consumer
            served.opened(consumer)
            served.sectorLocks.register(self)
        } catch {
            logger.warning("cannot open export", metadata: ["export": "\(served.export.name)", "error": "\(error)"])
            if let option {
                reject(option: option, .errorPlatform, "cannot open the export")
            } else {
                close(.now)
            }
            return false
        }
        self.served = served
        logger[metadataKey: "export"] = "\(served.export.name)"
        if metaContextExport !== served {
            // The spec's contexts are an export's: a client must select them for the export
            // it goes on to use. BLOCK_STATUS is refused until it has.
            if !metaContexts.isEmpty {
                logger.notice("metadata contexts selected for another export dropped",
                              metadata: ["selected-for": "\(metaContextExport?.export.name ?? "")"])
            }
            metaContexts = []
        }
        metaContextExport = nil
        session.phase = .transmission(extendedHeaders: extendedHeaders)
        handshakeDeadline?.cancel()
        handshakeDeadline = nil
        perform(lifecycle.transmissionStarted())
        logger.debug("transmission started", metadata: ["structured": "\(structuredReplies)", "extended": "\(extendedHeaders)"])
        return true
    }

    /// A consumer of the export's provider, open for reading, and for writing if
    /// `writing`. Under the topology lock: a server stopping withers its export geoms once
    /// the connections it knows of have closed, and a connection accepted just before the
    /// stop may get here after that.
    func openConsumer(of served: ServedExport, writing: Bool) throws -> Consumer {
        let topology = core.topology
        return try topology.withLock {
            guard served.geom.topology === topology else { throw StrataError(.shutdown, "the server is stopping") }
            let consumer = topology.createConsumer(for: served.geom)
            do {
                try topology.attach(consumer, to: served.provider)
                try topology.access(consumer, read: 1, write: writing ? 1 : 0, exclusive: 0)
            } catch {
                topology.destroy(consumer)
                throw error
            }
            return consumer
        }
    }

    // MARK: Replies during the handshake

    func sendOptionReply(_ option: UInt32, _ type: NBDOptionReply, payload: ((inout ByteBuffer) -> Void)? = nil) {
        guard let context else { return }
        var body = context.channel.allocator.buffer(capacity: 64)
        payload?(&body)
        var reply = context.channel.allocator.buffer(capacity: 20 + body.readableBytes)
        reply.writeNBDOptionReply(option: option, type: type, length: body.readableBytes)
        reply.writeBuffer(&body)
        context.write(wrapOutboundOut(reply), promise: nil)
        flushWhenDue()
    }

    /// Refuses an option with an error reply carrying a short message, logged once.
    func reject(option: UInt32, _ type: NBDOptionReply, _ message: String) {
        logger.notice("option refused", metadata: ["option": "\(option)", "reason": "\(message)"])
        guard fixedNewstyle else {
            // Old-style newstyle clients cannot read error replies.
            close(.now)
            return
        }
        let bytes = message.nbdMessageBytes
        sendOptionReply(option, type) { $0.writeBytes(bytes) }
    }

    /// Input that cannot be NBD: log the reason and drop this connection only.
    func violation(_ reason: String) {
        logger.notice("protocol violation, dropping connection", metadata: ["reason": "\(reason)"])
        close(.now)
    }
}
