import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import StrataNBDProtocol
import SwiftASN1

/// Whether clients may, or must, start TLS (`NBD_OPT_STARTTLS`) before anything else.
public enum NBDTLSMode: String, Sendable, CaseIterable {
    /// STARTTLS is refused as unsupported.
    case off
    /// Plain and TLS clients are both served; an export with an allow-list only over TLS.
    case allow
    /// Every option but STARTTLS and ABORT is refused with `NBD_REP_ERR_TLS_REQD` until
    /// TLS is up, and no export is listed before.
    case require
}

/// Where the server's TLS credentials come from: read at start and on reload.
public struct NBDTLSSettings: Sendable, Equatable {
    public var mode: NBDTLSMode
    /// A directory with `ca-cert.pem`, `server-cert.pem` and `server-key.pem`, as qemu
    /// and nbdkit lay it out.
    public var certificates: String?
    /// Whether a client must present a certificate that `ca-cert.pem` signed.
    public var verifyPeer: Bool
    /// A file of `identity:hexkey` lines, as `psktool` writes it.
    public var pskFile: String?

    public init(mode: NBDTLSMode = .off, certificates: String? = nil, verifyPeer: Bool = false, pskFile: String? = nil) {
        self.mode = mode
        self.certificates = certificates
        self.verifyPeer = verifyPeer
        self.pskFile = pskFile
    }
}

/// A credential file that could not be used: the file, and why.
public struct NBDTLSError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let problem: String
    public var description: String { "\(file): \(problem)" }
}

/// The server's TLS credentials, loaded from files, from which each connection that
/// starts TLS gets its handler.
public final class NBDTLSCredentials: Sendable {
    enum Kind: Sendable {
        /// One context for every connection: its certificate, and the CA that client
        /// certificates are checked against.
        case certificates(NIOSSLContext, verifiesPeer: Bool)
        /// Keys by identity. Each connection gets a context of its own, whose key
        /// callback records which identity the client used (BoringSSL tells it no other way).
        case preSharedKeys([String: [UInt8]])
    }

    let kind: Kind
    public let mode: NBDTLSMode
    /// What the credentials are, for the log line at start and reload (never a key).
    public let summary: String
    /// The secret files (the private key, the pre-shared keys) that every user of the
    /// machine may read, each said as a warning at start and reload, as ssh says of an
    /// unprotected key: anyone who reads one can pose as the server, or as its clients.
    public let exposedSecrets: [String]

    private init(kind: Kind, mode: NBDTLSMode, summary: String, secrets: [String]) {
        self.kind = kind
        self.mode = mode
        self.summary = summary
        exposedSecrets = secrets.compactMap { file in
            var status = stat()
            guard stat(file, &status) == 0, status.st_mode & S_IROTH != 0 else { return nil }
            return "\(file) is readable by every user (mode \(String(status.st_mode & 0o7777, radix: 8))); "
                + "only the server's user needs to read it (chmod o-r \(file))"
        }
    }

    /// Reads the files `settings` names.
    /// - Throws: `NBDTLSError` naming the file that is missing, unreadable or malformed.
    public static func load(_ settings: NBDTLSSettings) throws -> NBDTLSCredentials {
        if let file = settings.pskFile {
            let keys = try presharedKeys(in: file)
            return NBDTLSCredentials(kind: .preSharedKeys(keys), mode: settings.mode,
                                     summary: "pre-shared keys from \(file) (\(keys.count) identit\(keys.count == 1 ? "y" : "ies"))",
                                     secrets: [file])
        }
        guard let directory = settings.certificates else {
            throw NBDTLSError(file: "(none)", problem: "TLS needs tls-certificates or tls-psk-file")
        }
        let certificatePath = directory + "/server-cert.pem"
        let keyPath = directory + "/server-key.pem"
        let caPath = directory + "/ca-cert.pem"
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw NBDTLSError(file: certificatePath, problem: "cannot be read as PEM certificates (\(error))")
        }
        guard !chain.isEmpty else { throw NBDTLSError(file: certificatePath, problem: "holds no certificate") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw NBDTLSError(file: keyPath, problem: "cannot be read as a PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                                     privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        if settings.verifyPeer {
            let authorities: [NIOSSLCertificate]
            do {
                authorities = try NIOSSLCertificate.fromPEMFile(caPath)
            } catch {
                throw NBDTLSError(file: caPath, problem: "cannot be read as PEM certificates (\(error))")
            }
            guard !authorities.isEmpty else { throw NBDTLSError(file: caPath, problem: "holds no certificate") }
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(authorities)
            configuration.sendCANameList = true
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw NBDTLSError(file: certificatePath, problem: "and \(keyPath) do not make a TLS context (\(error)); is the key the certificate's?")
        }
        let subject = (try? chain[0].toDERBytes()).flatMap { try? CertificateSubject.distinguishedName(ofCertificate: $0) } ?? "?"
        return NBDTLSCredentials(kind: .certificates(context, verifiesPeer: settings.verifyPeer), mode: settings.mode,
                                 summary: "X.509 certificate \(subject) from \(directory)"
                                    + (settings.verifyPeer ? ", client certificates checked against ca-cert.pem" : ""),
                                 secrets: [keyPath])
    }

