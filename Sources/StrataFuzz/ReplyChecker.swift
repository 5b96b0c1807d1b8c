import NIOCore
import StrataNBD
import StrataNBDClient
import StrataNBDProtocol

/// What the checker knows of one export, to judge the replies that describe it.
struct ExportFacts: Sendable {
    let name: String
    let description: String?
    let size: UInt64
}

/// Reads each write of the server as a client would, and throws at the first thing no
/// client should have to accept.
///
/// The server writes whole messages: the greeting, an option reply, the EXPORT_NAME
/// reply, a READ's reply with its data, or a batch of replies without data (successes,
/// errors, hole chunks) gathered while a batch of requests was served. So each write
/// must decode to one or more whole messages with nothing left over. Framing is judged
/// by the project's own client decoder; what the payloads say is judged here, against
/// the spec and the checklist in the NBD reference.
struct ReplyChecker {
    private var view = ClientView()
    private let exports: [ExportFacts]
    /// Whether the client asked the server to leave the 124 zeros out of an EXPORT_NAME reply.
    private let clientNoZeroes: Bool
    /// INFO_EXPORT has been sent since the last final option reply (GO and INFO need it before their ACK).
    private var sawInfoExport = false

    init(exports: [ExportFacts], clientFlags: UInt32) {
        self.exports = exports
        clientNoZeroes = clientFlags & NBDHandshakeFlags.clientNoZeroes != 0
    }

    mutating func check(_ write: ByteBuffer) throws(FuzzFailure) {
        // `close(.afterWrites)` writes an empty buffer to learn when everything before it is out.
        guard write.readableBytes > 0 else { return }
        var bytes = write
        while bytes.readableBytes > 0 {
            if view.phase == .closed {
                throw FuzzFailure("the server wrote \(bytes.readableBytes) bytes after the session ended")
            }
            prepare(for: bytes)
            let message: NBDServerMessage?
            do {
                message = try view.decoder.decode(buffer: &bytes)
            } catch {
                throw FuzzFailure("the client decoder threw \(error)")
            }
            guard let message else {
                throw FuzzFailure("\(bytes.readableBytes) bytes of a write of \(write.readableBytes) in phase \(view.phase) "
                    + "are not a whole message")
            }
            try judge(message)
            view.follow(message)
        }
    }

    /// Tells the decoder what only the client knows: that it sent EXPORT_NAME (a write
    /// that is not an option reply during the handshake can only answer it), and how much
    /// data a successful simple reply carries. The server sends a READ's header and data
    /// as one write of their own, and batches only replies without data; without
    /// structured replies those are 16 bytes each, so a write of whole 16-byte simple
    /// replies is a batch, and anything else starting with a successful simple reply is
    /// a READ's (its data would have to hold the reply magic every 16 bytes to pass for
    /// a batch).
    private func prepare(for write: ByteBuffer) {
        let start = write.readerIndex
        if view.phase == .options, write.getInteger(at: start, as: UInt64.self) != NBDMagic.optionReply {
            view.expectExportNameReply(noZeroes: clientNoZeroes)
        }
        view.session.simpleReplyDataLength = [:]
        if case .transmission(_, extendedHeaders: false) = view.phase, write.readableBytes > 16,
           write.getInteger(at: start, as: UInt32.self) == NBDMagic.simpleReply,
           write.getInteger(at: start + 4, as: UInt32.self) == 0,
           let cookie = write.getInteger(at: start + 8, as: UInt64.self), !Self.isBatchOfSimpleReplies(write) {
            view.session.simpleReplyDataLength[cookie] = write.readableBytes - 16
        }
    }

    private static func isBatchOfSimpleReplies(_ bytes: ByteBuffer) -> Bool {
        guard bytes.readableBytes % 16 == 0 else { return false }
        return stride(from: bytes.readerIndex, to: bytes.writerIndex, by: 16).allSatisfy {
            bytes.getInteger(at: $0, as: UInt32.self) == NBDMagic.simpleReply
        }
    }

    private mutating func judge(_ message: NBDServerMessage) throws(FuzzFailure) {
        switch message {
        case .protocolViolation(let reason):
            throw FuzzFailure("the client refuses what the server wrote: \(reason)")
        case .greeting(let flags):
            guard flags == NBDHandshakeFlags.fixedNewstyle | NBDHandshakeFlags.noZeroes else {
                throw FuzzFailure("greeting with handshake flags \(flags)")
            }
        case .optionReply(let option, let type, let data):
            try judgeOptionReply(option: option, type: type, data: data)
        case .exportNameReply(let size, let flags):
            guard exports.contains(where: { $0.size == size }) else {
                throw FuzzFailure("EXPORT_NAME reply with size \(size), which no export has")
            }
            guard NBDTransmissionFlags(rawValue: flags).contains(.hasFlags) else {
                throw FuzzFailure("EXPORT_NAME reply with transmission flags \(flags) lacking HAS_FLAGS")
            }
        case .simpleReply(let error, _, _):
            guard error == 0 || NBDError(rawValue: error) != nil else {
                throw FuzzFailure("simple reply with error \(error), which NBD does not define")
            }
        case .chunk(let chunk):
            try judgeChunk(chunk)
        }
    }

    // MARK: Handshake

