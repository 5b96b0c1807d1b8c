import Foundation
import NIOCore
import Strata
import StrataDisks
import StrataNBD
import StrataNBDClient
import StrataNBDProtocol
import Testing

/// The client against our own server (a 128 MiB memory disk on a Unix socket), in every
/// reply style the server speaks: extended headers, structured replies, simple replies.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct NBDClientStrataServerTests {
    static let size: UInt64 = 128 << 20
    static let structuredStyles: [ClientReplyStyle] = [.extendedHeaders, .structuredReplies]

    /// "disk0" (the default, with a description) and a read-only view of it, "ro".
    static func fixture(tcp: Bool = false) async throws -> ServerFixture {
        try await ServerFixture(tcp: tcp) { topology, _ in
            _ = try MemoryDisk.create(in: topology, name: "md0", size: Int64(size))
            return [
                NBDExport(name: "disk0", provider: "md0", description: "client test disk", isDefault: true),
                NBDExport(name: "ro", provider: "md0", readOnly: true),
            ]
        }
    }

    /// Starts the server, connects, runs `body`, disconnects and stops, whatever happens.
    func withClient(_ style: ClientReplyStyle, export: String = "disk0",
                    _ body: (NBDClient, ServerFixture) async throws -> Void) async throws {
        let fixture = try await Self.fixture()
        do {
            let client = try await NBDClient.connect(to: .unix(path: fixture.socket), configuration: style.configuration(export: export))
            try await body(client, fixture)
            await client.disconnect()
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    // MARK: Handshake

    @Test(arguments: ClientReplyStyle.allCases)
    func handshakeReportsTheExport(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            #expect(client.exportSize == Self.size)
            #expect(client.exportName == "disk0")
            #expect(client.exportDescription == "client test disk")
            #expect(client.transmissionFlags.isSuperset(of: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes,
                                                             .sendFastZero, .sendDF, .canMultiConn, .sendCache]))
            #expect(!client.transmissionFlags.contains(.readOnly))
            #expect(client.blockSizes == NBDClient.BlockSizes(minimum: 1, preferred: 4096, maximumPayload: 64 << 20))
            #expect(client.extendedHeaders == (style == .extendedHeaders))
            #expect(client.structuredReplies == (style != .simpleReplies))
            #expect(client.metaContextID == (style == .simpleReplies ? nil : NBDMetaContext.baseAllocationID))
        }
    }

    @Test func readOnlyExportSaysSo() async throws {
        try await withClient(.extendedHeaders, export: "ro") { client, _ in
            #expect(client.transmissionFlags.contains(.readOnly))
            #expect(!client.transmissionFlags.contains(.sendTrim))
            #expect(!client.transmissionFlags.contains(.sendWriteZeroes))
        }
    }

    @Test func defaultExportAnswersTheEmptyName() async throws {
        try await withClient(.extendedHeaders, export: "") { client, _ in
            #expect(client.exportSize == Self.size)
            #expect(client.exportName == "disk0")
        }
    }

    @Test func connectsOverTCP() async throws {
        let fixture = try await Self.fixture(tcp: true)
        do {
            let port = try #require(fixture.tcpPort)
            let client = try await NBDClient.connect(to: .tcp(host: "127.0.0.1", port: port))
            #expect(client.exportSize == Self.size)
            let pattern = clientTestPattern(seed: 11, length: 65536)
            try await client.write(pattern, offset: 0)
            let read = try await client.read(offset: 0, length: pattern.count)
            #expect(read.clientTestBytes == pattern)
            await client.disconnect()
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    @Test func listShowsEveryExport() async throws {
        let fixture = try await Self.fixture()
        let names = try await NBDClient.list(at: .unix(path: fixture.socket))
        await fixture.stop()
        #expect(names == ["disk0", "ro"])
    }

    @Test func unknownExportIsRefusedWithTheServersMessage() async throws {
        let fixture = try await Self.fixture()
        do {
            _ = try await NBDClient.connect(to: .unix(path: fixture.socket), configuration: .init(exportName: "nope"))
            Issue.record("connected to an export that does not exist")
        } catch NBDClientError.optionRefused(let option, let reply, let message) {
            #expect(option == NBDOption.go.rawValue)
            #expect(reply == NBDOptionReply.errorUnknown.rawValue)
            #expect(message.contains("nope"), "\(message)")
        }
        await fixture.stop()
    }

    // MARK: Data

    @Test(arguments: ClientReplyStyle.allCases)
    func writeThenReadBack(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            let pattern = clientTestPattern(seed: 42, length: 1 << 20)
            try await client.write(pattern, offset: 1 << 20)
            #expect(try await client.read(offset: 1 << 20, length: 1 << 20).clientTestBytes == pattern)
            // Across the end of the written range: data, then never-written zeros.
            let across = try await client.read(offset: (2 << 20) - 4096, length: 8192)
            #expect(across.clientTestBytes == Array(pattern.suffix(4096)) + Array(repeating: 0, count: 4096))
            // Never written: zeros (a hole chunk with structured replies).
            #expect(try await client.read(offset: 32 << 20, length: 65536).clientTestBytes == Array(repeating: 0, count: 65536))
            // The largest payload the server allows, both ways.
            let largest = clientTestPattern(seed: 43, length: Int(client.blockSizes.maximumPayload))
            try await client.write(largest, offset: 16 << 20, fua: true)
            #expect(try await client.read(offset: 16 << 20, length: largest.count).clientTestBytes == largest)
        }
    }

    @Test(arguments: ClientReplyStyle.allCases)
    func sixtyFourRequestsInFlightAtOnce(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            let count = 64
            let length = 64 << 10
            let mismatches = try await writeAndReadBackConcurrently(client, count: count, length: length)
            #expect(mismatches.isEmpty, "requests whose data differs: \(mismatches)")
            #expect(await client.requestsInFlight == 0)
        }
    }

    /// More requests than the server takes in at once (it stops reading the socket at
    /// 256): the rest wait in the socket, and every one is still answered.
    @Test(arguments: [ClientReplyStyle.extendedHeaders, .simpleReplies])
    func moreRequestsInFlightThanTheServerTakesAtOnce(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            let count = 1024
            let length = 4096
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<count {
                    group.addTask {
                        try await client.write(clientTestPattern(seed: UInt64(index), length: length), offset: UInt64(index * length))
                    }
                }
                try await group.waitForAll()
            }
            let read = try await client.read(offset: 0, length: count * length)
            let expected = (0..<count).flatMap { clientTestPattern(seed: UInt64($0), length: length) }
            #expect(read.clientTestBytes == expected)
        }
    }

    @Test(arguments: ClientReplyStyle.allCases)
    func flushAndForcedUnitAccessSucceed(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            try await client.write(clientTestPattern(seed: 5, length: 4096), offset: 0, fua: true)
            try await client.flush()
            try await client.cache(offset: 0, length: 65536)
        }
    }

    @Test(arguments: ClientReplyStyle.allCases)
    func trimmedRangeReadsAsZeros(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            let pattern = clientTestPattern(seed: 6, length: 65536)
            try await client.write(pattern, offset: 65536)
            try await client.trim(offset: 65536 + 4096, length: 8192)
            var expected = pattern
            expected.replaceSubrange(4096..<12288, with: repeatElement(0, count: 8192))
            #expect(try await client.read(offset: 65536, length: 65536).clientTestBytes == expected)
            try await client.trim(offset: 65536, length: 65536, fua: true)
            #expect(try await client.read(offset: 65536, length: 65536).clientTestBytes == Array(repeating: 0, count: 65536))
        }
    }

    @Test(arguments: ClientReplyStyle.allCases)
    func writeZeroesInEveryFlavour(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            let zeros = Array(repeating: UInt8(0), count: 16384)
            for (index, flavour) in [(false, false), (true, false), (false, true)].enumerated() {
                let offset = UInt64(index) * 65536
                try await client.write(clientTestPattern(seed: UInt64(index), length: 65536), offset: offset)
                try await client.writeZeroes(offset: offset + 4096, length: 16384, noHole: flavour.0, fastZero: flavour.1, fua: index == 0)
                let read = try await client.read(offset: offset, length: 65536)
                #expect(Array(read.clientTestBytes[4096..<20480]) == zeros, "noHole \(flavour.0) fastZero \(flavour.1)")
                #expect(Array(read.clientTestBytes[0..<4096]) == Array(clientTestPattern(seed: UInt64(index), length: 4096)))
            }
        }
    }

    /// TRIM, WRITE_ZEROES and BLOCK_STATUS carry no payload, so their length may pass
    /// the maximum payload; the spec asks the server not to refuse them for it.
    @Test(arguments: ClientReplyStyle.allCases)
    func requestsWithoutPayloadMayExceedTheMaximumPayload(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            let large = UInt64(client.blockSizes.maximumPayload) + (16 << 20)
            try await client.write(clientTestPattern(seed: 12, length: 4096), offset: 8 << 20)
            try await client.writeZeroes(offset: 0, length: large)
            #expect(try await client.read(offset: 8 << 20, length: 4096).clientTestBytes == Array(repeating: 0, count: 4096))
            try await client.write(clientTestPattern(seed: 13, length: 4096), offset: 8 << 20)
            try await client.trim(offset: 0, length: large)
            #expect(try await client.read(offset: 8 << 20, length: 4096).clientTestBytes == Array(repeating: 0, count: 4096))
            if client.metaContextID != nil {
                let extents = try await client.blockStatus(offset: 0, length: Self.size)
                #expect(extents.reduce(0) { $0 + $1.length } == Self.size, "\(extents)")
            }
        }
    }

    // MARK: Block status

    @Test(arguments: structuredStyles)
    func blockStatusTellsHolesFromData(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            let hole = NBDAllocationFlags.hole | NBDAllocationFlags.zero
            let fresh = try await client.blockStatus(offset: 0, length: 1 << 20)
            #expect(fresh.count == 1 && fresh[0].length >= 1 << 20 && fresh[0].flags == hole, "\(fresh)")

            try await client.write(clientTestPattern(seed: 7, length: 65536), offset: 128 << 10)
            let after = try await client.blockStatus(offset: 0, length: 1 << 20)
            #expect(after.map(\.flags) == [hole, 0, hole], "\(after)")
            #expect(after.prefix(2).map(\.length) == [128 << 10, 64 << 10], "\(after)")
            #expect(after.reduce(0) { $0 + $1.length } >= 1 << 20)

            let one = try await client.blockStatus(offset: 0, length: 1 << 20, requestOne: true)
            #expect(one.count == 1 && one[0].length == 128 << 10 && one[0].flags == hole, "\(one)")
            let data = try await client.blockStatus(offset: 128 << 10, length: 1 << 20, requestOne: true)
            #expect(data.count == 1 && data[0].length == 64 << 10 && data[0].flags == 0, "\(data)")
            let short = try await client.blockStatus(offset: 128 << 10, length: 4096, requestOne: true)
            #expect(short.count == 1 && short[0].length == 4096 && short[0].flags == 0, "\(short)")

            try await client.trim(offset: 128 << 10, length: 32 << 10)
            let trimmed = try await client.blockStatus(offset: 128 << 10, length: 64 << 10)
            #expect(trimmed.map(\.flags) == [hole, 0], "\(trimmed)")
            #expect(trimmed.first?.length == 32 << 10, "\(trimmed)")
        }
    }

    @Test func blockStatusOfTheWholeExportWithExtendedHeaders() async throws {
        try await withClient(.extendedHeaders) { client, _ in
            try await client.write(clientTestPattern(seed: 8, length: 4096), offset: Self.size - 4096)
            let extents = try await client.blockStatus(offset: 0, length: Self.size)
            #expect(extents.map(\.length) == [Self.size - 4096, 4096], "\(extents)")
        }
    }

    // MARK: Errors

    @Test(arguments: ClientReplyStyle.allCases)
    func badRequestsGetErrnoReplies(style: ClientReplyStyle) async throws {
        try await withClient(style) { client, _ in
            await Self.expectErrno(NBDError.invalid) { _ = try await client.read(offset: Self.size - 100, length: 512) }
            await Self.expectErrno(NBDError.invalid) { _ = try await client.read(offset: Self.size, length: 512) }
            await Self.expectErrno(NBDError.invalid) { _ = try await client.read(offset: Self.size - 512, length: 1024) }
            await Self.expectErrno(NBDError.noSpace) { try await client.write([UInt8](repeating: 1, count: 1024), offset: Self.size - 512) }
            // The connection is still good after errors.
            try await client.write(clientTestPattern(seed: 9, length: 512), offset: 0)
            #expect(try await client.read(offset: 0, length: 512).clientTestBytes == clientTestPattern(seed: 9, length: 512))
        }
    }

    @Test(arguments: ClientReplyStyle.allCases)
    func writingAReadOnlyExportIsEPERM(style: ClientReplyStyle) async throws {
        try await withClient(style, export: "ro") { client, _ in
            await Self.expectErrno(NBDError.permission) { try await client.write([UInt8](repeating: 1, count: 512), offset: 0) }
            let read = try await client.read(offset: 0, length: 512)
            #expect(read.readableBytes == 512)
        }
    }

    /// Expects `body` to fail with `NBDClientError.request` carrying `error` (the
    /// message varies with the reply style: simple replies carry none).
    static func expectErrno(_ error: NBDError, sourceLocation: SourceLocation = #_sourceLocation,
                            _ body: () async throws -> Void) async {
        let thrown = await #expect(throws: NBDClientError.self, sourceLocation: sourceLocation) { try await body() }
        guard case .request(let code, _) = thrown else {
            Issue.record("expected an errno reply, got \(String(describing: thrown))", sourceLocation: sourceLocation)
            return
        }
        #expect(code == error.rawValue, "\(thrown!)", sourceLocation: sourceLocation)
    }

    // MARK: Disconnecting

    @Test func disconnectEndsTheConnectionAndLaterRequestsFail() async throws {
        try await withClient(.extendedHeaders) { client, fixture in
            try await client.write(clientTestPattern(seed: 10, length: 4096), offset: 0)
            await client.disconnect()
            try await clientTestEventually { fixture.server.connectionCount == 0 }
            #expect(fixture.server.connectionCount == 0)
            await #expect(throws: NBDClientError.self) { _ = try await client.read(offset: 0, length: 4096) }
        }
    }

    /// `disconnect()` lets the requests already sent finish: every write the client
    /// reports as done is on the disk, and the ones sent after fail without reaching it.
    @Test func disconnectLetsRequestsInFlightFinish() async throws {
        try await withClient(.extendedHeaders) { client, fixture in
            let count = 64
            let length = 64 << 10
            let outcomes = try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
                for index in 0..<count {
                    group.addTask {
                        do {
                            try await client.write(clientTestPattern(seed: UInt64(index), length: length), offset: UInt64(index * length))
                            return (index, true)
                        } catch NBDClientError.connectionClosed {
                            return (index, false)
                        }
                    }
                }
                for _ in 0..<1000 where await client.requestsInFlight == 0 { await Task.yield() }
                await client.disconnect()
                var outcomes: [Int: Bool] = [:]
                for try await (index, written) in group { outcomes[index] = written }
                return outcomes
            }
            let second = try await NBDClient.connect(to: .unix(path: fixture.socket))
            for (index, written) in outcomes.sorted(by: { $0.key < $1.key }) {
                let read = try await second.read(offset: UInt64(index * length), length: length)
                let expected = written ? clientTestPattern(seed: UInt64(index), length: length) : Array(repeating: 0, count: length)
                #expect(read.clientTestBytes == expected, "write \(index) reported \(written ? "done" : "not sent")")
            }
            #expect(outcomes.values.contains(true))
            await second.disconnect()
        }
    }

    @Test func serverStoppingFailsRequestsInsteadOfHanging() async throws {
        let fixture = try await Self.fixture()
        let client = try await NBDClient.connect(to: .unix(path: fixture.socket))
        await fixture.stop()
        await #expect(throws: NBDClientError.self) { _ = try await client.read(offset: 0, length: 4096) }
    }
}