    /// The keys of a psktool file.
    static func presharedKeys(in file: String) throws -> [String: [UInt8]] {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw NBDTLSError(file: file, problem: "cannot be read")
        }
        do {
            return try PresharedKeyFile.keys(in: String(decoding: data, as: UTF8.self))
        } catch {
            throw NBDTLSError(file: file, problem: error.message)
        }
    }

    /// The suites a PSK handshake may use: BoringSSL takes external pre-shared keys in
    /// TLS 1.2 only, and GnuTLS clients (libnbd, qemu) offer these, ChaCha20-Poly1305
    /// first. All have an ephemeral key exchange: a key that leaks later does not open
    /// recorded sessions (the plain PSK suites would).
    static let presharedKeySuites = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA:ECDHE-PSK-AES128-CBC-SHA"

    /// A handler that starts TLS on one connection, and what it will know of the client
    /// once the handshake is done.
    func makeHandler() throws -> (NIOSSLServerHandler, NBDTLSPeer) {
        switch kind {
        case .certificates(let context, let verifiesPeer):
            let handler = try NIOSSLServerHandler(context: context)
            return (handler, NBDTLSPeer(verifiesCertificate: verifiesPeer))
        case .preSharedKeys(let keys):
            let peer = NBDTLSPeer(verifiesCertificate: false)
            var configuration = TLSConfiguration.makePreSharedKeyConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            configuration.maximumTLSVersion = .tlsv12
            configuration.cipherSuites = Self.presharedKeySuites
            configuration.pskServerProvider = { [peer] context in
                guard let key = keys[context.clientIdentity] else { throw NBDTLSError(file: "(client)", problem: "unknown identity") }
                peer.pskIdentity.withLockedValue { $0 = context.clientIdentity }
                var secure = NIOSSLSecureBytes()
                secure.append(key)
                return PSKServerIdentityResponse(key: secure)
            }
            return (try NIOSSLServerHandler(context: try NIOSSLContext(configuration: configuration)), peer)
        }
    }
}

/// What a connection's TLS handshake learned of the client.
final class NBDTLSPeer: Sendable {
    let verifiesCertificate: Bool
    /// The identity whose key the client used (PSK), set during the handshake.
    let pskIdentity = NIOLockedValueBox<String?>(nil)

    init(verifiesCertificate: Bool) {
        self.verifiesCertificate = verifiesCertificate
    }

    /// The name an export's `tls-allow` list is matched against: the PSK identity, or
    /// the distinguished name of a certificate the CA vouched for; nil when the client
    /// proved no name.
    func name(handler: NIOSSLServerHandler) -> String? {
        if let identity = pskIdentity.withLockedValue({ $0 }) { return identity }
        guard verifiesCertificate, let certificate = handler.peerCertificate,
              let der = try? certificate.toDERBytes() else { return nil }
        return try? CertificateSubject.distinguishedName(ofCertificate: der)
    }
}

/// The subject of an X.509 certificate as RFC 4514 writes a distinguished name, most
/// specific first: `CN=client.example.com,O=Example,C=GB`.
enum CertificateSubject {
    static let attributeNames = [
        "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
        "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID",
    ]

    static func distinguishedName(ofCertificate der: [UInt8]) throws -> String {
        let certificate = try DER.parse(der)
        guard case .constructed(let parts) = certificate.content, let toBeSigned = parts.first(where: { _ in true }),
              case .constructed(let fieldNodes) = toBeSigned.content else {
            throw ASN1Error.invalidASN1Object(reason: "not a certificate")
        }
        var fields = Array(fieldNodes)
        // version [0] EXPLICIT, if present; then serial, signature, issuer, validity, subject.
        if fields.first?.identifier.tagClass == .contextSpecific { fields.removeFirst() }
        guard fields.count > 4, case .constructed(let names) = fields[4].content else {
            throw ASN1Error.invalidASN1Object(reason: "no subject")
        }
        var relativeNames: [String] = []
        for name in names {
            guard case .constructed(let attributes) = name.content else { continue }
            var values: [String] = []
            for attribute in attributes {
                guard case .constructed(let pair) = attribute.content else { continue }
                var iterator = pair.makeIterator()
                guard let type = iterator.next(), let value = iterator.next(),
                      case .primitive(let bytes) = value.content else { continue }
                let oid = try ASN1ObjectIdentifier(derEncoded: type)
                let text: String
                if value.identifier.tagNumber == 30 {  // BMPString: UTF-16BE
                    let units = stride(from: bytes.startIndex, to: bytes.endIndex - 1, by: 2).map {
                        UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1])
                    }
                    text = String(decoding: units, as: UTF16.self)
                } else {
                    text = String(decoding: bytes, as: UTF8.self)
                }
                values.append("\(attributeNames[oid.description] ?? oid.description)=\(escaped(text))")
            }
            relativeNames.append(values.joined(separator: "+"))
        }
        return relativeNames.reversed().joined(separator: ",")
    }

    /// A value with RFC 4514's special characters escaped.
    static func escaped(_ value: String) -> String {
        var result = ""
        for (index, character) in value.enumerated() {
            let special = ",+\"\\<>;=".contains(character)
                || (index == 0 && (character == "#" || character == " "))
                || (index == value.count - 1 && character == " ")
            if special { result.append("\\") }
            result.append(character)
        }
        return result
    }
}
