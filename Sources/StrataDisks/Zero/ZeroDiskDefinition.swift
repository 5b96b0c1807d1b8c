import Strata

/// `zero: SIZE` under `disks:`: reads zeros and refuses writes (docs: `zero.md`).
public enum ZeroDiskDefinition: ClassDefinition, SizedDiskKind {
    public static let name = "zero"
    public static let summary = "Reads zeros and refuses writes."
    public static let geomClassName = "ZERO"
    public static let shape = ClassShape.disk
    public typealias Settings = SizedDiskSettings<Self>

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try ZeroDisk.create(in: topology, name: entry.name, size: entry.settings.size, sectorSize: entry.settings.sectorSize)
    }

    public static func settings(of geom: Geom) -> Settings? { (geom as? ZeroDisk)?.sizedSettings() }
}
