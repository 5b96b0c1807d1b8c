import NIOCore
import StrataNBDProtocol

/// Writing the client's messages, the counterpart of `NBDReplyEncoding` on the server.
extension ByteBuffer {
    /// An option: IHAVEOPT, the option, the length of `data`, then `data`.
    mutating func writeNBDOption(_ option: NBDOption, data: ByteBuffer? = nil) {
        writeInteger(NBDMagic.ihaveopt)
        writeInteger(option.rawValue)
        writeInteger(UInt32(data?.readableBytes ?? 0))
        if var data { writeBuffer(&data) }
    }

    /// The data of NBD_OPT_INFO and NBD_OPT_GO: the export name and the information
    /// items asked for.
    mutating func writeNBDExportRequest(name: String, information: [NBDInfo]) {
        let bytes = Array(name.utf8)
        writeInteger(UInt32(bytes.count))
        writeBytes(bytes)
        writeInteger(UInt16(information.count))
        for item in information { writeInteger(item.rawValue) }
    }

    /// The data of NBD_OPT_SET_META_CONTEXT and NBD_OPT_LIST_META_CONTEXT.
    mutating func writeNBDMetaContextRequest(name: String, queries: [String]) {
        let bytes = Array(name.utf8)
        writeInteger(UInt32(bytes.count))
        writeBytes(bytes)
        writeInteger(UInt32(queries.count))
        for query in queries {
            let queryBytes = Array(query.utf8)
            writeInteger(UInt32(queryBytes.count))
            writeBytes(queryBytes)
        }
    }

    /// A request header: compact (28 bytes, 32-bit length) or, with `extended`, extended
    /// (32 bytes, 64-bit length). A WRITE's payload follows it.
    mutating func writeNBDRequest(extended: Bool, flags: NBDCommandFlags, command: NBDCommand, cookie: UInt64,
                                  offset: UInt64, length: UInt64) {
        writeInteger(extended ? NBDMagic.extendedRequest : NBDMagic.request)
        writeInteger(flags.rawValue)
        writeInteger(command.rawValue)
        writeInteger(cookie)
        writeInteger(offset)
        if extended {
            writeInteger(length)
        } else {
            writeInteger(UInt32(length))
        }
    }
}
