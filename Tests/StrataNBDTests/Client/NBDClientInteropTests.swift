import Foundation
import NIOCore
import StrataNBDClient
import StrataNBDProtocol
import Testing

/// The client against servers it did not grow up with: `nbdkit memory` and `qemu-nbd`
/// on a sparse raw file. Neither (nbdkit 1.32, qemu 7.2) has extended headers, so the
/// client must fall back to structured replies; qemu-nbd also answers sparse reads
/// with several chunks, holes among them.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct NBDClientInteropTests {
    enum Server: String, CaseIterable, CustomTestStringConvertible {
        case nbdkit
        case qemuNBD = "qemu-nbd"

        var testDescription: String { rawValue }

        var isInstalled: Bool { installed(rawValue) }

        func start() throws -> ClientTestDaemon {
            switch self {
            case .nbdkit:
                return try ClientTestDaemon("/usr/bin/nbdkit") { socket, _ in
                    ["--foreground", "--exit-with-parent", "--verbose", "-U", socket, "memory", "64M"]
                }
            case .qemuNBD:
                return try ClientTestDaemon("/usr/bin/qemu-nbd") { socket, directory in
                    let image = directory + "/disk.raw"
                    let created = try run("/usr/bin/qemu-img", ["create", "-f", "raw", image, "64M"], seconds: 30)
                    guard created.status == 0 else { throw ClientTestDaemon.DaemonFailed(message: "qemu-img: \(created)") }
                    // discard=unmap: TRIM punches holes, so trimmed ranges read as zeros.
                    return ["--persistent", "--shared=4", "--format=raw", "--discard=unmap", "--socket=\(socket)", image]
                }
            }
        }
    }

    static let size: UInt64 = 64 << 20

    /// Starts the server, connects with the default configuration (extended headers
    /// asked for), runs `body`, disconnects and kills the server, whatever happens.
    /// The client's side runs on a thread of its own: qemu-nbd times the handshake.
    func withClient(_ server: Server, _ body: (NBDClient) async throws -> Void) async throws {
        try #require(server.isInstalled, "\(server.rawValue) is not installed")
        let daemon = try server.start()
        do {
            try await daemon.waitForSocket()
            try await withTaskExecutorPreference(DedicatedTaskExecutor.shared) {
                let client = try await NBDClient.connect(to: .unix(path: daemon.socket))
                try await body(client)
                await client.disconnect()
            }
        } catch {
            Issue.record("\(server.rawValue) said:\n\(daemon.log)")
            daemon.stop()
            throw error
        }
        daemon.stop()
    }

    @Test(arguments: Server.allCases)
    func handshakeFallsBackToStructuredReplies(server: Server) async throws {
        try await withClient(server) { client in
            #expect(client.exportSize == Self.size)
            #expect(!client.extendedHeaders)
            #expect(client.structuredReplies)
            #expect(client.metaContextID != nil)
            #expect(client.transmissionFlags.isSuperset(of: [.hasFlags, .sendFlush, .sendTrim, .sendWriteZeroes]))
            #expect(!client.transmissionFlags.contains(.readOnly))
        }
    }

    @Test(arguments: Server.allCases)
    func listNamesTheExport(server: Server) async throws {
        try #require(server.isInstalled, "\(server.rawValue) is not installed")
        let daemon = try server.start()
        defer { daemon.stop() }
        try await daemon.waitForSocket()
        let names = try await withTaskExecutorPreference(DedicatedTaskExecutor.shared) {
            try await NBDClient.list(at: .unix(path: daemon.socket))
        }
        #expect(names.count == 1, "\(names)")
    }

    @Test(arguments: Server.allCases)
    func writeReadFlushTrimAndZero(server: Server) async throws {
        try await withClient(server) { client in
            let base: UInt64 = 1 << 20
            let pattern = clientTestPattern(seed: 1, length: 256 << 10)
            try await client.write(pattern, offset: base, fua: client.transmissionFlags.contains(.sendFUA))
            try await client.flush()
            #expect(try await client.read(offset: base, length: pattern.count).clientTestBytes == pattern)

            // Around the written range: zeros, data, zeros (qemu-nbd sends hole chunks).
            let around = try await client.read(offset: base - (64 << 10), length: 384 << 10)
            let zeros = [UInt8](repeating: 0, count: 64 << 10)
            #expect(around.clientTestBytes == zeros + pattern + zeros)

            try await client.trim(offset: base + (64 << 10), length: 64 << 10)
            try await client.writeZeroes(offset: base + (192 << 10), length: 32 << 10)
            var expected = pattern
            expected.replaceSubrange((64 << 10)..<(128 << 10), with: zeros)
            expected.replaceSubrange((192 << 10)..<(224 << 10), with: zeros.prefix(32 << 10))
            #expect(try await client.read(offset: base, length: pattern.count).clientTestBytes == expected)
            try await client.flush()
        }
    }

    @Test(arguments: Server.allCases)
    func manyRequestsInFlight(server: Server) async throws {
        try await withClient(server) { client in
            let count = 64
            let length = 32 << 10
            let mismatches = try await writeAndReadBackConcurrently(client, count: count, length: length)
            #expect(mismatches.isEmpty, "requests whose data differs: \(mismatches)")
        }
    }

    @Test(arguments: Server.allCases)
    func blockStatusTellsHolesFromData(server: Server) async throws {
        try await withClient(server) { client in
            let base: UInt64 = 4 << 20
            let hole = NBDAllocationFlags.hole
            let before = try await client.blockStatus(offset: base, length: 1 << 20)
            #expect(!before.isEmpty && before.allSatisfy { $0.flags & hole != 0 }, "\(before)")

            try await client.write(clientTestPattern(seed: 2, length: 128 << 10), offset: base + (256 << 10))
            try await client.flush()
            let after = try await client.blockStatus(offset: base, length: 1 << 20)
            let status = Self.flags(of: after, from: base)
            #expect(status(base) & hole != 0, "\(after)")
            #expect(status(base + (256 << 10)) & hole == 0, "\(after)")
            #expect(status(base + (384 << 10) - 1) & hole == 0, "\(after)")
            #expect(status(base + (512 << 10)) & hole != 0, "\(after)")

            let one = try await client.blockStatus(offset: base + (256 << 10), length: 1 << 20, requestOne: true)
            #expect(one.count == 1 && one[0].flags & hole == 0 && one[0].length <= 1 << 20, "\(one)")
        }
    }

    @Test(arguments: Server.allCases)
    func readPastTheEndIsAnError(server: Server) async throws {
        try await withClient(server) { client in
            let error = await #expect(throws: NBDClientError.self) {
                _ = try await client.read(offset: Self.size - 512, length: 1024)
            }
            guard case .request(let code, _) = error else {
                Issue.record("expected an errno reply, got \(String(describing: error))")
                return
            }
            #expect(code == NBDError.invalid.rawValue, "\(error!)")
            // And the connection is still usable.
            _ = try await client.read(offset: 0, length: 512)
        }
    }

    /// The status flags at any offset, from extents starting at `start`.
    static func flags(of extents: [(length: UInt64, flags: UInt32)], from start: UInt64) -> (UInt64) -> UInt32 {
        { offset in
            var at = start
            for extent in extents {
                if offset < at + extent.length { return extent.flags }
                at += extent.length
            }
            return UInt32.max
        }
    }
}
