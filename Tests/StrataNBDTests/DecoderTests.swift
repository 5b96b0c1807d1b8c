import NIOCore
import NIOTestUtils
@testable import StrataNBD
import StrataNBDProtocol
import Testing

/// The framing decoder under NIO's verifier: whatever way the bytes are split, the
/// same messages come out, and nothing is left over.
@Suite struct DecoderTests {
    static func option(_ code: UInt32, _ payload: [UInt8]) -> (ByteBuffer, NBDClientMessage) {
        var bytes = ByteBuffer()
        bytes.writeInteger(NBDMagic.ihaveopt)
        bytes.writeInteger(code)
        bytes.writeInteger(UInt32(payload.count))
        bytes.writeBytes(payload)
        return (bytes, .option(code: code, data: ByteBuffer(bytes: payload)))
    }

    static func request(_ type: NBDCommand, cookie: UInt64, offset: UInt64, payload: [UInt8]?, length: UInt64? = nil,
                        extended: Bool = false) -> (ByteBuffer, NBDClientMessage) {
        let flags: NBDCommandFlags = extended && payload != nil ? .payloadLength : []
        let size = length ?? UInt64(payload?.count ?? 0)
        var bytes = ByteBuffer()
        bytes.writeInteger(extended ? NBDMagic.extendedRequest : NBDMagic.request)
        bytes.writeInteger(flags.rawValue)
        bytes.writeInteger(type.rawValue)
        bytes.writeInteger(cookie)
        bytes.writeInteger(offset)
        if extended { bytes.writeInteger(size) } else { bytes.writeInteger(UInt32(size)) }
        if let payload { bytes.writeBytes(payload) }
        let header = NBDRequestHeader(flags: flags, type: type.rawValue, cookie: cookie, offset: offset, length: size)
        return (bytes, .request(header, payload: payload.map { ByteBuffer(bytes: $0) }))
    }

    @Test func optionsAreFramedWhateverTheSplit() throws {
        let pairs = [Self.option(7, [0, 0, 0, 5] + Array("disk0".utf8) + [0, 0]), Self.option(3, []), Self.option(99, [1, 2, 3])]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs.map { ($0.0, [$0.1]) }) {
            NBDServerDecoder(session: NBDSessionPhase(.options))
        }
    }

    @Test func compactRequestsAreFramedWithTheirPayloads() throws {
        let pairs = [
            Self.request(.write, cookie: 1, offset: 4096, payload: (0..<1024).map { UInt8(truncatingIfNeeded: $0) }),
            Self.request(.read, cookie: 2, offset: 0, payload: nil, length: 512),
            Self.request(.flush, cookie: 3, offset: 0, payload: nil),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs.map { ($0.0, [$0.1]) }) {
            NBDServerDecoder(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        }
    }

    @Test func extendedRequestsAreFramedWithTheirPayloads() throws {
        let pairs = [
            Self.request(.write, cookie: 10, offset: 1 << 40, payload: [UInt8](repeating: 0xaa, count: 2048), extended: true),
            Self.request(.blockStatus, cookie: 11, offset: 0, payload: nil, length: 1 << 35, extended: true),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs.map { ($0.0, [$0.1]) }) {
            NBDServerDecoder(session: NBDSessionPhase(.transmission(extendedHeaders: true)))
        }
    }
}
