import NIOCore
import Strata
@testable import StrataNBD
import StrataNBDProtocol
import Testing

/// `qemu:dirty-bitmap:` contexts beside `base:allocation`, byte for byte, on an
/// EmbeddedChannel: "disk0" is a memory disk under a class keeping the bitmaps "s1" and
/// "broken" (whose every answer fails), "plain" the bare disk, which keeps none.
@Suite struct DirtyBitmapTests {
    static let s1 = DirtyBitmapGeom.Bitmap(name: "s1", dirty: [(64 << 10)..<(192 << 10), (512 << 10)..<(576 << 10)])
    static let broken = DirtyBitmapGeom.Bitmap(name: "broken", dirty: [], fails: true)
    /// "s1" over the whole 1 MiB disk, as `length:flags` descriptors.
    static let s1Extents = ["65536:0", "131072:1", "327680:0", "65536:1", "458752:0"]

    static func server(bitmaps: [DirtyBitmapGeom.Bitmap] = [s1, broken]) throws -> EmbeddedServer {
        try EmbeddedServer { topology, disk in
            try DirtyBitmapGeom.stack(on: disk, in: topology, name: "bm0", bitmaps: bitmaps)
            return [NBDExport(name: "disk0", provider: "bm0", isDefault: true), NBDExport(name: "plain", provider: "md0")]
        }
    }

    // MARK: LIST and SET

    @Test func listNamesBaseAllocationAndTheBitmapsTheQueriesName() throws {
        let server = try Self.server()
        try server.structured()
        let cases: [(export: String, queries: [String], replies: [String])] = [
            ("disk0", [], ["0 base:allocation", "0 qemu:dirty-bitmap:s1", "0 qemu:dirty-bitmap:broken", "ack"]),
            ("", [], ["0 base:allocation", "0 qemu:dirty-bitmap:s1", "0 qemu:dirty-bitmap:broken", "ack"]),
            ("disk0", ["qemu:"], ["0 qemu:dirty-bitmap:s1", "0 qemu:dirty-bitmap:broken", "ack"]),
            ("disk0", ["qemu:dirty-bitmap:"], ["0 qemu:dirty-bitmap:s1", "0 qemu:dirty-bitmap:broken", "ack"]),
            ("disk0", ["qemu:dirty-bitmap:s1"], ["0 qemu:dirty-bitmap:s1", "ack"]),
            ("disk0", ["base:"], ["0 base:allocation", "ack"]),
            ("disk0", ["qemu:dirty-bitmap:s1", "base:allocation", "qemu:dirty-bitmap:s1"],
             ["0 base:allocation", "0 qemu:dirty-bitmap:s1", "ack"]),
            ("disk0", ["qemu:dirty-bitmap:nope", "qemu:allocation-depth", "x-foo:bar", "nocolon", "qemu:dirty-bitmap:S1"], ["ack"]),
            ("plain", [], ["0 base:allocation", "ack"]),
            ("plain", ["qemu:"], ["ack"]),
        ]
        for (export, queries, replies) in cases {
            try server.sendOption(NBDOption.listMetaContext.rawValue, EmbeddedServer.metaContextData(export, queries: queries))
            #expect(try server.optionSummary() == replies, "LIST '\(export)' \(queries)")
        }
    }

