import StrataDisks
import StrataNBD

/// A topology file, checked: what to build, what to export, where to listen.
public struct Configuration: Sendable, Equatable {
    public var file: String
    /// Where the server listens (default `tcp://127.0.0.1:10809`).
    public var listen: [ListenURL]
    /// The control socket's path, absolute.
    public var control: String
    public var disks: [DiskSpec]
    public var geoms: [GeomSpec]
    public var exports: [ExportSpec]
    /// What the NBD server takes in before it stops reading (backpressure and memory).
    public var limits: NBDServer.Limits
    /// How long an NBD event loop serving one connection polls for the client's next
    /// request before it sleeps (`busy-poll-us`; 0 turns polling off).
    public var busyPoll: Duration = Configuration.defaultBusyPoll

    public static let defaultListen = [ListenURL.tcp(host: "127.0.0.1", port: 10809)]
    /// On by default: at queue depth 1 on a virtual machine, waking a sleeping event loop
    /// is most of a request's time (`BusyPoller`), and the window closes by itself when
    /// the client is not that quick.
    public static let defaultBusyPoll = Duration.microseconds(50)
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

/// A bottom provider.
public struct DiskSpec: Sendable, Equatable {
    public enum Backing: Sendable, Equatable {
        /// A file or block device (path made absolute); the size creates it if missing;
        /// the engine does its reads, writes and flushes.
        case file(path: String, size: Int64?, engine: FileDisk.Engine = .automatic)
        case memory(size: Int64)
        case null(size: Int64)
        case zero(size: Int64)
        /// A memory disk that logs every change for crash tests; all the power-cut
        /// disks of one file record into one log.
        case powercut(size: Int64)
    }

    public var name: String
    public var backing: Backing
    public var sectorSize: Int
    public var line: Int?
}

/// A geom of a transform class, with the class's own keys left for the class to check.
public struct GeomSpec: Sendable, Equatable {
    public var name: String
    public var className: String
    public var consumers: [String]
    public var parameters: [String: ConfigValue]
    public var line: Int?
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
        guard let value = parseSize(text) else { throw error("must be \(sizeForms)") }
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
    public var readOnly: Bool
    public var description: String?
    public var isDefault: Bool
    public var line: Int?

    public init(name: String, provider: String, readOnly: Bool = false, description: String? = nil,
                isDefault: Bool = false, line: Int? = nil) {
        self.name = name
        self.provider = provider
        self.readOnly = readOnly
        self.description = description
        self.isDefault = isDefault
        self.line = line
    }
}
