import Strata

/// `class: thin`: a pool over its one provider, with thin volumes and snapshots served
/// as `POOL/NAME` (docs: `thin.md`). Formatted the first time; afterwards reopened from
/// its metadata, which also keeps the volumes made at run time.
public enum ThinDefinition: ClassDefinition {
    public static let name = "thin"
    public static let summary = "Thin volumes, snapshots and clones from a pool of chunks; changed blocks between snapshots."
    public static let geomClassName = "THIN"
    public static let shape = ClassShape.transform(consumers: 1...1)
    static let defaultChunkSize: Int64 = 64 << 10

    public struct Settings: ClassSettings {
        /// Nil: the pool's own, or 64 KiB for a new pool.
        public var chunkSize: Int64?
        /// Nil: 1/64 of the provider, at least 1 MiB.
        public var metadataSize: Int64?
        public var lowWater: Int64 = 0
        /// `NAME:SIZE, …`: volumes made when the pool lacks them.
        public var volumes: String?
        public init() {}
        public static let keys: [SettingKey<Settings>] = [
            SettingKey("chunk-size", \.chunkSize, .size(4096...(1 << 20), powerOfTwo: true),
                       help: "Allocation unit of a new pool, a power of two from 4KiB to 1MiB (default 64KiB); an existing pool keeps its own."),
            SettingKey("metadata-size", \.metadataSize, .size(1 << 20...Int64.max, powerOfTwo: false),
                       help: "Bytes kept for maps in a new pool (default 1/64 of the provider, at least 1MiB)."),
            SettingKey("low-water", \.lowWater, .size(0...Int64.max, powerOfTwo: false), changesAtRunTime: true,
                       help: "Free space below which the pool logs a warning and reports LOW SPACE (0: never)."),
            SettingKey("volumes", \.volumes, .text,
                       help: "Volumes to make if the pool lacks them: NAME:SIZE, separated by commas (vm1:10g, vm2:20g)."),
        ]
    }

    /// The volumes a `volumes` setting lists.
    static func volumes(_ text: String?) throws -> [(name: String, size: Int64)] {
        guard let text else { return [] }
        var names: Set<String> = []
        return try text.split(separator: ",").map { item in
            let parts = item.split(separator: ":", maxSplits: 1).map { $0.trimmingSpaces }
            guard parts.count == 2, !parts[0].isEmpty, let size = parseByteSize(parts[1]), size > 0 else {
                throw SettingError(key: "volumes", value: text, problem: "must list NAME:SIZE items separated by commas (vm1:10g, vm2:20g)")
            }
            try ThinMetadata.checkName(parts[0], key: "volumes")
            guard names.insert(parts[0]).inserted else {
                throw SettingError(key: "volumes", value: text, problem: "names \(parts[0]) twice")
            }
            return (parts[0], size)
        }
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try ThinPoolGeom.create(in: topology, name: entry.name, over: entry.consumers[0], settings: entry.settings)
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let pool = geom as? ThinPoolGeom else { return nil }
        var settings = Settings()
        settings.chunkSize = pool.geometry.chunkSize
        settings.lowWater = pool.lowWater.load(ordering: .relaxed)
        let volumes = pool.catalog.filter { !$0.isSnapshot }.map { "\($0.name):\(formatByteSize($0.size))" }
        settings.volumes = volumes.isEmpty ? nil : volumes.joined(separator: ", ")
        return settings
    }

    public static var taster: (any GeomClass)? { ThinClass() }

    /// A pool offers `POOL/NAME` for each of its volumes and snapshots.
    public static func offers(_ provider: String, entry: String) -> Bool {
        provider.hasPrefix(entry + "/") && provider.count > entry.count + 1
    }

    public static func status(of geom: Geom) -> GeomStatus? {
        guard let pool = geom as? ThinPoolGeom, let below = pool.consumers.first?.provider else { return nil }
        let report = pool.report
        return GeomStatus(name: pool.name, className: name, state: report.state, progress: 0,
                          components: [GeomStatus.Component(name: below.name, state: "\(formatByteSize(report.dataUsed)) of \(formatByteSize(report.dataSize)) used")])
    }

    static let volume = VerbParameter("volume", .text, help: "A volume of the pool.")
    static let snapshot = VerbParameter("snapshot", .text, help: "A snapshot of the pool.")
    static let force = VerbParameter("force", .boolean, help: "Even while clients or geoms have it open.")

