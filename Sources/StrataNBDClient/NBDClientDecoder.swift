import NIOCore
import StrataNBDProtocol

/// What the client reads from a server, one whole message at a time.
package enum NBDServerMessage: Equatable, Sendable {
    /// The newstyle greeting: NBDMAGIC, IHAVEOPT and the handshake flags.
    case greeting(handshakeFlags: UInt16)
    /// One reply to an option; an option may have several, the last an ACK or an error.
    case optionReply(option: UInt32, type: UInt32, data: ByteBuffer)
    /// The answer to NBD_OPT_EXPORT_NAME (which has no option reply header).
    case exportNameReply(size: UInt64, transmissionFlags: UInt16)
    /// A simple reply; `data` is a successful READ's payload.
    case simpleReply(error: UInt32, cookie: UInt64, data: ByteBuffer?)
    /// One structured or extended reply chunk.
    case chunk(NBDReplyChunk)
    /// Something that is not NBD: the connection cannot continue.
    case protocolViolation(String)
}

/// One chunk of a structured or extended reply, its payload already taken apart.
package struct NBDReplyChunk: Equatable, Sendable {
    package enum Content: Equatable, Sendable {
        /// NBD_REPLY_TYPE_NONE: nothing more to say (always with DONE).
        case none
        /// NBD_REPLY_TYPE_OFFSET_DATA: `data` is the export's contents at `offset`.
        case data(offset: UInt64, data: ByteBuffer)
        /// NBD_REPLY_TYPE_OFFSET_HOLE: `length` bytes at `offset` read as zeros.
        case hole(offset: UInt64, length: UInt32)
        /// NBD_REPLY_TYPE_BLOCK_STATUS or _EXT: extents of one metadata context.
        case blockStatus(contextID: UInt32, extents: [NBDBlockExtent])
        /// An error chunk (ERROR, ERROR_OFFSET, or an unknown type with bit 15 set).
        case error(code: UInt32, message: String, offset: UInt64?)
    }

    package var flags: UInt16
    package var cookie: UInt64
    /// The request's offset, echoed in extended headers only.
    package var requestOffset: UInt64?
    package var content: Content

    package var isDone: Bool { flags & NBDReplyFlags.done != 0 }
}

/// One block-status descriptor, as it travels (the status of `base:allocation` fits in
/// 32 bits; extended descriptors carry 64, whose top half must be zero for it).
package struct NBDBlockExtent: Equatable, Sendable {
    package var length: UInt64
    package var status: UInt64
}

/// What the handler and the decoder share about the session: which messages to expect
/// next, and which requests are READs (a simple reply to a successful READ carries its
/// data, and nothing in the reply itself says how long it is).
///
/// Only touched on the channel's event loop.
package final class NBDClientSession {
    package enum Phase: Equatable, Sendable {
        case greeting
        case options
        /// After NBD_OPT_EXPORT_NAME: size, flags, and 124 zeros unless NO_ZEROES.
        case exportNameReply(noZeroes: Bool)
        case transmission(structuredReplies: Bool, extendedHeaders: Bool)
        /// Everything further is ignored (after a violation or a disconnect).
        case closed
    }

    package var phase: Phase
    /// Bytes of data a successful simple reply carries, by cookie: READs only.
    package var simpleReplyDataLength: [UInt64: Int] = [:]
    /// Longest chunk payload accepted: 64 MiB (a read of the default 32 MiB maximum
    /// payload plus its offset, or 2^20 extended block-status descriptors, with room to
    /// spare), or a read of the maximum payload the server advertised, if longer.
    package var maximumChunkLength: UInt64 = 64 << 20

    package init(_ phase: Phase = .greeting) {
        self.phase = phase
    }
}

