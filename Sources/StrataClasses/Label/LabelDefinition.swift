import Strata

/// `class: label`: the one provider in `consumers`, labelled with the entry's name and
/// served as `label/NAME` (docs: `label.md`).
public enum LabelDefinition: ClassDefinition {
    public static let name = "label"
    public static let summary = "A named alias of a provider, label/NAME, found by its label wherever the provider comes from."
    public static let geomClassName = "LABEL"
    public static let shape = ClassShape.transform(consumers: 1...1)
    public typealias Settings = NoSettings

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try LabelGeom.assemble(in: topology, label: entry.name, on: entry.consumers[0])
    }

    public static func settings(of geom: Geom) -> Settings? { Settings() }
    public static var taster: (any GeomClass)? { LabelClass() }
    public static func geomName(forEntry name: String) -> String { "label/\(name)" }
}
