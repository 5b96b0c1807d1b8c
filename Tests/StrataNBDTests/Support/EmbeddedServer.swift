import Logging
import NIOCore
import NIOEmbedded
import Strata
import StrataDisks
@testable import StrataNBD
import StrataNBDProtocol

/// One server connection on an EmbeddedChannel: bytes in, bytes out, no sockets.
final class EmbeddedServer {
    let topology = Topology()
    let server: NBDServer
    let channel = EmbeddedChannel()

    /// A memory disk "md0" of `size` bytes (1 MiB unless asked) exported as "disk0"
    /// (default) and read-only as "ro", unless `exports` stacks something on it and says
    /// what to export instead.
    init(limits: NBDServer.Limits = NBDServer.Limits(), size: Int64 = 1 << 20,
         exports: ((Topology, Provider) throws -> [NBDExport])? = nil) throws {
        let disk = try MemoryDisk.create(in: topology, name: "md0", size: size)
        var logger = Logger(label: "strata.nbd.embedded")
        logger.logLevel = .critical
        server = try NBDServer(topology: topology, exports: try exports?(topology, disk.provider) ?? [
            NBDExport(name: "disk0", provider: "md0", description: "embedded", isDefault: true),
            NBDExport(name: "ro", provider: "md0", readOnly: true),
        ], logger: logger, limits: limits, threads: 1)
        let handler = NBDConnectionHandler(core: server.core, eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 10809)).wait()
    }

    deinit { _ = try? channel.finish() }

    /// Sends bytes as if from the client.
    func send(_ bytes: ByteBuffer) throws { try channel.writeInbound(bytes) }

    func send(_ build: (inout ByteBuffer) -> Void) throws {
        var buffer = ByteBuffer()
        build(&buffer)
        try send(buffer)
    }

    /// Everything the server has written since the last call.
    func received() throws -> ByteBuffer {
        var all = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
        return all
    }

    var isOpen: Bool { channel.isActive }

    // MARK: Handshake helpers

    /// Reads and checks the greeting, sends client flags (fixed newstyle, no zeroes).
    func greet(clientFlags: UInt32 = NBDHandshakeFlags.clientFixedNewstyle | NBDHandshakeFlags.clientNoZeroes) throws {
        var greeting = try received()
        precondition(greeting.readInteger(as: UInt64.self) == NBDMagic.nbd)
        try send { $0.writeInteger(clientFlags) }
    }

    func sendOption(_ code: UInt32, _ data: ByteBuffer = ByteBuffer()) throws {
        try send { buffer in
            buffer.writeInteger(NBDMagic.ihaveopt)
            buffer.writeInteger(code)
            buffer.writeInteger(UInt32(data.readableBytes))
            var data = data
            buffer.writeBuffer(&data)
        }
    }

    /// Reads option replies until one of `type` for `option` (or an error) arrives.
    func optionReplies() throws -> [(option: UInt32, type: UInt32, data: ByteBuffer)] {
        var bytes = try received()
        var replies: [(UInt32, UInt32, ByteBuffer)] = []
        while bytes.readableBytes >= 20 {
            precondition(bytes.readInteger(as: UInt64.self) == NBDMagic.optionReply, "not an option reply")
            let option = bytes.readInteger(as: UInt32.self)!
            let type = bytes.readInteger(as: UInt32.self)!
            let length = bytes.readInteger(as: UInt32.self)!
            replies.append((option, type, bytes.readSlice(length: Int(length))!))
        }
        return replies
    }

    static func goData(_ name: String, infos: [UInt16] = [NBDInfo.blockSize.rawValue]) -> ByteBuffer {
        var data = ByteBuffer()
        data.writeInteger(UInt32(name.utf8.count))
        data.writeString(name)
        data.writeInteger(UInt16(infos.count))
        for info in infos { data.writeInteger(info) }
        return data
    }

    static func metaContextData(_ name: String, queries: [String]) -> ByteBuffer {
        var data = ByteBuffer()
        data.writeInteger(UInt32(name.utf8.count))
        data.writeString(name)
        data.writeInteger(UInt32(queries.count))
        for query in queries {
            data.writeInteger(UInt32(query.utf8.count))
            data.writeString(query)
        }
        return data
    }

    /// Negotiates (structured replies, base:allocation, extended headers as asked) and
    /// enters transmission on `export`.
    func open(_ export: String = "disk0", structured: Bool = false, extended: Bool = false) throws {
        try greet()
        if extended { try sendOption(NBDOption.extendedHeaders.rawValue) }
        if structured && !extended { try sendOption(NBDOption.structuredReply.rawValue) }
        if structured || extended {
            try sendOption(NBDOption.setMetaContext.rawValue,
                           Self.metaContextData(export, queries: [NBDMetaContext.baseAllocation]))
        }
        try sendOption(NBDOption.go.rawValue, Self.goData(export))
        let replies = try optionReplies()
        precondition(replies.last?.type == NBDOptionReply.ack.rawValue, "GO was refused: \(replies)")
    }

    // MARK: Transmission helpers

    func request(_ command: NBDCommand, type: UInt16? = nil, flags: NBDCommandFlags = [], cookie: UInt64, offset: UInt64,
                 length: UInt64, payload: [UInt8]? = nil, extended: Bool = false) throws {
        try send { buffer in
            buffer.writeInteger(extended ? NBDMagic.extendedRequest : NBDMagic.request)
            buffer.writeInteger(flags.rawValue)
            buffer.writeInteger(type ?? command.rawValue)
            buffer.writeInteger(cookie)
            buffer.writeInteger(offset)
            if extended { buffer.writeInteger(length) } else { buffer.writeInteger(UInt32(length)) }
            if let payload { buffer.writeBytes(payload) }
        }
    }
}

