import NIOCore
import NIOSSL
import StrataNBDProtocol

/// What a request's reply delivered, once its last chunk is in.
package enum NBDReplyOutcome: Sendable {
    case done
    case data(ByteBuffer)
    case extents([NBDBlockExtent])
}

/// What the handshake settled that the handler needs to frame and check replies.
struct NBDTransmissionSettings: Sendable, Equatable {
    var structuredReplies: Bool
    var extendedHeaders: Bool
    /// The id the server gave `base:allocation`, if it gave one.
    var metaContextID: UInt32?
}

/// The client's end of one connection: hands handshake messages to the handshake code
/// in order, then matches replies to requests in flight by cookie and completes each
/// request's promise once its reply is whole.
///
/// Everything here runs on the channel's event loop: the `NBDClient` hops there (with
/// `eventLoop.submit`) before calling any method, which is why the class can be
/// `@unchecked Sendable` without locks.
final class NBDClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// A request in flight, and what its reply chunks have delivered so far.
    private struct PendingRequest {
        let command: NBDCommand
        let flags: NBDCommandFlags
        let offset: UInt64
        let length: UInt64
        let promise: EventLoopPromise<NBDReplyOutcome>
        /// A READ's data, assembled from content chunks (zeros where holes were).
        var data: ByteBuffer?
        /// Bytes of a READ covered by content chunks, which may not overlap.
        var bytesDelivered: UInt64 = 0
        var extents: [NBDBlockExtent]?
        /// The first error chunk; later chunks are still read until DONE.
        var failure: NBDClientError?
    }

    private enum State {
        case handshake
        case transmission
        /// No new requests; NBD_CMD_DISC goes out once the last reply is in.
        case disconnecting
        case closed(NBDClientError)
    }

    let eventLoop: any EventLoop
    private let session = NBDClientSession()
    private var processor: NIOSingleStepByteToMessageProcessor<NBDClientDecoder>
    private var context: ChannelHandlerContext?
    private var state = State.handshake

    // Handshake
    private var handshakeMessages = CircularBuffer<NBDServerMessage>()
    private var handshakeWaiter: EventLoopPromise<NBDServerMessage>?
    /// Set just before GO or EXPORT_NAME goes out: the framing to switch to the moment
    /// the server accepts, before any further byte is decoded.
    private var pendingSettings: NBDTransmissionSettings?
    private var handshakeTimeout: Scheduled<Void>?

    // Transmission
    private var settings: NBDTransmissionSettings?
    private var requests: [UInt64: PendingRequest] = [:]
    private var nextCookie: UInt64 = 1

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        processor = NIOSingleStepByteToMessageProcessor(NBDClientDecoder(session: session))
    }

    /// Requests sent and not yet answered.
    var requestsInFlight: Int { requests.count }

    /// Lets READ replies as long as the server's maximum payload through the decoder.
    func acceptReads(upTo maximumPayload: UInt32) {
        session.maximumChunkLength = max(session.maximumChunkLength, UInt64(maximumPayload) + 8)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try processor.process(buffer: unwrapInboundIn(data)) { message in
                handle(message)
            }
        } catch {
            fail(.protocolViolation("undecodable input: \(error)"))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .disconnecting = state {
            fail(.connectionClosed(reason: "the client disconnected"))
        } else {
            fail(.connectionClosed(reason: "the server closed the connection"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(.connectionClosed(reason: "\(error)"))
    }

    // MARK: Handshake

    /// The next handshake message from the server, in order.
    func nextHandshakeMessage() -> EventLoopFuture<NBDServerMessage> {
        eventLoop.assertInEventLoop()
        if let message = handshakeMessages.popFirst() {
            return eventLoop.makeSucceededFuture(message)
        }
        if case .closed(let error) = state {
            return eventLoop.makeFailedFuture(error)
        }
        precondition(handshakeWaiter == nil, "one handshake message is awaited at a time")
        let promise = eventLoop.makePromise(of: NBDServerMessage.self)
        handshakeWaiter = promise
        return promise.futureResult
    }

    /// Writes a handshake message (client flags or an option).
    func send(_ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        eventLoop.assertInEventLoop()
        if case .closed(let error) = state { return eventLoop.makeFailedFuture(error) }
        guard let context else { return eventLoop.makeFailedFuture(NBDClientError.connectionClosed(reason: "no channel")) }
        // A write failed by the connection's end says why it ended (a TLS handshake that
        // failed, say), not merely that the channel was closed.
        return context.writeAndFlush(wrapOutboundOut(buffer)).flatMapError { [self] error in
            if case .closed(let reason) = state { return eventLoop.makeFailedFuture(reason) }
            return eventLoop.makeFailedFuture(error)
        }
    }

    /// Says how replies will be framed once the server accepts the GO (or the
    /// EXPORT_NAME, when `exportNameNoZeroes` is given) about to be sent.
    func prepareTransmission(_ settings: NBDTransmissionSettings, exportNameNoZeroes: Bool? = nil) {
        eventLoop.assertInEventLoop()
        pendingSettings = settings
        if let noZeroes = exportNameNoZeroes {
            session.phase = .exportNameReply(noZeroes: noZeroes)
        }
    }

    /// Puts TLS between the socket and this handler, once the server has accepted
    /// STARTTLS. What is sent next waits in it until its handshake is done; a failed
    /// handshake closes the connection, failing whatever waits.
    func startTLS(context sslContext: NIOSSLContext, hostname: String?) throws {
        eventLoop.assertInEventLoop()
        guard let context else { throw NBDClientError.connectionClosed(reason: "no channel") }
        try context.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: hostname),
                                                       position: .first)
    }

    /// Hangs up if the handshake has not finished `timeout` from now, so a silent server
    /// cannot keep `connect` waiting forever.
    func armHandshakeTimeout(_ timeout: TimeAmount) {
        eventLoop.assertInEventLoop()
        handshakeTimeout = eventLoop.scheduleTask(in: timeout) { [self] in
            if case .handshake = state {
                fail(.timedOut("the handshake did not finish within \(timeout)"))
            }
        }
    }

    /// Ends the handshake: sends NBD_OPT_ABORT (the soft disconnect of this phase) and
    /// hangs up without waiting for the ACK, which the spec allows.
    func abortHandshake() -> EventLoopFuture<Void> {
        eventLoop.assertInEventLoop()
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        guard let context else { return eventLoop.makeSucceededVoidFuture() }
        let channel = context.channel
        if case .handshake = state {
            var abort = channel.allocator.buffer(capacity: 16)
            abort.writeNBDOption(.abort)
            state = .closed(.connectionClosed(reason: "the client ended the handshake"))
            session.phase = .closed
            context.writeAndFlush(wrapOutboundOut(abort)).whenComplete { _ in channel.close(promise: nil) }
        } else if case .closed = state {
            channel.close(promise: nil)
        }
        return channel.closeFuture
    }

    // MARK: Transmission

    /// Sends a request and returns the future of its reply. `payload` is a WRITE's data.
    func submit(_ command: NBDCommand, flags: NBDCommandFlags, offset: UInt64, length: UInt64,
                payload: ByteBuffer? = nil) -> EventLoopFuture<NBDReplyOutcome> {
        eventLoop.assertInEventLoop()
        let promise = eventLoop.makePromise(of: NBDReplyOutcome.self)
        switch state {
        case .transmission:
            break
        case .handshake:
            promise.fail(NBDClientError.invalidRequest("the handshake has not finished"))
            return promise.futureResult
        case .disconnecting:
            promise.fail(NBDClientError.connectionClosed(reason: "the client is disconnecting"))
            return promise.futureResult
        case .closed(let error):
            promise.fail(error)
            return promise.futureResult
        }
        guard let context, let settings else {
            promise.fail(NBDClientError.connectionClosed(reason: "no channel"))
            return promise.futureResult
        }
        var flags = flags
        var wireLength = length
        if let payload {
            wireLength = UInt64(payload.readableBytes)
            if settings.extendedHeaders { flags.insert(.payloadLength) }
        }
        let cookie = nextCookie
        nextCookie &+= 1
        var header = context.channel.allocator.buffer(capacity: 32)
        header.writeNBDRequest(extended: settings.extendedHeaders, flags: flags, command: command, cookie: cookie,
                               offset: offset, length: wireLength)
        requests[cookie] = PendingRequest(command: command, flags: flags, offset: offset, length: length, promise: promise)
        if command == .read && !settings.structuredReplies {
            session.simpleReplyDataLength[cookie] = Int(length)
        }
        context.write(wrapOutboundOut(header), promise: nil)
        if let payload { context.write(wrapOutboundOut(payload), promise: nil) }
        context.flush()
        return promise.futureResult
    }

    /// The soft disconnect: no new requests; once every request in flight has its
    /// reply, NBD_CMD_DISC goes out and the connection closes. Completes when closed.
    func disconnect() -> EventLoopFuture<Void> {
        eventLoop.assertInEventLoop()
        guard let context else { return eventLoop.makeSucceededVoidFuture() }
        switch state {
        case .transmission:
            state = .disconnecting
            disconnectIfIdle()
        case .handshake:
            return abortHandshake()
        case .disconnecting, .closed:
            break
        }
        return context.channel.closeFuture
    }

    // MARK: Messages

    private func handle(_ message: NBDServerMessage) {
        switch message {
        case .greeting:
            session.phase = .options
            deliverHandshake(message)
        case .optionReply(let option, let type, _):
            if option == NBDOption.go.rawValue && type == NBDOptionReply.ack.rawValue, let pendingSettings {
                enterTransmission(pendingSettings)
            }
            deliverHandshake(message)
        case .exportNameReply:
            if let pendingSettings { enterTransmission(pendingSettings) }
            deliverHandshake(message)
        case .simpleReply(let error, let cookie, let data):
            handleSimpleReply(error: error, cookie: cookie, data: data)
        case .chunk(let chunk):
            handleChunk(chunk)
        case .protocolViolation(let reason):
            fail(.protocolViolation(reason))
        }
    }

    private func deliverHandshake(_ message: NBDServerMessage) {
        if let waiter = handshakeWaiter {
            handshakeWaiter = nil
            waiter.succeed(message)
        } else {
            handshakeMessages.append(message)
        }
    }

    private func enterTransmission(_ settings: NBDTransmissionSettings) {
        guard case .handshake = state else { return }
        self.settings = settings
        pendingSettings = nil
        state = .transmission
        session.phase = .transmission(structuredReplies: settings.structuredReplies,
                                      extendedHeaders: settings.extendedHeaders)
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
    }

    private func handleSimpleReply(error: UInt32, cookie: UInt64, data: ByteBuffer?) {
        guard let request = requests.removeValue(forKey: cookie) else {
            return fail(.protocolViolation("simple reply for cookie \(cookie), which is not in flight"))
        }
        session.simpleReplyDataLength[cookie] = nil
        if request.command == .read && settings?.structuredReplies == true {
            // The decoder did not expect data, so the stream may be out of step.
            requests[cookie] = request
            return fail(.protocolViolation("simple reply to a READ after structured replies were negotiated"))
        }
        if error != 0 {
            noteError(error)
            request.promise.fail(NBDClientError.request(error: error, message: nil))
        } else {
            switch request.command {
            case .read:
                request.promise.succeed(.data(data ?? ByteBuffer()))
            case .blockStatus:
                request.promise.fail(NBDClientError.protocolViolation("BLOCK_STATUS answered without a status chunk"))
            default:
                request.promise.succeed(.done)
            }
        }
        disconnectIfIdle()
    }

    private func handleChunk(_ chunk: NBDReplyChunk) {
        // Taken out of the table while the chunk is placed, so its buffer has one owner
        // and is written in place; put back unless this was the last chunk.
        guard var request = requests.removeValue(forKey: chunk.cookie) else {
            return fail(.protocolViolation("reply chunk for cookie \(chunk.cookie), which is not in flight"))
        }
        func violation(_ text: String) {
            requests[chunk.cookie] = request
            fail(.protocolViolation(text))
        }
        if let echoed = chunk.requestOffset, echoed != request.offset {
            return violation("extended reply echoes offset \(echoed) for a request at \(request.offset)")
        }
        switch chunk.content {
        case .none:
            break
        case .data(let offset, let data):
            if let problem = deliver(data: data, zeros: 0, at: offset, into: &request) {
                return violation(problem)
            }
        case .hole(let offset, let length):
            if let problem = deliver(data: nil, zeros: Int(length), at: offset, into: &request) {
                return violation(problem)
            }
        case .blockStatus(let contextID, let extents):
            if let problem = check(extents, contextID: contextID, for: request) {
                return violation(problem)
            }
            request.extents = extents.map {
                // `base:allocation` uses the low 32 bits; anything above is not ours to keep.
                NBDBlockExtent(length: $0.length, status: $0.status & 0xffff_ffff)
            }
        case .error(let code, let message, let offset):
            if let offset, offset < request.offset || offset - request.offset >= max(request.length, 1) {
                return violation("error at offset \(offset), outside the request at \(request.offset)+\(request.length)")
            }
            noteError(code)
            if request.failure == nil {
                let text = offset.map { message.isEmpty ? "at offset \($0)" : "\(message) (at offset \($0))" } ?? message
                request.failure = .request(error: code, message: text)
            }
        }
        if chunk.isDone {
            finish(request)
            disconnectIfIdle()
        } else {
            requests[chunk.cookie] = request
        }
    }

    /// Places a content chunk (data, or `zeros` bytes of hole) into a READ's buffer.
    /// Returns why the chunk breaks the protocol, if it does.
    private func deliver(data: ByteBuffer?, zeros: Int, at offset: UInt64, into request: inout PendingRequest) -> String? {
        guard request.command == .read else { return "content chunk in the reply to \(request.command)" }
        let count = UInt64(data?.readableBytes ?? zeros)
        guard offset >= request.offset, count <= request.length, offset - request.offset <= request.length - count else {
            return "content chunk at \(offset)+\(count) outside the READ at \(request.offset)+\(request.length)"
        }
        guard request.bytesDelivered + count <= request.length else {
            return "content chunks of the READ at \(request.offset)+\(request.length) overlap"
        }
        request.bytesDelivered += count
        let position = Int(offset - request.offset)
        if request.data == nil, let data, count == request.length {
            // The common case, one chunk with all the data: keep it without a copy.
            request.data = data
            return nil
        }
        if request.data == nil {
            // Several chunks: assemble them in a zeroed buffer, so holes need no work.
            var buffer = ByteBufferAllocator().buffer(capacity: Int(request.length))
            buffer.writeRepeatingByte(0, count: Int(request.length))
            request.data = buffer
        } else if data == nil {
            // The buffer started zeroed and chunks may not overlap, so this is already
            // zero; writing it keeps the meaning of a hole explicit and cheap.
            request.data!.setRepeatingByte(0, count: zeros, at: request.data!.readerIndex + position)
        }
        if let data {
            request.data!.setBuffer(data, at: request.data!.readerIndex + position)
        }
        return nil
    }

    private func check(_ extents: [NBDBlockExtent], contextID: UInt32, for request: PendingRequest) -> String? {
        guard request.command == .blockStatus else { return "status chunk in the reply to \(request.command)" }
        guard contextID == settings?.metaContextID else { return "status chunk for context \(contextID), which was not selected" }
        guard request.extents == nil else { return "two status chunks for context \(contextID)" }
        guard !extents.isEmpty else { return "status chunk without extents" }
        guard !extents.contains(where: { $0.length == 0 }) else { return "status chunk with an extent of length 0" }
        if request.flags.contains(.requestOne) && (extents.count != 1 || extents[0].length > request.length) {
            return "REQ_ONE answered with \(extents.count) extents, the first \(extents[0].length) of \(request.length) bytes"
        }
        return nil
    }

    /// Completes a request whose last chunk is in.
    private func finish(_ request: PendingRequest) {
        if let failure = request.failure {
            request.promise.fail(failure)
            return
        }
        switch request.command {
        case .read:
            guard request.bytesDelivered == request.length else {
                request.promise.fail(NBDClientError.protocolViolation(
                    "the reply to the READ at \(request.offset)+\(request.length) covers \(request.bytesDelivered) bytes"))
                return
            }
            request.promise.succeed(.data(request.data ?? ByteBuffer()))
        case .blockStatus:
            guard let extents = request.extents else {
                request.promise.fail(NBDClientError.protocolViolation("BLOCK_STATUS answered without a status chunk"))
                return
            }
            request.promise.succeed(.extents(extents))
        default:
            request.promise.succeed(.done)
        }
    }

    /// A server that answers ESHUTDOWN is going away; the spec asks the client for a
    /// soft disconnect then.
    private func noteError(_ error: UInt32) {
        if error == NBDError.shutdown.rawValue, case .transmission = state {
            state = .disconnecting
        }
    }

    private func disconnectIfIdle() {
        guard case .disconnecting = state, requests.isEmpty, let context else { return }
        guard session.phase != .closed else { return }
        let extended = settings?.extendedHeaders ?? false
        var request = context.channel.allocator.buffer(capacity: 32)
        request.writeNBDRequest(extended: extended, flags: [], command: .disconnect, cookie: nextCookie, offset: 0, length: 0)
        nextCookie &+= 1
        // The server sends nothing after DISC; hanging up once it is written is clean.
        session.phase = .closed
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(request)).whenComplete { _ in channel.close(promise: nil) }
    }

    // MARK: Failure

    /// The connection cannot go on: every waiter and request fails with `error`, and
    /// the channel closes. Only the first failure counts.
    private func fail(_ error: NBDClientError) {
        if case .closed = state { return }
        state = .closed(error)
        session.phase = .closed
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        let waiter = handshakeWaiter
        handshakeWaiter = nil
        let pending = requests
        requests = [:]
        session.simpleReplyDataLength = [:]
        waiter?.fail(error)
        for request in pending.values { request.promise.fail(error) }
        context?.close(promise: nil)
    }
}
