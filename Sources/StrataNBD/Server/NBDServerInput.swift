import NIOCore

/// A connection's input between reads: each read's bytes are decoded where they lie,
/// and only a message that a read leaves unfinished is copied, into a buffer of its own
/// that the next reads complete, unless it is a large WRITE, whose payload is gathered.
///
/// NIO's `NIOSingleStepByteToMessageProcessor` gathers the reads itself and, after
/// each, moves what is left to the front of its buffer. During the read that buffer is
/// also the read's own, so the move is a copy of the buffer's whole remaining capacity
/// (up to the 1 MiB a read may bring) into a new allocation: at 4 KiB WRITEs, a tenth of
/// the event loop's time. Here the leftover of a read is at most one message's start,
/// and a message lying whole in a read is never copied: its WRITE payload is a slice of
/// the read.
///
/// A WRITE of at least `gatheredPayload` bytes that a read leaves unfinished is not
/// copied either: its payload comes out as the slices of the reads that brought it
/// (`GatheredPayload`), which the connection hands to the provider as one request's
/// segments. Copying such a payload together cost a quarter of the event loop's time at
/// 1 MiB WRITEs, as much as the memory disk's own copy.
struct NBDServerInput {
    private var decoder: NBDServerDecoder
    /// The start of the message the reads so far have not finished, and behind it,
    /// while the session is paused, the messages that wait; empty otherwise. Its storage
    /// is used again for the next unfinished message once no request holds a slice of it.
    private var unfinished = ByteBuffer()
    /// The large WRITE whose payload is being gathered, if any.
    private var gathering: Gathering?
    /// Payloads whose requests are done, emptied, kept to gather the next ones without
    /// allocating.
    private var sparePayloads: [GatheredPayload] = []

    /// An unfinished message's buffer is made with room for the whole message up to
    /// this much, and a larger buffer is let go once empty: a longer message grows as its
    /// data arrives, so that a header alone cannot have the server reserve the maximum
    /// payload, and an idle connection keeps no more than this.
    static let largestReservation = 1 << 20
    /// WRITE payloads from this long are gathered rather than copied when a read leaves
    /// them unfinished. A shorter one costs little to copy, and more to gather.
    static let gatheredPayload = 128 << 10
    /// The most pieces a payload is gathered in: a client whose payload comes in more
    /// reads than this has it copied together instead, as if it were short.
    static let mostPieces = 64
    /// A slice of a read is kept as a piece when it is at least this fraction of the
    /// read's buffer (which it keeps alive); a smaller one is copied into a buffer of the
    /// payload's own. Bounds the memory a gathered payload holds at 16 times its bytes,
    /// and at `mostPieces` read buffers (of 1 MiB at most). A Unix socket's read brings
    /// about 200 KiB, into a buffer that NIO has grown to 1 MiB.
    static let keptFraction = 16
    /// The room of a buffer that small pieces are copied into.
    static let smallPiecesBuffer = 64 << 10

    init(session: NBDSessionPhase, maximumPayload: Int = NBDLimits.defaultMaximumRequest) {
        decoder = NBDServerDecoder(session: session, maximumPayload: maximumPayload)
    }

    /// What the input hands on: a decoded message, or a WRITE with a gathered payload.
    enum Received {
        case message(NBDClientMessage)
        case gatheredWrite(NBDRequestHeader, GatheredPayload)
    }

    /// A large WRITE under way: its header's bytes (to hold it whole after all, should
    /// it need to be), the pieces so far, and the bytes still to come.
    private struct Gathering {
        var header: NBDRequestHeader
        var headerBytes: ByteBuffer
        let payload: GatheredPayload
        var missing: Int
    }

    /// Bytes held back: an unfinished message's (gathered ones included), or those
    /// waiting while paused.
    var heldBytes: Int { unfinished.readableBytes + (gathering.map { $0.headerBytes.readableBytes + $0.payload.count } ?? 0) }
    /// The room the held bytes' buffer has (for tests of the reservation).
    var reservedBytes: Int { unfinished.capacity }

    /// Decodes what `bytes` completes or holds, handing each message to `receive` in
    /// order, and keeps the rest for the next call. An empty `bytes` decodes what was
    /// held back (after a pause).
    mutating func process(_ bytes: ByteBuffer, _ receive: (Received) -> Void) {
        var bytes = bytes
        // A read's buffer: what a slice of it kept as a piece keeps alive.
        let readCapacity = bytes.capacity
        if gathering != nil && !continueGathering(from: &bytes, readCapacity: readCapacity, receive) { return }
        if unfinished.readableBytes > 0 && !finishHeldMessages(from: &bytes, receive) { return }
        while let message = decoder.decodeNext(&bytes) { receive(.message(message)) }
        guard bytes.readableBytes > 0 else { return }
        if let (header, headerBytes) = decoder.takeUnfinishedWriteHeader(&bytes, minimumPayload: Self.gatheredPayload) {
            let payload = sparePayloads.popLast() ?? GatheredPayload()
            let missing = Int(header.length) - bytes.readableBytes
            if bytes.readableBytes > 0 {
                payload.add(bytes.readSlice(length: bytes.readableBytes)!, of: readCapacity, missing: missing)
            }
            gathering = Gathering(header: header, headerBytes: headerBytes, payload: payload, missing: missing)
            return
        }
        // A message begun here and finished by a later read (or messages waiting out a
        // pause): copied, as the read's buffer is not this connection's to keep.
        hold(&bytes)
    }

    /// Takes back a gathered payload whose request is done, lets go of its pieces, and
    /// keeps it for the next.
    mutating func recycle(_ payload: GatheredPayload) {
        payload.empty()
        if sparePayloads.count < 4 { sparePayloads.append(payload) }
    }

