import Strata

/// LABEL (glabel): a named alias of a provider, `label/NAME`, found by the label in the
/// provider's last sector wherever the provider comes from. The alias is one sector
/// smaller than the provider; requests pass straight through.
public final class LabelGeom: LabelledGeom, @unchecked Sendable {
    /// The label as written on the disk (the geom and its provider are `label/NAME`).
    public let label: String

    init(label: String, id: UInt64) {
        self.label = label
        super.init(name: "label/\(label)", className: "LABEL", kind: .label, id: id, count: 1, stripeSize: 0)
    }

    override public var labelName: String { label }

    /// Labels `provider` as `label` and makes `label/LABEL`.
    /// - Throws: `StrataError` when the name is empty, too long or has a slash.
    @discardableResult
    public static func create(in topology: Topology, label: String, on provider: Provider) throws -> LabelGeom {
        guard !label.isEmpty, label.utf8.count <= 63, !label.contains("/") else {
            throw StrataError(.invalid, "label '\(label)' must be 1 to 63 bytes with no '/'")
        }
        let geom = LabelGeom(label: label, id: UInt64.random(in: 1...UInt64.max))
        try LabelledAssembly.create(geom, over: [provider], in: topology)
        return geom
    }

    /// `label/LABEL` over `provider` as a topology file names it: from the provider's
    /// label, or labelled now if it has none.
    /// - Throws: `StrataError` when the provider carries another label.
    public static func assemble(in topology: Topology, label: String, on provider: Provider) throws -> LabelGeom {
        try LabelledAssembly.assemble(kind: .label, labelName: label, over: [provider], in: topology,
                                      create: { try create(in: topology, label: label, on: provider) },
                                      make: { LabelGeom(label: $0.name, id: $0.id) })
    }

    override public func mediaSize() -> Int64 { dataSizes[0] }

    override public func locate(_ offset: Int64) -> (component: Int, offset: Int64, run: Int64) {
        (0, offset, dataSizes[0] - offset)
    }
}

/// The label class: makes `label/NAME` for every labelled provider that appears.
public final class LabelClass: GeomClass {
    public let name = "LABEL"
    public init() {}

    public func taste(_ provider: Provider, in topology: Topology) -> Geom? {
        LabelledAssembly.taste(provider, kind: .label, in: topology) { label in
            LabelGeom(label: label.name, id: label.id)
        }
    }
}