/// One reply as the client reads it.
struct ParsedReply: Equatable {
    var kind: String          // "simple", "structured", "extended"
    var flags: UInt16 = 0
    var type: UInt16 = 0
    var error: UInt32 = 0
    var cookie: UInt64
    var offset: UInt64 = 0
    var payload: [UInt8] = []
}

/// Parses replies; a simple reply to a READ carries `readLength` bytes of data.
func parseReplies(_ bytes: ByteBuffer, readLength: [UInt64: Int] = [:]) -> [ParsedReply] {
    var bytes = bytes
    var replies: [ParsedReply] = []
    while let magic = bytes.readInteger(as: UInt32.self) {
        switch magic {
        case NBDMagic.simpleReply:
            let error = bytes.readInteger(as: UInt32.self)!
            let cookie = bytes.readInteger(as: UInt64.self)!
            let data = error == 0 ? bytes.readBytes(length: readLength[cookie] ?? 0)! : []
            replies.append(ParsedReply(kind: "simple", error: error, cookie: cookie, payload: data))
        case NBDMagic.structuredReply:
            let flags = bytes.readInteger(as: UInt16.self)!
            let type = bytes.readInteger(as: UInt16.self)!
            let cookie = bytes.readInteger(as: UInt64.self)!
            let length = bytes.readInteger(as: UInt32.self)!
            replies.append(ParsedReply(kind: "structured", flags: flags, type: type, cookie: cookie,
                                       payload: bytes.readBytes(length: Int(length))!))
        case NBDMagic.extendedReply:
            let flags = bytes.readInteger(as: UInt16.self)!
            let type = bytes.readInteger(as: UInt16.self)!
            let cookie = bytes.readInteger(as: UInt64.self)!
            let offset = bytes.readInteger(as: UInt64.self)!
            let length = bytes.readInteger(as: UInt64.self)!
            replies.append(ParsedReply(kind: "extended", flags: flags, type: type, cookie: cookie, offset: offset,
                                       payload: bytes.readBytes(length: Int(length))!))
        default:
            replies.append(ParsedReply(kind: "garbage 0x\(String(magic, radix: 16))", cookie: 0))
            return replies
        }
    }
    return replies
}
