import Strata
import StrataClasses

/// `class: concat`: the providers in `consumers`, end to end.
public struct ConcatConfiguration: ConfigurableClass {
    public let name = "concat"
    public let parameterKeys: [String] = []
    public init() {}

    public func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom {
        try ConcatGeom.create(in: topology, name: spec.name, over: consumers)
    }

    public func difference(_ spec: GeomSpec, from geom: Geom) -> String? {
        (geom as? ConcatGeom).flatMap { labelledDifference(spec, $0) }
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
            return try StripeGeom.create(in: topology, name: spec.name, over: consumers, stripeSize: stripeSize)
        } catch let error as StrataError where error.message.hasPrefix("stripe-size") {
            if let value = spec.parameters["stripe-size"] { throw value.error(error.message) }
            throw error
        }
    }

    public func difference(_ spec: GeomSpec, from geom: Geom) -> String? {
        guard let stripe = geom as? StripeGeom else { return nil }
        if let difference = labelledDifference(spec, stripe) { return difference }
        let wanted = (try? spec.parameters["stripe-size"]?.size()) ?? 64 << 10
        if wanted != stripe.stripeSize {
            return "its metadata says stripe-size \(stripe.stripeSize), the file says \(wanted)"
        }
        return nil
    }
}

/// How an assembled concat or stripe differs from its entry: components and their order.
func labelledDifference(_ spec: GeomSpec, _ geom: LabelledGeom) -> String? {
    let found = geom.components.map { $0?.provider?.name ?? "(missing)" }
    if found != spec.consumers {
        return "its metadata has components [\(found.joined(separator: ", "))], the file says [\(spec.consumers.joined(separator: ", "))]"
    }
    return nil
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
        return try LabelGeom.create(in: topology, label: spec.name, on: consumers[0])
    }
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
}
