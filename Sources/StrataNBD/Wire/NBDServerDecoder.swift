import NIOCore
import StrataNBDProtocol

/// One request's header, compact or extended.
public struct NBDRequestHeader: Sendable, Hashable {
    public var flags: NBDCommandFlags
    public var type: UInt16
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt64

    public init(flags: NBDCommandFlags, type: UInt16, cookie: UInt64, offset: UInt64, length: UInt64) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }
}

/// What the server reads from a client, one whole message at a time.
public enum NBDClientMessage: Equatable, Sendable {
    /// The client's flags, right after the greeting.
    case clientFlags(UInt32)
    /// An option with its data.
    case option(code: UInt32, data: ByteBuffer)
    /// An option whose data was longer than the server keeps; it was read and dropped.
    case oversizedOption(code: UInt32, length: UInt32)
    /// A request with its payload (a WRITE's data), if any.
    case request(NBDRequestHeader, payload: ByteBuffer?)
    /// A request whose payload was longer than the maximum; it was read and dropped.
    case oversizedRequest(NBDRequestHeader)
    /// Something that is not NBD: the connection cannot continue.
    case protocolViolation(String)
}

/// Which part of the session the bytes belong to; the connection handler changes it
/// as negotiation goes, and the decoder reads it for each message.
public final class NBDSessionPhase {
    public enum Phase: Equatable, Sendable {
        case clientFlags
        case options
        case transmission(extendedHeaders: Bool)
        /// Everything further is ignored (after DISC, ABORT or a violation).
        case closed
    }

    // Both are read for every message decoded, by the decoder and its connection on
    // the connection's one thread: unchecked, so no access pays Swift's run-time
    // exclusivity check (see `NBDConnectionHandler`).
    @exclusivity(unchecked) public var phase: Phase
    /// While set, no further option or request is decoded: what was already received
    /// stays buffered until the connection has room for it again (backpressure), or, in
    /// the handshake, until the option being answered has its answer.
    @exclusivity(unchecked) public var paused = false

    public init(_ phase: Phase = .clientFlags) {
        self.phase = phase
    }
}

