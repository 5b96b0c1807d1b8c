/// Something a running geom (or a provider) can be asked to do, as `geom(8)` verbs are
/// declared in a class's table: `strata CLASS VERB TARGET [ARGUMENTS] [--OPTION VALUE]`
/// on the command line, `POST /v1/CLASS/TARGET/VERB` on the control socket (and `GET`
/// for a verb that only looks).
public struct ClassVerb: Sendable {
    /// What the first argument names.
    public enum Target: Sendable, Equatable {
        /// A geom of the class, by name (its entry's name).
        case geom
        /// Any provider, by name.
        case provider
    }

    public let name: String
    public let summary: String
    public let target: Target
    /// Arguments after the target, in order; all required.
    public let arguments: [VerbParameter]
    /// `--NAME VALUE` options (`--NAME` alone for a boolean), all optional.
    public let options: [VerbParameter]
    /// Only looks: served to GET, changes nothing.
    public let onlyLooks: Bool
    /// Does it, in the server; the answer is sent back as JSON.
    public let run: @Sendable (VerbCall) throws -> any Encodable & Sendable

    public init(_ name: String, _ summary: String, target: Target = .geom, arguments: [VerbParameter] = [],
                options: [VerbParameter] = [], onlyLooks: Bool = false,
                run: @escaping @Sendable (VerbCall) throws -> any Encodable & Sendable) {
        self.name = name
        self.summary = summary
        self.target = target
        self.arguments = arguments
        self.options = options
        self.onlyLooks = onlyLooks
        self.run = run
    }

    /// Checks what a caller gave, once, against the declarations.
    /// - Parameter writableDirectories: when given, a path (`.path`) must lie beneath
    ///   one of them: the server writes where a verb's path says (`powercut images
    ///   --out`), and the caller may be less trusted than the server.
    /// - Throws: `SettingError` naming the argument or option.
    public func check(arguments given: [String], options values: [String: String], relativeTo directory: String = "/",
                      writableDirectories: [String]? = nil) throws(SettingError) -> [String: SettingValue] {
        guard given.count == arguments.count else {
            let names = arguments.map { $0.name.uppercased() }.joined(separator: " ")
            throw SettingError(key: name, value: nil, problem: "takes \(arguments.isEmpty ? "no arguments" : names) after its target")
        }
        var checked: [String: SettingValue] = [:]
        for (parameter, text) in zip(arguments, given) {
            checked[parameter.name] = try parameter.check(text, relativeTo: directory, writableDirectories: writableDirectories)
        }
        for (key, text) in values.sorted(by: { $0.key < $1.key }) {
            guard let parameter = options.first(where: { $0.name == key }) else {
                let known = options.map(\.name)
                var problem = "is not an option of \(name) (options: \(known.isEmpty ? "none" : known.joined(separator: ", ")))"
                if let guess = nearestWord(key, among: known) { problem = "is not an option of \(name); did you mean '\(guess)'?" }
                throw SettingError(key: key, value: nil, problem: problem)
            }
            checked[key] = try parameter.check(text, relativeTo: directory, writableDirectories: writableDirectories)
        }
        return checked
    }
}

/// An argument or option of a verb.
public struct VerbParameter: Sendable, Equatable {
    public let name: String
    public let kind: ValueKind
    public let help: String

    public init(_ name: String, _ kind: ValueKind, help: String) {
        self.name = name
        self.kind = kind
        self.help = help
    }

    /// The options a verb takes to change settings on a running geom: the keys that can.
    public static func changeable<Settings>(_ keys: [SettingKey<Settings>]) -> [VerbParameter] {
        keys.filter(\.changesAtRunTime).map { VerbParameter($0.name, $0.kind, help: $0.help) }
    }

    func check(_ text: String, relativeTo directory: String, writableDirectories: [String]?) throws(SettingError) -> SettingValue {
        switch kind.parse(text, relativeTo: directory) {
        case .success(let value):
            if let writableDirectories, kind == .path, case .text(let path) = value {
                try checkBeneath(path, writableDirectories, key: name, text: text)
            }
            return value
        case .failure(let problem): throw SettingError(key: name, value: text, problem: problem.text)
        }
    }
}

/// A verb being done: where, on what, with what.
public struct VerbCall: Sendable {
    public let topology: Topology
    /// The geom named, for a verb on a geom.
    public let geom: Geom?
    /// The provider named, for a verb on a provider.
    public let provider: Provider?
    /// The arguments and options given, checked.
    public let values: [String: SettingValue]
    /// The options as given, for a verb whose options are settings (`SettingKey`).
    public let optionTexts: [(key: String, text: String)]

    public init(topology: Topology, geom: Geom?, provider: Provider?, values: [String: SettingValue],
                optionTexts: [(key: String, text: String)]) {
        self.topology = topology
        self.geom = geom
        self.provider = provider
        self.values = values
        self.optionTexts = optionTexts
    }

    /// The geom, as the class's own type.
    public func geom<Made: Geom>(as type: Made.Type) throws -> Made {
        guard let made = geom as? Made else { throw StrataError(.invalid, "\(geom?.name ?? "?") is not a \(Made.self)") }
        return made
    }

    public func text(_ name: String) -> String? {
        if case .text(let value)? = values[name] { value } else { nil }
    }

    public func integer(_ name: String) -> Int? {
        if case .integer(let value)? = values[name] { value } else { nil }
    }

    public func size(_ name: String) -> Int64? {
        if case .size(let value)? = values[name] { value } else { nil }
    }

    public func flag(_ name: String) -> Bool {
        if case .boolean(let value)? = values[name] { value } else { false }
    }
}
