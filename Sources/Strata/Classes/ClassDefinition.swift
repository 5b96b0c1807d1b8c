/// A class as its users meet it, declared once in the class's folder: the `class:` of a
/// topology entry and its settings, how a geom is made from the entry, the verbs
/// `strata CLASS VERB` and the control socket serve, and the status `strata status`
/// shows. The topology file, the control socket and the command line find classes in
/// one registry (`StrataConfig`'s `ClassRegistry`) and carry no code of any class.
///
/// Everything but `name`, `summary`, `geomClassName`, `shape` and `make` has a default:
/// a class writes only what it has.
public protocol ClassDefinition: Sendable {
    associatedtype Settings: ClassSettings
    /// The `class:` value that selects it in a topology file (for a disk, the key that
    /// gives its main value: `file: d0.img`), the word of `strata CLASS VERB`, and the
    /// route of `/v1/CLASS/...`; lower case.
    static var name: String { get }
    /// One line for help.
    static var summary: String { get }
    /// `Geom.className` of the geoms it makes, to find a running geom's class.
    static var geomClassName: String { get }
    static var shape: ClassShape { get }
    /// Makes the geom of `entry`, adds it to `topology`, attaches it to exactly the
    /// providers the entry consumes and creates its providers. A class with metadata
    /// reassembles from what those providers carry, or writes it where they are blank.
    /// - Throws: `SettingError` for a setting that does not suit the providers (the
    ///   caller tells where the key was written), `StrataError` otherwise.
    static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom
    /// The settings a running geom has, to write it back as a topology entry; nil when
    /// it cannot be written as one.
    static func settings(of geom: Geom) -> Settings?
    /// The names of the providers a running geom consumes, in its entry's order (by
    /// default its consumers' providers).
    static func consumers(of geom: Geom) -> [String]
    static var verbs: [ClassVerb] { get }
    /// What `strata status` shows of a geom of the class, if anything.
    static func status(of geom: Geom) -> GeomStatus?
    /// What recognizes the class's metadata on providers that appear (tasting).
    static var taster: (any GeomClass)? { get }
    /// The name of the geom an entry makes (a label's is `label/NAME`).
    static func geomName(forEntry name: String) -> String
    /// Whether the geom of entry `entry` may offer a provider named `provider`.
    static func offers(_ provider: String, entry: String) -> Bool
    /// The entry name of a geom the class made (the inverse of `geomName(forEntry:)`).
    static func entryName(of geom: Geom) -> String
    /// What an entry with these settings opens that no other entry may open too (a
    /// disk's file), so that two entries naming one file by different paths are refused
    /// before anything is opened. None by default.
    static func media(of settings: Settings) -> [Medium]
}

extension ClassDefinition {
    public static func settings(of geom: Geom) -> Settings? { nil }
    public static func consumers(of geom: Geom) -> [String] { geom.consumers.compactMap { $0.provider?.name } }
    public static var verbs: [ClassVerb] { [] }
    public static func status(of geom: Geom) -> GeomStatus? { nil }
    public static var taster: (any GeomClass)? { nil }
    public static func geomName(forEntry name: String) -> String { name }
    public static func offers(_ provider: String, entry: String) -> Bool { provider == geomName(forEntry: entry) }

    public static func entryName(of geom: Geom) -> String {
        let prefix = geomName(forEntry: "")
        return geom.name.hasPrefix(prefix) ? String(geom.name.dropFirst(prefix.count)) : geom.name
    }

    public static func media(of settings: Settings) -> [Medium] { [] }

    /// The media of an entry whose settings are still text; none if they do not parse
    /// (making the entry reports that).
    public static func media(settings values: [(key: String, text: String)], relativeTo directory: String) -> [Medium] {
        (try? Settings.parse(values, relativeTo: directory)).map(media(of:)) ?? []
    }

    /// The media a running geom of the class holds open.
    public static func media(of geom: Geom) -> [Medium] {
        settings(of: geom).map(media(of:)) ?? []
    }

