import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Strata
import StrataNBD
import Yams

/// Reads a topology file into a checked `Configuration`.
///
/// Every mistake is a `ConfigError` naming the file, the line, the key and the value,
/// and saying what is allowed: unknown keys (with the nearest known one), bad sizes,
/// names used twice. References between entries (a consumer or export naming a provider
/// that does not exist, cycles) are checked when the topology is built, because classes
/// such as partitions make providers of their own.
public struct ConfigurationLoader {
    let file: String
    let baseDirectory: String

    /// Loads the file at `path`; relative paths in it are taken from its folder.
    public static func load(path: String) throws -> Configuration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(file: path, line: nil, key: "(file)", value: nil, problem: "cannot be read")
        }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return try parse(String(decoding: data, as: UTF8.self), file: path, baseDirectory: directory)
    }

    /// Parses YAML text. `file` is only used in error messages.
    public static func parse(_ yaml: String, file: String, baseDirectory: String) throws -> Configuration {
        let loader = ConfigurationLoader(file: file, baseDirectory: baseDirectory)
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: yaml) else {
                return try loader.configuration(from: Node.mapping(Node.Mapping([])))
            }
            root = node
        } catch let error as YamlError {
            throw ConfigError(file: file, line: nil, key: "(file)", value: nil, problem: "is not valid YAML: \(error)")
        }
        return try loader.configuration(from: root)
    }

    static let topKeys = ["listen", "control", "control-group", "data-directory", "writable-directories", "limits", "busy-poll-us", "coalesce-us",
                          "shutdown-grace", "tls", "tls-certificates", "tls-verify-peer", "tls-psk-file", "disks", "geoms",
                          "exports", "withdrawn"]
    static let changeKeys = ["disks", "geoms", "exports", "removed", "removed-exports"]
    static let limitKeys = ["requests", "connection-bytes", "server-bytes", "max-request", "connections", "handshake-seconds"]
    static let geomKeys = ["name", "class", "consumers"]
    static let exportKeys = ["name", "provider", "read-only", "description", "default", "tls-allow"]

    private func configuration(from root: Node) throws -> Configuration {
        let top = try mapping(root, key: "(top level)")
        try checkKeys(top, allowed: Self.topKeys, path: "")

        var listen = Configuration.defaultListen
        if let node = top["listen"] {
            listen = try list(node, key: "listen").enumerated().map { index, item in
                let text = try scalar(item, key: "listen[\(index)]")
                guard let url = ListenURL(text) else {
                    throw error(item, "listen[\(index)]", text, "is not tcp://HOST:PORT or unix:///absolute/path")
                }
                return url
            }
        }
        var dataDirectory = absolute("strata-data")
        if let node = top["data-directory"] { dataDirectory = absolute(try scalar(node, key: "data-directory")) }
        var control = dataDirectory + "/control.sock"
        if let node = top["control"] { control = absolute(try scalar(node, key: "control")) }
        let controlGroup = try top["control-group"].map { try systemGroup($0, key: "control-group") }
        let writableDirectories = try list(top["writable-directories"], key: "writable-directories").enumerated().map { index, item in
            let text = try scalar(item, key: "writable-directories[\(index)]")
            guard !text.isEmpty else { throw error(item, "writable-directories[\(index)]", text, "must be a directory") }
            return absolutePath(text, relativeTo: baseDirectory)
        }

        let limits = try top["limits"].map { try self.limits($0) } ?? NBDServer.Limits()
        var shutdownGrace = Configuration.defaultShutdownGrace
        if let node = top["shutdown-grace"] {
            shutdownGrace = .seconds(try value(node, key: "shutdown-grace").integer(in: 1...3600))
        }
        var busyPoll = Configuration.defaultBusyPoll
        if let node = top["busy-poll-us"] {
            busyPoll = .microseconds(try value(node, key: "busy-poll-us").integer(in: 0...1000))
        }
        var coalescing = Duration.zero
        if let node = top["coalesce-us"] {
            coalescing = .microseconds(try value(node, key: "coalesce-us").integer(in: 0...1000))
        }

        let tls = try self.tls(top)

        var names: [String: String] = [:]
        func claim(_ name: String, _ node: Node, _ key: String, as kind: String) throws {
            if let earlier = names[name] {
                throw error(node, key, name, "is already the name of \(earlier)")
            }
            names[name] = kind
        }

        var disks: [EntrySpec] = []
        for (index, node) in try list(top["disks"], key: "disks").enumerated() {
            let disk = try self.disk(node, path: "disks[\(index)]")
            try claim(disk.name, node, "disks[\(index)].name", as: "a disk")
            disks.append(disk)
        }
        var geoms: [EntrySpec] = []
        for (index, node) in try list(top["geoms"], key: "geoms").enumerated() {
            let geom = try self.geom(node, path: "geoms[\(index)]")
            // A part entry is named after the disk it reads; its providers are NAMEp1, ...
            let namedAfterItsDisk = geom.className == "part" && geom.consumers == [geom.name]
            if !namedAfterItsDisk { try claim(geom.name, node, "geoms[\(index)].name", as: "a disk or geom") }
            geoms.append(geom)
        }
        var exports: [ExportSpec] = []
        for (index, node) in try list(top["exports"], key: "exports").enumerated() {
            let export = try self.export(node, path: "exports[\(index)]")
            if exports.contains(where: { $0.name == export.name }) {
                throw error(node, "exports[\(index)].name", export.name, "is already the name of an export")
            }
            exports.append(export)
        }
        let defaults = exports.filter(\.isDefault)
        if defaults.count > 1, let second = top["exports"]?.array()[exports.firstIndex { $0 == defaults[1] }!] {
            throw error(second, "exports.default", "true", "only one export can be the default (\(defaults[0].name) is)")
        }
        let withdrawn = try list(top["withdrawn"], key: "withdrawn").enumerated().map { try scalar($1, key: "withdrawn[\($0)]") }
        return Configuration(file: file, listen: listen, control: control, controlGroup: controlGroup,
                             writableDirectories: writableDirectories, dataDirectory: dataDirectory, directory: baseDirectory,
                             disks: disks, geoms: geoms, withdrawn: withdrawn, exports: exports,
                             limits: limits, busyPoll: busyPoll, coalescing: coalescing, shutdownGrace: shutdownGrace, tls: tls)
    }

    /// The TLS keys: a mode, and with TLS on, either a certificates directory or a PSK
    /// file (whose contents are read when the server starts).
    private func tls(_ top: OrderedFields) throws -> NBDTLSSettings {
        var settings = NBDTLSSettings()
        if let node = top["tls"] {
            let text = try scalar(node, key: "tls")
            guard let mode = NBDTLSMode(rawValue: text) else { throw error(node, "tls", text, "must be off, allow or require") }
            settings.mode = mode
        }
        settings.certificates = try top["tls-certificates"].map { absolutePath(try scalar($0, key: "tls-certificates"), relativeTo: baseDirectory) }
        settings.pskFile = try top["tls-psk-file"].map { absolutePath(try scalar($0, key: "tls-psk-file"), relativeTo: baseDirectory) }
        settings.verifyPeer = try top["tls-verify-peer"].map { try boolean($0, key: "tls-verify-peer") } ?? false
        if settings.certificates != nil, settings.pskFile != nil, let node = top["tls-psk-file"] {
            throw error(node, "tls-psk-file", settings.pskFile, "cannot be given with tls-certificates: a server uses one kind of credentials")
        }
        if settings.verifyPeer, settings.certificates == nil, let node = top["tls-verify-peer"] {
            throw error(node, "tls-verify-peer", "true", "needs tls-certificates (its ca-cert.pem checks the clients' certificates)")
        }
        if settings.mode != .off, settings.certificates == nil, settings.pskFile == nil, let node = top["tls"] {
            throw error(node, "tls", settings.mode.rawValue, "needs tls-certificates or tls-psk-file")
        }
        return settings
    }

    /// Reads a state file: the changes made at run time (`TopologyChanges`).
    public static func changes(_ yaml: String, file: String, baseDirectory: String) throws -> TopologyChanges {
        let loader = ConfigurationLoader(file: file, baseDirectory: baseDirectory)
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: yaml) else { return TopologyChanges() }
            root = node
        } catch let error as YamlError {
            throw ConfigError(file: file, line: nil, key: "(file)", value: nil, problem: "is not valid YAML: \(error)")
        }
        return try loader.changes(from: root)
    }

    private func changes(from root: Node) throws -> TopologyChanges {
        let top = try mapping(root, key: "(top level)")
        try checkKeys(top, allowed: Self.changeKeys, path: "")
        var changes = TopologyChanges()
        changes.disks = try list(top["disks"], key: "disks").enumerated().map { try disk($1, path: "disks[\($0)]") }
        changes.geoms = try list(top["geoms"], key: "geoms").enumerated().map { try geom($1, path: "geoms[\($0)]") }
        changes.exports = try list(top["exports"], key: "exports").enumerated().map { try export($1, path: "exports[\($0)]") }
        changes.removed = try list(top["removed"], key: "removed").enumerated().map { try scalar($1, key: "removed[\($0)]") }
        changes.removedExports = try list(top["removed-exports"], key: "removed-exports").enumerated().map {
            try scalar($1, key: "removed-exports[\($0)]")
        }
        return changes
    }

    private func limits(_ node: Node) throws -> NBDServer.Limits {
        let fields = try mapping(node, key: "limits")
        try checkKeys(fields, allowed: Self.limitKeys, path: "limits")
        var limits = NBDServer.Limits()
        if let requests = fields["requests"] {
            limits.requests = try value(requests, key: "limits.requests").integer(in: 1...65536)
        }
        if let connections = fields["connections"] {
            limits.connections = try value(connections, key: "limits.connections").integer(in: 1...1_000_000)
        }
        if let seconds = fields["handshake-seconds"] {
            limits.handshakeTimeout = .seconds(try value(seconds, key: "limits.handshake-seconds").integer(in: 1...3600))
        }
        if let field = fields["max-request"] {
            let bytes = try size(field, key: "limits.max-request")
            let allowed = NBDLimits.maximumRequestRange
            guard allowed.contains(Int(clamping: bytes)) else {
                throw error(field, "limits.max-request", try scalar(field, key: "limits.max-request"),
                            "must be from \(formatByteSize(Int64(allowed.lowerBound))) to \(formatByteSize(Int64(allowed.upperBound)))")
            }
            limits.maximumRequest = Int(bytes)
        }
        // The byte limits hold at least one request of the largest size: the budget is
        // what bounds memory, and a request is taken in whole or not at all.
        let smallest = Int64(limits.maximumRequest)
        for (key, keyPath) in [("connection-bytes", \NBDServer.Limits.bytes), ("server-bytes", \.serverBytes)] {
            guard let field = fields[key] else {
                guard limits[keyPath: keyPath] >= limits.maximumRequest else {
                    throw error(fields["max-request"]!, "limits.max-request", try scalar(fields["max-request"]!, key: "limits.max-request"),
                                "is over the default limits.\(key) (\(formatByteSize(Int64(limits[keyPath: keyPath])))); raise that too")
                }
                continue
            }
            let bytes = try size(field, key: "limits.\(key)")
            guard bytes >= smallest else {
                throw error(field, "limits.\(key)", try scalar(field, key: "limits.\(key)"),
                            "must be at least limits.max-request (\(formatByteSize(smallest)))")
            }
            limits[keyPath: keyPath] = Int(bytes)
        }
        return limits
    }

    /// A group of the system by its name, looked up once here: a group that does not
    /// exist is a mistake in the file, not a surprise at the first connection.
    private func systemGroup(_ node: Node, key: String) throws -> ControlGroup {
        let name = try scalar(node, key: key)
        var entry = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        let status = getgrnam_r(name, &entry, &buffer, buffer.count, &result)
        guard !name.isEmpty, status == 0, result != nil else {
            throw error(node, key, name, status == 0 || status == ENOENT ? "names no group of this system"
                        : "cannot be looked up: \(String(cString: strerror(status)))")
        }
        return ControlGroup(name: name, id: entry.gr_gid)
    }

    private func disk(_ node: Node, path: String) throws -> EntrySpec {
        let fields = try mapping(node, key: path)
        let name = try entryName(fields, path: path, in: node)
        let classes = ClassRegistry.disks.map { $0.name }
        let kinds = classes.filter { fields[$0] != nil }
        let choices = classes.dropLast().joined(separator: ", ") + " or " + classes.last!
        guard kinds.count == 1, let definition = ClassRegistry.named(kinds[0]) else {
            throw error(node, path, nil, kinds.isEmpty ? "needs one of \(choices)"
                        : "has \(kinds.joined(separator: " and ")); a disk is exactly one of \(choices)")
        }
        return try entry(fields, node: node, path: path, name: name, definition: definition, consumers: [])
    }

    private func geom(_ node: Node, path: String) throws -> EntrySpec {
        let fields = try mapping(node, key: path)
        let name = try entryName(fields, path: path, in: node)
        let className = try required(fields, "class", path: path, in: node)
        let known = ClassRegistry.transforms.map { $0.name }
        guard let definition = ClassRegistry.named(className), known.contains(className) else {
            var problem = "is not a known class (known: \(known.joined(separator: ", ")))"
            if let guess = nearestWord(className, among: known) { problem = "is not a known class; did you mean '\(guess)'?" }
            throw error(fields["class"]!, "\(path).class", className, problem)
        }
        var consumers: [String] = []
        if let list = fields["consumers"] {
            for (index, item) in try self.list(list, key: "\(path).consumers").enumerated() {
                let consumer = try scalar(item, key: "\(path).consumers[\(index)]")
                if let first = consumers.firstIndex(of: consumer) {
                    throw error(item, "\(path).consumers[\(index)]", consumer, Self.consumedTwice(first: first))
                }
                consumers.append(consumer)
            }
        }
        return try entry(fields, node: node, path: path, name: name, definition: definition, consumers: consumers)
    }

    /// Why a geom may not name a provider twice among its consumers: its two consumers
    /// would be one disk, which a stripe, a concat or a mirror would use as two (a
    /// stripe's neighbouring chunks on one offset, a mirror's two copies on one disk).
    static func consumedTwice(first: Int) -> String {
        "is consumers[\(first)] already; a geom consumes a provider once"
    }

    /// An entry whose class's keys are known and whose values that class allows.
    private func entry(_ fields: OrderedFields, node: Node, path: String, name: String,
                       definition: any ClassDefinition.Type, consumers: [String]) throws -> EntrySpec {
        let own = definition.shape == .disk ? ["name"] : Self.geomKeys
        let keys = own + definition.settingKeys.map(\.name)
        var parameters: [String: ConfigValue] = [:]
        for (key, node) in fields where !own.contains(key) {
            guard keys.contains(key) else {
                let what = definition.shape == .disk ? "\(definition.name) disks" : "class \(definition.name)"
                var problem = "is not a key of \(what) (known: \(keys.joined(separator: ", ")))"
                if let guess = nearestWord(key, among: keys) { problem = "is not a key of \(what); did you mean '\(guess)'?" }
                throw ConfigError(file: file, line: line(node), key: "\(path).\(key)", value: nil, problem: problem)
            }
            parameters[key] = try value(node, key: "\(path).\(key)")
        }
        let entry = EntrySpec(name: name, className: definition.name, consumers: consumers, parameters: parameters,
                              line: line(node), path: path)
        do {
            try definition.check(settings: entry.settings)
        } catch {
            throw entry.error(error, in: file)
        }
        return entry
    }

    private func export(_ node: Node, path: String) throws -> ExportSpec {
        let fields = try mapping(node, key: path)
        try checkKeys(fields, allowed: Self.exportKeys, path: path)
        let name = try entryName(fields, path: path, in: node)
        let provider = try required(fields, "provider", path: path, in: node)
        let readOnly = try fields["read-only"].map { try boolean($0, key: "\(path).read-only") }
        let isDefault = try fields["default"].map { try boolean($0, key: "\(path).default") } ?? false
        let description = try fields["description"].map { try scalar($0, key: "\(path).description") }
        let tlsAllow = try list(fields["tls-allow"], key: "\(path).tls-allow").enumerated().map { index, item in
            let text = try scalar(item, key: "\(path).tls-allow[\(index)]")
            guard !text.isEmpty else { throw error(item, "\(path).tls-allow[\(index)]", text, "must be a PSK identity or a distinguished name") }
            return text
        }
        return ExportSpec(name: name, provider: provider, readOnly: readOnly, description: description,
                          isDefault: isDefault, tlsAllow: tlsAllow, line: line(node))
    }

    // MARK: Node helpers

    private func line(_ node: Node) -> Int? { node.mark?.line }

    private func error(_ node: Node, _ key: String, _ value: String?, _ problem: String) -> ConfigError {
        ConfigError(file: file, line: line(node), key: key, value: value, problem: problem)
    }

    /// A mapping's entries by key, in order.
    private func mapping(_ node: Node, key: String) throws -> OrderedFields {
        guard case .mapping(let mapping) = node else {
            throw error(node, key, node.string, "must be a mapping of keys to values")
        }
        var fields = OrderedFields()
        for (keyNode, value) in mapping {
            guard let name = keyNode.string else { throw error(keyNode, key, nil, "keys must be plain words") }
            if fields[name] != nil { throw error(keyNode, key.isEmpty ? name : "\(key).\(name)", nil, "appears twice") }
            fields.append(name, value)
        }
        return fields
    }

    private func list(_ node: Node?, key: String) throws -> [Node] {
        guard let node else { return [] }
        if case .scalar(let scalar) = node, scalar.string.isEmpty || scalar.string == "~" { return [] }
        guard case .sequence(let sequence) = node else {
            throw error(node, key, node.string, "must be a list")
        }
        return Array(sequence)
    }

    private func scalar(_ node: Node, key: String) throws -> String {
        guard case .scalar(let scalar) = node else { throw error(node, key, nil, "must be a single value") }
        return scalar.string
    }

    /// The `name` of a disk, geom or export, by `EntryName`'s rule.
    private func entryName(_ fields: OrderedFields, path: String, in node: Node) throws -> String {
        let name = try required(fields, "name", path: path, in: node)
        if let problem = EntryName.problem(name) { throw error(fields["name"]!, "\(path).name", name, problem) }
        return name
    }

    private func required(_ fields: OrderedFields, _ name: String, path: String, in node: Node) throws -> String {
        guard let value = fields[name] else { throw error(node, "\(path).\(name)", nil, "is missing") }
        let text = try scalar(value, key: "\(path).\(name)")
        guard !text.isEmpty else { throw error(value, "\(path).\(name)", text, "must not be empty") }
        return text
    }

    /// A scalar as a `ConfigValue`, so it is parsed by the same rules as class parameters.
    private func value(_ node: Node, key: String) throws -> ConfigValue {
        ConfigValue(text: try scalar(node, key: key), file: file, line: line(node), key: key)
    }

    private func size(_ node: Node, key: String) throws -> Int64 {
        try value(node, key: key).size()
    }

    private func boolean(_ node: Node, key: String) throws -> Bool {
        try value(node, key: key).boolean()
    }

    private func checkKeys(_ fields: OrderedFields, allowed: [String], path: String) throws {
        for (key, value) in fields where !allowed.contains(key) {
            let full = path.isEmpty ? key : "\(path).\(key)"
            var problem = "is not a known key (known: \(allowed.joined(separator: ", ")))"
            if let guess = nearestWord(key, among: allowed) { problem = "is not a known key; did you mean '\(guess)'?" }
            throw ConfigError(file: file, line: line(value), key: full, value: nil, problem: problem)
        }
    }

    private func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: baseDirectory).appendingPathComponent(path).standardized.path
    }
}

/// A mapping's entries in the order written.
struct OrderedFields: Sequence {
    private var entries: [(String, Node)] = []

    mutating func append(_ key: String, _ value: Node) { entries.append((key, value)) }

    subscript(key: String) -> Node? { entries.first { $0.0 == key }?.1 }

    func makeIterator() -> IndexingIterator<[(String, Node)]> { entries.makeIterator() }
}
