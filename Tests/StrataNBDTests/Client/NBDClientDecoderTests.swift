import NIOCore
import NIOTestUtils
import StrataNBD
@testable import StrataNBDClient
import StrataNBDProtocol
import Testing

/// The client's reply decoder under NIO's verifier (whatever way the bytes are split,
/// the same messages come out), and its refusals of what is not NBD.
@Suite struct NBDClientDecoderTests {
    static func chunk(extended: Bool, flags: UInt16 = NBDReplyFlags.done, type: UInt16, cookie: UInt64, offset: UInt64 = 0,
                      _ payload: (inout ByteBuffer) -> Void = { _ in }) -> ByteBuffer {
        var body = ByteBuffer()
        payload(&body)
        var bytes = ByteBuffer()
        bytes.writeInteger(extended ? NBDMagic.extendedReply : NBDMagic.structuredReply)
        bytes.writeInteger(flags)
        bytes.writeInteger(type)
        bytes.writeInteger(cookie)
        if extended {
            bytes.writeInteger(offset)
            bytes.writeInteger(UInt64(body.readableBytes))
        } else {
            bytes.writeInteger(UInt32(body.readableBytes))
        }
        bytes.writeBuffer(&body)
        return bytes
    }

    static func decodeAll(_ bytes: ByteBuffer, phase: NBDClientSession.Phase) throws -> [NBDServerMessage] {
        var decoder = NBDClientDecoder(session: NBDClientSession(phase))
        var buffer = bytes
        var messages: [NBDServerMessage] = []
        while let message = try decoder.decode(buffer: &buffer) { messages.append(message) }
        return messages
    }

