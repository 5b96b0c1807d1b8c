import Foundation
import Strata
import StrataNBD
import Synchronization
import Yams

/// The topology a server runs, changed at run time as `geom(8)` and `dmsetup` allow:
/// geoms made and destroyed, exports added and removed. Each change is recorded in the
/// state file (`TopologyChanges`) before it is answered, so it survives a restart; a
/// change that cannot be recorded is undone. `dump` writes the running topology as a
/// topology file that reproduces it.
public final class RunningTopology: Sendable {
    public let topology: Topology
    public let server: NBDServer
    /// The configuration started from (the file with the changes of earlier runs).
    let configuration: Configuration
    private let changes: Mutex<TopologyChanges>

    public init(topology: Topology, server: NBDServer, configuration: Configuration, changes: TopologyChanges) {
        self.topology = topology
        self.server = server
        self.configuration = configuration
        self.changes = Mutex(changes)
    }

    var statePath: String { TopologyChanges.path(in: configuration) }

    /// Makes a geom (or a disk) of `className` over `consumers`, with its settings as
    /// text (`strata geom create`).
    /// - Throws: `SettingError` for a setting, `StrataError` for the rest; nothing is made.
    public func createGeom(className: String, name: String, consumers names: [String],
                           settings: [(key: String, text: String)]) throws -> Geom {
        guard let definition = ClassRegistry.named(className) else {
            let known = registeredClasses.map { $0.name }
            throw SettingError(key: "class", value: className, problem: unknownKeyProblem(className, among: known)
                .replacingOccurrences(of: "a known key", with: "a known class"))
        }
        if let problem = EntryName.problem(name) { throw SettingError(key: "name", value: name, problem: problem) }
        guard topology.geom(named: definition.geomName(forEntry: name)) == nil, topology.provider(named: name) == nil else {
            throw StrataError(.exists, "\(name) is already the name of a geom or provider")
        }
        if definition.shape == .disk, !names.isEmpty {
            throw SettingError(key: "consumers", value: names.joined(separator: ","), problem: "a \(className) disk consumes nothing")
        }
        // Two disks on one file would overwrite each other: the topology file's rule. (Two
        // such changes at once pass this check, and the second is refused by the lock.)
        for medium in definition.media(settings: settings, relativeTo: configuration.directory) {
            for geom in topology.geoms where !geom.isWithering {
                guard let other = ClassRegistry.of(geom),
                      let same = other.media(of: geom).first(where: { $0.identity == medium.identity }) else { continue }
                throw SettingError(key: medium.key, value: settings.last { $0.key == medium.key }?.text ?? medium.name,
                                   problem: "is the \(medium.noun) \(other.entryName(of: geom)) opens (\(same.name)); \(article(medium.noun)) \(medium.noun) can be one disk only")
            }
        }
        var consumers: [Provider] = []
        for (index, consumer) in names.enumerated() {
            if let first = names.firstIndex(of: consumer), first < index {
                throw SettingError(key: "consumers[\(index)]", value: consumer, problem: ConfigurationLoader.consumedTwice(first: first))
            }
            guard let provider = topology.provider(named: consumer) else {
                throw StrataError(.noDevice, "no provider named \(consumer)")
            }
            consumers.append(provider)
        }
        // A disk made here opens, and may create, the file its path names, on behalf of
        // whoever asked through the control socket.
        for (key, text) in settings where definition.settingKeys.contains(where: { $0.name == key && $0.kind == .path }) {
            // "-" is standard input at start (an eli's key-file); a running server's
            // belongs to whoever started it, not to the caller.
            if text == "-" {
                throw SettingError(key: key, value: text, problem: "reads standard input, which only a start does; name a file")
            }
            try checkBeneath(absolutePath(text, relativeTo: configuration.directory), configuration.controlWritableDirectories,
                             key: key, text: text)
        }
        let geom = try definition.make(name: name, consumers: consumers, settings: settings,
                                       relativeTo: configuration.directory, in: topology)
        topology.claim(names)
        // Over a volume attached for this run, it would name a missing provider at the
        // next start: it lasts as long as what it stands on.
        if topology.withLock({ geom.standsOnGeomForThisRunOnly }) != nil { return geom }
        let entry = EntrySpec(name: name, className: className, consumers: names,
                              parameters: Dictionary(uniqueKeysWithValues: settings.map {
                                  ($0.key, ConfigValue(text: $0.text, file: statePath, line: nil, key: $0.key))
                              }), path: definition.shape == .disk ? "disks" : "geoms")
        do {
            try record { changes in
                changes.removed.removeAll { $0 == name }
                if definition.shape == .disk { changes.disks.append(entry) } else { changes.geoms.append(entry) }
            }
        } catch {
            topology.wither(geom)
            topology.waitUntilGone(geom)
            throw error
        }
        return geom
    }

