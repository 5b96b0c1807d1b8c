import NIOCore
import StrataNBDProtocol

/// What the handshake learnt about the export and agreed with the server.
struct NBDNegotiatedExport: Sendable {
    var name: String
    var description: String?
    var size: UInt64
    var transmissionFlags: NBDTransmissionFlags
    var blockSizes: NBDClient.BlockSizes
    var settings: NBDTransmissionSettings
}

/// The fixed newstyle handshake, from the client's side, written as a conversation:
/// send an option, read its replies, decide. The handler delivers the server's
/// messages in order; nothing here touches the channel directly.
struct NBDClientHandshake {
    let handler: NBDClientHandler

    /// The replies to one option: the informational ones (SERVER, INFO, META_CONTEXT)
    /// and the final one, an ACK or an error.
    struct Answer {
        var option: NBDOption
        var replies: [(type: UInt32, data: ByteBuffer)]
        var final: UInt32
        var finalData: ByteBuffer

        var accepted: Bool { final == NBDOptionReply.ack.rawValue }

        /// The error to throw for a refusal, with the server's message.
        var refusal: NBDClientError {
            var data = finalData
            let message = data.readString(length: data.readableBytes) ?? ""
            return .optionRefused(option: option.rawValue, reply: final, message: message)
        }

        /// ERR_SHUTDOWN obliges the client to give up (with a soft disconnect).
        var isShutdown: Bool { final == NBDOptionReply.errorShutdown.rawValue }
    }

    // MARK: Conversation

    private func receive() async throws -> NBDServerMessage {
        let handler = self.handler
        return try await handler.eventLoop.flatSubmit { handler.nextHandshakeMessage() }.get()
    }

    private func send(_ write: (inout ByteBuffer) -> Void) async throws {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        write(&buffer)
        let handler = self.handler
        let message = buffer
        try await handler.eventLoop.flatSubmit { handler.send(message) }.get()
    }

    /// Reads the greeting and answers with the client flags. Returns whether the server
    /// leaves out the 124 zeros after an EXPORT_NAME reply.
    func greet() async throws -> Bool {
        guard case .greeting(let flags) = try await receive() else {
            throw NBDClientError.protocolViolation("the server did not start with a greeting")
        }
        guard flags & NBDHandshakeFlags.fixedNewstyle != 0 else {
            throw NBDClientError.unsupported("the server does not offer fixed newstyle negotiation")
        }
        let noZeroes = flags & NBDHandshakeFlags.noZeroes != 0
        let clientFlags = NBDHandshakeFlags.clientFixedNewstyle | (noZeroes ? NBDHandshakeFlags.clientNoZeroes : 0)
        try await send { $0.writeInteger(clientFlags) }
        return noZeroes
    }

    /// Sends an option and reads its replies up to the final one (the client may send
    /// nothing else meanwhile).
    func ask(_ option: NBDOption, data: ByteBuffer? = nil) async throws -> Answer {
        try await send { $0.writeNBDOption(option, data: data) }
        var replies: [(type: UInt32, data: ByteBuffer)] = []
        while true {
            guard case .optionReply(let code, let type, let payload) = try await receive() else {
                throw NBDClientError.protocolViolation("expected a reply to \(NBDClientError.optionName(option.rawValue))")
            }
            guard code == option.rawValue else {
                throw NBDClientError.protocolViolation(
                    "reply to \(NBDClientError.optionName(code)) while \(NBDClientError.optionName(option.rawValue)) was asked")
            }
            if type == NBDOptionReply.ack.rawValue || type & 0x8000_0000 != 0 {
                return Answer(option: option, replies: replies, final: type, finalData: payload)
            }
            replies.append((type, payload))
        }
    }

    // MARK: Negotiation

    /// The whole handshake up to transmission: reply style, the `base:allocation`
    /// context, then GO (or EXPORT_NAME for servers without GO).
    func negotiate(_ configuration: NBDClient.Configuration) async throws -> NBDNegotiatedExport {
        let noZeroes = try await greet()
        if let tls = configuration.tls { try await startTLS(tls) }
        var settings = NBDTransmissionSettings(structuredReplies: false, extendedHeaders: false, metaContextID: nil)

        // Extended headers imply structured replies. A server without them answers
        // ERR_UNSUP (nbdkit 1.32, qemu 7.2); any refusal short of a shutdown just means
        // falling back to the next best.
        if configuration.extendedHeaders {
            let answer = try await ask(.extendedHeaders)
            if answer.isShutdown { throw answer.refusal }
            if answer.accepted {
                settings.extendedHeaders = true
                settings.structuredReplies = true
            }
        }
        if !settings.structuredReplies && configuration.structuredReplies {
            let answer = try await ask(.structuredReply)
            if answer.isShutdown { throw answer.refusal }
            settings.structuredReplies = answer.accepted
        }
        // Block status needs a metadata context, and contexts need structured replies.
        if settings.structuredReplies && configuration.blockStatus {
            settings.metaContextID = try await selectBaseAllocation(export: configuration.exportName)
        }

        var request = ByteBufferAllocator().buffer(capacity: 64)
        request.writeNBDExportRequest(name: configuration.exportName, information: [.blockSize, .name, .description])
        let handler = self.handler
        let prepared = settings
        try await handler.eventLoop.submit { handler.prepareTransmission(prepared) }.get()
        let answer = try await ask(.go, data: request)
        guard answer.accepted else {
            // Servers older than GO answer ERR_UNSUP; the spec asks clients to fall back
            // to EXPORT_NAME then, which is not allowed after extended headers.
            if answer.final == NBDOptionReply.errorUnsupported.rawValue && !settings.extendedHeaders {
                return try await exportName(configuration.exportName, noZeroes: noZeroes, settings: settings)
            }
            throw answer.refusal
        }
        return try Self.export(from: answer, requestedName: configuration.exportName, settings: settings)
    }

