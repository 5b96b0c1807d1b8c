import Foundation
import Strata
import Yams

/// What was changed at run time (`strata geom create|destroy`, `strata export add|remove`),
/// kept in the state file in the data directory and merged with the topology file at the
/// next start: entries added, and names taken away.
public struct TopologyChanges: Sendable, Equatable {
    public var disks: [EntrySpec] = []
    public var geoms: [EntrySpec] = []
    public var exports: [ExportSpec] = []
    /// Disks and geoms destroyed, by entry name.
    public var removed: [String] = []
    public var removedExports: [String] = []

    public init() {}

    public var isEmpty: Bool { self == TopologyChanges() }

    /// The state file of a configuration.
    public static func path(in configuration: Configuration) -> String {
        configuration.dataDirectory + "/state.yaml"
    }

    /// The changes kept for `configuration`, none if there is no state file.
    /// - Throws: `ConfigError` naming the state file, its line, key and value.
    public static func load(for configuration: Configuration) throws -> TopologyChanges {
        let path = Self.path(in: configuration)
        guard let data = FileManager.default.contents(atPath: path) else { return TopologyChanges() }
        return try ConfigurationLoader.changes(String(decoding: data, as: UTF8.self), file: path,
                                               baseDirectory: configuration.directory)
    }

    /// `configuration` with these changes: what was removed taken out, what was added
    /// put in.
    /// - Throws: `ConfigError` when an entry added at run time has a name the file now
    ///   gives something else.
    public func applied(to configuration: Configuration) throws -> Configuration {
        var merged = configuration
        let gone = Set(removed)
        merged.disks.removeAll { gone.contains($0.name) }
        merged.geoms.removeAll { gone.contains($0.name) }
        merged.exports.removeAll { removedExports.contains($0.name) }
        var names = Set(merged.disks.map(\.name) + merged.geoms.map(\.name))
        for entry in disks + geoms {
            guard names.insert(entry.name).inserted else {
                throw ConfigError(file: Self.path(in: configuration), line: entry.line, key: "\(entry.path).name",
                                  value: entry.name, problem: "was added at run time, but \(configuration.file) now has an entry of that name; remove one")
            }
        }
        for export in exports where merged.exports.contains(where: { $0.name == export.name }) {
            throw ConfigError(file: Self.path(in: configuration), line: export.line, key: "exports", value: export.name,
                              problem: "was added at run time, but \(configuration.file) now has an export of that name; remove one")
        }
        merged.disks += disks
        merged.geoms += geoms
        merged.exports += exports
        merged.withdrawn += removed.filter { !merged.withdrawn.contains($0) }
        return merged
    }

    /// Writes the state file atomically: a new file, synced, renamed over the old one,
    /// and the folder synced, so a crash leaves the old state or the new, never a torn one.
    /// No changes, no file.
    func write(to path: String, about file: String) throws {
        if isEmpty {
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            return
        }
        try writeAtomically("# Changes made at run time to \(file), merged with it at each start.\n" + entriesYAML, to: path)
    }

    /// The changes as YAML, an entry a line.
    var entriesYAML: String {
        var root: [(Node, Node)] = []
        if !disks.isEmpty { root.append(("disks", .sequence(.init(disks.map(\.node))))) }
        if !geoms.isEmpty { root.append(("geoms", .sequence(.init(geoms.map(\.node))))) }
        if !exports.isEmpty { root.append(("exports", .sequence(.init(exports.map(\.node))))) }
        if !removed.isEmpty { root.append(("removed", .sequence(.init(removed.map { Node($0) })))) }
        if !removedExports.isEmpty { root.append(("removed-exports", .sequence(.init(removedExports.map { Node($0) })))) }
        return root.isEmpty ? "" : ((try? Yams.serialize(node: .mapping(.init(root)), width: -1)) ?? "")
    }
}

/// Writes `text` to `path` so that a crash leaves either the old file or the new one.
func writeAtomically(_ text: String, to path: String) throws {
    let directory = (path as NSString).deletingLastPathComponent
    try ServerDirectory.prepare(directory, for: .state)
    let temporary = path + ".new"
    // Made afresh, never through a link: a leftover of a crash is removed first.
    unlink(temporary)
    let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard descriptor >= 0 else { throw StrataError(BioError(errno: errno), "create \(temporary)") }
    let bytes = Array(text.utf8)
    var written = 0
    while written < bytes.count {
        let count = bytes[written...].withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else {
            let error = BioError(errno: errno)
            close(descriptor)
            unlink(temporary)
            throw StrataError(error, "write \(temporary)")
        }
        written += count
    }
    guard fsync(descriptor) == 0 else {
        let error = BioError(errno: errno)
        close(descriptor)
        unlink(temporary)
        throw StrataError(error, "fsync \(temporary)")
    }
    close(descriptor)
    guard rename(temporary, path) == 0 else {
        let error = BioError(errno: errno)
        unlink(temporary)
        throw StrataError(error, "rename \(temporary) to \(path)")
    }
    let folder = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if folder >= 0 {
        fsync(folder)
        close(folder)
    }
}

extension EntrySpec {
    /// The entry as a topology file writes it.
    var node: Node {
        var pairs: [(Node, Node)] = [("name", Node(name))]
        let isDisk = ClassRegistry.named(className)?.shape == .disk
        if !isDisk {
            pairs.append(("class", Node(className)))
            pairs.append(("consumers", .sequence(Node.Sequence(consumers.map { Node($0) }, .implicit, .flow))))
        }
        for (key, text) in settings.sorted(by: { ($0.key == className ? "" : $0.key) < ($1.key == className ? "" : $1.key) }) {
            pairs.append((Node(key), Node(text)))
        }
        return .mapping(Node.Mapping(pairs, .implicit, .flow))
    }
}

extension ExportSpec {
    /// The export as a topology file writes it.
    var node: Node {
        var pairs: [(Node, Node)] = [("name", Node(name)), ("provider", Node(provider))]
        if readOnly == true { pairs.append(("read-only", "true")) }
        if let description { pairs.append(("description", Node(description))) }
        if isDefault { pairs.append(("default", "true")) }
        if !tlsAllow.isEmpty { pairs.append(("tls-allow", .sequence(Node.Sequence(tlsAllow.map { Node($0) }, .implicit, .flow)))) }
        return .mapping(Node.Mapping(pairs, .implicit, .flow))
    }
}