    /// Destroys a geom or disk by its entry name (`strata geom destroy`): refused (EBUSY)
    /// while anything has one of its providers open or stacked on it, or an export serves
    /// it, unless `force`.
    public func destroyGeom(named name: String, force: Bool) throws {
        guard let geom = topology.geom(named: name) ?? registeredClasses.lazy.compactMap({ self.topology.geom(named: $0.geomName(forEntry: name)) }).first,
              let definition = ClassRegistry.of(geom) else {
            throw StrataError(.noDevice, "no geom named \(name)")
        }
        if !force {
            let exported = Set(server.exports.map(\.provider))
            for provider in geom.providers {
                let counts = provider.accessCounts
                if counts.read + counts.write + counts.exclusive > 0 {
                    throw StrataError(.busy, "\(provider.name) is open; --force destroys it anyway")
                }
                if let user = topology.userStacked(on: provider) {
                    throw StrataError(.busy, "\(user.name) is stacked on \(provider.name); destroy it first, or --force")
                }
                if exported.contains(provider.name) {
                    throw StrataError(.busy, "an export serves \(provider.name); remove it first, or --force")
                }
            }
        }
        let entryName = definition.entryName(of: geom)
        let consumed = definition.consumers(of: geom)
        // One made for this run only was never recorded, and a start never makes it.
        if topology.withLock({ geom.standsOnGeomForThisRunOnly }) == nil {
            try record { changes in
                let added = changes.disks.contains { $0.name == entryName } || changes.geoms.contains { $0.name == entryName }
                changes.disks.removeAll { $0.name == entryName }
                changes.geoms.removeAll { $0.name == entryName }
                if !added { changes.removed.append(entryName) }
            }
        }
        topology.wither(geom, error: .noDevice)
        topology.waitUntilGone(geom)
        unclaimUnused(consumed)
    }

    /// Serves one more export (`strata export add`).
    /// Reads the TLS credential files of the topology file again (`strata tls reload`).
    /// - Returns: what the credentials now are.
    /// - Throws: `NBDTLSError` naming a file that would not do (the old credentials stay),
    ///   `StrataError` when the server serves no TLS.
    public func reloadTLS() throws -> String {
        try server.reloadTLS(configuration.tls)
    }

    /// - Returns: the geom made for this run only that the export's provider stands on, if
    ///   any: the export is then not recorded, and lasts as long as that geom.
    @discardableResult
    public func addExport(_ spec: ExportSpec) throws -> Geom? {
        if let problem = EntryName.problem(spec.name) { throw SettingError(key: "name", value: spec.name, problem: problem) }
        if spec.isDefault, let other = server.exports.first(where: \.isDefault) {
            throw StrataError(.exists, "\(other.name) is the default export already")
        }
        try server.add(try spec.export(in: topology))
        topology.claim([spec.provider])
        if let forThisRun = geomForThisRunOnly(under: spec.provider) { return forThisRun }
        do {
            try record { changes in
                changes.removedExports.removeAll { $0 == spec.name }
                changes.exports.append(spec)
            }
        } catch {
            try? server.remove(exportNamed: spec.name, force: true)
            throw error
        }
        return nil
    }

    /// The geom made for this run only that provider `name` stands on, if any.
    private func geomForThisRunOnly(under name: String) -> Geom? {
        guard let provider = topology.provider(named: name) else { return nil }
        return topology.withLock { provider.geom.standsOnGeomForThisRunOnly }
    }

    /// Stops serving an export (`strata export remove`): refused while clients have it
    /// open, unless `force`.
    public func removeExport(named name: String, force: Bool) throws {
        guard let export = server.exports.first(where: { $0.name == name }) else {
            throw StrataError(.noDevice, "no export named \(name)")
        }
        if geomForThisRunOnly(under: export.provider) != nil {
            try server.remove(exportNamed: name, force: force)
            unclaimUnused([export.provider])
            return
        }
        let before = changes.withLock { $0 }
        try record { changes in
            let added = changes.exports.contains { $0.name == name }
            changes.exports.removeAll { $0.name == name }
            if !added { changes.removedExports.append(name) }
        }
        do {
            try server.remove(exportNamed: name, force: force)
        } catch {
            try? record { $0 = before }
            throw error
        }
        unclaimUnused([export.provider])
    }

