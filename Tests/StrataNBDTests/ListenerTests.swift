import Foundation
import Logging
import NIOCore
import Strata
import StrataDisks
import StrataNBD
import StrataNBDClient
import Testing

/// Where the server listens: the sockets it binds itself, what it refuses, and what it
/// leaves behind.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct ListenerTests {
    func server() throws -> NBDServer {
        let topology = Topology()
        _ = try MemoryDisk.create(in: topology, name: "md", size: 1 << 20)
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        return try NBDServer(topology: topology, exports: [NBDExport(name: "md", provider: "md")], logger: quiet, limits: .patient, threads: 1)
    }

    func withDirectory(_ body: (String) async throws -> Void) async throws {
        let directory = NSTemporaryDirectory() + "strata-listen-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await body(directory)
    }

    /// Reads one block through a new connection.
    func readsABlock(at address: NBDClient.Address) async throws -> Bool {
        let client = try await NBDClient.connect(to: address, configuration: .init(exportName: "md"))
        let block = try await client.read(offset: 0, length: 4096)
        await client.disconnect()
        return block.readableBytes == 4096
    }

    @Test func aStaleSocketFileIsReplacedAndRemovedOnStop() async throws {
        try await withDirectory { directory in
            let path = directory + "/nbd.sock"
            // A socket bound and closed without unlinking: what a killed server leaves.
            let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            let bound = try SocketAddress(unixDomainSocketPath: path).withSockAddr { bind(stale, $0, socklen_t($1)) }
            #expect(bound == 0)
            close(stale)
            #expect(FileManager.default.fileExists(atPath: path))

            let server = try server()
            try await server.start(listeningOn: [.unix(path: path)])
            #expect(try await readsABlock(at: .unix(path: path)))
            await server.stop()
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test func aFileThatIsNotASocketIsRefusedAndKept() async throws {
        try await withDirectory { directory in
            let path = directory + "/data.img"
            try Data("keep me".utf8).write(to: URL(fileURLWithPath: path))
            let server = try server()
            do {
                try await server.start(listeningOn: [.unix(path: path)])
                Issue.record("listening over a regular file")
            } catch let error as StrataError {
                #expect("\(error)".contains(path) && "\(error)".contains("not a socket"), "\(error)")
            }
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
            await server.stop()
        }
    }

    @Test func aTCPPortInUseIsAnErrorNamingTheAddressAndNothingStaysBound() async throws {
        try await withDirectory { directory in
            let first = try server()
            let bound = try await first.start(listeningOn: [.tcp(host: "127.0.0.1", port: 0)])
            let port = try #require(bound.first?.port)
            #expect(port > 0)
            let second = try server()
            let path = directory + "/second.sock"
            do {
                // The Unix socket binds first; the failure must take it down again.
                try await second.start(listeningOn: [.unix(path: path), .tcp(host: "127.0.0.1", port: port)])
                Issue.record("bound a port in use")
            } catch let error as StrataError {
                #expect("\(error)".contains("127.0.0.1:\(port)") && "\(error)".contains("bind"), "\(error)")
            }
            #expect(!FileManager.default.fileExists(atPath: path))
            #expect(try await readsABlock(at: .tcp(host: "127.0.0.1", port: port)))
            await second.stop()
            await first.stop()
        }
    }

    @Test func afterStopNoConnectionIsAccepted() async throws {
        let server = try server()
        let bound = try await server.start(listeningOn: [.tcp(host: "127.0.0.1", port: 0)])
        let port = try #require(bound.first?.port)
        #expect(try await readsABlock(at: .tcp(host: "127.0.0.1", port: port)))
        await server.stop()
        await #expect(throws: (any Error).self) {
            _ = try await NBDClient.connect(to: .tcp(host: "127.0.0.1", port: port), configuration: .init(exportName: "md"))
        }
    }
}
