/// One key of a class's settings: its name in a topology file (kebab-case), what it
/// takes, what it means, and the field it sets. A class declares each key once, and the
/// topology file, the control socket, the command line's help and `strata config dump`
/// all read it from there.
public struct SettingKey<Settings>: Sendable {
    public let name: String
    public let kind: ValueKind
    public let help: String
    /// Whether a running geom can take a new value (`strata nop configure`).
    public let changesAtRunTime: Bool
    let apply: @Sendable (inout Settings, SettingValue) -> Void
    /// The value as set, or nil when the key is unset (an optional left out).
    let read: @Sendable (Settings) -> SettingValue?

    /// A key whose field holds a value of the kind's type: `Int` for `.integer`,
    /// `Int64` for `.size`, `String` for `.text`, `.path` and `.choice`, `Bool` for
    /// `.boolean`, or an optional of one of them (unset when left out).
    public init<Value: SettingField>(_ name: String, _ field: any WritableKeyPath<Settings, Value> & Sendable, _ kind: ValueKind,
                                     changesAtRunTime: Bool = false, help: String) {
        self.name = name
        self.kind = kind
        self.help = help
        self.changesAtRunTime = changesAtRunTime
        apply = { settings, value in settings[keyPath: field] = Value(settingValue: value) }
        read = { settings in settings[keyPath: field].settingValue }
    }

    /// A key whose field is an enumeration, written as one of `names`.
    public init<Value: Equatable & Sendable>(_ name: String, _ field: any WritableKeyPath<Settings, Value> & Sendable,
                                             names: [(String, Value)], changesAtRunTime: Bool = false, help: String) {
        self.name = name
        kind = .choice(names.map(\.0))
        self.help = help
        self.changesAtRunTime = changesAtRunTime
        apply = { settings, value in
            if case .text(let word) = value, let chosen = names.first(where: { $0.0 == word }) {
                settings[keyPath: field] = chosen.1
            }
        }
        read = { settings in names.first { $0.1 == settings[keyPath: field] }.map { .text($0.0) } }
    }
}

/// A type a setting's field can have.
public protocol SettingField: Sendable {
    init(settingValue: SettingValue)
    var settingValue: SettingValue? { get }
}

extension Int: SettingField {
    public init(settingValue: SettingValue) {
        switch settingValue {
        case .integer(let value): self = value
        case .size(let value): self = Int(value)
        default: self = 0
        }
    }
    public var settingValue: SettingValue? { .integer(self) }
}

extension Int32: SettingField {
    public init(settingValue: SettingValue) { self = Int32(clamping: Int(settingValue: settingValue)) }
    public var settingValue: SettingValue? { .integer(Int(self)) }
}

extension Int64: SettingField {
    public init(settingValue: SettingValue) {
        switch settingValue {
        case .size(let value): self = value
        case .integer(let value): self = Int64(value)
        default: self = 0
        }
    }
    public var settingValue: SettingValue? { .size(self) }
}

extension String: SettingField {
    public init(settingValue: SettingValue) {
        if case .text(let value) = settingValue { self = value } else { self = "" }
    }
    public var settingValue: SettingValue? { .text(self) }
}

extension Bool: SettingField {
    public init(settingValue: SettingValue) {
        if case .boolean(let value) = settingValue { self = value } else { self = false }
    }
    public var settingValue: SettingValue? { .boolean(self) }
}

extension Optional: SettingField where Wrapped: SettingField {
    public init(settingValue: SettingValue) { self = Wrapped(settingValue: settingValue) }
    public var settingValue: SettingValue? { self?.settingValue }
}

/// The settings of a class: a value type with defaults, and the table of its keys.
public protocol ClassSettings: Sendable, Equatable {
    /// The defaults.
    init()
    static var keys: [SettingKey<Self>] { get }
}

extension ClassSettings {
    /// `base` with the values given, each checked against its key.
    /// - Parameter directory: what relative paths are taken from.
    /// - Throws: `SettingError` for the first key that is unknown or whose value is not
    ///   allowed.
    public static func parse(_ values: [(key: String, text: String)], over base: Self = Self(),
                             relativeTo directory: String = "/") throws(SettingError) -> Self {
        var settings = base
        for (name, text) in values {
            guard let key = keys.first(where: { $0.name == name }) else {
                throw SettingError(key: name, value: nil, problem: unknownKeyProblem(name, among: keys.map(\.name)))
            }
            switch key.kind.parse(text, relativeTo: directory) {
            case .success(let value): key.apply(&settings, value)
            case .failure(let problem): throw SettingError(key: name, value: text, problem: problem.text)
            }
        }
        return settings
    }

    /// The keys whose values differ from the defaults, as they would be written.
    public var written: [(key: String, text: String)] {
        let defaults = Self()
        return Self.keys.compactMap { key in
            guard let value = key.read(self), value != key.read(defaults) else { return nil }
            return (key.name, value.written)
        }
    }
}

extension SettingValue {
    /// The value as a topology file writes it.
    public var written: String {
        switch self {
        case .integer(let value): "\(value)"
        case .size(let value): formatByteSize(value)
        case .text(let value): value
        case .boolean(let value): value ? "true" : "false"
        }
    }
}

/// The problem with an unknown key, naming the nearest known one when it is likely a slip.
public func unknownKeyProblem(_ key: String, among known: [String]) -> String {
    if let guess = nearestWord(key, among: known) { return "is not a known key; did you mean '\(guess)'?" }
    return known.isEmpty ? "is not a known key (there are none)" : "is not a known key (known: \(known.joined(separator: ", ")))"
}

/// The known word closest to `word`, if it is close enough to be a likely typo.
public func nearestWord(_ word: String, among candidates: [String]) -> String? {
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

/// The settings of a class that has none beyond its consumers.
public struct NoSettings: ClassSettings {
    public init() {}
    public static let keys: [SettingKey<NoSettings>] = []
}
