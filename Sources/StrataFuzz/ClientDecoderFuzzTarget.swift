import NIOCore
import StrataNBDClient
import StrataNBDProtocol

/// Fuzz target: the client's reply decoder (`NBDClientDecoder`) on whatever a server
/// might send.
///
/// The input is a `FuzzInput` whose stream starts with one byte of the client's side of
/// the script, then what the server sends from its greeting on. Script bit 0: the
/// client's last option was EXPORT_NAME, so during the handshake bytes that are not an
/// option reply are its reply; bit 1: the client asked for no zeros in that reply.
/// Requests with cookies 0 to 15 are READs of 512 × cookie bytes, so that successful
/// simple replies to them carry data. The phase moves on with the messages as the
/// client handler moves it.
///
/// Properties, beyond not trapping: the messages are the same whether the stream
/// arrives in the pieces the shape says or all at once, and once the decoder has
/// reported a violation it reports nothing more.
enum ClientDecoderFuzzTarget {
    static func run(_ input: FuzzInput) throws(FuzzFailure) {
        guard let script = input.stream.first else { return }
        let stream = Array(input.stream.dropFirst())
        let whole = try decode(stream.isEmpty ? [] : [stream[...]], script: script)
        let pieces = try decode(FuzzInput(shape: input.shape, stream: stream).pieces, script: script)
        guard whole == pieces else {
            let first = zip(whole, pieces).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                ?? min(whole.count, pieces.count)
            throw FuzzFailure("in pieces the stream decodes to \(pieces.count) messages, whole to \(whole.count); "
                + "they differ from message \(first) on")
        }
    }

    private static func decode(_ pieces: [ArraySlice<UInt8>], script: UInt8) throws(FuzzFailure) -> [NBDServerMessage] {
        var view = ClientView()
        for cookie in 0..<16 { view.session.simpleReplyDataLength[UInt64(cookie)] = 512 * cookie }
        let decoder = ScriptedDecoder(inner: view.decoder, session: view.session, exportName: script & 1 != 0,
                                      noZeroes: script & 2 != 0)
        let processor = NIOSingleStepByteToMessageProcessor(decoder)
        var messages: [NBDServerMessage] = []
        var violated = false
        func take(_ message: NBDServerMessage) throws(FuzzFailure) {
            if violated { throw FuzzFailure("a message after a protocol violation: \(message)") }
            if case .protocolViolation = message { violated = true }
            messages.append(message)
            view.follow(message)
        }
        do {
            for piece in pieces {
                try processor.process(buffer: ByteBuffer(bytes: piece)) { try take($0) }
            }
            try processor.finishProcessing(seenEOF: true) { try take($0) }
        } catch let failure as FuzzFailure {
            throw failure
        } catch {
            throw FuzzFailure("the client decoder threw \(error)")
        }
        return messages
    }
}

/// The client decoder with the one thing the script adds: after EXPORT_NAME, the first
/// bytes of the handshake that are not an option reply are read as its reply. The
/// decision waits for 8 bytes, so it is the same however the stream is split.
private struct ScriptedDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = NBDServerMessage

    var inner: NBDClientDecoder
    let session: NBDClientSession
    let exportName: Bool
    let noZeroes: Bool

    mutating func decode(buffer: inout ByteBuffer) throws -> NBDServerMessage? {
        if exportName, session.phase == .options,
           let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt64.self), magic != NBDMagic.optionReply {
            session.phase = .exportNameReply(noZeroes: noZeroes)
        }
        return try inner.decode(buffer: &buffer)
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> NBDServerMessage? {
        try decode(buffer: &buffer)
    }
}
