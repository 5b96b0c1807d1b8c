import Strata

/// `memory: SIZE` under `disks:`: a disk in memory, lost on exit (docs: `memory.md`).
public enum MemoryDiskDefinition: ClassDefinition, SizedDiskKind {
    public static let name = "memory"
    public static let summary = "A disk in memory, reserved without commitment, lost on exit."
    public static let geomClassName = "MEMORY"
    public static let shape = ClassShape.disk
    public typealias Settings = SizedDiskSettings<Self>

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try MemoryDisk.create(in: topology, name: entry.name, size: entry.settings.size, sectorSize: entry.settings.sectorSize)
    }

    public static func settings(of geom: Geom) -> Settings? { (geom as? MemoryDisk)?.sizedSettings() }
}
