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
/// The first time, metadata is written to every component. Afterwards the mirror comes
/// back by tasting; a blank provider added to `consumers` is inserted and rebuilt, and a
/// provider that carries another mirror's metadata is refused.
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
        let mirror = try MirrorGeom.create(in: topology, name: spec.name, over: consumers, balance: balance, slice: slice)
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

    public func reconcile(_ spec: GeomSpec, with geom: Geom, in topology: Topology) throws {
        guard let mirror = geom as? MirrorGeom else { return }
        mirror.rebuildRate.store(try rebuildRate(spec), ordering: .relaxed)
        // The disks say who the members are; insert, remove and forget change that at
        // run time, so the file may lag behind. Only contradictions are errors.
        let members = Set(mirror.status.components.map(\.name))
        for name in spec.consumers where !members.contains(name) {
            guard let provider = topology.provider(named: name) else { continue }
            if let other = MirrorGeom.readMetadata(of: provider, in: topology) {
                guard other.mirrorID == mirror.mirrorID else {
                    throw StrataError(.invalid, "\(name) carries the metadata of mirror \(other.name)")
                }
                topology.emit(.warning, "mirror \(mirror.name): \(name) was ejected earlier; `strata mirror insert \(mirror.name) \(name)` takes it back")
                continue
            }
            try mirror.insert(provider, in: topology)
            topology.emit(.notice, "mirror \(mirror.name): inserted \(name) from the topology file; rebuilding it")
        }
        for name in members.subtracting(spec.consumers).subtracting(["-"]).sorted() {
            topology.emit(.warning, "mirror \(mirror.name): \(name) is a member but the topology file does not list it")
        }
    }
}
