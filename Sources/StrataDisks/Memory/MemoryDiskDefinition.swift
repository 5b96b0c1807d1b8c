import Strata

/// `memory: SIZE` under `disks:`: a disk in memory (docs: `memory.md`).
public enum MemoryDiskDefinition: ClassDefinition {
    public static let name = "memory"
    public static let summary = "A disk in memory, reserved without commitment, lost on exit."
    public static let geomClassName = "MEMORY"
    public static let shape = ClassShape.disk

    public struct Settings: ClassSettings {
        public var size: Int64 = 0
        public var sectorSize = 512
        public var hugePages = false

        public init() {}

        public static let keys: [SettingKey<Settings>] = [
            SettingKey("memory", \.size, .anySize, help: "The disk's size."),
            SettingKey("sector-size", \.sectorSize, names: sectorSizeNames, help: "512 (the default) or 4096."),
            SettingKey("huge-pages", \.hugePages, .boolean,
                       help: "Back the media with 2 MiB transparent huge pages: fewer TLB misses, but each 2 MiB range written costs all of its memory."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        let settings = entry.settings
        return try MemoryDisk.create(in: topology, name: entry.name, size: settings.size, sectorSize: settings.sectorSize,
                                     hugePages: settings.hugePages)
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let disk = geom as? MemoryDisk else { return nil }
        var settings = Settings()
        settings.size = disk.provider.mediaSize
        settings.sectorSize = disk.provider.sectorSize
        settings.hugePages = disk.hugePages
        return settings
    }
}