    /// Copies `bytes` behind what is held, reserving room for the message they begin.
    private mutating func hold(_ bytes: inout ByteBuffer) {
        let held = bytes.readableBytes
        unfinished.clear(minimumCapacity: max(held, min(held + decoder.missingBytes(in: bytes), Self.largestReservation)))
        unfinished.writeBuffer(&bytes)
    }

    /// Adds what the gathered payload lacks from `bytes` and hands the WRITE on once it
    /// is whole. Returns false when `bytes` ran out first. A payload that would need
    /// more pieces than `mostPieces`, or that completes while requests are not being
    /// decoded (paused), is held whole as an unfinished message instead, and the held
    /// messages take it from there.
    private mutating func continueGathering(from bytes: inout ByteBuffer, readCapacity: Int,
                                            _ receive: (Received) -> Void) -> Bool {
        guard var current = gathering else { return true }
        gathering = nil
        let taken = min(bytes.readableBytes, current.missing)
        if taken > 0 {
            if current.payload.pieces.count == Self.mostPieces && current.payload.needsPiece(for: taken, of: readCapacity) {
                holdWhole(current)
                return true
            }
            current.missing -= taken
            current.payload.add(bytes.readSlice(length: taken)!, of: readCapacity, missing: current.missing)
        }
        guard current.missing == 0 else {
            gathering = current
            return false
        }
        guard decoder.decodesRequests else {
            holdWhole(current)
            return true
        }
        receive(.gatheredWrite(current.header, current.payload))
        return true
    }

    /// Puts a gathered WRITE's header and pieces so far into the held bytes.
    private mutating func holdWhole(_ current: Gathering) {
        var header = current.headerBytes
        hold(&header)
        for var piece in current.payload.pieces { unfinished.writeBuffer(&piece) }
        recycle(current.payload)
    }

    /// Tops the held message up from `bytes` with just what it lacks, decoding each
    /// message it completes, until nothing is held. Returns false when it must stay held
    /// (the bytes ran out, or the session is paused), with all of `bytes` behind it.
    private mutating func finishHeldMessages(from bytes: inout ByteBuffer,
                                             _ receive: (Received) -> Void) -> Bool {
        while unfinished.readableBytes > 0 {
            if let message = decoder.decodeNext(&unfinished) {
                receive(.message(message))
                continue
            }
            // Emptied without a message: data being dropped took it all.
            if unfinished.readableBytes == 0 { break }
            let missing = decoder.missingBytes(in: unfinished)
            if missing == 0 || missing > bytes.readableBytes {
                // Whole but not decoded (paused), or more is needed than this read brought.
                unfinished.writeBuffer(&bytes)
                return false
            }
            var rest = bytes.readSlice(length: missing)!
            unfinished.writeBuffer(&rest)
        }
        if unfinished.capacity > Self.largestReservation { unfinished = ByteBuffer() }
        return true
    }
}

/// A WRITE's payload as the pieces it came in: slices of the reads that brought it,
/// and copies of the pieces too small to keep their read's buffer alive for.
///
/// A class, confined to its connection's event loop: its request's slot refers to it
/// until the provider is done, and then the input empties it and gathers the next
/// payload in it. Its list of pieces is referred to by it alone, so emptying the list
/// keeps its storage; a list passed along by value is still shared when a memory disk
/// completes the request inside the call that sent it, and emptying it then allocated.
final class GatheredPayload {
    private(set) var pieces: [ByteBuffer] = []
    /// The payload's bytes so far.
    private(set) var count = 0

    /// Lets go of the pieces, keeping the list's storage.
    func empty() {
        pieces.removeAll(keepingCapacity: true)
        count = 0
    }

    /// Adds `piece`, a slice of a read whose buffer has `readCapacity` bytes of room,
    /// with `missing` bytes of the payload still to come after it.
    func add(_ piece: ByteBuffer, of readCapacity: Int, missing: Int) {
        count += piece.readableBytes
        if Self.isKept(piece.readableBytes, of: readCapacity) {
            pieces.append(piece)
            return
        }
        var piece = piece
        if lastPieceHasRoom(for: piece.readableBytes) {
            pieces[pieces.count - 1].writeBuffer(&piece)
            return
        }
        var copy = ByteBuffer()
        copy.reserveCapacity(max(piece.readableBytes, min(piece.readableBytes + missing, NBDServerInput.smallPiecesBuffer)))
        copy.writeBuffer(&piece)
        pieces.append(copy)
    }

    /// Whether a slice of `length` bytes of a read whose buffer has `readCapacity` bytes
    /// of room is kept as a piece of its own rather than copied.
    static func isKept(_ length: Int, of readCapacity: Int) -> Bool {
        length * NBDServerInput.keptFraction >= readCapacity
    }

    /// Whether adding a slice of `length` bytes of such a read makes one more piece.
    func needsPiece(for length: Int, of readCapacity: Int) -> Bool {
        Self.isKept(length, of: readCapacity) || !lastPieceHasRoom(for: length)
    }

    /// Whether the last piece is a copy with room for `bytes` more. A slice of a read
    /// never is: a slice has no room beyond its bytes.
    func lastPieceHasRoom(for bytes: Int) -> Bool {
        (pieces.last?.writableBytes ?? 0) >= bytes
    }

    /// The payload in one buffer, for the paths that need it contiguous (copies it).
    func joined() -> ByteBuffer {
        var whole = ByteBuffer()
        whole.reserveCapacity(count)
        for var piece in pieces { whole.writeBuffer(&piece) }
        return whole
    }
}
