import Strata

/// `null: SIZE` under `disks:`: reads zeros, takes writes and keeps nothing (docs: `null.md`).
public enum NullDiskDefinition: ClassDefinition, SizedDiskKind {
    public static let name = "null"
    public static let summary = "Reads zeros, takes every write and keeps nothing: the cost of the stack alone."
    public static let geomClassName = "NULL"
    public static let shape = ClassShape.disk
    public typealias Settings = SizedDiskSettings<Self>

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try NullDisk.create(in: topology, name: entry.name, size: entry.settings.size, sectorSize: entry.settings.sectorSize)
    }

    public static func settings(of geom: Geom) -> Settings? { (geom as? NullDisk)?.sizedSettings() }
}
