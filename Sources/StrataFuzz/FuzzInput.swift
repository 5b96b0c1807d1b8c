/// One fuzz input taken apart. Its first byte, the shape, says how the rest (the byte
/// stream one peer sends) is cut into the pieces that arrive one read at a time, so
/// that the fuzzer varies where messages are split independently of what they say.
///
/// - 0: the whole stream in one read;
/// - 1: one byte a read;
/// - 2...127: pieces of 1 to 32 bytes, lengths drawn from a generator seeded with the shape;
/// - 128...255: pieces of 1 to 1024 bytes, the same way.
public struct FuzzInput: Sendable {
    public let shape: UInt8
    public let stream: [UInt8]

    public init(_ bytes: UnsafeRawBufferPointer) {
        shape = bytes.first ?? 0
        stream = Array(bytes.dropFirst())
    }

    public init(shape: UInt8, stream: [UInt8]) {
        self.shape = shape
        self.stream = stream
    }

    /// The input as a file holds it: the shape, then the stream.
    public var bytes: [UInt8] { [shape] + stream }

    /// The stream cut as the shape says; every byte is in exactly one piece, in order.
    public var pieces: [ArraySlice<UInt8>] {
        guard shape != 0 else { return stream.isEmpty ? [] : [stream[...]] }
        var generator = SplitMix64(seed: UInt64(shape))
        let longest: UInt64 = shape == 1 ? 1 : shape < 128 ? 32 : 1024
        var pieces: [ArraySlice<UInt8>] = []
        var start = 0
        while start < stream.count {
            let length = Int(1 + generator.next() % longest)
            let end = min(start + length, stream.count)
            pieces.append(stream[start..<end])
            start = end
        }
        return pieces
    }
}

/// A small seeded generator (Steele, Lea and Flood's SplitMix64): the same seed gives
/// the same numbers on every machine, so a split or a mutation can be reproduced from
/// its seed alone.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
