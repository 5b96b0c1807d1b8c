import NIOCore
@testable import StrataNBD
import Testing

/// The server's input across reads: whatever way a client's bytes are split into reads,
/// the same messages come out in order; a message whole in one read is decoded in place;
/// only an unfinished message is held, with no more room than the limit reserved; a
/// large WRITE left unfinished comes out as the pieces of the reads that brought it.
@Suite struct ServerInputTests {
    /// Requests of every shape: WRITEs larger and smaller than a read, and ones without
    /// a payload.
    static func stream(extended: Bool = false) -> (bytes: ByteBuffer, messages: [NBDClientMessage]) {
        let pieces = [
            DecoderTests.request(.write, cookie: 1, offset: 0, payload: (0..<5000).map { UInt8(truncatingIfNeeded: $0) },
                                 extended: extended),
            DecoderTests.request(.read, cookie: 2, offset: 4096, payload: nil, length: 4096, extended: extended),
            DecoderTests.request(.write, cookie: 3, offset: 512, payload: [UInt8](repeating: 0x5a, count: 100),
                                 extended: extended),
            DecoderTests.request(.flush, cookie: 4, offset: 0, payload: nil, extended: extended),
            DecoderTests.request(.write, cookie: 5, offset: 8192, payload: [UInt8](repeating: 0xc3, count: 3),
                                 extended: extended),
        ]
        var bytes = ByteBuffer()
        for piece in pieces { bytes.writeImmutableBuffer(piece.0) }
        return (bytes, pieces.map(\.1))
    }

    /// Feeds `bytes` cut at `cuts` (ascending offsets) and returns what came out.
    static func decode(_ bytes: ByteBuffer, cutAt cuts: [Int], phase: NBDSessionPhase.Phase) -> (
        messages: [NBDClientMessage], held: Int
    ) {
        var input = NBDServerInput(session: NBDSessionPhase(phase))
        var messages: [NBDClientMessage] = []
        var start = 0
        for end in cuts + [bytes.readableBytes] {
            input.process(bytes.getSlice(at: start, length: end - start)!) { messages.append($0.message) }
            start = end
        }
        return (messages, input.heldBytes)
    }

    @Test(arguments: [false, true])
    func requestsSplitAtEveryPointComeOutTheSame(extended: Bool) {
        let (bytes, expected) = Self.stream(extended: extended)
        for cut in 0...bytes.readableBytes {
            let (messages, held) = Self.decode(bytes, cutAt: [cut], phase: .transmission(extendedHeaders: extended))
            #expect(messages == expected, "split at \(cut)")
            #expect(held == 0, "split at \(cut)")
        }
    }

    @Test func requestsInManySmallReadsComeOutTheSame() {
        let (bytes, expected) = Self.stream()
        for step in [1, 7, 28, 29, 1000] {
            let cuts = Array(stride(from: step, to: bytes.readableBytes, by: step))
            let (messages, held) = Self.decode(bytes, cutAt: cuts, phase: .transmission(extendedHeaders: false))
            #expect(messages == expected, "reads of \(step) bytes")
            #expect(held == 0)
        }
    }

    @Test func optionsAndClientFlagsSplitAtEveryPointComeOutTheSame() {
        let options = [DecoderTests.option(7, [0, 0, 0, 5] + Array("disk0".utf8) + [0, 0]),
                       DecoderTests.option(3, []), DecoderTests.option(99, [1, 2, 3])]
        var bytes = ByteBuffer()
        for option in options { bytes.writeImmutableBuffer(option.0) }
        for cut in 0...bytes.readableBytes {
            let (messages, held) = Self.decode(bytes, cutAt: [cut], phase: .options)
            #expect(messages == options.map(\.1), "split at \(cut)")
            #expect(held == 0)
        }
        var flags = ByteBuffer()
        flags.writeInteger(UInt32(3))
        for cut in 0...4 {
            #expect(Self.decode(flags, cutAt: [cut], phase: .clientFlags).messages == [.clientFlags(3)])
        }
    }

