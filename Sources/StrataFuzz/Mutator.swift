/// A seeded mutation fuzzer for runs without libFuzzer (the test suite): it derives new
/// inputs from a corpus by the mutations libFuzzer uses most, with numbers chosen where
/// NBD parsers break (lengths of zero, one sector, the maximum payload, 2^32 - 1, 2^63),
/// so that the same seed gives the same inputs everywhere.
public struct Mutator {
    private var generator: SplitMix64
    private let corpus: [FuzzInput]

    /// Integers worth writing over a field, at every width.
    private static let interesting: [UInt64] = [
        0, 1, 2, 3, 7, 8, 0x1f, 0x20, 0x7f, 0x80, 0xff, 0x100, 0x1ff, 0x200, 0xfff, 0x1000, 0x3fff, 0x4000, 0x4001,
        0x10000, 0xfffff, 0x100000, 0x1ff_ffff, 0x200_0000, 0x200_0001, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff,
        0x1_0000_0000, 0x7fff_ffff_ffff_ffff, 0x8000_0000_0000_0000, 0xffff_ffff_ffff_fe00, 0xffff_ffff_ffff_ffff,
    ]

    public init(corpus: [FuzzInput], seed: UInt64) {
        precondition(!corpus.isEmpty, "a mutator needs at least one input to start from")
        self.corpus = corpus
        generator = SplitMix64(seed: seed)
    }

    /// A new input: a corpus entry with one to four mutations.
    public mutating func next() -> FuzzInput {
        var shape = corpus[Int(generator.next() % UInt64(corpus.count))].shape
        var bytes = corpus[Int(generator.next() % UInt64(corpus.count))].stream
        for _ in 0...(generator.next() % 4) {
            mutate(&bytes, shape: &shape)
        }
        return FuzzInput(shape: shape, stream: bytes)
    }

    private mutating func random(_ bound: Int) -> Int {
        bound <= 0 ? 0 : Int(generator.next() % UInt64(bound))
    }

    private mutating func mutate(_ bytes: inout [UInt8], shape: inout UInt8) {
        switch random(9) {
        case 0:
            shape = UInt8(truncatingIfNeeded: generator.next())
        case 1 where !bytes.isEmpty:
            bytes[random(bytes.count)] ^= 1 << UInt8(random(8))
        case 2 where !bytes.isEmpty:
            bytes[random(bytes.count)] = UInt8(truncatingIfNeeded: generator.next())
        case 3 where bytes.count >= 8:
            // An interesting number over a field of 2, 4 or 8 bytes, big-endian.
            let width = [2, 4, 8][random(3)]
            let at = random(bytes.count - width + 1)
            let value = Self.interesting[random(Self.interesting.count)]
            for index in 0..<width {
                bytes[at + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(width - 1 - index)))
            }
        case 4 where !bytes.isEmpty:
            let start = random(bytes.count)
            bytes.removeSubrange(start..<min(bytes.count, start + 1 + random(32)))
        case 5:
            let insert = (0..<(1 + random(16))).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            bytes.insert(contentsOf: insert, at: random(bytes.count + 1))
        case 6 where !bytes.isEmpty:
            // Repeat a stretch: messages sent twice, payloads that run on.
            let start = random(bytes.count)
            let stretch = bytes[start..<min(bytes.count, start + 1 + random(64))]
            bytes.insert(contentsOf: stretch, at: random(bytes.count + 1))
        case 7:
            // Splice: this input up to a point, then another from a point.
            let other = corpus[random(corpus.count)].stream
            bytes = Array(bytes.prefix(random(bytes.count + 1))) + other.suffix(random(other.count + 1))
        default:
            bytes.removeLast(random(min(bytes.count, 64) + 1))
        }
    }
}
