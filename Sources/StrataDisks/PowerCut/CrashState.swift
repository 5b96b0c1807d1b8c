/// Which of the writes not yet made durable reached the media before the power went.
///
/// Entries are named by their sequence number in the log. An entry in `whole` reached
/// the media entirely; an entry in `torn` reached it only in the listed runs of sectors
/// (numbered from the entry's first sector), the rest of it did not; an entry in
/// neither did not reach it at all.
public struct CrashSubset: Sendable, Hashable {
    public var whole: Set<Int>
    public var torn: [Int: [Range<Int>]]

    public init(whole: Set<Int> = [], torn: [Int: [Range<Int>]] = [:]) {
        self.whole = whole
        self.torn = torn
    }

    /// Nothing that was not durable reached the media.
    public static let none = CrashSubset()

    /// Every entry the subset names, whole or torn.
    public var named: Set<Int> { whole.union(torn.keys) }
}

/// A power cut: after the first `point` entries of a log were acknowledged, with
/// `subset` saying which of the writes not yet durable had reached the media.
public struct CrashState: Sendable, Hashable, CustomStringConvertible {
    public let point: Int
    public let subset: CrashSubset

    public init(point: Int, subset: CrashSubset) {
        self.point = point
        self.subset = subset
    }

    /// "crash at 17; kept #12 #15; torn #16[0..<3,5..<6]": enough to rebuild the state
    /// by hand when a test fails.
    public var description: String {
        guard subset != .none else { return "crash at \(point); nothing unflushed kept" }
        var parts = ["crash at \(point)"]
        if !subset.whole.isEmpty { parts.append("kept " + subset.whole.sorted().map { "#\($0)" }.joined(separator: " ")) }
        if !subset.torn.isEmpty {
            parts.append("torn " + subset.torn.keys.sorted().map { sequence in
                "#\(sequence)[" + subset.torn[sequence]!.map { "\($0.lowerBound)..<\($0.upperBound)" }.joined(separator: ",") + "]"
            }.joined(separator: " "))
        }
        return parts.joined(separator: "; ")
    }
}

/// SplitMix64: a small generator with a seed, so that a run of crash states can be
/// produced again from its seed alone.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}
