import NIOCore

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
        writeInteger(NBDMagic.simpleReply)
        writeInteger(error)
        writeInteger(cookie)
    }

    /// A chunk header: structured (20 bytes) or, with `extended`, extended (32 bytes,
    /// carrying the request's offset).
    public mutating func writeNBDChunkHeader(extended: Bool, flags: UInt16, type: NBDReplyType, cookie: UInt64,
                                             requestOffset: UInt64, length: Int) {
        if extended {
            writeInteger(NBDMagic.extendedReply)
            writeInteger(flags)
            writeInteger(type.rawValue)
            writeInteger(cookie)
            writeInteger(requestOffset)
            writeInteger(UInt64(length))
        } else {
            writeInteger(NBDMagic.structuredReply)
            writeInteger(flags)
            writeInteger(type.rawValue)
            writeInteger(cookie)
            writeInteger(UInt32(length))
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
