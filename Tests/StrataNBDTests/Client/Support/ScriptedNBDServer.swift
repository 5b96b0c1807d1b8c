import Foundation
import NIOCore
import NIOPosix
import StrataNBD
import StrataNBDClient
import StrataNBDProtocol
import Synchronization

/// A fake NBD server on a Unix socket whose transmission replies the test writes byte
/// for byte: several chunks per READ, holes, error chunks, replies out of order and
/// interleaved, hanging up mid-flight. Things no well-behaved server does on demand,
/// but which the client must get right.
///
/// The handshake is canned: fixed newstyle with NO_ZEROES; EXTENDED_HEADERS and
/// STRUCTURED_REPLY acknowledged or refused with ERR_UNSUP as `Options` say;
/// `base:allocation` selected with `Options.metaContextID`; GO answered with
/// INFO_EXPORT, INFO_BLOCK_SIZE (512, 4096, 1 MiB) and ACK, or refused; EXPORT_NAME
/// answered with the size and flags.
final class ScriptedNBDServer: Sendable {
    struct Options: Sendable {
        var size: UInt64 = 1 << 20
        var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendCache]
        var extendedHeaders = true
        var structuredReplies = true
        var metaContextID: UInt32 = 7
        /// GO is refused with this reply and message.
        var goRefusal: (reply: NBDOptionReply, message: String)?
        /// What LIST answers.
        var exports = ["disk0"]
        /// Replies are held until this many requests have arrived, then sent newest
        /// request first, with the chunks of different requests interleaved.
        var batch = 1
        /// Say nothing at all, not even the greeting.
        var silent = false
    }

    /// How to answer one request.
    enum Reply: Sendable {
        case send([ByteBuffer])
        /// Close the connection (requests held for the batch stay unanswered).
        case hangUp
    }

    /// The reply style the client negotiated, with builders for reply bytes.
    struct Framing: Sendable {
        var extended: Bool
        var structured: Bool

        func chunk(_ type: NBDReplyType, done: Bool = true, cookie: UInt64, requestOffset: UInt64,
                   _ payload: (inout ByteBuffer) -> Void = { _ in }) -> ByteBuffer {
            var body = ByteBuffer()
            payload(&body)
            var chunk = ByteBuffer()
            chunk.writeNBDChunkHeader(extended: extended, flags: done ? NBDReplyFlags.done : 0, type: type, cookie: cookie,
                                      requestOffset: requestOffset, length: body.readableBytes)
            chunk.writeBuffer(&body)
            return chunk
        }

        func simple(error: UInt32 = 0, cookie: UInt64, data: [UInt8] = []) -> ByteBuffer {
            var reply = ByteBuffer()
            reply.writeNBDSimpleReply(error: error, cookie: cookie)
            reply.writeBytes(data)
            return reply
        }

        /// The usual success reply for a request without data.
        func success(_ header: NBDRequestHeader) -> ByteBuffer {
            extended ? chunk(.none, cookie: header.cookie, requestOffset: header.offset) : simple(cookie: header.cookie)
        }
    }

    typealias Responder = @Sendable (_ header: NBDRequestHeader, _ payload: ByteBuffer?, _ framing: Framing) -> Reply

    let socket: String
    let options: Options
    private let directory: String
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let listener: Mutex<(any Channel)?> = Mutex(nil)
    /// Every request received, DISC included, in order of arrival.
    let requests: Mutex<[NBDRequestHeader]> = Mutex([])
    /// The options received, in order.
    let optionsReceived: Mutex<[UInt32]> = Mutex([])
    private let responder: Responder

    init(_ options: Options = Options(), respond: @escaping Responder) {
        self.options = options
        responder = respond
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("strata-nbd-scripted-\(UUID().uuidString.prefix(8))").path
        socket = directory + "/nbd.sock"
    }

    func start() async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ScriptedConnection(server: self))
                }
            }
            .bind(unixDomainSocketPath: socket, cleanupExistingSocketFile: true).get()
        listener.withLock { $0 = channel }
    }

    func stop() async {
        let channel = listener.withLock { channel in
            defer { channel = nil }
            return channel
        }
        try? await channel?.close()
        try? await group.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: directory)
    }

    var address: NBDClient.Address { .unix(path: socket) }

    fileprivate func respond(_ header: NBDRequestHeader, _ payload: ByteBuffer?, _ framing: Framing) -> Reply {
        responder(header, payload, framing)
    }
}

