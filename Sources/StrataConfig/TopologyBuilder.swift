import Foundation
import Strata
import StrataClasses
import StrataDisks
import StrataNBD

/// A transform class that can be named in a topology file. The builder hands it the
/// geom's entry: its name, the providers it consumes, and its own keys, which the class
/// checks with its own messages (`ConfigValue.error`).
public protocol ConfigurableClass: Sendable {
    /// The `class:` value that selects it, e.g. "mirror".
    var name: String { get }
    /// The keys of its own it accepts.
    var parameterKeys: [String] { get }
    /// Makes the geom, adds it to `topology`, attaches it to `consumers` and creates its
    /// providers.
    func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom
    /// For a geom tasting already assembled under the entry's name: how it differs from
    /// the entry, or nil when it matches. Classes without metadata never assemble so.
    func difference(_ spec: GeomSpec, from geom: Geom) -> String?
    /// Brings a geom tasting assembled in line with the entry (a mirror inserts blank
    /// components the file lists), or throws. The default refuses any difference.
    func reconcile(_ spec: GeomSpec, with geom: Geom, in topology: Topology) throws
}

extension ConfigurableClass {
    public func difference(_ spec: GeomSpec, from geom: Geom) -> String? { nil }

    public func reconcile(_ spec: GeomSpec, with geom: Geom, in topology: Topology) throws {
        if let difference = difference(spec, from: geom) {
            throw StrataError(.invalid, "disagrees with the disks: \(difference)")
        }
    }
}

/// What a configuration built: the topology, its disks and geoms, and the exports to serve.
public struct BuiltTopology: Sendable {
    public let topology: Topology
    public let disks: [Disk]
    public let geoms: [Geom]
    public let exports: [NBDExport]
}

/// Builds a topology from a checked configuration.
public enum TopologyBuilder {
    /// - Throws: `ConfigError` for anything the file got wrong: a disk that cannot be
    ///   opened, an unknown class or key, a name that refers to no provider, a cycle.
    public static func build(_ configuration: Configuration, classes: [any ConfigurableClass] = availableClasses,
                             topology: Topology = Topology()) throws -> BuiltTopology {
        let file = configuration.file
        var disks: [Disk] = []
        // One log for every power-cut disk: a crash point cuts all of them at once.
        let powerCutLog = PowerCutLog()
        for (index, spec) in configuration.disks.enumerated() {
            do {
                disks.append(try makeDisk(spec, in: topology, powerCutLog: powerCutLog))
            } catch let error as StrataError {
                let key = "disks[\(index)]"
                throw ConfigError(file: file, line: spec.line, key: key, value: spec.name, problem: error.description)
            }
        }

        var geoms: [Geom] = []
        var pending = Array(configuration.geoms.enumerated())
        // Geoms without on-disk metadata (nop) first, as far as they can go, so that
        // tasting sees the stacks they make; then the classes with metadata taste
        // everything, top down; then the rest of the entries are built or matched.
        let metadataClasses: Set<String> = ["concat", "stripe", "label", "part", "mirror"]
        func buildReady(_ allowed: (GeomSpec) -> Bool) throws -> Bool {
            var built = false
            while true {
                let ready = pending.filter { allowed($0.element) && $0.element.consumers.allSatisfy { topology.provider(named: $0) != nil } }
                if ready.isEmpty { return built }
                for (index, spec) in ready {
                    geoms.append(try makeGeom(spec, index: index, classes: classes, file: file, topology: topology))
                }
                pending.removeAll { entry in ready.contains { $0.offset == entry.offset } }
                built = true
            }
        }
        _ = try buildReady { !metadataClasses.contains($0.className) }
        let tasting = Set(topology.classes.map(\.name))
        for geomClass in tastingClasses where !tasting.contains(geomClass.name) { topology.register(geomClass) }
        topology.settle()
        waitForMirrorsGatheringComponents(in: topology)
        _ = try buildReady { _ in true }
        if !pending.isEmpty {
            throw unresolved(pending.map(\.element), configuration: configuration, topology: topology)
        }

        var exports: [NBDExport] = []
        for (index, spec) in configuration.exports.enumerated() {
            guard topology.provider(named: spec.provider) != nil else {
                let known = topology.providers.map(\.name)
                var problem = "names no provider (providers: \(known.joined(separator: ", ")))"
                if let guess = nearest(spec.provider, among: known) { problem = "names no provider; did you mean '\(guess)'?" }
                throw ConfigError(file: file, line: spec.line, key: "exports[\(index)].provider", value: spec.provider, problem: problem)
            }
            exports.append(NBDExport(name: spec.name, provider: spec.provider, readOnly: spec.readOnly,
                                     description: spec.description, isDefault: spec.isDefault))
        }
        return BuiltTopology(topology: topology, disks: disks, geoms: geoms, exports: exports)
    }