    /// Gives providers back to tasting, and to verbs that remove providers (`thin
    /// delete`), once no export serves them and no geom consumes them.
    private func unclaimUnused(_ providers: [String]) {
        let used = topology.withLock { Set(topology.geoms.flatMap { $0.consumers.compactMap { $0.provider?.name } }) }
            .union(server.exports.map(\.provider))
        topology.unclaim(providers.filter { !used.contains($0) })
    }

    /// Applies `change` to the recorded changes and writes the state file; on failure
    /// the record is as it was.
    private func record(_ change: (inout TopologyChanges) -> Void) throws {
        try changes.withLock { changes in
            var next = changes
            change(&next)
            try next.write(to: statePath, about: configuration.file)
            changes = next
        }
    }

    /// The running topology as a topology file that reproduces it: the server's keys,
    /// every disk and geom of a registered class with the settings it runs with (in
    /// the order they can be made), and the exports.
    public func dump() -> String {
        topology.withLock {
            let limits = configuration.limits
            let flow = { (pairs: [(Node, Node)]) in Node.mapping(Node.Mapping(pairs, .implicit, .flow)) }
            var header: [(Node, Node)] = [
                ("listen", .sequence(Node.Sequence(configuration.listen.map { Node($0.description) }, .implicit, .flow))),
                ("control", Node(configuration.control)),
                ("data-directory", Node(configuration.dataDirectory)),
                ("busy-poll-us", Node("\(configuration.busyPoll.wholeNanoseconds / 1000)")),
                ("coalesce-us", Node("\(configuration.coalescing.wholeNanoseconds / 1000)")),
                ("limits", flow([("requests", Node("\(limits.requests)")),
                                 ("connection-bytes", Node(formatByteSize(Int64(limits.bytes)))),
                                 ("server-bytes", Node(formatByteSize(Int64(limits.serverBytes)))),
                                 ("max-request", Node(formatByteSize(Int64(limits.maximumRequest))))])),
            ]
            if let group = configuration.controlGroup { header.insert(("control-group", Node(group.name)), at: 2) }
            // The files' paths only: what they hold stays in them.
            let tls = configuration.tls
            if tls.mode != .off || tls.certificates != nil || tls.pskFile != nil {
                header.append(("tls", Node(server.tlsMode.rawValue)))
                if let directory = tls.certificates { header.append(("tls-certificates", Node(directory))) }
                if tls.verifyPeer { header.append(("tls-verify-peer", "true")) }
                if let file = tls.pskFile { header.append(("tls-psk-file", Node(file))) }
            }
            if !configuration.writableDirectories.isEmpty {
                header.append(("writable-directories", .sequence(Node.Sequence(configuration.writableDirectories.map { Node($0) }, .implicit, .flow))))
            }
            let withdrawn = configuration.withdrawn + self.changes.withLock(\.removed).filter { !configuration.withdrawn.contains($0) }
            if !withdrawn.isEmpty { header.append(("withdrawn", .sequence(Node.Sequence(withdrawn.map { Node($0) }, .implicit, .flow)))) }
            let text = "# The running topology of strata serve (\(configuration.file)).\n"
                + ((try? Yams.serialize(node: .mapping(Node.Mapping(header)), width: -1)) ?? "")
            let geoms = topology.geoms.filter { !$0.isWithering && !$0.providers.isEmpty }
            let entries = geoms.compactMap { geom -> (Int, EntrySpec)? in
                guard let definition = ClassRegistry.of(geom), let settings = definition.writtenSettings(of: geom) else { return nil }
                let name = definition.entryName(of: geom)
                let entry = EntrySpec(name: name, className: definition.name,
                                      consumers: definition.shape == .disk ? [] : definition.consumers(of: geom),
                                      parameters: Dictionary(uniqueKeysWithValues: settings.map {
                                          ($0.key, ConfigValue(text: $0.text, file: "", line: nil, key: $0.key))
                                      }), path: "")
                return (geom.rank, entry)
            }
            let disks = entries.filter { ClassRegistry.named($0.1.className)?.shape == .disk }.map(\.1)
            let transforms = entries.filter { ClassRegistry.named($0.1.className)?.shape != .disk }
                .enumerated().sorted { ($0.element.0, $0.offset) < ($1.element.0, $1.offset) }.map(\.element.1)
            var changes = TopologyChanges()
            changes.disks = disks
            changes.geoms = transforms
            changes.exports = server.exports.map {
                ExportSpec(name: $0.name, provider: $0.provider, readOnly: $0.readOnly ? true : nil, description: $0.description,
                           isDefault: $0.isDefault, tlsAllow: $0.tlsAllow)
            }
            return text + changes.entriesYAML
        }
    }
}