    /// NBD_OPT_STARTTLS, then TLS under everything that follows: a server that refuses
    /// it is hung up on, never talked to in the clear.
    private func startTLS(_ tls: NBDClientTLS) async throws {
        let context = try tls.makeContext()
        let answer = try await ask(.startTLS)
        guard answer.accepted else { throw answer.refusal }
        let handler = self.handler
        let hostname = tls.hostname
        try await handler.eventLoop.submit { try handler.startTLS(context: context, hostname: hostname) }.get()
    }

    /// NBD_OPT_SET_META_CONTEXT for `base:allocation`. Returns its id, or nil when the
    /// server has no such context (block status is then unavailable, nothing worse).
    private func selectBaseAllocation(export: String) async throws -> UInt32? {
        var request = ByteBufferAllocator().buffer(capacity: 64)
        request.writeNBDMetaContextRequest(name: export, queries: [NBDMetaContext.baseAllocation])
        let answer = try await ask(.setMetaContext, data: request)
        if answer.isShutdown { throw answer.refusal }
        guard answer.accepted else { return nil }
        for reply in answer.replies where reply.type == NBDOptionReply.metaContext.rawValue {
            var data = reply.data
            guard let id = data.readInteger(as: UInt32.self) else {
                throw NBDClientError.protocolViolation("META_CONTEXT reply of \(reply.data.readableBytes) bytes")
            }
            if data.readString(length: data.readableBytes) == NBDMetaContext.baseAllocation { return id }
        }
        return nil
    }

    /// The old way into transmission, for servers without GO: no error reply is
    /// possible (a server that does not like the name hangs up), and no block sizes.
    private func exportName(_ name: String, noZeroes: Bool, settings: NBDTransmissionSettings) async throws -> NBDNegotiatedExport {
        let handler = self.handler
        try await handler.eventLoop.submit { handler.prepareTransmission(settings, exportNameNoZeroes: noZeroes) }.get()
        var data = ByteBufferAllocator().buffer(capacity: name.utf8.count)
        data.writeString(name)
        try await send { $0.writeNBDOption(.exportName, data: data) }
        let reply: NBDServerMessage
        do {
            reply = try await receive()
        } catch NBDClientError.connectionClosed {
            throw NBDClientError.optionRefused(option: NBDOption.exportName.rawValue, reply: 0,
                                               message: "the server hung up: it has no export named '\(name)'")
        }
        guard case .exportNameReply(let size, let flags) = reply else {
            throw NBDClientError.protocolViolation("expected the reply to NBD_OPT_EXPORT_NAME")
        }
        return NBDNegotiatedExport(name: name, description: nil, size: size,
                                   transmissionFlags: NBDTransmissionFlags(rawValue: flags),
                                   blockSizes: .default, settings: settings)
    }

    /// Reads the INFO replies of a successful GO.
    static func export(from answer: Answer, requestedName: String, settings: NBDTransmissionSettings) throws -> NBDNegotiatedExport {
        var size: UInt64?
        var flags = NBDTransmissionFlags()
        var name = requestedName
        var description: String?
        var blockSizes = NBDClient.BlockSizes.default
        for reply in answer.replies where reply.type == NBDOptionReply.info.rawValue {
            var data = reply.data
            guard let type = data.readInteger(as: UInt16.self) else {
                throw NBDClientError.protocolViolation("empty INFO reply")
            }
            switch NBDInfo(rawValue: type) {
            case .export:
                guard data.readableBytes == 10 else {
                    throw NBDClientError.protocolViolation("INFO_EXPORT of \(reply.data.readableBytes) bytes, not 12")
                }
                size = data.readInteger(as: UInt64.self)
                flags = NBDTransmissionFlags(rawValue: data.readInteger(as: UInt16.self)!)
            case .name:
                name = data.readString(length: data.readableBytes) ?? name
            case .description:
                description = data.readString(length: data.readableBytes)
            case .blockSize:
                guard data.readableBytes == 12 else {
                    throw NBDClientError.protocolViolation("INFO_BLOCK_SIZE of \(reply.data.readableBytes) bytes, not 14")
                }
                blockSizes = NBDClient.BlockSizes(minimum: data.readInteger()!, preferred: data.readInteger()!,
                                                  maximumPayload: data.readInteger()!)
            case nil:
                // The spec asks clients to ignore information they do not know.
                continue
            }
        }
        guard let size else {
            throw NBDClientError.protocolViolation("GO succeeded without INFO_EXPORT")
        }
        return NBDNegotiatedExport(name: name, description: description, size: size, transmissionFlags: flags,
                                   blockSizes: blockSizes, settings: settings)
    }

    // MARK: Listing

    /// NBD_OPT_LIST: the names of the exports the server is willing to show.
    func listExports() async throws -> [String] {
        _ = try await greet()
        let answer = try await ask(.list)
        guard answer.accepted else { throw answer.refusal }
        return try answer.replies.filter { $0.type == NBDOptionReply.server.rawValue }.map { reply in
            var data = reply.data
            guard let length = data.readInteger(as: UInt32.self), Int(length) <= data.readableBytes,
                  let name = data.readString(length: Int(length)) else {
                throw NBDClientError.protocolViolation("malformed NBD_REP_SERVER reply")
            }
            return name
        }
    }

    /// Ends the handshake with NBD_OPT_ABORT and closes the connection.
    func abort() async {
        let handler = self.handler
        try? await handler.eventLoop.flatSubmit { handler.abortHandshake() }.get()
    }
}
