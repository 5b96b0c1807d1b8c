import Logging
import NIOCore
import NIOEmbedded
import Strata
import StrataDisks
@_spi(Embedding) import StrataNBD
import StrataNBDProtocol

/// The server's real connection handler on an `EmbeddedChannel`, negotiated as libnbd
/// negotiates (fixed newstyle, structured replies, GO), serving a memory disk whose every
/// page holds data. Requests go in as a client sends them, 32 to a read of the socket,
/// and the replies are taken out (and dropped) after each batch, as a socket would.
final class EmbeddedConnection {
    static let batch = 32
    let topology = Topology()
    let server: NBDServer
    let channel = EmbeddedChannel()
    private let requests: [ByteBuffer]
    private let requestBytes: Int
    private let replyBytes: Int

    /// Reads in which each of the 1 MiB writes arrives (0: batches of 4 KiB requests).
    private let readsPerWrite: Int

    /// Batches of 4 KiB reads, or of 4 KiB writes with their payloads; or, with
    /// `readsPerLargeWrite`, 1 MiB writes one at a time, each arriving in that many reads
    /// (its payload gathered from them).
    init(writes: Bool, readsPerLargeWrite: Int = 0) throws {
        readsPerWrite = readsPerLargeWrite
        let size = 16 << 20
        _ = try MemoryDisk.create(in: topology, name: "md0", contents: [UInt8](repeating: 0x5A, count: size))
        var logger = Logger(label: "strata.nbd.benchmark")
        logger.logLevel = .critical
        server = try NBDServer(topology: topology, exports: [NBDExport(name: "disk0", provider: "md0", isDefault: true)],
                               logger: logger, threads: 1)
        try channel.pipeline.syncOperations.addHandler(server.connectionHandler(on: channel.eventLoop))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 10809)).wait()

        let blockSize = readsPerLargeWrite > 0 ? 1 << 20 : 4096
        let blocks = UInt64(size / blockSize)
        var random: UInt64 = 0x9E37_79B9_7F4A_7C15
        requests = (0..<8).map { batchIndex in
            var wire = ByteBuffer()
            for index in 0..<(readsPerLargeWrite > 0 ? 1 : Self.batch) {
                random ^= random << 13
                random ^= random >> 7
                random ^= random << 17
                wire.writeInteger(NBDMagic.request)
                wire.writeInteger(UInt16(0))
                wire.writeInteger(writes ? NBDCommand.write.rawValue : NBDCommand.read.rawValue)
                wire.writeInteger(UInt64(batchIndex * Self.batch + index))
                wire.writeInteger(random % blocks * UInt64(blockSize))
                wire.writeInteger(UInt32(blockSize))
                if writes { wire.writeRepeatingByte(0x3C, count: blockSize) }
            }
            return wire
        }
        requestBytes = 28 + (writes ? blockSize : 0)
        // A structured read reply: a 20-byte chunk header, the offset, the data; anything
        // else gets a 16-byte simple reply.
        replyBytes = writes ? 16 : 20 + 8 + blockSize
        try negotiate()
    }

    deinit { _ = try? channel.finish() }

    private func negotiate() throws {
        _ = try drain()
        var hello = ByteBuffer()
        hello.writeInteger(NBDHandshakeFlags.clientFixedNewstyle | NBDHandshakeFlags.clientNoZeroes)
        Self.writeOption(NBDOption.structuredReply, into: &hello) { _ in }
        Self.writeOption(NBDOption.go, into: &hello) { data in
            data.writeInteger(UInt32(0))   // the default export
            data.writeInteger(UInt16(0))   // no information asked for
        }
        try channel.writeInbound(hello)
        var replies = try drainBytes()
        var lastType: UInt32 = 0
        while replies.readableBytes >= 20 {
            precondition(replies.readInteger(as: UInt64.self) == NBDMagic.optionReply, "not an option reply")
            _ = replies.readInteger(as: UInt32.self)
            lastType = replies.readInteger(as: UInt32.self)!
            let length = replies.readInteger(as: UInt32.self)!
            replies.moveReaderIndex(forwardBy: Int(length))
        }
        precondition(lastType == NBDOptionReply.ack.rawValue, "GO was refused (last reply type \(lastType))")
    }

    private static func writeOption(_ option: NBDOption, into buffer: inout ByteBuffer, _ body: (inout ByteBuffer) -> Void) {
        var data = ByteBuffer()
        body(&data)
        buffer.writeInteger(NBDMagic.ihaveopt)
        buffer.writeInteger(option.rawValue)
        buffer.writeInteger(UInt32(data.readableBytes))
        buffer.writeBuffer(&data)
    }

    /// Serves `count` requests, 32 at a time (the last batch may be short), and checks
    /// that every one was answered in full.
    func run(_ count: Int) throws {
        if readsPerWrite > 0 { return try runLargeWrites(count) }
        var remaining = count
        var index = 0
        while remaining > 0 {
            let size = min(remaining, Self.batch)
            let batch = requests[index % requests.count]
            try channel.writeInbound(batch.getSlice(at: batch.readerIndex, length: size * requestBytes)!)
            let written = try drain()
            precondition(written == size * replyBytes, "\(size) requests were answered with \(written) bytes")
            remaining -= size
            index += 1
        }
    }

    /// Serves `count` 1 MiB writes, each fed in `readsPerWrite` reads.
    private func runLargeWrites(_ count: Int) throws {
        let piece = (requestBytes + readsPerWrite - 1) / readsPerWrite
        for index in 0..<count {
            let wire = requests[index % requests.count]
            var offset = 0
            while offset < requestBytes {
                let length = min(piece, requestBytes - offset)
                try channel.writeInbound(wire.getSlice(at: wire.readerIndex + offset, length: length)!)
                offset += length
            }
            let written = try drain()
            precondition(written == replyBytes, "a write was answered with \(written) bytes")
        }
    }

    /// Takes out and drops what the server wrote; returns how many bytes.
    private func drain() throws -> Int {
        var total = 0
        while let part = try channel.readOutbound(as: ByteBuffer.self) { total += part.readableBytes }
        return total
    }

    private func drainBytes() throws -> ByteBuffer {
        var all = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
        return all
    }
}