/// Splits a server's byte stream into whole NBD messages, in every phase of a session.
///
/// The decoder checks framing only (magic numbers, the lengths each chunk type must
/// have, which header style was negotiated); whether a reply fits its request is the
/// handler's business. Anything malformed becomes `.protocolViolation`, after which the
/// decoder reads nothing more. Visible to the package so that the fuzz targets
/// (`StrataFuzz`) judge the server's replies by the same rules the client applies.
package struct NBDClientDecoder: NIOSingleStepByteToMessageDecoder {
    package typealias InboundOut = NBDServerMessage

    /// The old-style greeting's second magic number; this client speaks newstyle only.
    static let oldstyleMagic: UInt64 = 0x0042_0281_8612_53
    /// Longest option reply payload accepted (names and descriptions are at most 4 KiB;
    /// anything far larger is not an honest server).
    static let maximumOptionReplyLength = 1 << 20
    private let session: NBDClientSession

    package init(session: NBDClientSession) {
        self.session = session
    }

    package mutating func decode(buffer: inout ByteBuffer) throws -> NBDServerMessage? {
        let message = decodeNext(&buffer)
        if case .protocolViolation = message { session.phase = .closed }
        return message
    }

    package mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> NBDServerMessage? {
        try decode(buffer: &buffer)
    }

    private func decodeNext(_ buffer: inout ByteBuffer) -> NBDServerMessage? {
        switch session.phase {
        case .greeting:
            return decodeGreeting(&buffer)
        case .options:
            return decodeOptionReply(&buffer)
        case .exportNameReply(let noZeroes):
            let length = noZeroes ? 10 : 134
            guard buffer.readableBytes >= length else { return nil }
            let size: UInt64 = buffer.readInteger()!
            let flags: UInt16 = buffer.readInteger()!
            buffer.moveReaderIndex(forwardBy: length - 10)
            return .exportNameReply(size: size, transmissionFlags: flags)
        case .transmission(let structured, let extended):
            return decodeReply(&buffer, structured: structured, extended: extended)
        case .closed:
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return nil
        }
    }

    private func decodeGreeting(_ buffer: inout ByteBuffer) -> NBDServerMessage? {
        guard buffer.readableBytes >= 18 else {
            // Say at once if the first magic is wrong rather than wait for more bytes.
            if buffer.readableBytes >= 8, buffer.getInteger(at: buffer.readerIndex, as: UInt64.self) != NBDMagic.nbd {
                return .protocolViolation("the peer's greeting does not start with NBDMAGIC")
            }
            return nil
        }
        let magic: UInt64 = buffer.readInteger()!
        let second: UInt64 = buffer.readInteger()!
        let flags: UInt16 = buffer.readInteger()!
        guard magic == NBDMagic.nbd else {
            return .protocolViolation("the peer's greeting does not start with NBDMAGIC")
        }
        if second == Self.oldstyleMagic {
            return .protocolViolation("the server speaks the oldstyle handshake, which this client does not")
        }
        guard second == NBDMagic.ihaveopt else {
            return .protocolViolation("greeting magic 0x\(String(second, radix: 16)) is not IHAVEOPT")
        }
        return .greeting(handshakeFlags: flags)
    }

    private func decodeOptionReply(_ buffer: inout ByteBuffer) -> NBDServerMessage? {
        guard buffer.readableBytes >= 20 else { return nil }
        let start = buffer.readerIndex
        let magic: UInt64 = buffer.getInteger(at: start)!
        guard magic == NBDMagic.optionReply else {
            return .protocolViolation("option reply magic 0x\(String(magic, radix: 16)) is wrong")
        }
        let option: UInt32 = buffer.getInteger(at: start + 8)!
        let type: UInt32 = buffer.getInteger(at: start + 12)!
        let length: UInt32 = buffer.getInteger(at: start + 16)!
        guard Int(length) <= Self.maximumOptionReplyLength else {
            return .protocolViolation("option reply of \(length) bytes is too long")
        }
        guard buffer.readableBytes >= 20 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 20)
        return .optionReply(option: option, type: type, data: buffer.readSlice(length: Int(length))!)
    }

    // MARK: Transmission

    private func decodeReply(_ buffer: inout ByteBuffer, structured: Bool, extended: Bool) -> NBDServerMessage? {
        guard let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        switch magic {
        case NBDMagic.simpleReply where !extended:
            return decodeSimpleReply(&buffer)
        case NBDMagic.structuredReply where structured && !extended:
            return decodeChunk(&buffer, extended: false)
        case NBDMagic.extendedReply where extended:
            return decodeChunk(&buffer, extended: true)
        default:
            let expected = extended ? "extended" : structured ? "simple or structured" : "simple"
            return .protocolViolation("reply magic 0x\(String(magic, radix: 16)) where \(expected) replies were negotiated")
        }
    }

    private func decodeSimpleReply(_ buffer: inout ByteBuffer) -> NBDServerMessage? {
        guard buffer.readableBytes >= 16 else { return nil }
        let start = buffer.readerIndex
        let error: UInt32 = buffer.getInteger(at: start + 4)!
        let cookie: UInt64 = buffer.getInteger(at: start + 8)!
        let dataLength = error == 0 ? session.simpleReplyDataLength[cookie] : nil
        guard buffer.readableBytes >= 16 + (dataLength ?? 0) else { return nil }
        buffer.moveReaderIndex(forwardBy: 16)
        return .simpleReply(error: error, cookie: cookie, data: dataLength.map { buffer.readSlice(length: $0)! })
    }

    private func decodeChunk(_ buffer: inout ByteBuffer, extended: Bool) -> NBDServerMessage? {
        let headerSize = extended ? 32 : 20
        guard buffer.readableBytes >= headerSize else { return nil }
        let start = buffer.readerIndex
        let flags: UInt16 = buffer.getInteger(at: start + 4)!
        let type: UInt16 = buffer.getInteger(at: start + 6)!
        let cookie: UInt64 = buffer.getInteger(at: start + 8)!
        let requestOffset: UInt64? = extended ? buffer.getInteger(at: start + 16)! : nil
        let length: UInt64 = extended ? buffer.getInteger(at: start + 24)! : UInt64(buffer.getInteger(at: start + 16, as: UInt32.self)!)
        guard length <= session.maximumChunkLength else {
            return .protocolViolation("reply chunk of \(length) bytes is too long")
        }
        guard buffer.readableBytes >= headerSize + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: headerSize)
        var payload = buffer.readSlice(length: Int(length))!
        switch Self.content(type: type, extended: extended, payload: &payload) {
        case .success(let content):
            if content == .none && flags & NBDReplyFlags.done == 0 {
                return .protocolViolation("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE")
            }
            return .chunk(NBDReplyChunk(flags: flags, cookie: cookie, requestOffset: requestOffset, content: content))
        case .failure(let violation):
            return .protocolViolation(violation.reason)
        }
    }

    struct Malformed: Error {
        var reason: String
    }

    /// Takes a chunk's payload apart according to its type and checks the length each
    /// type must have.
    static func content(type: UInt16, extended: Bool, payload: inout ByteBuffer) -> Result<NBDReplyChunk.Content, Malformed> {
        let length = payload.readableBytes
        func malformed(_ what: String) -> Result<NBDReplyChunk.Content, Malformed> {
            .failure(Malformed(reason: "\(what) chunk with a payload of \(length) bytes"))
        }
        guard let known = NBDReplyType(rawValue: type) else {
            return errorContent(type: type, payload: &payload)
        }
        switch known {
        case .none:
            return length == 0 ? .success(.none) : malformed("NONE")
        case .offsetData:
            guard length >= 9 else { return malformed("OFFSET_DATA") }
            let offset: UInt64 = payload.readInteger()!
            return .success(.data(offset: offset, data: payload))
        case .offsetHole:
            guard length == 12 else { return malformed("OFFSET_HOLE") }
            let offset: UInt64 = payload.readInteger()!
            let size: UInt32 = payload.readInteger()!
            guard size > 0 else { return .failure(Malformed(reason: "OFFSET_HOLE of no bytes")) }
            return .success(.hole(offset: offset, length: size))
        case .blockStatus:
            guard !extended else { return .failure(Malformed(reason: "BLOCK_STATUS chunk with extended headers")) }
            guard length >= 12, (length - 4) % 8 == 0 else { return malformed("BLOCK_STATUS") }
            let contextID: UInt32 = payload.readInteger()!
            var extents: [NBDBlockExtent] = []
            extents.reserveCapacity((length - 4) / 8)
            while let extentLength = payload.readInteger(as: UInt32.self), let status = payload.readInteger(as: UInt32.self) {
                extents.append(NBDBlockExtent(length: UInt64(extentLength), status: UInt64(status)))
            }
            return .success(.blockStatus(contextID: contextID, extents: extents))
        case .blockStatusExtended:
            guard extended else { return .failure(Malformed(reason: "BLOCK_STATUS_EXT chunk without extended headers")) }
            guard length >= 24, (length - 8) % 16 == 0 else { return malformed("BLOCK_STATUS_EXT") }
            let contextID: UInt32 = payload.readInteger()!
            let count: UInt32 = payload.readInteger()!
            guard Int(count) == (length - 8) / 16 else {
                return .failure(Malformed(reason: "BLOCK_STATUS_EXT says \(count) descriptors in \(length) bytes"))
            }
            var extents: [NBDBlockExtent] = []
            extents.reserveCapacity(Int(count))
            while let extentLength = payload.readInteger(as: UInt64.self), let status = payload.readInteger(as: UInt64.self) {
                extents.append(NBDBlockExtent(length: extentLength, status: status))
            }
            return .success(.blockStatus(contextID: contextID, extents: extents))
        case .error, .errorOffset:
            return errorContent(type: type, payload: &payload)
        }
    }

    /// Every error type (bit 15 set) starts with the error and a message; an unknown one
    /// still fails its request, while an unknown type without bit 15 is fatal.
    private static func errorContent(type: UInt16, payload: inout ByteBuffer) -> Result<NBDReplyChunk.Content, Malformed> {
        let length = payload.readableBytes
        guard type & 0x8000 != 0 else {
            return .failure(Malformed(reason: "unknown reply chunk type \(type)"))
        }
        let trailer = type == NBDReplyType.errorOffset.rawValue ? 8 : 0
        guard length >= 6 + trailer else {
            return .failure(Malformed(reason: "error chunk with a payload of \(length) bytes"))
        }
        let code: UInt32 = payload.readInteger()!
        let messageLength: UInt16 = payload.readInteger()!
        guard Int(messageLength) <= length - 6 - trailer else {
            return .failure(Malformed(reason: "error message of \(messageLength) bytes in a \(length)-byte chunk"))
        }
        let message = payload.readString(length: Int(messageLength))!
        let offset: UInt64? = trailer > 0 ? payload.readInteger() : nil
        // An error chunk must carry an error; one that says 0 still fails the request.
        return .success(.error(code: code == 0 ? NBDError.io.rawValue : code, message: message, offset: offset))
    }
}
