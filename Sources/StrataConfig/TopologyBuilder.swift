import Foundation
import Strata
import StrataNBD

/// What a configuration built: the topology, its disks and geoms, and the exports to serve.
public struct BuiltTopology: Sendable {
    public let topology: Topology
    /// The disks' geoms, in the file's order.
    public let disks: [Geom]
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
    public static func build(_ configuration: Configuration, topology: Topology = Topology()) throws -> BuiltTopology {
        let built = try assemble(configuration, topology: topology)
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
    public static func assemble(_ configuration: Configuration, topology: Topology = Topology()) throws -> BuiltTopology {
        let plan = try AssemblyPlan(configuration)
        topology.claim(plan.claimed)
        topology.beginAssembly(reserving: plan.reservedGeomNames)
        let registered = Set(topology.classes.map(\.name))
        for geomClass in ClassRegistry.tasters where !registered.contains(geomClass.name) { topology.register(geomClass) }
        do {
            return try build(plan, configuration: configuration, topology: topology)
        } catch {
            topology.abandonAssembly()
            topology.shutdown()
            throw error
        }
    }

    private static func build(_ plan: AssemblyPlan, configuration: Configuration, topology: Topology) throws -> BuiltTopology {
        var disks: [Geom] = []
        for spec in configuration.disks {
            disks.append(try make(spec, over: [], configuration: configuration, topology: topology))
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
            geoms.append(try make(spec, over: consumers, configuration: configuration, topology: topology))
        }
        settle(topology)

        var exports: [NBDExport] = []
        for (index, spec) in configuration.exports.enumerated() {
            guard topology.provider(named: spec.provider) != nil else {
                throw missingProvider(spec.provider, key: "exports[\(index)].provider", line: spec.line,
                                      configuration: configuration, topology: topology)
            }
            do {
                exports.append(try spec.export(in: topology))
            } catch let error as StrataError where error.code == .readOnly {
                throw ConfigError(file: configuration.file, line: spec.line, key: "exports[\(index)].read-only", value: "false",
                                  problem: "provider \(spec.provider) is read-only; leave read-only out or set it to true")
            }
        }
        return BuiltTopology(topology: topology, disks: disks, geoms: geoms, exports: exports)
    }

    /// Lets tasting finish with what exists: every announcement is handled, and a geom
    /// found by tasting with components missing (a mirror) is given its wait to start
    /// without them.
    private static func settle(_ topology: Topology) {
        topology.settle()
        topology.waitWhileGathering(seconds: 3)
    }

    private static func missingProvider(_ name: String, key: String, line: Int?, configuration: Configuration,
                                        topology: Topology) -> ConfigError {
        let known = topology.providers.map(\.name).filter { !$0.hasPrefix("taste:") }
        var problem = "names no provider (providers: \(known.joined(separator: ", ")))"
        if let guess = nearestWord(name, among: known) { problem = "names no provider; did you mean '\(guess)'?" }
        return ConfigError(file: configuration.file, line: line, key: key, value: name, problem: problem)
    }

    /// Makes an entry's geom through its class; errors name the entry's file and line.
    private static func make(_ spec: EntrySpec, over consumers: [Provider], configuration: Configuration,
                             topology: Topology) throws -> Geom {
        do {
            return try ClassRegistry.named(spec.className)!.make(name: spec.name, consumers: consumers, settings: spec.settings,
                                                                relativeTo: configuration.directory, in: topology)
        } catch {
            throw spec.error(error, in: configuration.file)
        }
    }
}
