import Strata

/// `class: nop`: failure injection over one provider (docs: `nop.md` beside this file).
public enum NopDefinition: ClassDefinition {
    public static let name = "nop"
    public static let summary = "Pass-through to one provider, at an offset, failing or holding requests on demand."
    public static let geomClassName = "NOP"
    public static let shape = ClassShape.transform(consumers: 1...1)

    public struct Settings: ClassSettings {
        public var offset: Int64 = 0
        public var size: Int64?
        /// What the nop does to requests; changes while it runs.
        public var injection = NopGeom.Settings()

        public init() {}

        public static let keys: [SettingKey<Settings>] = [
            SettingKey("offset", \.offset, .size(0...Int64.max, powerOfTwo: false),
                       help: "Where the nop's provider starts in the one below (a multiple of its sector size)."),
            SettingKey("size", \.size, .anySize, help: "The nop's provider size (default: the rest past offset)."),
            SettingKey("read-fail-percent", \.injection.readFailPercent, .integer(0...100), changesAtRunTime: true,
                       help: "Percent of reads failed."),
            SettingKey("write-fail-percent", \.injection.writeFailPercent, .integer(0...100), changesAtRunTime: true,
                       help: "Percent of writes, deletes and write-zeroes failed."),
            SettingKey("error", \.injection.error, .integer(1...4095), changesAtRunTime: true,
                       help: "The errno injected failures carry (default 5, EIO)."),
            SettingKey("delay-ms", \.injection.delayMilliseconds, .integer(0...60_000), changesAtRunTime: true,
                       help: "Milliseconds each request is held before it goes down."),
            SettingKey("count-until-fail", \.injection.countUntilFail, .integer(0...Int(Int32.max)), changesAtRunTime: true,
                       help: "Requests let through before every request fails (0: never)."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try NopGeom.create(in: topology, name: entry.name, over: entry.consumers[0], offset: entry.settings.offset,
                           size: entry.settings.size, settings: entry.settings.injection)
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let nop = geom as? NopGeom, let provider = nop.providers.first else { return nil }
        var settings = Settings()
        settings.offset = nop.offset
        if let below = nop.consumers.first?.provider, provider.mediaSize != below.mediaSize - nop.offset {
            settings.size = provider.mediaSize
        }
        settings.injection = nop.settings
        return settings
    }

    public static let verbs = [
        ClassVerb("configure", "Change a nop's failure injection while it runs.",
                  options: VerbParameter.changeable(Settings.keys)) { call in
            let nop = try call.geom(as: NopGeom.self)
            var current = Settings()
            current.injection = nop.settings
            try nop.configure(try Settings.parse(call.optionTexts, over: current).injection)
            return NopReport(nop)
        },
        ClassVerb("show", "A nop's settings and what passed through it.", onlyLooks: true) { call in
            NopReport(try call.geom(as: NopGeom.self))
        },
    ]
}

/// What `strata nop show` and `configure` answer.
public struct NopReport: Codable, Sendable {
    public var name: String
    public var readFailPercent: Int
    public var writeFailPercent: Int
    public var error: Int32
    public var delayMilliseconds: Int
    public var countUntilFail: Int
    public var statistics: NopGeom.Statistics

    enum CodingKeys: String, CodingKey {
        case name, readFailPercent = "read-fail-percent", writeFailPercent = "write-fail-percent", error
        case delayMilliseconds = "delay-ms", countUntilFail = "count-until-fail", statistics
    }

    init(_ nop: NopGeom) {
        let settings = nop.settings
        name = nop.name
        readFailPercent = settings.readFailPercent
        writeFailPercent = settings.writeFailPercent
        error = settings.error
        delayMilliseconds = settings.delayMilliseconds
        countUntilFail = settings.countUntilFail
        statistics = nop.statistics
    }
}
