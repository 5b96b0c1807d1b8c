import NIOCore
import Strata
@testable import StrataNBD
@testable import StrataNBDClient
import Testing

/// Reply buffers are used again once the channel has let go of them, and never while it
/// still holds them; short reads' replies are copied into batches that never grow.
@Suite struct ReplyBufferTests {
    /// Where a reply's bytes are, to tell whether two replies share memory.
    private static func address(of reply: ByteBuffer) -> UnsafeRawPointer? {
        reply.withUnsafeReadableBytes { $0.baseAddress }
    }

    static let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 13) }
    /// A structured READ reply's payload: the offset, then the data.
    static func payload(_ data: some Collection<UInt8>, at offset: Int = 0) -> [UInt8] {
        withUnsafeBytes(of: UInt64(offset).bigEndian, Array.init) + data
    }

    /// A server with `pattern` written at 0, and the first reply to a READ of it (cookie
    /// 2), taken out of the channel.
    private static func firstReadReply() throws -> (EmbeddedServer, ByteBuffer) {
        let server = try EmbeddedServer()
        try server.open(structured: true)
        try server.request(.write, cookie: 1, offset: 0, length: 4096, payload: pattern)
        _ = try server.received()
        try server.request(.read, cookie: 2, offset: 0, length: 4096)
        return (server, try #require(try server.channel.readOutbound(as: ByteBuffer.self)))
    }

    @Test func aReplyWrittenOutLendsItsMemoryToTheNextRead() throws {
        let (server, first) = try Self.firstReadReply()
        let firstAddress = Self.address(of: first)
        #expect(parseReplies(first).map(\.payload) == [Self.payload(Self.pattern)])
        // The channel and this test let go of the first reply: the second reuses it.
        _ = consume first
        try server.request(.read, cookie: 3, offset: 0, length: 4096)
        let second = try #require(try server.channel.readOutbound(as: ByteBuffer.self))
        #expect(Self.address(of: second) == firstAddress)
        let replies = parseReplies(second)
        #expect(replies.map(\.cookie) == [3])
        #expect(replies.map(\.payload) == [Self.payload(Self.pattern)])
    }

    @Test func aReplyStillHeldIsNeverWrittenOver() throws {
        // Held, as a socket that has not taken it yet holds it.
        let (server, held) = try Self.firstReadReply()
        let heldBytes = Array(held.readableBytesView)
        let other = Self.pattern.map { ~$0 }
        try server.request(.write, cookie: 3, offset: 0, length: 4096, payload: other)
        try server.request(.read, cookie: 4, offset: 0, length: 4096)
        let replies = parseReplies(try server.received())
        #expect(replies.map(\.cookie) == [3, 4])
        #expect(replies.last?.payload == Self.payload(other))
        #expect(Array(held.readableBytesView) == heldBytes)
        #expect(parseReplies(held).map(\.cookie) == [2])
    }

    @Test func shortReadsAreAnsweredInBatchesThatNeverGrowAndLongReadsFromTheirOwnBuffer() throws {
        let server = try EmbeddedServer()
        try server.open(structured: true)
        let short = 4096
        let long = NBDConnectionHandler.batchedReadLength * 2
        let shortReads = 20
        let data = (0..<(shortReads * short)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        try server.request(.write, cookie: 1, offset: 0, length: UInt64(data.count), payload: data)
        _ = try server.received()
        // All in one input, as a client with many requests in flight sends them.
        try server.send { input in
            for cookie in 0..<UInt64(shortReads) {
                input.writeNBDRequest(extended: false, flags: [], command: .read, cookie: 10 + cookie,
                                      offset: cookie * UInt64(short), length: UInt64(short))
            }
            input.writeNBDRequest(extended: false, flags: [], command: .read, cookie: 99, offset: 0, length: UInt64(long))
        }
        var writes: [ByteBuffer] = []
        while let write = try server.channel.readOutbound(as: ByteBuffer.self) { writes.append(write) }
        // A batch has room for 15 short replies: the first is written when the 16th does
        // not fit, the long read goes out on its own, the second batch with the flush.
        let perBatch = NBDConnectionHandler.replyBatchCapacity / (short + 28)
        #expect(writes.count == 3)
        #expect(writes.map(\.readableBytes) == [perBatch * (short + 28), long + 28, (shortReads - perBatch) * (short + 28)])
        #expect(writes.allSatisfy { $0.capacity <= NBDConnectionHandler.replyBatchCapacity || $0.readableBytes == long + 28 })
        var all = ByteBuffer()
        for var write in writes { all.writeBuffer(&write) }
        let replies = parseReplies(all)
        #expect(replies.count == shortReads + 1, "each request answered once")
        #expect(Set(replies.map(\.cookie)) == Set((0..<UInt64(shortReads)).map { 10 + $0 } + [99]))
        for reply in replies {
            let (offset, length) = reply.cookie == 99 ? (0, long) : (Int(reply.cookie - 10) * short, short)
            #expect(reply.payload == Self.payload(data[offset..<(offset + length)], at: offset), "cookie \(reply.cookie)")
        }
    }

    @Test func aBufferTheChannelNeverHeldIsTakenFirstWithoutAFlush() {
        var buffers = ReplyBuffers()
        let allocator = ByteBufferAllocator()
        buffers.keep(allocator.buffer(capacity: 4096))
        buffers.flushed()
        var mine = allocator.buffer(capacity: 4096)
        mine.writeString("read into, then copied into a batch")
        let address = mine.withUnsafeReadableBytes { $0.baseAddress }
        buffers.reuse(consume mine)
        #expect(buffers.count == 2)
        let taken = buffers.take(capacity: 4096, allocator: allocator)
        #expect(taken.withUnsafeReadableBytes { $0.baseAddress } == address)
        #expect(taken.readableBytes == 0)
        #expect(buffers.count == 1)
    }

    @Test func theKeptBuffersAreBoundedInSizeAndBytes() {
        var buffers = ReplyBuffers()
        let allocator = ByteBufferAllocator()
        buffers.keep(allocator.buffer(capacity: ReplyBuffers.largestKept + 1))
        #expect(buffers.count == 0)
        let each = 64 << 10
        for _ in 0..<(ReplyBuffers.keptBytesLimit / each + 4) { buffers.keep(allocator.buffer(capacity: each)) }
        #expect(buffers.count == ReplyBuffers.keptBytesLimit / each)
        buffers.flushed()
        // A request larger than any kept buffer gets one grown to fit.
        let grown = buffers.take(capacity: each * 2, allocator: allocator)
        #expect(grown.capacity >= each * 2)
        #expect(grown.readableBytes == 0)
        #expect(buffers.count == ReplyBuffers.keptBytesLimit / each - 1)
    }

    @Test func onlyBuffersKeptBeforeTheLastFlushAreTaken() {
        var buffers = ReplyBuffers()
        let allocator = ByteBufferAllocator()
        var sent = allocator.buffer(capacity: 4096)
        sent.writeString("queued in the channel")
        buffers.keep(sent)
        // Not flushed yet: the channel surely still holds it, so a new buffer is made.
        var fresh = buffers.take(capacity: 4096, allocator: allocator)
        #expect(buffers.count == 1)
        fresh.writeString("another reply")
        #expect(sent.getString(at: 0, length: 21) == "queued in the channel")
        buffers.flushed()
        let reused = buffers.take(capacity: 4096, allocator: allocator)
        #expect(buffers.count == 0)
        #expect(reused.readableBytes == 0)
        #expect(reused.capacity >= 4096)
    }
}
