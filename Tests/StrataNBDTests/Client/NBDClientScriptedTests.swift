import Foundation
import NIOCore
import StrataNBDClient
import StrataNBDProtocol
import Testing

/// The client against a scripted server, for the replies real servers do not send on
/// demand: reads in several chunks with holes, error chunks before DONE, replies out of
/// order and interleaved, unknown cookies, hanging up with requests in flight.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct NBDClientScriptedTests {
    /// Starts a scripted server, connects, runs `body`, and cleans up whatever happens.
    func withClient(_ options: ScriptedNBDServer.Options = .init(), style: ClientReplyStyle = .extendedHeaders,
                    respond: @escaping ScriptedNBDServer.Responder,
                    _ body: (NBDClient, ScriptedNBDServer) async throws -> Void) async throws {
        let server = ScriptedNBDServer(options, respond: respond)
        try await server.start()
        do {
            let client = try await NBDClient.connect(to: server.address, configuration: style.configuration())
            try await body(client, server)
            await client.disconnect()
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    static let structuredStyles: [ClientReplyStyle] = [.extendedHeaders, .structuredReplies]

    // MARK: Reads

    @Test(arguments: structuredStyles)
    func readAssemblesDataChunksAndHolesSentInAnyOrder(style: ClientReplyStyle) async throws {
        let pattern = clientTestPattern(seed: 1, length: 4096)
        try await withClient(style: style, respond: { header, _, framing in
            let base = header.offset
            func data(_ start: Int, _ end: Int, done: Bool = false) -> ByteBuffer {
                framing.chunk(.offsetData, done: done, cookie: header.cookie, requestOffset: base) {
                    $0.writeInteger(base + UInt64(start))
                    $0.writeBytes(pattern[start..<end])
                }
            }
            func hole(_ start: Int, _ end: Int, done: Bool = false) -> ByteBuffer {
                framing.chunk(.offsetHole, done: done, cookie: header.cookie, requestOffset: base) {
                    $0.writeInteger(base + UInt64(start))
                    $0.writeInteger(UInt32(end - start))
                }
            }
            return .send([data(2048, 3072), hole(1024, 2048), data(0, 512), data(512, 1024), hole(3072, 4096, done: true)])
        }) { client, _ in
            let read = try await client.read(offset: 8192, length: 4096)
            var expected = pattern
            expected.replaceSubrange(1024..<2048, with: repeatElement(0, count: 1024))
            expected.replaceSubrange(3072..<4096, with: repeatElement(0, count: 1024))
            #expect(read.clientTestBytes == expected)
        }
    }

    @Test(arguments: structuredStyles)
    func errorChunkFailsTheReadButOnlyOnceDoneArrives(style: ClientReplyStyle) async throws {
        try await withClient(style: style, respond: { header, _, framing in
            guard header.type == NBDCommand.read.rawValue else { return .send([framing.success(header)]) }
            let base = header.offset
            return .send([
                framing.chunk(.offsetData, done: false, cookie: header.cookie, requestOffset: base) {
                    $0.writeInteger(base)
                    $0.writeRepeatingByte(0xaa, count: 2048)
                },
                framing.chunk(.errorOffset, done: false, cookie: header.cookie, requestOffset: base) {
                    $0.writeInteger(NBDError.io.rawValue)
                    $0.writeInteger(UInt16(11))
                    $0.writeString("media error")
                    $0.writeInteger(base + 2048)
                },
                // Had the client finished the request at the error chunk, this chunk
                // would be for an unknown cookie, a violation that ends the connection.
                framing.chunk(.offsetData, done: false, cookie: header.cookie, requestOffset: base) {
                    $0.writeInteger(base + 3072)
                    $0.writeRepeatingByte(0xbb, count: 1024)
                },
                framing.chunk(.none, cookie: header.cookie, requestOffset: base),
            ])
        }) { client, _ in
            await #expect(throws: NBDClientError.request(error: 5, message: "media error (at offset 6144)")) {
                _ = try await client.read(offset: 4096, length: 4096)
            }
            try await client.flush()
        }
    }

    @Test func readWhoseChunksDoNotCoverTheRangeFails() async throws {
        try await withClient(respond: { header, _, framing in
            .send([framing.chunk(.offsetData, cookie: header.cookie, requestOffset: header.offset) {
                $0.writeInteger(header.offset)
                $0.writeRepeatingByte(1, count: 512)
            }])
        }) { client, _ in
            await #expect(throws: NBDClientError.self) { _ = try await client.read(offset: 0, length: 1024) }
        }
    }

    @Test(arguments: ClientReplyStyle.allCases)
    func repliesOutOfOrderWithInterleavedChunksReachTheirRequests(style: ClientReplyStyle) async throws {
        var options = ScriptedNBDServer.Options()
        options.batch = 16
        try await withClient(options, style: style, respond: { header, _, framing in
            let bytes = clientTestPattern(seed: header.offset, length: Int(header.length))
            guard framing.structured else { return .send([framing.simple(cookie: header.cookie, data: bytes)]) }
            let half = bytes.count / 2
            return .send([
                framing.chunk(.offsetData, done: false, cookie: header.cookie, requestOffset: header.offset) {
                    $0.writeInteger(header.offset + UInt64(half))
                    $0.writeBytes(bytes[half...])
                },
                framing.chunk(.offsetData, cookie: header.cookie, requestOffset: header.offset) {
                    $0.writeInteger(header.offset)
                    $0.writeBytes(bytes[..<half])
                },
            ])
        }) { client, server in
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<16 {
                    group.addTask {
                        let offset = UInt64(index) * 8192
                        let length = 512 * (index + 1)
                        let read = try await client.read(offset: offset, length: length)
                        return read.clientTestBytes == clientTestPattern(seed: offset, length: length)
                    }
                }
                for try await matched in group { #expect(matched) }
            }
            let cookies = server.requests.withLock { $0.map(\.cookie) }
            #expect(Set(cookies).count == 16, "every request in flight has its own cookie")
        }
    }

    // MARK: Block status

    @Test(arguments: structuredStyles)
    func blockStatusDecodesCompactAndExtendedDescriptors(style: ClientReplyStyle) async throws {
        try await withClient(style: style, respond: { header, _, framing in
            .send([framing.chunk(framing.extended ? .blockStatusExtended : .blockStatus, cookie: header.cookie,
                                 requestOffset: header.offset) { body in
                body.writeInteger(UInt32(7))
                let extents: [(UInt64, UInt32)] = [(4096, NBDAllocationFlags.hole | NBDAllocationFlags.zero), (8192, 0)]
                if framing.extended {
                    body.writeInteger(UInt32(extents.count))
                    for (length, flags) in extents {
                        body.writeInteger(length)
                        body.writeInteger(UInt64(flags))
                    }
                } else {
                    for (length, flags) in extents {
                        body.writeInteger(UInt32(length))
                        body.writeInteger(flags)
                    }
                }
            }])
        }) { client, _ in
            #expect(client.metaContextID == 7)
            let extents = try await client.blockStatus(offset: 0, length: 12288)
            #expect(extents.map(\.length) == [4096, 8192])
            #expect(extents.map(\.flags) == [3, 0])
        }
    }

    @Test func blockStatusForAContextNotSelectedIsAViolation() async throws {
        try await withClient(respond: { header, _, framing in
            .send([framing.chunk(.blockStatusExtended, cookie: header.cookie, requestOffset: header.offset) {
                $0.writeInteger(UInt32(9))
                $0.writeInteger(UInt32(1))
                $0.writeInteger(UInt64(4096))
                $0.writeInteger(UInt64(0))
            }])
        }) { client, _ in
            await #expect(throws: NBDClientError.self) { _ = try await client.blockStatus(offset: 0, length: 4096) }
            await #expect(throws: NBDClientError.self) { try await client.flush() }
        }
    }

    // MARK: Broken connections

    @Test func serverHangingUpFailsEveryRequestInFlight() async throws {
        var options = ScriptedNBDServer.Options()
        options.batch = 1000
        try await withClient(options, respond: { header, _, framing in
            header.offset == 8 * 4096 ? .hangUp : .send([framing.success(header)])
        }) { client, server in
            let failures = try await withThrowingTaskGroup(of: NBDClientError?.self) { group in
                for index in 0..<8 {
                    group.addTask {
                        do {
                            try await client.trim(offset: UInt64(index) * 4096, length: 4096)
                            return nil
                        } catch let error as NBDClientError {
                            return error
                        }
                    }
                }
                try await clientTestEventually { server.requests.withLock { $0.count } == 8 }
                group.addTask {
                    do {
                        try await client.trim(offset: 8 * 4096, length: 4096)
                        return nil
                    } catch let error as NBDClientError {
                        return error
                    }
                }
                var failures: [NBDClientError?] = []
                for try await failure in group { failures.append(failure) }
                return failures
            }
            #expect(failures.count == 9)
            for failure in failures {
                guard case .connectionClosed = failure else {
                    Issue.record("expected connectionClosed, got \(String(describing: failure))")
                    continue
                }
            }
            await #expect(throws: NBDClientError.self) { _ = try await client.read(offset: 0, length: 512) }
        }
    }

    @Test func replyForACookieNotInFlightEndsTheConnection() async throws {
        try await withClient(respond: { header, _, framing in
            .send([framing.chunk(.none, cookie: header.cookie &+ 1000, requestOffset: header.offset)])
        }) { client, _ in
            await #expect(throws: NBDClientError.self) { try await client.flush() }
            await #expect(throws: NBDClientError.self) { try await client.flush() }
        }
    }

    @Test func extendedReplyEchoingTheWrongOffsetIsAViolation() async throws {
        try await withClient(respond: { header, _, framing in
            .send([framing.chunk(.none, cookie: header.cookie, requestOffset: header.offset + 512)])
        }) { client, _ in
            do {
                try await client.trim(offset: 4096, length: 4096)
                Issue.record("the reply was accepted")
            } catch NBDClientError.protocolViolation {
            }
        }
    }

    @Test func shutdownErrorLeadsToASoftDisconnect() async throws {
        try await withClient(respond: { header, _, framing in
            .send([framing.chunk(.error, cookie: header.cookie, requestOffset: header.offset) {
                $0.writeInteger(NBDError.shutdown.rawValue)
                $0.writeInteger(UInt16(0))
            }])
        }) { client, server in
            await #expect(throws: NBDClientError.request(error: 108, message: "")) { try await client.flush() }
            try await clientTestEventually { server.requests.withLock { $0.last?.type } == NBDCommand.disconnect.rawValue }
            #expect(server.requests.withLock { $0.map(\.type) } == [NBDCommand.flush.rawValue, NBDCommand.disconnect.rawValue])
            await #expect(throws: NBDClientError.self) { try await client.flush() }
        }
    }

    // MARK: Requests on the wire

    @Test(arguments: ClientReplyStyle.allCases)
    func requestsCarryTheirFlagsLengthsAndPayload(style: ClientReplyStyle) async throws {
        let payloads = ClientTestBox<[[UInt8]]>([])
        try await withClient(style: style, respond: { header, payload, framing in
            if let payload { payloads.update { $0.append(payload.clientTestBytes) } }
            return .send([framing.success(header)])
        }) { client, server in
            let bytes = clientTestPattern(seed: 9, length: 4096)
            try await client.write(bytes, offset: 65536, fua: true)
            try await client.writeZeroes(offset: 0, length: 8192, noHole: true)
            try await client.trim(offset: 4096, length: 4096, fua: true)
            try await client.cache(offset: 0, length: 4096)
            try await client.flush()
            await client.disconnect()
            // The client is done once DISC is written; the server reads it a moment later.
            try await clientTestEventually { server.requests.withLock { $0.count } == 6 }
            let headers = server.requests.withLock { $0 }
            #expect(headers.map(\.type) == [1, 6, 4, 5, 3, 2])
            let write = headers[0]
            #expect(write.offset == 65536 && write.length == 4096)
            #expect(write.flags == (style == .extendedHeaders ? [.fua, .payloadLength] : [.fua]))
            #expect(headers[1].flags == [.noHole] && headers[1].length == 8192)
            #expect(headers[2].flags == [.fua] && headers[2].offset == 4096)
            #expect(payloads.value == [bytes])
        }
    }

    @Test func requestsTheExportDoesNotAdvertiseAreNotSent() async throws {
        var options = ScriptedNBDServer.Options()
        options.flags = [.hasFlags]
        try await withClient(options, respond: { header, _, framing in .send([framing.success(header)]) }) { client, server in
            await #expect(throws: NBDClientError.self) { try await client.flush() }
            await #expect(throws: NBDClientError.self) { try await client.trim(offset: 0, length: 512) }
            await #expect(throws: NBDClientError.self) { try await client.writeZeroes(offset: 0, length: 512) }
            await #expect(throws: NBDClientError.self) { try await client.write([0], offset: 0, fua: true) }
            #expect(server.requests.withLock { $0.isEmpty })
        }
    }

    // MARK: Handshake

    @Test func refusedGoThrowsTheReplyCodeAndMessage() async throws {
        var options = ScriptedNBDServer.Options()
        options.goRefusal = (.errorUnknown, "no export named 'nope'")
        let server = ScriptedNBDServer(options) { _, _, _ in .hangUp }
        try await server.start()
        await #expect(throws: NBDClientError.optionRefused(option: 7, reply: 0x8000_0006, message: "no export named 'nope'")) {
            _ = try await NBDClient.connect(to: server.address, configuration: .init(exportName: "nope"))
        }
        try await clientTestEventually { server.optionsReceived.withLock { $0.last } == NBDOption.abort.rawValue }
        #expect(server.optionsReceived.withLock { $0 } == [11, 10, 7, 2])
        await server.stop()
    }

    @Test func refusedExtendedHeadersFallBackToStructuredReplies() async throws {
        var options = ScriptedNBDServer.Options()
        options.extendedHeaders = false
        try await withClient(options, respond: { header, _, framing in .send([framing.success(header)]) }) { client, server in
            #expect(!client.extendedHeaders)
            #expect(client.structuredReplies)
            #expect(client.metaContextID == 7)
            #expect(client.exportSize == 1 << 20)
            #expect(client.blockSizes == NBDClient.BlockSizes(minimum: 512, preferred: 4096, maximumPayload: 1 << 20))
            #expect(server.optionsReceived.withLock { $0 } == [11, 8, 10, 7])
            try await client.flush()
        }
    }

    @Test func noStructuredRepliesMeansSimpleRepliesAndNoBlockStatus() async throws {
        var options = ScriptedNBDServer.Options()
        options.extendedHeaders = false
        options.structuredReplies = false
        try await withClient(options, respond: { header, _, framing in
            header.type == NBDCommand.read.rawValue
                ? .send([framing.simple(cookie: header.cookie, data: Array(repeating: 7, count: Int(header.length)))])
                : .send([framing.simple(error: NBDError.permission.rawValue, cookie: header.cookie)])
        }) { client, server in
            #expect(!client.structuredReplies && client.metaContextID == nil)
            #expect(server.optionsReceived.withLock { $0 } == [11, 8, 7])
            let read = try await client.read(offset: 0, length: 1024)
            #expect(read.clientTestBytes == Array(repeating: 7, count: 1024))
            await #expect(throws: NBDClientError.request(error: 1, message: nil)) { try await client.flush() }
            await #expect(throws: NBDClientError.self) { _ = try await client.blockStatus(offset: 0, length: 512) }
        }
    }

    @Test func serverWithoutGoIsReachedThroughExportName() async throws {
        var options = ScriptedNBDServer.Options()
        options.extendedHeaders = false
        options.goRefusal = (.errorUnsupported, "GO is not known here")
        try await withClient(options, style: .structuredReplies, respond: { header, _, framing in
            .send([framing.success(header)])
        }) { client, server in
            #expect(server.optionsReceived.withLock { $0 } == [8, 10, 7, 1])
            #expect(client.exportSize == options.size)
            #expect(client.transmissionFlags == options.flags)
            #expect(client.blockSizes == .default)
            try await client.flush()
        }
    }

    @Test func serverWithoutGoIsRefusedOnceExtendedHeadersAreOn() async throws {
        var options = ScriptedNBDServer.Options()
        options.goRefusal = (.errorUnsupported, "GO is not known here")
        let server = ScriptedNBDServer(options) { _, _, _ in .hangUp }
        try await server.start()
        // The spec forbids EXPORT_NAME after extended headers (and such a server is
        // broken: it must support GO if it acknowledges extended headers).
        await #expect(throws: NBDClientError.optionRefused(option: 7, reply: 0x8000_0001, message: "GO is not known here")) {
            _ = try await NBDClient.connect(to: server.address)
        }
        await server.stop()
    }

    @Test func silentServerTimesOutTheHandshake() async throws {
        var options = ScriptedNBDServer.Options()
        options.silent = true
        let server = ScriptedNBDServer(options) { _, _, _ in .hangUp }
        try await server.start()
        let started = ContinuousClock.now
        do {
            _ = try await NBDClient.connect(to: server.address, configuration: .init(handshakeTimeout: .milliseconds(200)))
            Issue.record("connected to a server that never spoke")
        } catch NBDClientError.timedOut {
        }
        #expect(ContinuousClock.now - started < .seconds(5))
        await server.stop()
    }

    @Test func listReturnsTheExportNames() async throws {
        var options = ScriptedNBDServer.Options()
        options.exports = ["disk0", "a name with spaces", ""]
        let server = ScriptedNBDServer(options) { _, _, _ in .hangUp }
        try await server.start()
        let names = try await NBDClient.list(at: server.address)
        await server.stop()
        #expect(names == ["disk0", "a name with spaces", ""])
    }

    @Test func connectingToNothingFailsQuickly() async throws {
        await #expect(throws: (any Error).self) {
            _ = try await NBDClient.connect(to: .unix(path: "/nonexistent/strata-nbd.sock"))
        }
    }
}