/// Splits a client's byte stream into whole NBD messages, in either phase.
///
/// Option data beyond `NBDLimits.maximumOptionLength` and WRITE payloads beyond
/// `maximumPayload` are consumed as they arrive and dropped, so no client can make the
/// server buffer more than a bounded amount.
public struct NBDServerDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = NBDClientMessage

    private let session: NBDSessionPhase
    /// The longest payload a request may carry (the server's maximum request).
    public let maximumPayload: Int
    /// Bytes still to drop, and what to report once they are gone.
    private var discarding: (remaining: UInt64, then: NBDClientMessage)?

    public init(session: NBDSessionPhase, maximumPayload: Int = NBDLimits.defaultMaximumRequest) {
        self.session = session
        self.maximumPayload = maximumPayload
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> NBDClientMessage? {
        decodeNext(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> NBDClientMessage? {
        decodeNext(&buffer)
    }

    /// How many more bytes the message starting at `buffer`'s reader index needs before
    /// it decodes: at first the rest of its header, then the rest of its data. 0 when
    /// it is whole, and when whatever comes is consumed as it arrives (data being
    /// dropped, a closed session, an option or payload over the limit).
    func missingBytes(in buffer: ByteBuffer) -> Int {
        if discarding != nil { return 0 }
        let available = buffer.readableBytes
        func lacking(_ whole: Int) -> Int { max(0, whole - available) }
        switch session.phase {
        case .clientFlags:
            return lacking(4)
        case .options:
            guard let option = Self.optionHeader(in: buffer) else { return lacking(16) }
            return Int(option.length) > NBDLimits.maximumOptionLength ? 0 : lacking(16 + Int(option.length))
        case .transmission(let extended):
            let headerSize = Self.requestHeaderSize(extended: extended)
            guard let request = Self.requestHeader(in: buffer, extended: extended) else { return lacking(headerSize) }
            let payload = Self.payloadLength(of: request.header, extended: extended)
            return payload > UInt64(maximumPayload) ? 0 : lacking(headerSize + Int(payload))
        case .closed:
            return 0
        }
    }

    /// Reads the header of a WRITE at the buffer's reader index off the buffer when its
    /// payload, of at least `minimumPayload` bytes and within the maximum, has not all
    /// arrived yet: the payload is then its caller's to gather, and the decoder starts
    /// at the next message once it has. Nil, reading nothing, for anything else
    /// (`decodeNext` decodes or holds it).
    mutating func takeUnfinishedWriteHeader(_ buffer: inout ByteBuffer,
                                            minimumPayload: Int) -> (header: NBDRequestHeader, bytes: ByteBuffer)? {
        guard discarding == nil, !session.paused, case .transmission(let extended) = session.phase,
              let (magic, header) = Self.requestHeader(in: buffer, extended: extended),
              magic == (extended ? NBDMagic.extendedRequest : NBDMagic.request),
              header.type == NBDCommand.write.rawValue else { return nil }
        let headerSize = Self.requestHeaderSize(extended: extended)
        let payload = Self.payloadLength(of: header, extended: extended)
        guard payload >= UInt64(minimumPayload), payload <= UInt64(maximumPayload),
              UInt64(buffer.readableBytes) < UInt64(headerSize) + payload else { return nil }
        return (header, buffer.readSlice(length: headerSize)!)
    }

    /// Whether a request that has arrived whole would be decoded now: in transmission,
    /// not paused.
    var decodesRequests: Bool {
        guard case .transmission = session.phase else { return false }
        return !session.paused && discarding == nil
    }

    /// `decode(buffer:)` without its `throws`: bad input comes out as a message.
    mutating func decodeNext(_ buffer: inout ByteBuffer) -> NBDClientMessage? {
        if let pending = discarding {
            let dropped = min(UInt64(buffer.readableBytes), pending.remaining)
            buffer.moveReaderIndex(forwardBy: Int(dropped))
            if dropped < pending.remaining {
                discarding = (pending.remaining - dropped, pending.then)
                return nil
            }
            discarding = nil
            return pending.then
        }
        switch session.phase {
        case .clientFlags:
            return buffer.readInteger(as: UInt32.self).map(NBDClientMessage.clientFlags)
        case .options:
            if session.paused { return nil }
            return decodeOption(&buffer)
        case .transmission(let extended):
            if session.paused { return nil }
            return decodeRequest(&buffer, extended: extended)
        case .closed:
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return nil
        }
    }

    /// The 16-byte header of the option at the buffer's reader index, or nil until all
    /// of it is there.
    private static func optionHeader(in buffer: ByteBuffer) -> (magic: UInt64, code: UInt32, length: UInt32)? {
        guard buffer.readableBytes >= 16,
              let magic: UInt64 = buffer.getInteger(at: buffer.readerIndex),
              let code: UInt32 = buffer.getInteger(at: buffer.readerIndex + 8),
              let length: UInt32 = buffer.getInteger(at: buffer.readerIndex + 12) else { return nil }
        return (magic, code, length)
    }

    private mutating func decodeOption(_ buffer: inout ByteBuffer) -> NBDClientMessage? {
        guard let (magic, code, length) = Self.optionHeader(in: buffer) else { return nil }
        guard magic == NBDMagic.ihaveopt else {
            return .protocolViolation("option magic 0x\(String(magic, radix: 16)) is not IHAVEOPT")
        }
        if Int(length) > NBDLimits.maximumOptionLength {
            buffer.moveReaderIndex(forwardBy: 16)
            discarding = (UInt64(length), .oversizedOption(code: code, length: length))
            return decodeNext(&buffer)
        }
        guard buffer.readableBytes >= 16 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 16)
        return .option(code: code, data: buffer.readSlice(length: Int(length))!)
    }

    /// A request header is compact (28 bytes, 32-bit length) or extended (32 bytes,
    /// 64-bit length).
    private static func requestHeaderSize(extended: Bool) -> Int { extended ? 32 : 28 }

    /// The request header at the buffer's reader index with its magic, or nil until all
    /// of it is there.
    @inline(__always)
    private static func requestHeader(in buffer: ByteBuffer, extended: Bool) -> (magic: UInt32, header: NBDRequestHeader)? {
        guard buffer.readableBytes >= requestHeaderSize(extended: extended) else { return nil }
        // The fields are read from one view of the bytes: each `getInteger` would check
        // the buffer's storage for exclusive access on its own, five times a request.
        return buffer.withUnsafeReadableBytes { bytes in
            func field<Integer: FixedWidthInteger>(_ offset: Int, _: Integer.Type) -> Integer {
                Integer(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: Integer.self))
            }
            return (magic: field(0, UInt32.self),
                    header: NBDRequestHeader(
                        flags: NBDCommandFlags(rawValue: field(4, UInt16.self)), type: field(6, UInt16.self),
                        cookie: field(8, UInt64.self), offset: field(16, UInt64.self),
                        length: extended ? field(24, UInt64.self) : UInt64(field(24, UInt32.self))))
        }
    }

    /// The bytes of payload behind a request header: in compact headers only WRITE
    /// carries one, of `length` bytes; in extended headers any request flagged
    /// PAYLOAD_LEN.
    private static func payloadLength(of header: NBDRequestHeader, extended: Bool) -> UInt64 {
        let carriesPayload = extended ? header.flags.contains(.payloadLength) : header.type == NBDCommand.write.rawValue
        return carriesPayload ? header.length : 0
    }

    private mutating func decodeRequest(_ buffer: inout ByteBuffer, extended: Bool) -> NBDClientMessage? {
        guard let (magic, header) = Self.requestHeader(in: buffer, extended: extended) else { return nil }
        guard magic == (extended ? NBDMagic.extendedRequest : NBDMagic.request) else {
            let expected = extended ? "NBD_EXTENDED_REQUEST_MAGIC" : "NBD_REQUEST_MAGIC"
            return .protocolViolation("request magic 0x\(String(magic, radix: 16)) is not \(expected)")
        }
        let headerSize = Self.requestHeaderSize(extended: extended)
        let payload = Self.payloadLength(of: header, extended: extended)
        if extended && payload > UInt64(maximumPayload) {
            // The extension asks for a hard disconnect here rather than reading it all.
            return .protocolViolation("payload of \(payload) bytes is over the \(maximumPayload)-byte maximum")
        }
        return take(header, headerSize: headerSize, payload: payload, from: &buffer)
    }

    private mutating func take(_ header: NBDRequestHeader, headerSize: Int, payload: UInt64,
                               from buffer: inout ByteBuffer) -> NBDClientMessage? {
        if payload > UInt64(maximumPayload) {
            buffer.moveReaderIndex(forwardBy: headerSize)
            discarding = (payload, .oversizedRequest(header))
            return decodeNext(&buffer)
        }
        guard UInt64(buffer.readableBytes) >= UInt64(headerSize) + payload else { return nil }
        buffer.moveReaderIndex(forwardBy: headerSize)
        if payload == 0 { return .request(header, payload: nil) }
        return .request(header, payload: buffer.readSlice(length: Int(payload))!)
    }
}
