import Foundation
import NIOCore
import NIOSSL
import StrataNBDProtocol

/// The credentials a client starts TLS with, read from the files libnbd and qemu use.
public struct NBDClientTLS: Sendable {
    public enum Credentials: Sendable, Equatable {
        /// A directory with `ca-cert.pem` (what the server's certificate must be signed
        /// by) and, if the server asks for one, `client-cert.pem` and `client-key.pem`.
        case certificates(directory: String)
        /// A psktool file (`identity:hexkey` lines), and the identity to use from it.
        case presharedKey(file: String, identity: String)
    }

    public var credentials: Credentials
    /// Whether the server's certificate must be signed by `ca-cert.pem` and name
    /// `hostname`. Off, any certificate is taken: encryption without knowing who answers.
    public var verifyPeer: Bool
    /// The name the server's certificate must carry (the host connected to, by default).
    public var hostname: String?

    public init(credentials: Credentials, verifyPeer: Bool = true, hostname: String? = nil) {
        self.credentials = credentials
        self.verifyPeer = verifyPeer
        self.hostname = hostname
    }

    /// A context made from the files; read each time, so that a renewed key is used by
    /// the next connection.
    /// - Throws: `NBDClientError.invalidRequest` naming the file that would not do.
    func makeContext() throws -> NIOSSLContext {
        var configuration: TLSConfiguration
        switch credentials {
        case .certificates(let directory):
            configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            if verifyPeer {
                let authority = directory + "/ca-cert.pem"
                guard FileManager.default.isReadableFile(atPath: authority) else {
                    throw NBDClientError.invalidRequest("\(authority) cannot be read")
                }
                configuration.trustRoots = .file(authority)
                configuration.certificateVerification = hostname == nil ? .noHostnameVerification : .fullVerification
            } else {
                configuration.certificateVerification = .none
            }
            let certificate = directory + "/client-cert.pem"
            let key = directory + "/client-key.pem"
            if FileManager.default.fileExists(atPath: certificate) {
                do {
                    configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                    configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
                } catch {
                    throw NBDClientError.invalidRequest("\(certificate) and \(key) cannot be read: \(error)")
                }
            }
        case .presharedKey(let file, let identity):
            guard let data = FileManager.default.contents(atPath: file) else {
                throw NBDClientError.invalidRequest("\(file) cannot be read")
            }
            let key: [UInt8]
            do {
                guard let found = try PresharedKeyFile.keys(in: String(decoding: data, as: UTF8.self))[identity] else {
                    throw NBDClientError.invalidRequest("\(file) has no key for identity \(identity)")
                }
                key = found
            } catch let problem as PresharedKeyFile.Problem {
                throw NBDClientError.invalidRequest("\(file): \(problem.message)")
            }
            configuration = TLSConfiguration.makePreSharedKeyConfiguration()
            // BoringSSL takes external pre-shared keys in TLS 1.2 only.
            configuration.minimumTLSVersion = .tlsv12
            configuration.maximumTLSVersion = .tlsv12
            configuration.cipherSuites = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA:ECDHE-PSK-AES128-CBC-SHA"
            configuration.pskClientProvider = { _ in
                var secure = NIOSSLSecureBytes()
                secure.append(key)
                return PSKClientIdentityResponse(key: secure, identity: identity)
            }
        }
        // Closing waits this long at most for the server's close_notify: a server that
        // stopped answering (a cut link) must not hold a reconnect for the 5 s default.
        configuration.shutdownTimeout = .seconds(1)
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw NBDClientError.invalidRequest("TLS credentials: \(error)")
        }
    }
}
