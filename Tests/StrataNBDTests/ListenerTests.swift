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
@Suite(.serialized, .timeLimit(.minutes(3)))
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

    @Test func aSocketAnotherServerServesOnIsRefusedAndKeepsServing() async throws {
        try await withDirectory { directory in
            let path = directory + "/nbd.sock"
            let first = try server()
            try await first.start(listeningOn: [.unix(path: path)])
            let second = try server()
            do {
                try await second.start(listeningOn: [.unix(path: path)])
                Issue.record("bound over a socket another server serves on")
            } catch let error as StrataError {
                #expect("\(error)".contains("another process is serving on \(path)"), "\(error)")
            }
            await second.stop()
            // The first server's socket is still there, and still its own.
            #expect(try await readsABlock(at: .unix(path: path)))
            await first.stop()
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test func aSocketPassedByAServiceManagerIsServedAndItsFileKept() async throws {
        try await withDirectory { directory in
            let path = directory + "/passed.sock"
            // What systemd does for socket activation: bind and listen, then hand it over.
            let passed = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            let bound = try SocketAddress(unixDomainSocketPath: path).withSockAddr { bind(passed, $0, socklen_t($1)) }
            #expect(bound == 0 && listen(passed, 16) == 0)
            let server = try server()
            let addresses = try await server.start(listeningOn: [], inherited: [passed])
            #expect(addresses == [.unix(path: path)])
            #expect(try await readsABlock(at: .unix(path: path)))
            await server.stop()
            #expect(FileManager.default.fileExists(atPath: path), "the manager's socket file is the manager's")
            // The server closed the descriptor it was given: nothing listens there now.
            await #expect(throws: (any Error).self) { _ = try await readsABlock(at: .unix(path: path)) }
        }
    }

    @Test func aPassedDescriptorThatIsNotAListeningSocketIsRefusedByNumber() async throws {
        var ends: [Int32] = [-1, -1]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        let unbound = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(unbound) }
        for (descriptor, problem) in [(ends[0], "is not a socket"), (unbound, "is not a listening stream socket")] {
            let server = try server()
            do {
                try await server.start(listeningOn: [], inherited: [descriptor])
                Issue.record("served descriptor \(descriptor)")
            } catch let error as StrataError {
                #expect("\(error)".contains("descriptor \(descriptor) passed by the service manager \(problem)"), "\(error)")
            }
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
