import Strata

/// `file: PATH` under `disks:`: a regular file or a block device (docs: `file.md`).
public enum FileDiskDefinition: ClassDefinition {
    public static let name = "file"
    public static let summary = "A regular file or a block device; a missing file is created, sparse, with the size given."
    public static let geomClassName = "FILE"
    public static let shape = ClassShape.disk

    public struct Settings: ClassSettings {
        public var path = ""
        /// The size to create a missing file with; for an existing one, its size.
        public var size: Int64?
        public var sectorSize = 512
        public var engine = FileDisk.Engine.automatic
        public var readOnly = false
        public var cache = FileDisk.Cache.writeback

        public init() {}

        public static let keys: [SettingKey<Settings>] = [
            SettingKey("file", \.path, .path, help: "The file or block device (relative to the topology file's folder)."),
            SettingKey("size", \.size, .anySize, help: "The size to create a missing file with; an existing file must have it."),
            SettingKey("sector-size", \.sectorSize, names: sectorSizeNames, help: "512 (the default) or 4096."),
            SettingKey("io", \.engine, names: FileDisk.Engine.allCases.map { ($0.rawValue, $0) },
                       help: "How the I/O is done: automatic (the default), inline, uring or threads."),
            SettingKey("read-only", \.readOnly, .boolean,
                       help: "Open the file read-only under a shared lock: writes are refused with EPERM, exports default to read-only."),
            SettingKey("cache", \.cache, names: FileDisk.Cache.allCases.map { ($0.rawValue, $0) },
                       help: "writeback (the default): through the page cache; none: O_DIRECT, as qemu's cache=none."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        let settings = entry.settings
        do {
            return try FileDisk.create(in: topology, name: entry.name, path: settings.path, size: settings.size,
                                       sectorSize: settings.sectorSize, engine: settings.engine, readOnly: settings.readOnly,
                                       cache: settings.cache)
        } catch let error as FileDisk.InUse {
            throw SettingError(key: "file", value: settings.path, problem: "is in use: \(error.path) is locked by \(error.lockedBy)")
        } catch let error as FileDisk.DirectIORefused {
            throw SettingError(key: error.key, value: error.value, problem: "\(error.problem) (file \(error.path))")
        }
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let disk = geom as? FileDisk else { return nil }
        var settings = Settings()
        settings.path = disk.path
        settings.sectorSize = disk.provider.sectorSize
        settings.engine = disk.requestedEngine
        settings.readOnly = disk.isReadOnly
        settings.cache = disk.cache
        return settings
    }

    public static func media(of settings: Settings) -> [Medium] {
        guard let identity = FileDisk.identity(ofPath: settings.path) else { return [] }
        return [Medium(key: "file", identity: identity, name: settings.path)]
    }
}
