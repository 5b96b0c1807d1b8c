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

/// The rule for the names of disks, geoms and exports, in a topology file or made at
/// run time. A name may hold slashes, as GEOM's do (`label/NAME`, a pool's
/// `POOL/VOLUME`), but no empty, `.` or `..` part between them, which a URL's path
/// (`nbd+unix:///NAME`, a control route) would collapse or drop; and no control
/// character, which would forge lines in the log and in `strata list`.
public enum EntryName {
    /// What is wrong with `name`, or nil when it may name an entry.
    public static func problem(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "must not hold control characters (a newline, a tab)"
        }
        if name.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
            return "must not begin or end with /, nor hold //, nor . or .. as a part between slashes"
        }
        return nil
    }
}