    /// A mirror missing components starts after a short wait (degraded): give it that
    /// long before entries and exports look for its provider.
    private static func waitForMirrorsGatheringComponents(in topology: Topology) {
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline,
              topology.geoms.contains(where: { $0 is MirrorGeom && $0.providers.isEmpty && $0.topology != nil }) {
            Thread.sleep(forTimeInterval: 0.02)
        }
        topology.settle()
    }

    private static func makeDisk(_ spec: DiskSpec, in topology: Topology, powerCutLog: PowerCutLog) throws -> Disk {
        switch spec.backing {
        case .file(let path, let size, let engine):
            return try FileDisk.create(in: topology, name: spec.name, path: path, size: size, sectorSize: spec.sectorSize,
                                       engine: engine)
        case .memory(let size):
            return try MemoryDisk.create(in: topology, name: spec.name, size: size, sectorSize: spec.sectorSize)
        case .null(let size):
            return try NullDisk.create(in: topology, name: spec.name, size: size, sectorSize: spec.sectorSize)
        case .zero(let size):
            return try ZeroDisk.create(in: topology, name: spec.name, size: size, sectorSize: spec.sectorSize)
        case .powercut(let size):
            return try PowerCutDisk.create(in: topology, name: spec.name, size: size, sectorSize: spec.sectorSize, log: powerCutLog)
        }
    }

    private static func makeGeom(_ spec: GeomSpec, index: Int, classes: [any ConfigurableClass], file: String,
                                 topology: Topology) throws -> Geom {
        let path = "geoms[\(index)]"
        guard let geomClass = classes.first(where: { $0.name == spec.className }) else {
            let known = classes.map(\.name)
            var problem = known.isEmpty ? "is not a known class (no transform classes are available yet)"
                : "is not a known class (known: \(known.joined(separator: ", ")))"
            if let guess = nearest(spec.className, among: known) { problem = "is not a known class; did you mean '\(guess)'?" }
            throw ConfigError(file: file, line: spec.line, key: "\(path).class", value: spec.className, problem: problem)
        }
        for (key, value) in spec.parameters where !geomClass.parameterKeys.contains(key) {
            let allowed = ConfigurationLoader.geomKeys + geomClass.parameterKeys
            var problem = "is not a key of class \(geomClass.name) (known: \(allowed.joined(separator: ", ")))"
            if let guess = nearest(key, among: allowed) { problem = "is not a key of class \(geomClass.name); did you mean '\(guess)'?" }
            throw ConfigError(file: file, line: value.line, key: value.key, value: nil, problem: problem)
        }
        let assembledName = ["label", "part"].contains(geomClass.name) ? "\(geomClass.name)/\(spec.name)" : spec.name
        if let assembled = topology.geom(named: assembledName) {
            // Tasting found it on its disks: it must be what the file describes.
            guard assembled.className.lowercased() == geomClass.name else {
                throw ConfigError(file: file, line: spec.line, key: path, value: spec.name,
                                  problem: "disagrees with the disks: its metadata makes it a \(assembled.className.lowercased()), the file says \(geomClass.name)")
            }
            do {
                try geomClass.reconcile(spec, with: assembled, in: topology)
            } catch let error as StrataError {
                throw ConfigError(file: file, line: spec.line, key: path, value: spec.name, problem: error.message)
            }
            return assembled
        }
        let consumers = spec.consumers.map { topology.provider(named: $0)! }
        do {
            return try geomClass.make(spec, over: consumers, in: topology)
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(file: file, line: spec.line, key: path, value: spec.name, problem: "\(error)")
        }
    }

    /// Geoms that could not be built: a consumer names nothing, or they wait on each other.
    private static func unresolved(_ specs: [GeomSpec], configuration: Configuration, topology: Topology) -> ConfigError {
        let declared = Set(configuration.disks.map(\.name) + configuration.geoms.map(\.name))
        for spec in specs {
            let index = configuration.geoms.firstIndex(of: spec)!
            for (position, name) in spec.consumers.enumerated() where !declared.contains(name) && topology.provider(named: name) == nil {
                let known = topology.providers.map(\.name) + configuration.geoms.map(\.name)
                var problem = "names no provider (providers: \(known.joined(separator: ", ")))"
                if let guess = nearest(name, among: known) { problem = "names no provider; did you mean '\(guess)'?" }
                return ConfigError(file: configuration.file, line: spec.line, key: "geoms[\(index)].consumers[\(position)]",
                                   value: name, problem: problem)
            }
        }
        // Everything named exists but nothing can start: the geoms consume each other.
        var cycle = [specs[0].name]
        var next = specs[0].consumers.first { name in specs.contains { $0.name == name } }
        while let name = next, !cycle.contains(name) {
            cycle.append(name)
            next = specs.first { $0.name == name }?.consumers.first { name in specs.contains { $0.name == name } }
        }
        if let name = next { cycle.append(name) }
        let index = configuration.geoms.firstIndex(of: specs[0])!
        return ConfigError(file: configuration.file, line: specs[0].line, key: "geoms[\(index)].consumers", value: nil,
                           problem: "make a cycle: \(cycle.joined(separator: " → "))")
    }
}
