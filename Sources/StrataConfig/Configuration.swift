import Strata
import StrataNBD

/// A topology file, checked: what to build, what to export, where to listen.
public struct Configuration: Sendable, Equatable {
    public var file: String
    /// Where the server listens (default `tcp://127.0.0.1:10809`).
    public var listen: [ListenURL]
    /// The control socket's path, absolute.
    public var control: String
    /// The group besides root and the server's own user that may use the control
    /// socket (`control-group`), by name and id; nil lets no group in.
    public var controlGroup: ControlGroup?
    /// Directories, absolute, beneath which the control socket may have the server
    /// write besides the data directory (`writable-directories`).
    public var writableDirectories: [String] = []
    /// Where the server keeps what it writes of its own (`data-directory`; by default
    /// `strata-data` beside the file): the state file of changes made at run time.
    public var dataDirectory: String
    /// The folder relative paths in the file are taken from.
    public var directory: String
    public var disks: [EntrySpec]
    public var geoms: [EntrySpec]
    /// Geoms, by entry name, that tasting may not make from the metadata it finds
    /// (`withdrawn:`, and the entries destroyed at run time, `TopologyChanges.removed`).
    public var withdrawn: [String] = []
    public var exports: [ExportSpec]
    /// What the NBD server takes in before it stops reading (backpressure and memory).
    public var limits: NBDServer.Limits
    /// How long an NBD event loop serving one connection polls for the client's next
    /// request before it sleeps (`busy-poll-us`; 0 turns polling off).
    public var busyPoll: Duration = Configuration.defaultBusyPoll
    /// How long an NBD event loop serving one connection naps after a read of several
    /// requests, when its client comes as fast with the naps (`coalesce-us`; 0, the
    /// default, never naps).
    public var coalescing: Duration = .zero
    /// How long a stop waits for clients to finish and requests in flight to complete
    /// (`shutdown-grace`, seconds); what is still in flight then is logged and left.
    public var shutdownGrace: Duration = Configuration.defaultShutdownGrace
    /// TLS on the NBD listeners (`tls`, `tls-certificates`, `tls-verify-peer`,
    /// `tls-psk-file`), paths absolute; the files are read when the server starts.
    public var tls = NBDTLSSettings()

    /// Where a path given through the control socket may lie: the data directory, then
    /// `writable-directories`.
    public var controlWritableDirectories: [String] { [dataDirectory] + writableDirectories }

    public static let defaultListen = [ListenURL.tcp(host: "127.0.0.1", port: 10809)]
    /// On by default: at queue depth 1 on a virtual machine, waking a sleeping event loop
    /// is most of a request's time (`BusyPoller`), and the window closes by itself when
    /// the client is not that quick.
    public static let defaultBusyPoll = Duration.microseconds(50)
    public static let defaultShutdownGrace = Duration.seconds(10)
}

/// A group of the system, by name and id.
public struct ControlGroup: Sendable, Equatable {
    public var name: String
    public var id: UInt32

    public init(name: String, id: UInt32) {
        self.name = name
        self.id = id
    }
}

/// A place to listen: `tcp://HOST:PORT` or `unix:///absolute/path`.
public enum ListenURL: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// Parses a listen URL; nil if it is neither form.
    public init?(_ text: String) {
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/"), path.count > 1 else { return nil }
            self = .unix(path: path)
        } else if text.hasPrefix("tcp://") {
            let rest = text.dropFirst("tcp://".count)
            let host: Substring
            let portText: Substring
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else { return nil }
                host = rest[rest.index(after: rest.startIndex)..<close]
                portText = rest[rest.index(close, offsetBy: 2)...]
            } else {
                guard let colon = rest.lastIndex(of: ":") else { return nil }
                host = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
            }
            guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else { return nil }
            self = .tcp(host: String(host), port: port)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .unix(let path): "unix://\(path)"
        }
    }

    /// Whether a TCP address is on the loopback interface only.
    public var isLoopback: Bool {
        switch self {
        case .unix: true
        case .tcp(let host, _): host == "localhost" || host == "::1" || host.hasPrefix("127.")
        }
    }
}

