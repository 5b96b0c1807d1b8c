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