    private mutating func judgeOptionReply(option: UInt32, type: UInt32, data: ByteBuffer) throws(FuzzFailure) {
        guard let reply = NBDOptionReply(rawValue: type) else {
            throw FuzzFailure("option reply type 0x\(String(type, radix: 16)) to option \(option)")
        }
        let known = NBDOption(rawValue: option)
        switch reply {
        case .ack:
            guard data.readableBytes == 0 else { throw FuzzFailure("ACK to option \(option) with \(data.readableBytes) bytes") }
            if (known == .info || known == .go) && !sawInfoExport {
                throw FuzzFailure("ACK to \(known!) without INFO_EXPORT")
            }
            sawInfoExport = false
        case .server:
            guard known == .list else { throw FuzzFailure("SERVER reply to option \(option)") }
            var data = data
            guard let length = data.readInteger(as: UInt32.self), Int(length) <= data.readableBytes,
                  let name = data.readString(length: Int(length)),
                  let export = exports.first(where: { $0.name == name }) else {
                throw FuzzFailure("SERVER reply that names no export: \(data.readableBytes) bytes")
            }
            guard data.readString(length: data.readableBytes) == (export.description ?? "") else {
                throw FuzzFailure("SERVER reply for \(name) whose details are not its description")
            }
        case .info:
            guard known == .info || known == .go else { throw FuzzFailure("INFO reply to option \(option)") }
            try judgeInfo(data)
        case .metaContext:
            guard known == .listMetaContext || known == .setMetaContext else {
                throw FuzzFailure("META_CONTEXT reply to option \(option)")
            }
            // The fuzzed exports are memory disks, which keep no dirty bitmaps. A LIST's
            // ids are reserved (zero); a SET's are the ones BLOCK_STATUS chunks carry.
            var data = data
            let id: UInt32 = known == .listMetaContext ? 0 : NBDMetaContext.baseAllocationID
            guard data.readInteger(as: UInt32.self) == id,
                  data.readString(length: data.readableBytes) == NBDMetaContext.baseAllocation else {
                throw FuzzFailure("META_CONTEXT reply that is not base:allocation with id \(id)")
            }
        default:
            // An error: its data is a message for people, short and in UTF-8.
            guard data.readableBytes <= 200 else {
                throw FuzzFailure("option error message of \(data.readableBytes) bytes")
            }
            guard String(validating: data.readableBytesView, as: UTF8.self) != nil else {
                throw FuzzFailure("option error message that is not UTF-8: \(Array(data.readableBytesView))")
            }
            sawInfoExport = false
        }
    }

    private mutating func judgeInfo(_ data: ByteBuffer) throws(FuzzFailure) {
        var data = data
        guard let type = data.readInteger(as: UInt16.self), let info = NBDInfo(rawValue: type) else {
            throw FuzzFailure("INFO reply of an unknown type (\(data.readableBytes) bytes)")
        }
        switch info {
        case .export:
            guard data.readableBytes == 10, let size = data.readInteger(as: UInt64.self),
                  let flags = data.readInteger(as: UInt16.self) else {
                throw FuzzFailure("INFO_EXPORT of \(data.readableBytes + 2) bytes")
            }
            guard exports.contains(where: { $0.size == size }), NBDTransmissionFlags(rawValue: flags).contains(.hasFlags) else {
                throw FuzzFailure("INFO_EXPORT with size \(size) and flags \(flags)")
            }
            sawInfoExport = true
        case .name:
            let name = data.readString(length: data.readableBytes)
            guard exports.contains(where: { $0.name == name }) else {
                throw FuzzFailure("INFO_NAME '\(name ?? "")' that no export has")
            }
        case .description:
            let description = data.readString(length: data.readableBytes)
            guard exports.contains(where: { $0.description != nil && $0.description == description }) else {
                throw FuzzFailure("INFO_DESCRIPTION that no export has")
            }
        case .blockSize:
            guard data.readableBytes == 12, let minimum = data.readInteger(as: UInt32.self),
                  let preferred = data.readInteger(as: UInt32.self), let maximum = data.readInteger(as: UInt32.self) else {
                throw FuzzFailure("INFO_BLOCK_SIZE of \(data.readableBytes + 2) bytes")
            }
            // The rules qemu enforces (the NBD reference, "Block sizes").
            guard minimum.nonzeroBitCount == 1, minimum <= 65536, preferred.nonzeroBitCount == 1,
                  preferred >= max(minimum, 512), maximum >= preferred else {
                throw FuzzFailure("INFO_BLOCK_SIZE \(minimum)/\(preferred)/\(maximum) breaks the block-size rules")
            }
        }
    }

    // MARK: Transmission

    private func judgeChunk(_ chunk: NBDReplyChunk) throws(FuzzFailure) {
        // Each request gets one chunk from this server, so every chunk is the last.
        guard chunk.isDone else { throw FuzzFailure("chunk for cookie \(chunk.cookie) without DONE") }
        switch chunk.content {
        case .none, .data, .hole:
            // The decoder has checked their lengths (no empty data or hole).
            break
        case .blockStatus(let contextID, let extents):
            guard contextID == NBDMetaContext.baseAllocationID else {
                throw FuzzFailure("block status for context \(contextID), which was never given out")
            }
            guard !extents.isEmpty, extents.count <= NBDLimits.maximumExtents,
                  extents.allSatisfy({ $0.length > 0 && $0.status & ~3 == 0 }) else {
                throw FuzzFailure("block status with \(extents.count) extents, empty or with unknown flags")
            }
        case .error(let code, let message, _):
            guard NBDError(rawValue: code) != nil else { throw FuzzFailure("error chunk with error \(code)") }
            guard message.utf8.count <= 200 else { throw FuzzFailure("error chunk message of \(message.utf8.count) bytes") }
        }
    }
}