    @Test func setSelectsExactlyTheNamedContextsThatExistEachWithItsOwnID() throws {
        let server = try Self.server()
        try server.structured()
        try server.set(["qemu:dirty-bitmap:nope", "qemu:dirty-bitmap:s1", "qemu:", "qemu:dirty-bitmap:", "base:", "x-y:z",
                        "base:allocation", "qemu:dirty-bitmap:s1"])
        #expect(try server.optionSummary() == ["1 base:allocation", "2 qemu:dirty-bitmap:s1", "ack"],
                "wildcards and unknown names select nothing")
        try server.set(["qemu:dirty-bitmap:broken", "qemu:dirty-bitmap:s1"])
        #expect(try server.optionSummary() == ["2 qemu:dirty-bitmap:s1", "3 qemu:dirty-bitmap:broken", "ack"])
        try server.set([])
        #expect(try server.optionSummary() == ["ack"])
    }

    @Test func aListOfHundredsOfQueriesAndLongNamesGetsClearReplies() throws {
        let server = try Self.server()
        try server.structured()
        var queries = (0..<300).map { "qemu:dirty-bitmap:nope\($0)" }
        queries.append("qemu:dirty-bitmap:" + String(repeating: "x", count: 4000))
        queries.append(String(repeating: "y", count: 2000))
        queries.append("qemu:dirty-bitmap:s1")
        try server.set(queries)
        #expect(try server.optionSummary() == ["2 qemu:dirty-bitmap:s1", "ack"])
        try server.sendOption(NBDOption.listMetaContext.rawValue, EmbeddedServer.metaContextData("disk0", queries: queries))
        #expect(try server.optionSummary() == ["0 qemu:dirty-bitmap:s1", "ack"])
        // A count of queries the data cannot hold, and a query running past the data.
        var lying = EmbeddedServer.metaContextData("disk0", queries: ["qemu:"])
        lying.setInteger(UInt32.max, at: 4 + 5)
        try server.sendOption(NBDOption.setMetaContext.rawValue, lying)
        var overlong = EmbeddedServer.metaContextData("disk0", queries: ["qemu:"])
        overlong.setInteger(UInt32(1 << 20), at: 4 + 5 + 4)
        try server.sendOption(NBDOption.listMetaContext.rawValue, overlong)
        #expect(try server.optionSummary() == ["error 0x80000003", "error 0x80000003"])
        #expect(server.isOpen)
    }

    @Test func selectingMoreContextsThanServedIsTooBigAndSelectsNone() throws {
        let many = (0..<20).map { DirtyBitmapGeom.Bitmap(name: "b\($0)", dirty: []) }
        let server = try Self.server(bitmaps: many)
        try server.structured()
        try server.set(["base:allocation"])
        #expect(try server.optionSummary() == ["1 base:allocation", "ack"])
        try server.set(["base:allocation"] + many.map { "qemu:dirty-bitmap:\($0.name)" })
        #expect(try server.optionSummary() == ["error 0x80000009"])
        try server.sendOption(NBDOption.listMetaContext.rawValue, EmbeddedServer.metaContextData("disk0", queries: []))
        #expect(try server.optionSummary().count == 22, "a LIST names them all")
        try server.go()
        try server.request(.blockStatus, cookie: 1, offset: 0, length: 4096)
        #expect(parseReplies(try server.received()).map(nbdError) == [NBDError.invalid.rawValue],
                "the failed SET replaced the one before")
    }

    @Test func theProvidersListDropsNamesItCutShortAndNamesTooLongToSend() {
        #expect(MetaContextCatalog.bitmapNames(in: "a\nb\n") == ["a", "b"])
        #expect(MetaContextCatalog.bitmapNames(in: "a\n\nbc") == ["a"], "an empty name, and one the buffer cut")
        #expect(MetaContextCatalog.bitmapNames(in: "") == [])
        let longest = String(repeating: "n", count: 4096 - "qemu:dirty-bitmap:".utf8.count)
        #expect(MetaContextCatalog.bitmapNames(in: longest + "\n" + longest + "n\n") == [longest])
        #expect(MetaContextCatalog(bitmaps: ["a", "b", "a"]).bitmaps == ["a", "b"])
    }

    // MARK: BLOCK_STATUS

    @Test(arguments: [false, true])
    func blockStatusSendsOneChunkPerContextTheLastDone(extended: Bool) throws {
        let server = try Self.server()
        try server.open(contexts: [NBDMetaContext.baseAllocation, "qemu:dirty-bitmap:s1"], extended: extended)
        try server.request(.write, flags: extended ? .payloadLength : [], cookie: 1, offset: 128 << 10, length: 4096,
                           payload: [UInt8](repeating: 1, count: 4096), extended: extended)
        try server.request(.blockStatus, cookie: 2, offset: 0, length: 1 << 20, extended: extended)
        let replies = parseReplies(try server.received()).filter { $0.cookie == 2 }
        let type = extended ? NBDReplyType.blockStatusExtended : .blockStatus
        #expect(replies.map(\.type) == [type.rawValue, type.rawValue])
        #expect(replies.map(\.flags) == [0, NBDReplyFlags.done])
        #expect(replies.map { statusChunk($0, extended: extended) } == [
            StatusChunk(id: 1, extents: ["131072:3", "4096:0", "913408:3"]),
            StatusChunk(id: 2, extents: Self.s1Extents),
        ])
    }

    @Test func requestOneGivesEachContextOneExtentNoLongerThanAsked() throws {
        let server = try Self.server()
        try server.open(contexts: ["qemu:dirty-bitmap:s1", NBDMetaContext.baseAllocation])
        try server.request(.blockStatus, flags: .requestOne, cookie: 1, offset: 0, length: 1 << 20)
        try server.request(.blockStatus, flags: .requestOne, cookie: 2, offset: 100_000, length: 1000)
        try server.request(.blockStatus, flags: .requestOne, cookie: 3, offset: 190 << 10, length: 64 << 10)
        let chunks = parseReplies(try server.received()).map { "\($0.cookie) \($0.flags) \(statusChunk($0))" }
        #expect(chunks == [
            "1 0 1 [1048576:3]", "1 1 2 [65536:0]",
            "2 0 1 [1000:3]", "2 1 2 [1000:1]",
            "3 0 1 [65536:3]", "3 1 2 [2048:1]",
        ])
    }

    @Test func aBitmapSelectedAloneIsOneDoneChunkWithItsID() throws {
        let server = try Self.server()
        try server.open(contexts: ["qemu:dirty-bitmap:s1"])
        try server.request(.blockStatus, cookie: 1, offset: 96 << 10, length: 512 << 10)
        let replies = parseReplies(try server.received())
        #expect(replies.map(\.flags) == [NBDReplyFlags.done])
        #expect(replies.map { statusChunk($0) } == [StatusChunk(id: 2, extents: ["98304:1", "327680:0", "65536:1", "32768:0"])])
    }

    @Test func anUnknownBitmapIsNotSelectedSoBlockStatusIsInvalid() throws {
        let server = try Self.server()
        try server.open(contexts: ["qemu:dirty-bitmap:nope"], expecting: ["ack"])
        try server.request(.blockStatus, cookie: 1, offset: 0, length: 4096)
        #expect(parseReplies(try server.received()).map(nbdError) == [NBDError.invalid.rawValue])
    }

    @Test func theProvidersErrorIsTheRequestsAndNoChunkGoesOut() throws {
        let server = try Self.server()
        try server.open(contexts: [NBDMetaContext.baseAllocation, "qemu:dirty-bitmap:broken"])
        try server.request(.blockStatus, cookie: 1, offset: 0, length: 4096)
        try server.request(.blockStatus, cookie: 2, offset: 4096, length: 4096)
        let replies = parseReplies(try server.received())
        #expect(replies.map(nbdError) == [NBDError.io.rawValue, NBDError.io.rawValue])
        #expect(replies.map(\.flags) == [NBDReplyFlags.done, NBDReplyFlags.done])
    }

    // MARK: Contexts belong to an export

    @Test func goOnAnotherExportDropsTheContextsSelected() throws {
        let server = try Self.server()
        try server.structured()
        try server.set([NBDMetaContext.baseAllocation, "qemu:dirty-bitmap:s1"])
        _ = try server.optionSummary()
        try server.go("plain")
        try server.request(.blockStatus, cookie: 1, offset: 0, length: 4096)
        #expect(parseReplies(try server.received()).map(nbdError) == [NBDError.invalid.rawValue])

        let other = try Self.server()
        try other.structured()
        try other.set([NBDMetaContext.baseAllocation], export: "plain")
        _ = try other.optionSummary()
        try other.go("")
        try other.request(.blockStatus, cookie: 1, offset: 0, length: 4096)
        #expect(parseReplies(try other.received()).map(nbdError) == [NBDError.invalid.rawValue])
    }

    @Test func theDefaultExportIsTheSameExportByEitherName() throws {
        let server = try Self.server()
        try server.structured()
        try server.set(["qemu:dirty-bitmap:s1"], export: "")
        #expect(try server.optionSummary() == ["2 qemu:dirty-bitmap:s1", "ack"])
        try server.go("disk0")
        try server.request(.blockStatus, cookie: 1, offset: 0, length: 1 << 20)
        #expect(parseReplies(try server.received()).map { statusChunk($0) } == [StatusChunk(id: 2, extents: Self.s1Extents)])
    }

    @Test func aFailedSetStillReplacesTheSelection() throws {
        let server = try Self.server()
        try server.structured()
        try server.set([NBDMetaContext.baseAllocation, "qemu:dirty-bitmap:s1"])
        _ = try server.optionSummary()
        try server.set([NBDMetaContext.baseAllocation], export: "nope")
        #expect(try server.optionSummary() == ["error 0x80000006"])
        try server.go()
        try server.request(.blockStatus, cookie: 1, offset: 0, length: 4096)
        #expect(parseReplies(try server.received()).map(nbdError) == [NBDError.invalid.rawValue])
    }
}

