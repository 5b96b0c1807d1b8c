import NIOCore

/// A connection's input between reads: each read's bytes are decoded where they lie,
/// and only a message that a read leaves unfinished is copied, into a buffer of its own
/// that the next reads complete.
///
/// NIO's `NIOSingleStepByteToMessageProcessor` gathers the reads itself and, after
/// each, moves what is left to the front of its buffer. During the read that buffer is
/// also the read's own, so the move is a copy of the buffer's whole remaining capacity
/// (up to the 1 MiB a read may bring) into a new allocation: at 4 KiB WRITEs, a tenth of
/// the event loop's time. Here the leftover of a read is at most one message's start,
/// and a message lying whole in a read is never copied: its WRITE payload is a slice of
/// the read.
struct NBDServerInput {
    private var decoder: NBDServerDecoder
    /// The start of the message the reads so far have not finished, and behind it,
    /// while the session is paused, the messages that wait; empty otherwise. Its storage
    /// is used again for the next unfinished message once no request holds a slice of it.
    private var unfinished = ByteBuffer()
    /// An unfinished message's buffer is made with room for the whole message up to
    /// this much, and a larger buffer is let go once empty: a longer message grows as its
    /// data arrives, so that a header alone cannot have the server reserve the maximum
    /// payload, and an idle connection keeps no more than this.
    static let largestReservation = 1 << 20

    init(session: NBDSessionPhase, maximumPayload: Int = NBDLimits.defaultMaximumRequest) {
        decoder = NBDServerDecoder(session: session, maximumPayload: maximumPayload)
    }

    /// Bytes held back: an unfinished message's, or those waiting while paused.
    var heldBytes: Int { unfinished.readableBytes }
    /// The room the held bytes' buffer has (for tests of the reservation).
    var reservedBytes: Int { unfinished.capacity }

    /// Decodes what `bytes` completes or holds, handing each message to `receive` in
    /// order, and keeps the rest for the next call. An empty `bytes` decodes what was
    /// held back (after a pause).
    mutating func process(_ bytes: ByteBuffer, _ receive: (NBDClientMessage) -> Void) {
        var bytes = bytes
        if unfinished.readableBytes > 0 && !finishHeldMessages(from: &bytes, receive) { return }
        while let message = decoder.decodeNext(&bytes) { receive(message) }
        guard bytes.readableBytes > 0 else { return }
        // A message begun here and finished by a later read (or messages waiting out a
        // pause): copied, as the read's buffer is not this connection's to keep.
        let held = bytes.readableBytes
        unfinished.clear(minimumCapacity: max(held, min(held + decoder.missingBytes(in: bytes), Self.largestReservation)))
        unfinished.writeBuffer(&bytes)
    }

    /// Tops the held message up from `bytes` with just what it lacks, decoding each
    /// message it completes, until nothing is held. Returns false when it must stay held
    /// (the bytes ran out, or the session is paused), with all of `bytes` behind it.
    private mutating func finishHeldMessages(from bytes: inout ByteBuffer,
                                             _ receive: (NBDClientMessage) -> Void) -> Bool {
        while unfinished.readableBytes > 0 {
            if let message = decoder.decodeNext(&unfinished) {
                receive(message)
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
