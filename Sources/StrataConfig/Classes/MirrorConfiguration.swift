import Strata
import StrataClasses

/// `class: mirror`: the providers in `consumers` (2 to 16) as copies of each other.
///
/// ```yaml
/// - name: m0
///   class: mirror
///   consumers: [d0, d1]
///   balance: load       # load, prefer, round-robin or split
///   slice: 1MiB         # for split: reads of two slices or more are split
///   rebuild-rate: 64MiB # bytes per second a rebuild may copy (default: no limit)
/// ```
/// The first time, metadata is written to every component. Afterwards the mirror is
/// reassembled from the metadata of the providers in `consumers`, and of components
/// inserted at run time that nothing in the file uses; a blank provider added to
/// `consumers` is inserted and rebuilt, and a provider that carries another mirror's
/// metadata is refused.
public struct MirrorConfiguration: ConfigurableClass {
    public let name = "mirror"
    public let parameterKeys = ["balance", "slice", "rebuild-rate"]
    public init() {}

    public func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom {
        var balance = MirrorBalance.load
        if let value = spec.parameters["balance"] {
            guard let parsed = MirrorBalance(name: value.text) else {
                throw value.error("must be load, prefer, round-robin or split")
            }
            balance = parsed
        }
        var slice = 1 << 20
        if let value = spec.parameters["slice"] {
            let size = try value.size()
            guard size >= 4096, size <= 1 << 30, size & (size - 1) == 0 else { throw value.error("must be a power of two from 4KiB to 1GiB") }
            slice = Int(size)
        }
        let rate = try rebuildRate(spec)
        // Components inserted at run time: providers the file leaves to tasting that
        // nothing uses.
        let others = topology.providers.filter { provider in
            !topology.isClaimed(provider.name) && provider.consumers.isEmpty && !provider.isOrphaned
        }.sorted { ($0.geom.rank, $1.name) > ($1.geom.rank, $0.name) }
        let mirror = try MirrorGeom.assemble(in: topology, name: spec.name, over: consumers, others: others,
                                             balance: balance, slice: slice)
        mirror.rebuildRate.store(rate, ordering: .relaxed)
        return mirror
    }

    private func rebuildRate(_ spec: GeomSpec) throws -> Int {
        guard let value = spec.parameters["rebuild-rate"] else { return 0 }
        if value.text == "0" { return 0 }
        let rate = try value.size()
        guard rate >= 1 << 20 else { throw value.error("must be at least 1MiB (per second), or 0 for no limit") }
        return Int(rate)
    }
}