/// An entry of `disks:` or `geoms:`: its name, its class, what it consumes, and the
/// class's own keys as written, which the class checks (`ClassDefinition`).
public struct EntrySpec: Sendable, Equatable {
    public var name: String
    /// The class: a disk's is the key that gives its main value (`file`, `memory`, …).
    public var className: String
    /// The providers it consumes, for a transform.
    public var consumers: [String]
    /// The class's keys (for a disk, its main value among them).
    public var parameters: [String: ConfigValue]
    public var line: Int?
    /// Where it is in the file, as errors name it: `disks[1]`, `geoms[0]`.
    public var path: String

    public init(name: String, className: String, consumers: [String] = [], parameters: [String: ConfigValue] = [:],
                line: Int? = nil, path: String) {
        self.name = name
        self.className = className
        self.consumers = consumers
        self.parameters = parameters
        self.line = line
        self.path = path
    }

    /// The class's keys as (key, text) pairs, in a fixed order.
    public var settings: [(key: String, text: String)] {
        parameters.sorted { $0.key < $1.key }.map { ($0.key, $0.value.text) }
    }

    /// An error of the class's (`SettingError`) at the key it names, or at the entry.
    public func error(_ error: SettingError, in file: String) -> ConfigError {
        if let value = parameters[error.key] {
            return ConfigError(file: file, line: value.line, key: value.key, value: value.text, problem: error.problem)
        }
        return ConfigError(file: file, line: line, key: "\(path).\(error.key)", value: error.value ?? name, problem: error.problem)
    }

    /// Any other error of making it, at the entry.
    public func error(_ error: any Error, in file: String) -> ConfigError {
        if let error = error as? SettingError { return self.error(error, in: file) }
        if let error = error as? ConfigError { return error }
        let problem = (error as? StrataError)?.message ?? "\(error)"
        return ConfigError(file: file, line: line, key: path, value: name, problem: problem)
    }
}

/// One class parameter as written, with where it was written, so the class's own
/// checks can name the file, line, key and value.
public struct ConfigValue: Sendable, Equatable {
    public var text: String
    public var file: String
    public var line: Int?
    public var key: String

    /// An error about this value.
    public func error(_ problem: String) -> ConfigError {
        ConfigError(file: file, line: line, key: key, value: text, problem: problem)
    }

    public func integer(in range: ClosedRange<Int>) throws -> Int {
        guard let value = Int(text), range.contains(value) else {
            throw error("must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    public func size() throws -> Int64 {
        guard let value = parseByteSize(text) else { throw error("must be \(sizeForms)") }
        return value
    }

    public func boolean() throws -> Bool {
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error("must be true or false")
        }
    }
}

/// A provider served over NBD.
public struct ExportSpec: Sendable, Equatable {
    public var name: String
    public var provider: String
    /// As written; nil: read-only if the provider is (`export(in:)`).
    public var readOnly: Bool?
    public var description: String?
    public var isDefault: Bool
    /// The names TLS must prove to open it (`tls-allow`); empty: anyone.
    public var tlsAllow: [String]
    public var line: Int?

    public init(name: String, provider: String, readOnly: Bool? = nil, description: String? = nil,
                isDefault: Bool = false, tlsAllow: [String] = [], line: Int? = nil) {
        self.name = name
        self.provider = provider
        self.readOnly = readOnly
        self.description = description
        self.isDefault = isDefault
        self.tlsAllow = tlsAllow
        self.line = line
    }
}

extension ExportSpec {
    /// The export to serve from `topology`: read-only as written, or, where the entry
    /// does not say, as the provider is (a provider that cannot be opened for writing
    /// would refuse a writable export's every client).
    /// - Throws: `StrataError` when the provider does not exist, or is read-only and the
    ///   entry asks for a writable export.
    public func export(in topology: Topology) throws -> NBDExport {
        guard let found = topology.provider(named: provider) else {
            throw StrataError(.noDevice, "export \(name): no provider named \(provider)")
        }
        let providerIsReadOnly = topology.isReadOnly(found)
        if readOnly == false && providerIsReadOnly {
            throw StrataError(.readOnly, "export \(name): provider \(provider) is read-only, so the export cannot be writable; leave read-only out or set it to true")
        }
        return NBDExport(name: name, provider: provider, readOnly: readOnly ?? providerIsReadOnly, description: description,
                         isDefault: isDefault, tlsAllow: tlsAllow)
    }
}
