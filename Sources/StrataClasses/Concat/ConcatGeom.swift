import Strata

/// CONCAT (gconcat): components end to end. A request that spans two components is
/// split. Each component keeps its label in its last sector.
public final class ConcatGeom: LabelledGeom, @unchecked Sendable {
    init(name: String, id: UInt64, count: Int) {
        super.init(name: name, className: "CONCAT", kind: .concat, id: id, count: count, stripeSize: 0)
    }

    /// Makes a concat of `providers`, in order, and labels them.
    @discardableResult
    public static func create(in topology: Topology, name: String, over providers: [Provider]) throws -> ConcatGeom {
        guard providers.count >= 1, providers.count <= ComponentLabel.maximumCount else {
            throw StrataError(.invalid, "concat \(name): \(providers.count) components; a concat has 1 to \(ComponentLabel.maximumCount)")
        }
        let geom = ConcatGeom(name: name, id: UInt64.random(in: 1...UInt64.max), count: providers.count)
        try LabelledAssembly.create(geom, over: providers, in: topology)
        return geom
    }

    /// The concat a topology file names over `providers`: reassembled from their labels,
    /// or made and labelled if they are blank.
    /// - Throws: `StrataError` when the labels contradict the entry.
    public static func assemble(in topology: Topology, name: String, over providers: [Provider]) throws -> ConcatGeom {
        try LabelledAssembly.assemble(kind: .concat, labelName: name, over: providers, in: topology,
                                      create: { try create(in: topology, name: name, over: providers) },
                                      make: { ConcatGeom(name: $0.name, id: $0.id, count: $0.count) })
    }

    override public func mediaSize() -> Int64 { dataSizes.reduce(0, +) }

    override public func locate(_ offset: Int64) -> (component: Int, offset: Int64, run: Int64) {
        var start: Int64 = 0
        for (index, size) in dataSizes.enumerated() {
            if offset < start + size { return (index, offset - start, start + size - offset) }
            start += size
        }
        return (dataSizes.count - 1, offset - (start - dataSizes.last!), 0)
    }
}

/// The concat class: reassembles concats from their labels.
public final class ConcatClass: GeomClass {
    public let name = "CONCAT"
    public init() {}

    public func taste(_ provider: Provider, in topology: Topology) -> Geom? {
        LabelledAssembly.taste(provider, kind: .concat, in: topology) { label in
            ConcatGeom(name: label.name, id: label.id, count: label.count)
        }
    }
}