    @Test func aWritePayloadWholeInAReadIsItsBytesNotACopy() {
        let (bytes, expected) = Self.stream()
        // The first WRITE ends at 28 + 5000; cut after the read that follows it, in the
        // middle of the second WRITE's header.
        let cut = 28 + 5000 + 28 + 10
        var input = NBDServerInput(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        let first = bytes.getSlice(at: 0, length: cut)!
        var messages: [NBDClientMessage] = []
        input.process(first) { messages.append($0.message) }
        #expect(messages == Array(expected.prefix(2)))
        // Held: the 10 bytes of the unfinished header, nothing more.
        #expect(input.heldBytes == 10)
        guard case .request(_, let payload?) = messages[0] else {
            Issue.record("the first message is not a WRITE with a payload")
            return
        }
        let readStart = first.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        let payloadStart = payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(payloadStart == readStart + 28)

        input.process(bytes.getSlice(at: cut, length: bytes.readableBytes - cut)!) { messages.append($0.message) }
        #expect(messages == expected)
        #expect(input.heldBytes == 0)
    }

    @Test func pausedRequestsWaitAndComeOutInOrderOnResume() {
        let (bytes, expected) = Self.stream()
        let session = NBDSessionPhase(.transmission(extendedHeaders: false))
        var input = NBDServerInput(session: session)
        var messages: [NBDClientMessage] = []
        // The first WRITE, and 12 bytes of the READ's header.
        input.process(bytes.getSlice(at: 0, length: 5040)!) { messages.append($0.message) }
        #expect(messages == Array(expected.prefix(1)))
        session.paused = true
        input.process(bytes.getSlice(at: 5040, length: bytes.readableBytes - 5040)!) { messages.append($0.message) }
        #expect(messages.count == 1)
        #expect(input.heldBytes == bytes.readableBytes - 28 - 5000)
        session.paused = false
        input.process(ByteBuffer()) { messages.append($0.message) }
        #expect(messages == expected)
        #expect(input.heldBytes == 0)
    }

    @Test func aHeaderAloneDoesNotReserveTheMaximumPayload() {
        let payload = [UInt8](repeating: 0x11, count: NBDLimits.defaultMaximumRequest)
        let (bytes, expected) = DecoderTests.request(.write, cookie: 9, offset: 0, payload: payload)
        var input = NBDServerInput(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        var messages: [NBDClientMessage] = []
        input.process(bytes.getSlice(at: 0, length: 28 + 100)!) { messages.append($0.message) }
        #expect(messages.isEmpty)
        #expect(input.heldBytes == 128)
        #expect(input.reservedBytes <= NBDServerInput.largestReservation)
        // The rest in reads of 1 MiB, as the server's largest.
        var start = 128
        while start < bytes.readableBytes {
            let length = min(1 << 20, bytes.readableBytes - start)
            input.process(bytes.getSlice(at: start, length: length)!) { messages.append($0.message) }
            start += length
        }
        #expect(messages == [expected])
        #expect(input.heldBytes == 0)
        // Let go once its message is out, so an idle connection holds no 64 MiB.
        #expect(input.reservedBytes <= NBDServerInput.largestReservation)
    }

    @Test func anOversizedPayloadIsDroppedAcrossReads() {
        let oversized = [UInt8](repeating: 0, count: NBDLimits.defaultMaximumRequest + 4096)
        var bytes = DecoderTests.request(.write, cookie: 21, offset: 0, payload: oversized).0
        let (flush, flushMessage) = DecoderTests.request(.flush, cookie: 22, offset: 0, payload: nil)
        bytes.writeImmutableBuffer(flush)
        let cuts = [10, 40, 1 << 20, (1 << 20) + 3, bytes.readableBytes - 30]
        let (messages, held) = Self.decode(bytes, cutAt: cuts, phase: .transmission(extendedHeaders: false))
        guard messages.count == 2, case .oversizedRequest(let header) = messages[0] else {
            Issue.record("expected the oversized request then the flush, got \(messages.count) messages")
            return
        }
        #expect(header.cookie == 21)
        #expect(messages[1] == flushMessage)
        #expect(held == 0)
    }

    // MARK: Gathered payloads

    /// A stream with a WRITE large enough to be gathered between small requests.
    static func streamWithLargeWrite(extended: Bool = false, length: Int = 300_000) -> (
        bytes: ByteBuffer, messages: [NBDClientMessage]
    ) {
        let large = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
        let pieces = [
            DecoderTests.request(.read, cookie: 1, offset: 0, payload: nil, length: 4096, extended: extended),
            DecoderTests.request(.write, cookie: 2, offset: 1 << 20, payload: large, extended: extended),
            DecoderTests.request(.write, cookie: 3, offset: 512, payload: [UInt8](repeating: 0x5a, count: 100),
                                 extended: extended),
        ]
        var bytes = ByteBuffer()
        for piece in pieces { bytes.writeImmutableBuffer(piece.0) }
        return (bytes, pieces.map(\.1))
    }

    /// Feeds `bytes` cut at `cuts`, each read given its own buffer of `readCapacity`
    /// bytes (at least the read's), and returns what came out as it came.
    static func feed(_ bytes: ByteBuffer, cutAt cuts: [Int], readCapacity: Int = 0,
                     session: NBDSessionPhase = NBDSessionPhase(.transmission(extendedHeaders: false)),
                     into input: inout NBDServerInput) -> [NBDServerInput.Received] {
        var received: [NBDServerInput.Received] = []
        var start = 0
        for end in cuts + [bytes.readableBytes] {
            var read = ByteBuffer()
            read.reserveCapacity(max(readCapacity, end - start))
            read.writeImmutableBuffer(bytes.getSlice(at: start, length: end - start)!)
            input.process(read) { received.append($0) }
            start = end
        }
        return received
    }

    @Test(arguments: [false, true])
    func aLargeWriteSplitAnywhereComesOutWhole(extended: Bool) {
        let (bytes, expected) = Self.streamWithLargeWrite(extended: extended)
        for cut in Array(stride(from: 0, through: bytes.readableBytes, by: 997)) + [28, 28 + 4, 60, 64, 4096] {
            let (messages, held) = Self.decode(bytes, cutAt: [cut], phase: .transmission(extendedHeaders: extended))
            #expect(messages == expected, "split at \(cut)")
            #expect(held == 0, "split at \(cut)")
        }
        for step in [65_536, 100_000, 150_001] {
            let cuts = Array(stride(from: step, to: bytes.readableBytes, by: step))
            let (messages, held) = Self.decode(bytes, cutAt: cuts, phase: .transmission(extendedHeaders: extended))
            #expect(messages == expected, "reads of \(step) bytes")
            #expect(held == 0)
        }
    }

    @Test func aGatheredPayloadIsTheReadsOwnBytesNotACopy() {
        let (bytes, expected) = Self.streamWithLargeWrite()
        var input = NBDServerInput(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        // The READ, the WRITE's header and 100,000 bytes of its payload; then the rest of
        // the payload in two reads, the last one bringing the small WRITE too.
        let cuts = [28 + 28 + 100_000, 28 + 28 + 200_000]
        var reads: [ByteBuffer] = []
        var received: [NBDServerInput.Received] = []
        var start = 0
        for end in cuts + [bytes.readableBytes] {
            reads.append(bytes.getSlice(at: start, length: end - start)!)
            input.process(reads.last!) { received.append($0) }
            if end == cuts[0] { #expect(input.heldBytes == 28 + 100_000, "the header and the payload so far") }
            start = end
        }
        #expect(received.map(\.message) == expected)
        #expect(input.heldBytes == 0)
        guard received.count == 3, case .gatheredWrite(let header, let payload) = received[1] else {
            Issue.record("the large WRITE did not come out gathered: \(received)")
            return
        }
        #expect(header.cookie == 2)
        #expect(payload.count == 300_000)
        func address(of buffer: ByteBuffer) -> UInt {
            buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        }
        #expect(payload.pieces.map { address(of: $0) } == [address(of: reads[0]) + 56, address(of: reads[1]), address(of: reads[2])])
        #expect(payload.pieces.map(\.readableBytes) == [100_000, 100_000, 100_000])
    }

    @Test func smallSlicesOfLargeReadsAreCopiedAndPiecesStayBounded() {
        let (bytes, expected) = Self.streamWithLargeWrite()
        var input = NBDServerInput(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        // Reads of 5,000 bytes in buffers of 1 MiB: keeping a slice would keep 1 MiB
        // alive for 5,000 bytes, so each is copied, into buffers of 64 KiB.
        let cuts = Array(stride(from: 5000, to: bytes.readableBytes, by: 5000))
        let received = Self.feed(bytes, cutAt: cuts, readCapacity: 1 << 20, into: &input)
        #expect(received.map(\.message) == expected)
        guard received.count == 3, case .gatheredWrite(_, let payload) = received[1] else {
            Issue.record("the large WRITE did not come out gathered")
            return
        }
        // Kept, the 61 reads would be 61 pieces; copied, they fill buffers of 64 KiB.
        #expect(payload.pieces.count == 5)
        #expect(payload.pieces.allSatisfy { $0.capacity <= NBDServerInput.smallPiecesBuffer })
    }

    @Test func aPayloadInMoreReadsThanPiecesIsCopiedTogether() {
        let (bytes, expected) = Self.streamWithLargeWrite()
        var input = NBDServerInput(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        // Reads of 2,000 bytes, each filling its buffer: every one is kept as a piece
        // until there are `mostPieces`, and then the WRITE is held and copied whole.
        let cuts = Array(stride(from: 2000, to: bytes.readableBytes, by: 2000))
        let received = Self.feed(bytes, cutAt: cuts, into: &input)
        #expect(received.map(\.message) == expected)
        guard received.count == 3, case .message(.request(let header, payload: let payload?)) = received[1] else {
            Issue.record("the large WRITE did not come out copied together")
            return
        }
        #expect(header.cookie == 2)
        #expect(payload.readableBytes == 300_000)
        #expect(input.heldBytes == 0)
    }

    @Test func aPayloadNeverHasMorePiecesThanARequestHasSegments() {
        let (bytes, expected) = Self.streamWithLargeWrite()
        var input = NBDServerInput(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        var received: [NBDServerInput.Received] = []
        func read(_ range: Range<Int>, capacity: Int) {
            var read = ByteBuffer()
            read.reserveCapacity(capacity)
            read.writeImmutableBuffer(bytes.getSlice(at: range.lowerBound, length: range.count)!)
            input.process(read) { received.append($0) }
        }
        // The READ, the WRITE's header and 2,000 bytes, then 62 reads of 2,000: 63 pieces
        // kept. Then 1,000 bytes in a 1 MiB buffer, copied into a 64th piece with room
        // to spare; then the rest, too large to go into that room.
        var at = 28 + 28 + 2000
        read(0..<at, capacity: at)
        for _ in 0..<62 {
            read(at..<at + 2000, capacity: 2000)
            at += 2000
        }
        read(at..<at + 1000, capacity: 1 << 20)
        at += 1000
        read(at..<bytes.readableBytes, capacity: bytes.readableBytes - at)
        #expect(received.map(\.message) == expected)
        guard received.count == 3, case .message(.request(_, payload: let payload?)) = received[1] else {
            Issue.record("the WRITE was not held and copied together")
            return
        }
        #expect(payload.readableBytes == 300_000)
    }

    @Test func aGatheredWriteCompletedWhilePausedWaitsInOrder() {
        let (bytes, expected) = Self.streamWithLargeWrite()
        let session = NBDSessionPhase(.transmission(extendedHeaders: false))
        var input = NBDServerInput(session: session)
        var received: [NBDServerInput.Received] = []
        input.process(bytes.getSlice(at: 0, length: 28 + 28 + 1000)!) { received.append($0) }
        #expect(received.map(\.message) == Array(expected.prefix(1)))
        session.paused = true
        input.process(bytes.getSlice(at: 28 + 28 + 1000, length: bytes.readableBytes - 1056)!) { received.append($0) }
        #expect(received.count == 1)
        #expect(input.heldBytes == bytes.readableBytes - 28)
        session.paused = false
        input.process(ByteBuffer()) { received.append($0) }
        #expect(received.map(\.message) == expected)
        #expect(input.heldBytes == 0)
    }

    @Test func aGatheredPayloadIsUsedAgainOnceItsRequestIsDone() {
        let (bytes, _) = Self.streamWithLargeWrite()
        var input = NBDServerInput(session: NBDSessionPhase(.transmission(extendedHeaders: false)))
        func gather() -> GatheredPayload? {
            var received: [NBDServerInput.Received] = []
            input.process(bytes.getSlice(at: 0, length: 100_000)!) { received.append($0) }
            input.process(bytes.getSlice(at: 100_000, length: bytes.readableBytes - 100_000)!) { received.append($0) }
            guard received.count == 3, case .gatheredWrite(_, let payload) = received[1] else { return nil }
            return payload
        }
        guard let first = gather() else {
            Issue.record("the large WRITE did not come out gathered")
            return
        }
        let storage = first.pieces.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) }
        // Still referred to elsewhere, as a request's slot and its callers refer to it.
        let elsewhere = first
        input.recycle(first)
        #expect(elsewhere.pieces.isEmpty && elsewhere.count == 0, "its pieces let go of")
        guard let second = gather() else {
            Issue.record("the second large WRITE did not come out gathered")
            return
        }
        #expect(second === first)
        #expect(second.pieces.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) } == storage)
        #expect(second.count == 300_000)
    }
}

extension NBDServerInput.Received {
    /// What was received as the decoder's message, a gathered payload joined.
    var message: NBDClientMessage {
        switch self {
        case .message(let message): message
        case .gatheredWrite(let header, let payload): .request(header, payload: payload.joined())
        }
    }
}