    /// Makes a geom from an entry whose settings are still text: each is checked
    /// against its key first.
    /// - Throws: `SettingError` for a setting, `StrataError` for the rest.
    public static func make(name: String, consumers: [Provider], settings values: [(key: String, text: String)],
                            relativeTo directory: String, in topology: Topology) throws -> Geom {
        let settings = try Settings.parse(values, relativeTo: directory)
        if case .transform(let counts) = shape, !counts.contains(consumers.count) {
            let allowed = counts == 1...1 ? "exactly one provider" : counts.lowerBound == counts.upperBound
                ? "exactly \(counts.lowerBound) providers" : "\(counts.lowerBound) to \(counts.upperBound) providers"
            throw SettingError(key: "consumers", value: consumers.map(\.name).joined(separator: ", "),
                               problem: "a \(Self.name) consumes \(allowed)")
        }
        return try make(ClassEntry(name: name, consumers: consumers, settings: settings), in: topology)
    }

    /// Checks settings as written, each against its key, without making anything.
    public static func check(settings values: [(key: String, text: String)]) throws(SettingError) {
        _ = try Settings.parse(values)
    }

    /// The keys of the class's settings, without their fields.
    public static var settingKeys: [SettingDescription] {
        Settings.keys.map { SettingDescription(name: $0.name, kind: $0.kind, help: $0.help, changesAtRunTime: $0.changesAtRunTime) }
    }

    /// A running geom's settings as a topology file writes them (only those that differ
    /// from the defaults), or nil when the class cannot write it as an entry.
    public static func writtenSettings(of geom: Geom) -> [(key: String, text: String)]? {
        settings(of: geom)?.written
    }
}

/// A file or device an entry opens, known by what identifies it whatever path names it.
public struct Medium: Sendable, Equatable {
    /// The setting that names it (`file`), for messages.
    public let key: String
    /// The same for every path that reaches the medium (a file's device and inode).
    public let identity: String
    /// The medium as the entry names it, resolved (an absolute path), for messages.
    public let name: String
    /// What the medium is, for messages: `file`, `image`.
    public let noun: String

    public init(key: String, identity: String, name: String, noun: String = "file") {
        self.key = key
        self.identity = identity
        self.name = name
        self.noun = noun
    }
}

/// How a class's entries look in a topology file.
public enum ClassShape: Sendable, Equatable {
    /// A bottom provider, under `disks:`: `{name: d0, CLASS: VALUE, ...}`; no consumers.
    case disk
    /// A transform, under `geoms:`, over this many consumers.
    case transform(consumers: ClosedRange<Int>)
}

/// An entry of a topology file (or of `strata geom create`), checked: what to make.
public struct ClassEntry<Settings: Sendable>: Sendable {
    public let name: String
    public let consumers: [Provider]
    public let settings: Settings

    public init(name: String, consumers: [Provider], settings: Settings) {
        self.name = name
        self.consumers = consumers
        self.settings = settings
    }
}

/// A settings key without its field: for help and for checking options.
public struct SettingDescription: Sendable, Equatable {
    public let name: String
    public let kind: ValueKind
    public let help: String
    public let changesAtRunTime: Bool
}

/// What `strata status` shows of a geom: its state and its components'.
public struct GeomStatus: Codable, Sendable, Equatable {
    public struct Component: Codable, Sendable, Equatable {
        public var name: String
        public var state: String
        public init(name: String, state: String) {
            self.name = name
            self.state = state
        }
    }

    public var name: String
    public var className: String
    public var state: String
    /// From 0 to 1 while the geom is working towards a state (a rebuild).
    public var progress: Double
    public var components: [Component]
    /// Measures the class reports by name, in snake case with their unit last (a
    /// mirror's `replication_lag_bytes`); `/metrics` publishes each as
    /// `strata_CLASS_NAME{geom="…"}`.
    public var figures: [String: Int64]?

    enum CodingKeys: String, CodingKey { case name, className = "class", state, progress, components, figures }

    public init(name: String, className: String, state: String, progress: Double, components: [Component],
                figures: [String: Int64]? = nil) {
        self.name = name
        self.className = className
        self.state = state
        self.progress = progress
        self.components = components
        self.figures = figures
    }
}
