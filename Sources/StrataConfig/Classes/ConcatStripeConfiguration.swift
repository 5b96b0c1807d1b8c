import Strata
import StrataClasses

/// `class: concat`: the providers in `consumers`, end to end.
public struct ConcatConfiguration: ConfigurableClass {
    public let name = "concat"
    public let parameterKeys: [String] = []
    public init() {}

    public func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom {
        try ConcatGeom.assemble(in: topology, name: spec.name, over: consumers)
    }
}

/// `class: stripe`: `stripe-size` (a power of two, at least the sector size; default
/// 64KiB) from each provider in `consumers` in turn.
public struct StripeConfiguration: ConfigurableClass {
    public let name = "stripe"
    public let parameterKeys = ["stripe-size"]
    public init() {}

    public func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom {
        let stripeSize = try spec.parameters["stripe-size"]?.size() ?? 64 << 10
        do {
            return try StripeGeom.assemble(in: topology, name: spec.name, over: consumers, stripeSize: stripeSize)
        } catch let error as StrataError where error.message.hasPrefix("stripe-size") {
            if let value = spec.parameters["stripe-size"] { throw value.error(error.message) }
            throw error
        }
    }
}

/// `class: label`: the one provider in `consumers` labelled with the entry's name, served
/// as `label/NAME`.
public struct LabelConfiguration: ConfigurableClass {
    public let name = "label"
    public let parameterKeys: [String] = []
    public init() {}

    public func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom {
        guard consumers.count == 1 else {
            throw StrataError(.invalid, "a label names exactly one provider, not \(consumers.count)")
        }
        return try LabelGeom.assemble(in: topology, label: spec.name, on: consumers[0])
    }

    public func geomName(forEntry name: String) -> String { "label/\(name)" }
    public func offers(_ provider: String, entry: String) -> Bool { provider == "label/\(entry)" }
}

/// `class: part`: reads the partition table of its one provider, named after it
/// (`name: g0`, `consumers: [g0]`), and serves `g0p1`, `g0p2`, …
public struct PartConfiguration: ConfigurableClass {
    public let name = "part"
    public let parameterKeys: [String] = []
    public init() {}

    public func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom {
        guard consumers.count == 1, consumers[0].name == spec.name else {
            throw StrataError(.invalid, "a part entry is named after the one provider it reads (name: \(consumers.first?.name ?? "d0"), consumers: [\(consumers.first?.name ?? "d0")])")
        }
        return try PartGeom.create(in: topology, over: consumers[0])
    }

    public func geomName(forEntry name: String) -> String { "part/\(name)" }

    /// Partitions are named after the disk: `d0p1`, `d0p2`, …
    public func offers(_ provider: String, entry: String) -> Bool {
        provider.hasPrefix(entry + "p") && provider.count > entry.count + 1
            && provider.dropFirst(entry.count + 1).allSatisfy(\.isASCIIDigit)
    }
}

extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}
