import Strata

/// `class: concat`: the providers in `consumers`, end to end (docs: `concat.md`).
public enum ConcatDefinition: ClassDefinition {
    public static let name = "concat"
    public static let summary = "Its components end to end, reassembled from their labels."
    public static let geomClassName = "CONCAT"
    public static let shape = ClassShape.transform(consumers: 1...ComponentLabel.maximumCount)
    public typealias Settings = NoSettings

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try ConcatGeom.assemble(in: topology, name: entry.name, over: entry.consumers)
    }

    public static func settings(of geom: Geom) -> Settings? { Settings() }
    public static func consumers(of geom: Geom) -> [String] { (geom as? LabelledGeom)?.componentNames ?? [] }
    public static var taster: (any GeomClass)? { ConcatClass() }
}