/// One connection of the scripted server.
private final class ScriptedConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let server: ScriptedNBDServer
    let phase = NBDSessionPhase()
    var processor: NIOSingleStepByteToMessageProcessor<NBDServerDecoder>
    var framing = ScriptedNBDServer.Framing(extended: false, structured: false)
    var held: [[ByteBuffer]] = []

    init(server: ScriptedNBDServer) {
        self.server = server
        processor = NIOSingleStepByteToMessageProcessor(NBDServerDecoder(session: phase))
    }

    func channelActive(context: ChannelHandlerContext) {
        guard !server.options.silent else { return }
        var greeting = ByteBuffer()
        greeting.writeNBDGreeting(flags: NBDHandshakeFlags.fixedNewstyle | NBDHandshakeFlags.noZeroes)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        try? processor.process(buffer: unwrapInboundIn(data)) { message in
            handle(message, context: context)
        }
    }

    private func handle(_ message: NBDClientMessage, context: ChannelHandlerContext) {
        switch message {
        case .clientFlags:
            phase.phase = .options
        case .option(let code, let data):
            server.optionsReceived.withLock { $0.append(code) }
            option(code, data, context: context)
        case .request(let header, let payload):
            server.requests.withLock { $0.append(header) }
            request(header, payload, context: context)
        case .oversizedOption, .oversizedRequest, .protocolViolation:
            context.close(promise: nil)
        }
    }

    private func reply(_ code: UInt32, _ type: NBDOptionReply, context: ChannelHandlerContext,
                       _ payload: (inout ByteBuffer) -> Void = { _ in }) {
        var body = ByteBuffer()
        payload(&body)
        var reply = ByteBuffer()
        reply.writeNBDOptionReply(option: code, type: type, length: body.readableBytes)
        reply.writeBuffer(&body)
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }

    private func option(_ code: UInt32, _ data: ByteBuffer, context: ChannelHandlerContext) {
        let options = server.options
        switch NBDOption(rawValue: code) {
        case .extendedHeaders where options.extendedHeaders:
            framing = .init(extended: true, structured: true)
            reply(code, .ack, context: context)
        case .structuredReply where options.structuredReplies:
            framing.structured = true
            reply(code, .ack, context: context)
        case .setMetaContext:
            reply(code, .metaContext, context: context) {
                $0.writeInteger(options.metaContextID)
                $0.writeString(NBDMetaContext.baseAllocation)
            }
            reply(code, .ack, context: context)
        case .list:
            for name in options.exports {
                reply(code, .server, context: context) {
                    $0.writeInteger(UInt32(name.utf8.count))
                    $0.writeString(name)
                }
            }
            reply(code, .ack, context: context)
        case .go:
            if let refusal = options.goRefusal {
                reply(code, refusal.reply, context: context) { $0.writeString(refusal.message) }
                return
            }
            reply(code, .info, context: context) {
                $0.writeInteger(NBDInfo.export.rawValue)
                $0.writeInteger(options.size)
                $0.writeInteger(options.flags.rawValue)
            }
            reply(code, .info, context: context) {
                $0.writeInteger(NBDInfo.blockSize.rawValue)
                $0.writeInteger(UInt32(512))
                $0.writeInteger(UInt32(4096))
                $0.writeInteger(UInt32(1 << 20))
            }
            reply(code, .ack, context: context)
            phase.phase = .transmission(extendedHeaders: framing.extended)
        case .exportName:
            var answer = ByteBuffer()
            answer.writeInteger(options.size)
            answer.writeInteger(options.flags.rawValue)
            context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
            phase.phase = .transmission(extendedHeaders: framing.extended)
        case .abort:
            reply(code, .ack, context: context)
            context.close(promise: nil)
        default:
            reply(code, .errorUnsupported, context: context) { $0.writeString("not in the script") }
        }
    }

    private func request(_ header: NBDRequestHeader, _ payload: ByteBuffer?, context: ChannelHandlerContext) {
        if header.type == NBDCommand.disconnect.rawValue {
            phase.phase = .closed
            context.close(promise: nil)
            return
        }
        switch server.respond(header, payload, framing) {
        case .hangUp:
            phase.phase = .closed
            context.close(promise: nil)
        case .send(let buffers):
            held.append(buffers)
            guard held.count >= server.options.batch else { return }
            // Newest request first, one chunk of each request in turn.
            var queues = held.reversed().map { $0[...] }
            held = []
            while queues.contains(where: { !$0.isEmpty }) {
                for index in queues.indices {
                    if let next = queues[index].popFirst() { context.write(wrapOutboundOut(next), promise: nil) }
                }
            }
            context.flush()
        }
    }
}
