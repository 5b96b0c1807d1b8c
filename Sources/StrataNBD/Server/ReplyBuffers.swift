import NIOCore

/// Buffers of replies the connection has handed to the channel, kept to be used again,
/// and read buffers whose replies were copied into a batch, which the channel never held
/// (`reuse`).
///
/// A reply made new costs two allocations (NIO's storage object and its bytes): under
/// 4 KiB reads, two a request. Once the channel has written a reply to the socket it
/// lets go of it, and the copy kept here is the only reference, so clearing it
/// (`clear(minimumCapacity:)`) hands back the same memory.
///
/// Only buffers kept before the channel's last flush are taken: one written since is
/// surely still queued in the channel, and clearing it would only make new storage. A
/// flushed buffer the channel still holds (the socket was full) is never written over
/// either: clearing it gives new storage, as making a new buffer would. The oldest is
/// taken first, as the one most likely written.
///
/// Confined to the connection's event loop, like the rest of its state.
struct ReplyBuffers {
    /// Buffers above this capacity are not kept: large reads are rare next to their
    /// copies' cost, and would hold much memory.
    static let largestKept = 128 << 10
    /// The most a connection keeps, in bytes of capacity: 128 buffers of a 4 KiB read's
    /// reply (8 KiB of capacity), or 8 of 128 KiB.
    static let keptBytesLimit = 1 << 20

    /// Oldest first; the last `keptSinceFlush` were handed over since the last flush.
    private var spares = CircularBuffer<ByteBuffer>(initialCapacity: 16)
    private var keptSinceFlush = 0
    private var keptBytes = 0

    /// A buffer with room for `capacity` bytes, empty: a kept one if one is flushed.
    mutating func take(capacity: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard capacity <= Self.largestKept, spares.count > keptSinceFlush else {
            return allocator.buffer(capacity: capacity)
        }
        var buffer = spares.removeFirst()
        keptBytes -= buffer.capacity
        buffer.clear(minimumCapacity: capacity)
        return buffer
    }

    /// Keeps `buffer`, just handed to the channel, for a `take` after the next flush,
    /// unless it is too large or enough is kept.
    mutating func keep(_ buffer: ByteBuffer) {
        guard canKeep(buffer) else { return }
        spares.append(buffer)
        keptBytes += buffer.capacity
        keptSinceFlush += 1
    }

    /// Keeps `buffer`, which the channel never held (a read's buffer whose reply was
    /// copied into a batch), to be taken first, still warm in the cache.
    mutating func reuse(_ buffer: ByteBuffer) {
        guard canKeep(buffer) else { return }
        spares.prepend(buffer)
        keptBytes += buffer.capacity
    }

    /// Whether `buffer` is small enough to keep, and room is left for it.
    private func canKeep(_ buffer: ByteBuffer) -> Bool {
        buffer.capacity <= Self.largestKept && keptBytes + buffer.capacity <= Self.keptBytesLimit
    }

    /// The channel was flushed: what was kept until now may be taken.
    mutating func flushed() { keptSinceFlush = 0 }

    /// How many buffers are kept, flushed or not.
    var count: Int { spares.count }
}
