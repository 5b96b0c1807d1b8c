/// A mistake in a topology file: where it is, which key, what value, and what is
/// allowed instead.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    /// The file (as given), or "<default>" for the built-in configuration.
    public let file: String
    /// 1-based line of the offending value, when known.
    public let line: Int?
    /// The key path, like `disks[1].size`.
    public let key: String
    /// The value as written, when there is one.
    public let value: String?
    /// What is wrong and what is allowed.
    public let problem: String

    public init(file: String, line: Int?, key: String, value: String?, problem: String) {
        self.file = file
        self.line = line
        self.key = key
        self.value = value
        self.problem = problem
    }

    public var description: String {
        var text = file
        if let line { text += ":\(line)" }
        text += ": \(key)"
        if let value { text += ": '\(value)'" }
        return text + ": " + problem
    }
}

/// The known word closest to `word`, if it is close enough to be a likely typo.
func nearest(_ word: String, among candidates: [String]) -> String? {
    // A key typed short ("delay" for "delay-ms") is as likely a slip as a typo.
    if word.count >= 3, let extended = candidates.first(where: { $0.hasPrefix(word) }) { return extended }
    let scored = candidates.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }
    guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
    return best.1 <= max(2, word.count / 3) ? best.0 : nil
}

/// Levenshtein distance.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