/// The error a reply carries: a simple reply's, or an error chunk's (0 for any other).
func nbdError(_ reply: ParsedReply) -> UInt32 {
    guard reply.type == NBDReplyType.error.rawValue else { return reply.error }
    var payload = ByteBuffer(bytes: reply.payload)
    return payload.readInteger(as: UInt32.self) ?? 0
}

/// One BLOCK_STATUS chunk's context and its descriptors, as `length:flags`.
struct StatusChunk: Equatable, CustomStringConvertible {
    var id: UInt32
    var extents: [String]
    var description: String { "\(id) [\(extents.joined(separator: ", "))]" }
}

func statusChunk(_ reply: ParsedReply, extended: Bool = false) -> StatusChunk {
    var payload = ByteBuffer(bytes: reply.payload)
    let id = payload.readInteger(as: UInt32.self) ?? 0
    var extents: [String] = []
    if extended {
        _ = payload.readInteger(as: UInt32.self)
        while let length = payload.readInteger(as: UInt64.self), let flags = payload.readInteger(as: UInt64.self) {
            extents.append("\(length):\(flags)")
        }
    } else {
        while let length = payload.readInteger(as: UInt32.self), let flags = payload.readInteger(as: UInt32.self) {
            extents.append("\(length):\(flags)")
        }
    }
    return StatusChunk(id: id, extents: extents)
}

