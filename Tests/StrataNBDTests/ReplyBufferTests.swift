import NIOCore
import Strata
@testable import StrataNBD
import Testing

/// Read replies' buffers are used again once the channel has let go of them, and never
/// while it still holds them.
@Suite struct ReplyBufferTests {
    /// Where a reply's bytes are, to tell whether two replies share memory.
    private static func address(of reply: ByteBuffer) -> UnsafeRawPointer? {
        reply.withUnsafeReadableBytes { $0.baseAddress }
    }

    static let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 13) }
    /// A structured READ reply's payload: the offset (0), then the data.
    static func payload(_ data: [UInt8]) -> [UInt8] { [UInt8](repeating: 0, count: 8) + data }

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

    @Test func aReadReplyWrittenOutLendsItsMemoryToTheNextRead() throws {
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
