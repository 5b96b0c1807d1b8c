import Strata

/// `powercut: SIZE` under `disks:`: a memory disk that logs every change for crash tests;
/// all the power-cut disks of a topology record into one log (docs: `powercut.md`).
public enum PowerCutDiskDefinition: ClassDefinition, SizedDiskKind {
    public static let name = "powercut"
    public static let summary = "A memory disk that logs every change and flush, and writes the images a power cut could leave."
    public static let geomClassName = "POWERCUT"
    public static let shape = ClassShape.disk
    public typealias Settings = SizedDiskSettings<Self>

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try PowerCutDisk.create(in: topology, name: entry.name, size: entry.settings.size, sectorSize: entry.settings.sectorSize,
                                log: topology.shared(PowerCutLog.self) { PowerCutLog() })
    }

    public static func settings(of geom: Geom) -> Settings? { (geom as? PowerCutDisk)?.sizedSettings() }

    public static let verbs = [
        ClassVerb("show", "The log a power-cut disk records into: its disks, entries, unflushed changes and data bytes.",
                  onlyLooks: true) { call in
            let log = try call.geom(as: PowerCutDisk.self).log
            let entries = log.count
            return PowerCutReport(disks: log.disks, entries: entries,
                                  unflushed: (try? log.unflushed(at: entries).count) ?? 0, dataBytes: log.dataBytes)
        },
        ClassVerb("images", "Write the disk images of crash states: OUT/00001/DISK.img, …, and OUT/states.txt.", options: [
            VerbParameter("out", .path, help: "The directory to write to (created; required)."),
            VerbParameter("from", .integer(0...Int.max), help: "The first crash point (default 0: nothing acknowledged)."),
            VerbParameter("to", .integer(0...Int.max), help: "The last crash point (default: the end of the log)."),
            VerbParameter("points", .integer(1...1_000_000), help: "Draw this many crash points from the range (default: every one)."),
            VerbParameter("subsets", .integer(1...64), help: "Crash states per point (default 4)."),
            VerbParameter("seed", .integer(0...Int.max), help: "The seed of the points and subsets drawn (default 1)."),
            VerbParameter("no-tearing", .boolean, help: "Keep or drop whole changes only: no torn writes."),
        ]) { call in
            let log = try call.geom(as: PowerCutDisk.self).log
            guard let directory = call.text("out") else { throw SettingError(key: "out", value: nil, problem: "is required") }
            let entries = log.count
            let from = call.integer("from") ?? 0
            let to = call.integer("to") ?? entries
            guard from <= entries else {
                throw SettingError(key: "from", value: "\(from)", problem: "must be a whole number from 0 to \(entries)")
            }
            guard (from...entries).contains(to) else {
                throw SettingError(key: "to", value: "\(to)", problem: "must be a whole number from \(from) to \(entries)")
            }
            let seed = UInt64(call.integer("seed") ?? 1)
            let points = log.crashPoints(sampling: call.integer("points") ?? Int.max, seed: seed, within: [from..<(to + 1)])
            let states = try log.crashStates(at: points, subsetsPerPoint: call.integer("subsets") ?? 4, seed: seed,
                                             tearing: !call.flag("no-tearing"))
            try log.writeCrashImages(states, to: directory)
            return PowerCutImagesReport(directory: directory, points: points.count, states: states.count)
        },
    ]
}

/// What `strata powercut show` answers.
public struct PowerCutReport: Codable, Sendable {
    /// Every disk recording into the log, in the order they joined.
    public var disks: [String]
    /// Entries so far: crash points run from 0 to this.
    public var entries: Int
    /// Changes that a power cut now could lose.
    public var unflushed: Int
    /// Bytes of written data the log holds.
    public var dataBytes: Int
}

/// What `strata powercut images` answers.
public struct PowerCutImagesReport: Codable, Sendable {
    public var directory: String
    public var points: Int
    public var states: Int
}
