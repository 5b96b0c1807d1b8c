import NIOCore
import StrataNBDProtocol

/// Writing the server's messages. Each function appends one message header (and, for
/// the small messages, its payload) to a buffer.
extension ByteBuffer {
    /// The greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    public mutating func writeNBDGreeting(flags: UInt16) {
        writeInteger(NBDMagic.nbd)
        writeInteger(NBDMagic.ihaveopt)
        writeInteger(flags)
    }

    /// An option reply header; `length` bytes of payload follow.
    public mutating func writeNBDOptionReply(option: UInt32, type: NBDOptionReply, length: Int) {
        writeInteger(NBDMagic.optionReply)
        writeInteger(option)
        writeInteger(type.rawValue)
        writeInteger(UInt32(length))
    }

    /// A simple reply header (16 bytes); a successful READ's data follows.
    public mutating func writeNBDSimpleReply(error: UInt32, cookie: UInt64) {
        writeFields(16) { fields in
            fields.store(NBDMagic.simpleReply, at: 0)
            fields.store(error, at: 4)
            fields.store(cookie, at: 8)
        }
    }

    /// A chunk header: structured (20 bytes) or, with `extended`, extended (32 bytes,
    /// carrying the request's offset).
    public mutating func writeNBDChunkHeader(extended: Bool, flags: UInt16, type: NBDReplyType, cookie: UInt64,
                                             requestOffset: UInt64, length: Int) {
        if extended {
            writeFields(32) { fields in
                fields.store(NBDMagic.extendedReply, at: 0)
                fields.store(flags, at: 4)
                fields.store(type.rawValue, at: 6)
                fields.store(cookie, at: 8)
                fields.store(requestOffset, at: 16)
                fields.store(UInt64(length), at: 24)
            }
        } else {
            writeFields(20) { fields in
                fields.store(NBDMagic.structuredReply, at: 0)
                fields.store(flags, at: 4)
                fields.store(type.rawValue, at: 6)
                fields.store(cookie, at: 8)
                fields.store(UInt32(length), at: 16)
            }
        }
    }

    /// Appends `count` bytes that `store` fills in, through one view of the buffer:
    /// each `writeInteger` would check the buffer's storage for exclusive access on its
    /// own, several times a reply.
    @inline(__always)
    private mutating func writeFields(_ count: Int, _ store: (BigEndianFields) -> Void) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: count) { bytes in
            store(BigEndianFields(bytes: bytes))
            return count
        }
    }

    /// Bytes of a chunk header.
    public static func nbdChunkHeaderSize(extended: Bool) -> Int { extended ? 32 : 20 }
}

extension String {
    /// The UTF-8 bytes of an error message, cut to `NBDLimits.maximumMessage` bytes at a
    /// character boundary: NBD strings must be UTF-8, and messages quote what clients
    /// sent (an export name may fill them with multi-byte characters).
    var nbdMessageBytes: [UInt8] {
        let bytes = Array(utf8)
        guard bytes.count > NBDLimits.maximumMessage else { return bytes }
        var end = NBDLimits.maximumMessage
        // Back up over continuation bytes (10xxxxxx) to the start of the cut character.
        while end > 0 && bytes[end] & 0xc0 == 0x80 { end -= 1 }
        return Array(bytes[..<end])
    }
}

/// Big-endian integers stored into a message being written.
struct BigEndianFields {
    let bytes: UnsafeMutableRawBufferPointer

    @inline(__always)
    func store<Integer: FixedWidthInteger>(_ value: Integer, at offset: Int) {
        bytes.storeBytes(of: value.bigEndian, toByteOffset: offset, as: Integer.self)
    }
}