    public static let verbs = [
        ClassVerb("create", "Make a thin volume.", arguments: [volume],
                  options: [VerbParameter("size", .anySize, help: "Its size (required).")]) { call in
            guard let size = call.size("size") else { throw SettingError(key: "size", value: nil, problem: "is required") }
            let pool = try call.geom(as: ThinPoolGeom.self)
            return try pool.create(call.text("volume")!, size: size, in: call.topology)
        },
        ClassVerb("snapshot", "Make a read-only snapshot of a volume (or of a snapshot), in constant time.",
                  arguments: [volume, VerbParameter("name", .text, help: "The snapshot's name.")]) { call in
            try call.geom(as: ThinPoolGeom.self).share(call.text("volume")!, as: call.text("name")!, snapshot: true, in: call.topology)
        },
        ClassVerb("clone", "Make a writable volume from a snapshot.",
                  arguments: [snapshot, VerbParameter("name", .text, help: "The new volume's name.")]) { call in
            try call.geom(as: ThinPoolGeom.self).share(call.text("snapshot")!, as: call.text("name")!, snapshot: false, in: call.topology)
        },
        ClassVerb("revert", "Make a volume what a snapshot holds (refused while it is open, unless --force).",
                  arguments: [volume, snapshot], options: [force]) { call in
            try call.geom(as: ThinPoolGeom.self).revert(call.text("volume")!, to: call.text("snapshot")!, force: call.flag("force"),
                                                       in: call.topology)
        },
        ClassVerb("delete", "Delete a volume or snapshot, freeing chunks nothing else maps (refused while it is open, exported or under a geom, unless --force).",
                  arguments: [VerbParameter("name", .text, help: "The volume or snapshot.")], options: [force]) { call in
            try call.geom(as: ThinPoolGeom.self).delete(call.text("name")!, force: call.flag("force"), in: call.topology)
        },
        ClassVerb("resize", "Grow or shrink a volume (shrinking is refused while it is open, unless --force).", arguments: [volume],
                  options: [VerbParameter("size", .anySize, help: "The new size (required)."), force]) { call in
            guard let size = call.size("size") else { throw SettingError(key: "size", value: nil, problem: "is required") }
            return try call.geom(as: ThinPoolGeom.self).resize(call.text("volume")!, to: size, force: call.flag("force"),
                                                              in: call.topology)
        },
        ClassVerb("list", "The pool's space, and its volumes and snapshots with what each maps and shares.", onlyLooks: true) { call in
            try call.geom(as: ThinPoolGeom.self).list()
        },
        ClassVerb("check", "Commit, then check the pool's metadata on disk, as thin_check does.", onlyLooks: true) { call in
            try call.geom(as: ThinPoolGeom.self).check()
        },
        ClassVerb("configure", "Change the low-water mark while the pool runs.", options: VerbParameter.changeable(Settings.keys)) { call in
            let pool = try call.geom(as: ThinPoolGeom.self)
            var current = Settings()
            current.lowWater = pool.lowWater.load(ordering: .relaxed)
            pool.lowWater.store(try Settings.parse(call.optionTexts, over: current).lowWater, ordering: .relaxed)
            return try pool.list()
        },
    ]
}

extension Substring {
    var trimmingSpaces: String { String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}

/// Recognizes thin pools on providers that appear (tasting), by their superblock.
public final class ThinClass: GeomClass {
    public let name = "THIN"
    public init() {}

    public func taste(_ provider: Provider, in topology: Topology) -> Geom? {
        guard provider.sectorSize <= ThinFormat.blockSize, !provider.isReadOnly,
              provider.mediaSize >= Int64(2 * ThinFormat.blockSize),
              let superblock = Self.superblock(of: provider, in: topology),
              topology.geom(named: superblock.name) == nil else { return nil }
        do {
            return try ThinPoolGeom.create(in: topology, name: superblock.name, over: provider, settings: .init())
        } catch {
            topology.emit(.warning, "\(provider.name) holds thin pool \(superblock.name), which could not be opened: \(error)")
            return nil
        }
    }

    static func superblock(of provider: Provider, in topology: Topology) -> ThinSuperblock? {
        try? topology.probing(provider, for: "thin") { probe in
            let blocks = try probe.readSync(at: 0, count: 2 * ThinFormat.blockSize)
            return [Array(blocks[0..<ThinFormat.blockSize]), Array(blocks[ThinFormat.blockSize...])]
                .compactMap(ThinSuperblock.decode).max { $0.generation < $1.generation }
        }
    }
}
