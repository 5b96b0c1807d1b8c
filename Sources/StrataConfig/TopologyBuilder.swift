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
    /// Makes the geom over exactly `consumers`, adds it to `topology` and creates its
    /// providers. A class with metadata reads it from `consumers` and reassembles the
    /// geom from it, or writes it where they are blank; metadata that contradicts the
    /// entry is an error.
    func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom
    /// The name of the geom an entry makes (a label's is `label/NAME`).
    func geomName(forEntry name: String) -> String
    /// Whether the geom of entry `entry` may offer a provider named `provider`.
    func offers(_ provider: String, entry: String) -> Bool
}

extension ConfigurableClass {
    public func geomName(forEntry name: String) -> String { name }
    public func offers(_ provider: String, entry: String) -> Bool { provider == entry }
}

/// What a configuration built: the topology, its disks and geoms, and the exports to serve.
public struct BuiltTopology: Sendable {
    public let topology: Topology
    public let disks: [Disk]
    public let geoms: [Geom]
    public let exports: [NBDExport]

    /// Ends the assembly (`TopologyBuilder.assemble`): what it wrote goes to the disks,
    /// the work classes put off (a mirror's rebuild) starts, and its messages go out.
    /// - Throws: `StrataError` when what was held cannot be written.
    public func finish() throws {
        try topology.finishAssembly()
    }

    /// Drops a topology whose assembly went well but whose start failed after it (the
    /// control socket or a listener could not be opened): nothing it held is written,
    /// nothing is logged, and the topology is taken down.
    public func abandon() {
        topology.abandonAssembly()
        topology.shutdown()
    }
}

/// Builds a topology from a checked configuration.
///
/// The file is authoritative. Its geoms are made in the order their consumers allow (a
/// topological sort of the file's graph, ties in the file's order), each over exactly
/// the providers it names: a class with metadata reads it from those providers and
/// reassembles from it, or writes it if they are blank. Tasting fills in only what the
/// file leaves unsaid: it never reads a provider that an entry consumes or an export
/// serves (what is written there belongs to that class or client), and never makes a
/// geom under a name the file declares. The same disks and file give the same topology
/// every time. Nothing is written to a disk, and nothing is logged, until the whole
/// topology is built: an assembly that fails leaves every disk as it found it and
/// reports its one error.
public enum TopologyBuilder {
    /// Builds and finishes the assembly at once.
    /// - Throws: `ConfigError` for anything the file got wrong: a disk that cannot be
    ///   opened, an unknown class or key, a name that refers to no provider, a cycle.
    public static func build(_ configuration: Configuration, classes: [any ConfigurableClass] = availableClasses,
                             topology: Topology = Topology()) throws -> BuiltTopology {
        let built = try assemble(configuration, classes: classes, topology: topology)
        do {
            try built.finish()
        } catch {
            built.abandon()
            throw ConfigError(file: configuration.file, line: nil, key: "(disks)", value: nil, problem: "\(error)")
        }
        return built
    }

    /// Builds the topology but leaves its assembly open: nothing is on the disks and
    /// nothing logged until `BuiltTopology.finish`, so a start that fails later still
    /// changes nothing (`BuiltTopology.abandon`). On an error the topology is taken
    /// down, silently, before the error is thrown.
    public static func assemble(_ configuration: Configuration, classes: [any ConfigurableClass] = availableClasses,
                                topology: Topology = Topology()) throws -> BuiltTopology {
        let plan = try AssemblyPlan(configuration, classes: classes)
        topology.claim(plan.claimed)
        topology.beginAssembly(reserving: plan.reservedGeomNames)
        let registered = Set(topology.classes.map(\.name))
        for geomClass in tastingClasses where !registered.contains(geomClass.name) { topology.register(geomClass) }
        do {
            return try build(plan, configuration: configuration, topology: topology)
        } catch {
            topology.abandonAssembly()
            topology.shutdown()
            throw error
        }
    }

    private static func build(_ plan: AssemblyPlan, configuration: Configuration, topology: Topology) throws -> BuiltTopology {
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
        for step in plan.order {
            // What tasting makes of the providers so far, before an entry looks for its own.
            settle(topology)
            let spec = configuration.geoms[step.index]
            var consumers: [Provider] = []
            for (position, name) in spec.consumers.enumerated() {
                guard let provider = topology.provider(named: name) else {
                    throw missingProvider(name, key: "geoms[\(step.index)].consumers[\(position)]", line: spec.line,
                                          configuration: configuration, topology: topology)
                }
                consumers.append(provider)
            }
            geoms.append(try makeGeom(spec, index: step.index, geomClass: step.geomClass, over: consumers, file: file,
                                      topology: topology))
        }
        settle(topology)

        var exports: [NBDExport] = []
        for (index, spec) in configuration.exports.enumerated() {
            guard topology.provider(named: spec.provider) != nil else {
                throw missingProvider(spec.provider, key: "exports[\(index)].provider", line: spec.line,
                                      configuration: configuration, topology: topology)
            }
            exports.append(NBDExport(name: spec.name, provider: spec.provider, readOnly: spec.readOnly,
                                     description: spec.description, isDefault: spec.isDefault))
        }
        return BuiltTopology(topology: topology, disks: disks, geoms: geoms, exports: exports)
    }

    /// Lets tasting finish with what exists: every announcement is handled, and a mirror
    /// found by tasting with components missing is given its wait to start degraded.
    private static func settle(_ topology: Topology) {
        topology.settle()
        waitForMirrorsGatheringComponents(in: topology)
    }

    private static func missingProvider(_ name: String, key: String, line: Int?, configuration: Configuration,
                                        topology: Topology) -> ConfigError {
        let known = topology.providers.map(\.name).filter { !$0.hasPrefix("taste:") }
        var problem = "names no provider (providers: \(known.joined(separator: ", ")))"
        if let guess = nearest(name, among: known) { problem = "names no provider; did you mean '\(guess)'?" }
        return ConfigError(file: configuration.file, line: line, key: key, value: name, problem: problem)
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

    private static func makeGeom(_ spec: GeomSpec, index: Int, geomClass: any ConfigurableClass, over consumers: [Provider],
                                 file: String, topology: Topology) throws -> Geom {
        do {
            return try geomClass.make(spec, over: consumers, in: topology)
        } catch let error as ConfigError {
            throw error
        } catch let error as StrataError {
            throw ConfigError(file: file, line: spec.line, key: "geoms[\(index)]", value: spec.name, problem: error.message)
        } catch {
            throw ConfigError(file: file, line: spec.line, key: "geoms[\(index)]", value: spec.name, problem: "\(error)")
        }
    }
}
