import Foundation
import Strata
import StrataNBDClient
import StrataNBDProtocol

/// `remote: URI` under `disks:`: an NBD export elsewhere as a disk (docs: `remote.md`).
public enum RemoteDiskDefinition: ClassDefinition {
    public static let name = "remote"
    public static let summary = "An NBD export elsewhere (nbd://, nbds://, nbd+unix://), reconnected when lost."
    public static let geomClassName = "REMOTE"
    public static let shape = ClassShape.disk

    public struct Settings: ClassSettings {
        public var uri = ""
        public var connections = 1
        public var reconnectTimeout = 10
        public var requestTimeout = 30
        public var tlsCertificates: String?
        public var tlsPSKFile: String?
        public var tlsUsername: String?
        public var tlsVerifyPeer = true

        public init() {}

        public static let keys: [SettingKey<Settings>] = [
            SettingKey("remote", \.uri, .text, help: "nbd://HOST[:PORT]/EXPORT, nbds://… (TLS), nbd+unix:///EXPORT?socket=PATH or nbds+unix://…"),
            SettingKey("connections", \.connections, .integer(1...16),
                       help: "Connections to open if the server allows several (multi-conn); 1 by default."),
            SettingKey("reconnect-timeout", \.reconnectTimeout, .integer(0...3600),
                       help: "Seconds requests wait for a lost connection to come back before they fail with EIO (default 10)."),
            SettingKey("request-timeout", \.requestTimeout, .integer(1...3600),
                       help: "Seconds requests may go unanswered before the connection is taken for lost and made again (default 30); also the longest a connection attempt may take."),
            SettingKey("tls-certificates", \.tlsCertificates, .path,
                       help: "For nbds: a directory with ca-cert.pem, and client-cert.pem and client-key.pem if the server asks for a certificate."),
            SettingKey("tls-psk-file", \.tlsPSKFile, .path, help: "For nbds: a psktool file holding the key of tls-username."),
            SettingKey("tls-username", \.tlsUsername, .text, help: "The PSK identity (else the URI's user@)."),
            SettingKey("tls-verify-peer", \.tlsVerifyPeer, .boolean,
                       help: "Check the server's certificate against ca-cert.pem and the host's name (default true)."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        let settings = entry.settings
        guard let remote = RemoteURI(settings.uri) else {
            throw SettingError(key: "remote", value: settings.uri,
                               problem: "is not nbd://HOST[:PORT]/EXPORT, nbds://…, nbd+unix:///EXPORT?socket=PATH or nbds+unix://…")
        }
        var options = RemoteDisk.Options()
        options.connections = settings.connections
        options.reconnectTimeout = .seconds(settings.reconnectTimeout)
        options.requestTimeout = .seconds(settings.requestTimeout)
        options.verifyPeer = settings.tlsVerifyPeer
        if let directory = settings.tlsCertificates {
            options.tls = .certificates(directory: directory)
        } else if let file = settings.tlsPSKFile {
            guard let identity = settings.tlsUsername ?? remote.user else {
                throw SettingError(key: "tls-psk-file", value: file, problem: "needs tls-username, or a user in the URI (nbds://USER@HOST/…)")
            }
            options.tls = .presharedKey(file: file, identity: identity)
        }
        if remote.usesTLS && options.tls == nil {
            throw SettingError(key: "remote", value: settings.uri, problem: "asks for TLS: give tls-certificates or tls-psk-file")
        }
        if !remote.usesTLS && options.tls != nil {
            throw SettingError(key: "remote", value: settings.uri, problem: "is plain NBD while TLS credentials are given: use nbds:// or nbds+unix://")
        }
        do {
            return try RemoteDisk.create(in: topology, name: entry.name, remote: remote, options: options)
        } catch let error as StrataError {
            throw SettingError(key: "remote", value: settings.uri, problem: "cannot be opened: \(error.message)")
        }
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let disk = geom as? RemoteDisk else { return nil }
        var settings = Settings()
        settings.uri = disk.remote.text
        settings.connections = disk.options.connections
        settings.reconnectTimeout = Int(disk.options.reconnectTimeout.components.seconds)
        settings.requestTimeout = Int(disk.options.requestTimeout.components.seconds)
        settings.tlsVerifyPeer = disk.options.verifyPeer
        switch disk.options.tls {
        case .certificates(let directory)?: settings.tlsCertificates = directory
        case .presharedKey(let file, let identity)?:
            settings.tlsPSKFile = file
            if identity != disk.remote.user { settings.tlsUsername = identity }
        case nil: break
        }
        return settings
    }

    public static func status(of geom: Geom) -> GeomStatus? {
        guard let disk = geom as? RemoteDisk else { return nil }
        let status = disk.status
        return GeomStatus(name: disk.name, className: name, state: status.state, progress: 0,
                          components: [GeomStatus.Component(name: disk.remote.text, state: status.detail)])
    }
}

/// Where a remote disk's export is: `nbd://[USER@]HOST[:PORT]/EXPORT` (IPv6 in
/// brackets, port 10809 by default), `nbd+unix://[USER@]/EXPORT?socket=PATH`, and the
/// same with `nbds` for TLS.
public struct RemoteURI: Sendable, Equatable {
    public let text: String
    public let address: NBDListenAddress
    public let export: String
    public let usesTLS: Bool
    /// The PSK identity, if the URI names one.
    public let user: String?

    public init?(_ text: String) {
        guard let schemeEnd = text.range(of: "://") else { return nil }
        let scheme = text[..<schemeEnd.lowerBound]
        guard ["nbd", "nbds", "nbd+unix", "nbds+unix"].contains(scheme) else { return nil }
        usesTLS = scheme.hasPrefix("nbds")
        var rest = text[schemeEnd.upperBound...]
        var query: [String: String] = [:]
        if let mark = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: mark)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { return nil }
                query[String(parts[0])] = String(parts[1]).removingPercentEncoding
            }
            rest = rest[..<mark]
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = rest[..<slash]
        guard let export = String(rest[slash...].dropFirst()).removingPercentEncoding else { return nil }
        self.export = export
        if let at = authority.lastIndex(of: "@") {
            user = String(authority[..<at]).removingPercentEncoding
            authority = authority[authority.index(after: at)...]
        } else {
            user = nil
        }
        if scheme.hasSuffix("+unix") {
            guard authority.isEmpty, let socket = query["socket"], socket.hasPrefix("/"), query.count == 1 else { return nil }
            address = .unix(path: socket)
        } else {
            guard query.isEmpty, !authority.isEmpty else { return nil }
            var host = authority
            var port = 10809
            if authority.hasPrefix("[") {
                guard let close = authority.firstIndex(of: "]") else { return nil }
                host = authority[authority.index(after: authority.startIndex)..<close]
                let after = authority[authority.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":"), let number = Int(after.dropFirst()) else { return nil }
                    port = number
                }
            } else if let colon = authority.lastIndex(of: ":") {
                guard let number = Int(authority[authority.index(after: colon)...]) else { return nil }
                host = authority[..<colon]
                port = number
            }
            guard !host.isEmpty, (1...65535).contains(port) else { return nil }
            address = .tcp(host: String(host), port: port)
        }
        self.text = text
    }
}