extension EmbeddedServer {
    /// Greets and negotiates structured replies, or extended headers.
    func structured(extended: Bool = false) throws {
        try greet()
        try sendOption(extended ? NBDOption.extendedHeaders.rawValue : NBDOption.structuredReply.rawValue)
        _ = try optionReplies()
    }

    func set(_ queries: [String], export: String = "disk0") throws {
        try sendOption(NBDOption.setMetaContext.rawValue, Self.metaContextData(export, queries: queries))
    }

    func go(_ export: String = "disk0") throws {
        try sendOption(NBDOption.go.rawValue, Self.goData(export))
        let replies = try optionReplies()
        precondition(replies.last?.type == NBDOptionReply.ack.rawValue, "GO was refused: \(replies)")
    }

    /// Negotiates, selects `contexts` on "disk0" and enters transmission there.
    func open(contexts: [String], extended: Bool = false, expecting: [String]? = nil) throws {
        try structured(extended: extended)
        try set(contexts)
        let replies = try optionSummary()
        if let expecting {
            #expect(replies == expecting)
        } else {
            #expect(replies.count == contexts.count + 1 && replies.last == "ack", "\(replies)")
        }
        try go()
    }

    /// The option replies since the last call: a META_CONTEXT as its id and name, ACK as
    /// "ack", an error as its code.
    func optionSummary() throws -> [String] {
        try optionReplies().map { reply in
            var data = reply.data
            switch NBDOptionReply(rawValue: reply.type) {
            case .metaContext?:
                let id = data.readInteger(as: UInt32.self)!
                return "\(id) \(data.readString(length: data.readableBytes)!)"
            case .ack?:
                return "ack"
            default:
                return "error 0x\(String(reply.type, radix: 16))"
            }
        }
    }
}