    @Test func greetingIsFramedWhateverTheSplit() throws {
        var bytes = ByteBuffer()
        bytes.writeNBDGreeting(flags: 3)
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(bytes, [.greeting(handshakeFlags: 3)])]) {
            NBDClientDecoder(session: NBDClientSession(.greeting))
        }
    }

    @Test func oldstyleAndForeignGreetingsAreRefused() throws {
        var oldstyle = ByteBuffer()
        oldstyle.writeInteger(NBDMagic.nbd)
        oldstyle.writeInteger(NBDClientDecoder.oldstyleMagic)
        oldstyle.writeRepeatingByte(0, count: 8)
        guard case .protocolViolation(let reason)? = try Self.decodeAll(oldstyle, phase: .greeting).first else {
            Issue.record("oldstyle greeting accepted")
            return
        }
        #expect(reason.contains("oldstyle"))
        let http = ByteBuffer(string: "HTTP/1.1 200 OK\r\n\r\n")
        guard case .protocolViolation? = try Self.decodeAll(http, phase: .greeting).first else {
            Issue.record("HTTP accepted as a greeting")
            return
        }
    }

    @Test func optionRepliesAreFramedWhateverTheSplit() throws {
        var pairs: [(ByteBuffer, [NBDServerMessage])] = []
        for (option, type, payload) in [(UInt32(3), NBDOptionReply.server, [0, 0, 0, 2] + Array("ab".utf8)),
                                        (3, .ack, []), (7, .errorUnknown, Array("no such export".utf8))] {
            var bytes = ByteBuffer()
            bytes.writeNBDOptionReply(option: option, type: type, length: payload.count)
            bytes.writeBytes(payload)
            pairs.append((bytes, [.optionReply(option: option, type: type.rawValue, data: ByteBuffer(bytes: payload))]))
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            NBDClientDecoder(session: NBDClientSession(.options))
        }
    }

    @Test func exportNameReplyIsFramedWithAndWithoutZeros() throws {
        for noZeroes in [true, false] {
            var bytes = ByteBuffer()
            bytes.writeInteger(UInt64(1 << 30))
            bytes.writeInteger(UInt16(3))
            if !noZeroes { bytes.writeRepeatingByte(0, count: 124) }
            try ByteToMessageDecoderVerifier.verifyDecoder(
                inputOutputPairs: [(bytes, [.exportNameReply(size: 1 << 30, transmissionFlags: 3)])]) {
                NBDClientDecoder(session: NBDClientSession(.exportNameReply(noZeroes: noZeroes)))
            }
        }
    }

    @Test func simpleRepliesCarryDataOnlyForSuccessfulReads() throws {
        var read = ByteBuffer()
        read.writeNBDSimpleReply(error: 0, cookie: 1)
        read.writeRepeatingByte(0x5a, count: 1024)
        var failedRead = ByteBuffer()
        failedRead.writeNBDSimpleReply(error: 5, cookie: 2)
        var write = ByteBuffer()
        write.writeNBDSimpleReply(error: 0, cookie: 3)
        let pairs: [(ByteBuffer, [NBDServerMessage])] = [
            (read, [.simpleReply(error: 0, cookie: 1, data: ByteBuffer(repeating: 0x5a, count: 1024))]),
            (failedRead, [.simpleReply(error: 5, cookie: 2, data: nil)]),
            (write, [.simpleReply(error: 0, cookie: 3, data: nil)]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            let session = NBDClientSession(.transmission(structuredReplies: false, extendedHeaders: false))
            session.simpleReplyDataLength = [1: 1024, 2: 512]
            return NBDClientDecoder(session: session)
        }
    }

    @Test(arguments: [false, true])
    func chunksOfEveryTypeAreFramedWhateverTheSplit(extended: Bool) throws {
        let data = Self.chunk(extended: extended, flags: 0, type: NBDReplyType.offsetData.rawValue, cookie: 1, offset: 4096) {
            $0.writeInteger(UInt64(8192))
            $0.writeRepeatingByte(1, count: 512)
        }
        let hole = Self.chunk(extended: extended, flags: 0, type: NBDReplyType.offsetHole.rawValue, cookie: 1, offset: 4096) {
            $0.writeInteger(UInt64(4096))
            $0.writeInteger(UInt32(4096))
        }
        let error = Self.chunk(extended: extended, flags: 0, type: NBDReplyType.errorOffset.rawValue, cookie: 1, offset: 4096) {
            $0.writeInteger(UInt32(5))
            $0.writeInteger(UInt16(3))
            $0.writeString("bad")
            $0.writeInteger(UInt64(8704))
        }
        let none = Self.chunk(extended: extended, type: NBDReplyType.none.rawValue, cookie: 1, offset: 4096)
        let status = Self.chunk(extended: extended, type: extended ? 6 : 5, cookie: 2) {
            $0.writeInteger(UInt32(1))
            if extended {
                $0.writeInteger(UInt32(2))
                $0.writeInteger(UInt64(1 << 33))
                $0.writeInteger(UInt64(3))
                $0.writeInteger(UInt64(512))
                $0.writeInteger(UInt64(0))
            } else {
                $0.writeInteger(UInt32(1 << 30))
                $0.writeInteger(UInt32(3))
                $0.writeInteger(UInt32(512))
                $0.writeInteger(UInt32(0))
            }
        }
        let unknownError = Self.chunk(extended: extended, type: 0x8123, cookie: 3) {
            $0.writeInteger(UInt32(95))
            $0.writeInteger(UInt16(0))
            $0.writeInteger(UInt32(0xdead))
        }
        let echoed: UInt64? = extended ? 4096 : nil
        func chunk(_ flags: UInt16, cookie: UInt64 = 1, offset: UInt64? = echoed, _ content: NBDReplyChunk.Content) -> NBDServerMessage {
            .chunk(NBDReplyChunk(flags: flags, cookie: cookie, requestOffset: offset, content: content))
        }
        let pairs: [(ByteBuffer, [NBDServerMessage])] = [
            (data, [chunk(0, .data(offset: 8192, data: ByteBuffer(repeating: 1, count: 512)))]),
            (hole, [chunk(0, .hole(offset: 4096, length: 4096))]),
            (error, [chunk(0, .error(code: 5, message: "bad", offset: 8704))]),
            (none, [chunk(1, .none)]),
            (status, [chunk(1, cookie: 2, offset: extended ? 0 : nil, .blockStatus(contextID: 1, extents: [
                NBDBlockExtent(length: extended ? 1 << 33 : 1 << 30, status: 3), NBDBlockExtent(length: 512, status: 0),
            ]))]),
            (unknownError, [chunk(1, cookie: 3, offset: extended ? 0 : nil, .error(code: 95, message: "", offset: nil))]),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            NBDClientDecoder(session: NBDClientSession(.transmission(structuredReplies: true, extendedHeaders: extended)))
        }
    }

    @Test func malformedRepliesAreViolations() throws {
        let extended = NBDClientSession.Phase.transmission(structuredReplies: true, extendedHeaders: true)
        let structured = NBDClientSession.Phase.transmission(structuredReplies: true, extendedHeaders: false)
        let simple = NBDClientSession.Phase.transmission(structuredReplies: false, extendedHeaders: false)
        var simpleReply = ByteBuffer()
        simpleReply.writeNBDSimpleReply(error: 0, cookie: 1)
        let cases: [(String, ByteBuffer, NBDClientSession.Phase)] = [
            ("simple reply after extended headers", simpleReply, extended),
            ("structured chunk without structured replies", Self.chunk(extended: false, type: 0, cookie: 1), simple),
            ("NONE without DONE", Self.chunk(extended: true, flags: 0, type: 0, cookie: 1), extended),
            ("compact BLOCK_STATUS with extended headers", Self.chunk(extended: true, type: 5, cookie: 1) {
                $0.writeInteger(UInt32(1)); $0.writeInteger(UInt32(512)); $0.writeInteger(UInt32(0))
            }, extended),
            ("BLOCK_STATUS_EXT whose count is wrong", Self.chunk(extended: true, type: 6, cookie: 1) {
                $0.writeInteger(UInt32(1)); $0.writeInteger(UInt32(2)); $0.writeInteger(UInt64(512)); $0.writeInteger(UInt64(0))
            }, extended),
            ("OFFSET_HOLE of the wrong size", Self.chunk(extended: false, type: 2, cookie: 1) { $0.writeInteger(UInt64(0)) }, structured),
            ("OFFSET_DATA without data", Self.chunk(extended: false, type: 1, cookie: 1) { $0.writeInteger(UInt64(0)) }, structured),
            ("unknown type without bit 15", Self.chunk(extended: false, type: 77, cookie: 1), structured),
            ("error message longer than the chunk", Self.chunk(extended: false, type: NBDReplyType.error.rawValue, cookie: 1) {
                $0.writeInteger(UInt32(5)); $0.writeInteger(UInt16(100)); $0.writeString("short")
            }, structured),
        ]
        for (name, bytes, phase) in cases {
            let messages = try Self.decodeAll(bytes, phase: phase)
            guard case .protocolViolation? = messages.first, messages.count == 1 else {
                Issue.record("\(name): \(messages)")
                continue
            }
        }
        var huge = ByteBuffer()
        huge.writeInteger(NBDMagic.extendedReply)
        huge.writeInteger(UInt16(1))
        huge.writeInteger(NBDReplyType.offsetData.rawValue)
        huge.writeInteger(UInt64(1))
        huge.writeInteger(UInt64(0))
        huge.writeInteger(UInt64(1) << 40)
        guard case .protocolViolation? = try Self.decodeAll(huge, phase: extended).first else {
            Issue.record("a 1 TiB chunk was not refused at its header")
            return
        }
    }
}
