/// What a setting or a verb's option takes, checked where the value enters: a topology
/// file, the control socket or the command line all parse it the same way.
public enum ValueKind: Sendable, Equatable {
    /// A whole number in a range.
    case integer(ClosedRange<Int>)
    /// A byte size as people write it (`4096`, `64KiB`, `64K`, `64k`, `1M`, `1GiB`, …),
    /// in a range; `powerOfTwo` also asks for a power of two. 0 is written `0`.
    case size(ClosedRange<Int64>, powerOfTwo: Bool)
    /// One of some words.
    case choice([String])
    case boolean
    /// A file or folder, made absolute against where the value was written (the topology
    /// file's folder, the command's working directory). `-` stays as it is: standard
    /// input, as Unix tools take it.
    case path
    /// A name or other text, not empty.
    case text
    /// A secret (a passphrase), not empty. The command line never takes it from its
    /// arguments, where other users' `ps` would see it: `--NAME` alone reads it from
    /// standard input (asking on a terminal, without echo), and it travels in the
    /// request's body.
    case secret

    /// A size from 1 byte up.
    public static let anySize = ValueKind.size(1...Int64.max, powerOfTwo: false)

    /// The value `text` stands for, or the problem with it (what is allowed).
    public func parse(_ text: String, relativeTo directory: String = "/") -> Result<SettingValue, ValueProblem> {
        switch self {
        case .integer(let range):
            guard let value = Int(text), range.contains(value) else {
                return .failure(ValueProblem("must be a whole number from \(range.lowerBound) to \(range.upperBound)"))
            }
            return .success(.integer(value))
        case .size(let range, let powerOfTwo):
            let allowed = (powerOfTwo ? ", a power of two" : "") + Self.describe(range)
            guard let value = text == "0" ? 0 : parseByteSize(text) else {
                return .failure(ValueProblem("must be \(sizeForms)\(allowed)"))
            }
            guard range.contains(value), !powerOfTwo || value & (value - 1) == 0 else {
                return .failure(ValueProblem("must be \(powerOfTwo ? "a power of two" : "a size")\(Self.describe(range))"))
            }
            return .success(.size(value))
        case .choice(let words):
            guard words.contains(text) else {
                let list = words.count == 1 ? words[0] : words.dropLast().joined(separator: ", ") + " or " + words.last!
                return .failure(ValueProblem("must be \(list)"))
            }
            return .success(.text(text))
        case .boolean:
            switch text.lowercased() {
            case "true", "yes", "on": return .success(.boolean(true))
            case "false", "no", "off": return .success(.boolean(false))
            default: return .failure(ValueProblem("must be true or false"))
            }
        case .path:
            guard !text.isEmpty else { return .failure(ValueProblem("must be a path")) }
            return .success(.text(text == "-" ? text : absolutePath(text, relativeTo: directory)))
        case .text, .secret:
            guard !text.isEmpty else { return .failure(ValueProblem("must not be empty")) }
            return .success(.text(text))
        }
    }

    /// What a value of this kind looks like, for help: `N`, `SIZE`, `load|prefer`.
    public var placeholder: String {
        switch self {
        case .integer: "N"
        case .size: "SIZE"
        case .choice(let words): words.joined(separator: "|")
        case .boolean: "true|false"
        case .path: "PATH"
        case .text: "TEXT"
        case .secret: "(read from standard input)"
        }
    }

    private static func describe(_ range: ClosedRange<Int64>) -> String {
        switch (range.lowerBound, range.upperBound) {
        case (0, Int64.max), (1, Int64.max): ""
        case (let low, Int64.max): " of at least \(formatByteSize(low))"
        case (let low, let high): " from \(formatByteSize(low)) to \(formatByteSize(high))"
        }
    }
}

/// A parsed value.
public enum SettingValue: Sendable, Equatable {
    case integer(Int)
    case size(Int64)
    case text(String)
    case boolean(Bool)
}

/// What is wrong with a value: the allowed values, said as the end of a sentence that
/// names the key and the value ("must be a whole number from 0 to 100").
public struct ValueProblem: Error, Sendable, Equatable {
    public let text: String
    public init(_ text: String) { self.text = text }
}

/// A setting (or option) that is wrong: which key, the value as given, what is allowed.
/// Where it came from (a file and line, a request) is added by whoever read it.
public struct SettingError: Error, Sendable, Equatable, CustomStringConvertible {
    public let key: String
    public let value: String?
    public let problem: String

    public init(key: String, value: String?, problem: String) {
        self.key = key
        self.value = value
        self.problem = problem
    }

    public var description: String { value.map { "\(key) '\($0)': \(problem)" } ?? "\(key): \(problem)" }
}

/// The sizes accepted, for messages.
public let sizeForms = "a size like 4096, 4k, 64KiB, 64K, 1m, 1MiB, 1G or 1TiB"

/// Byte sizes as people write them, all binary: `4096`, `4k`, `4K`, `4KiB`, `1m`, `1M`,
/// `1MiB`, `1g`, `1G`, `1GiB`, `1t`, `1T`, `1TiB`, and `B` for bytes. Returns nil for
/// anything else, zero, or an overflow.
public func parseByteSize(_ text: String) -> Int64? {
    let trimmed = text.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()
    let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
    guard !digits.isEmpty, let number = Int64(String(digits)) else { return nil }
    let shifts: [String: Int64] = ["": 0, "B": 0, "K": 10, "KiB": 10, "M": 20, "MiB": 20, "G": 30, "GiB": 30,
                                   "T": 40, "TiB": 40]
    var unit = String(trimmed.dropFirst(digits.count))
    // dd's and fio's lower case: 4k, 1m, 1g.
    if unit.count == 1 { unit = unit.uppercased() }
    guard let shift = shifts[unit] else { return nil }
    let (value, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
    guard !overflow, value > 0 else { return nil }
    return value
}

/// A size in the largest binary unit that divides it: `64KiB`, `1GiB`, `4097`.
public func formatByteSize(_ bytes: Int64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] where bytes >= 1 << shift && bytes % (1 << shift) == 0 {
        return "\(bytes >> shift)\(unit)"
    }
    return "\(bytes)"
}

/// `path` made absolute against `directory`, with `.` and `..` taken out.
public func absolutePath(_ path: String, relativeTo directory: String) -> String {
    let joined = path.hasPrefix("/") ? path : directory + "/" + path
    var parts: [Substring] = []
    for part in joined.split(separator: "/") {
        switch part {
        case ".": continue
        case "..": if !parts.isEmpty { parts.removeLast() }
        default: parts.append(part)
        }
    }
    return "/" + parts.joined(separator: "/")
}
