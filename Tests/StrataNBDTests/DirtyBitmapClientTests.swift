import Foundation
import Strata
import StrataDisks
import StrataNBD
import StrataNBDProtocol
import Testing

/// `qemu:dirty-bitmap:` contexts as backup tools read them: nbdinfo, qemu-img and
/// libnbd from Python against a 64 MiB memory disk under a class keeping the bitmap
/// "s1", dirty over 1 MiB to 3 MiB and 8 MiB to 8 MiB + 64 KiB, exported as "disk0"; the
/// same bitmaps, listed from another thread a moment after they are asked for, as
/// "later".
@Suite(.serialized, .timeLimit(.minutes(2)))
struct DirtyBitmapClientTests {
    static let size: Int64 = 64 << 20
    static let s1 = DirtyBitmapGeom.Bitmap(name: "s1", dirty: [(1 << 20)..<(3 << 20), (8 << 20)..<((8 << 20) + (64 << 10))])

    static func fixture() async throws -> ServerFixture {
        try await ServerFixture { topology, _ in
            let disk = try MemoryDisk.create(in: topology, name: "md0", size: size)
            try DirtyBitmapGeom.stack(on: disk.provider, in: topology, name: "bm0", bitmaps: [s1])
            try DirtyBitmapGeom.stack(on: disk.provider, in: topology, name: "bm1", bitmaps: [s1], listsLater: true)
            return [NBDExport(name: "disk0", provider: "bm0", isDefault: true), NBDExport(name: "later", provider: "bm1")]
        }
    }

    @Test(.enabled(if: installed("nbdinfo"), "nbdinfo is not installed"))
    func nbdinfoMapsTheBitmapAndListsItsContext() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let map = try run("nbdinfo", ["--map=qemu:dirty-bitmap:s1", fixture.uri(export: "disk0")])
        #expect(map.status == 0, "\(map)")
        let rows = map.output.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        #expect(rows == [
            "0 1048576 0 clean", "1048576 2097152 1 dirty", "3145728 5242880 0 clean",
            "8388608 65536 1 dirty", "8454144 58654720 0 clean",
        ], "\(map)")
        let info = try run("nbdinfo", [fixture.uri(export: "disk0")])
        #expect(info.status == 0 && info.output.contains("contexts:\n\t\tbase:allocation\n\t\tqemu:dirty-bitmap:s1\n"),
                "\(info)")
    }

    /// qemu's client reads the bitmap in place of `base:allocation` (`x-dirty-bitmap`),
    /// its flag taken for a hole's: dirty ranges show as absent, without data, and clean
    /// ones as data.
    @Test(.enabled(if: installed("qemu-img"), "qemu-img is not installed"))
    func qemuImgMapsDirtyRangesAsHoles() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let map = try run("qemu-img", ["map", "--output=json", "--image-opts",
                                       "driver=nbd,server.type=unix,server.path=\(fixture.socket),export=disk0,"
                                       + "x-dirty-bitmap=qemu:dirty-bitmap:s1"])
        #expect(map.status == 0, "\(map)")
        let entries = try JSONSerialization.jsonObject(with: Data(map.output.utf8)) as? [[String: Any]] ?? []
        let summary = entries.map { "\($0["start"]!)+\($0["length"]!) data \($0["data"]!) present \($0["present"]!)" }
        #expect(summary == [
            "0+1048576 data 1 present 1", "1048576+2097152 data 0 present 0", "3145728+5242880 data 1 present 1",
            "8388608+65536 data 0 present 0", "8454144+58654720 data 1 present 1",
        ], "\(map)")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "python3 is not installed"))
    func libnbdReadsBothContextsInOneBlockStatus() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let result = try run("/usr/bin/python3", ["-c", """
        import nbd
        uri = "nbd+unix:///disk0?socket=\(fixture.socket)"
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.connect_uri(uri)
        listed = []
        h.opt_list_meta_context(lambda name: listed.append(name))
        assert listed == ["base:allocation", "qemu:dirty-bitmap:s1"], listed
        h.add_meta_context("base:allocation")
        h.add_meta_context("qemu:dirty-bitmap:s1")
        h.add_meta_context("qemu:dirty-bitmap:nope")
        h.opt_go()
        assert h.can_meta_context("base:allocation") == 1
        assert h.can_meta_context("qemu:dirty-bitmap:s1") == 1
        assert h.can_meta_context("qemu:dirty-bitmap:nope") == 0
        M = 1024 * 1024
        h.pwrite(b"\\x07" * 65536, 2 * M)
        seen = {}
        def record(context, offset, entries, error):
            seen[context] = (offset, list(entries))
        h.block_status(16 * M, 0, record)
        assert seen["base:allocation"] == (0, [2 * M, 3, 65536, 0, 14 * M - 65536, 3]), seen
        assert seen["qemu:dirty-bitmap:s1"] == (0, [M, 0, 2 * M, 1, 5 * M, 0, 65536, 1, 8 * M - 65536, 0]), seen
        seen.clear()
        h.block_status(M, 2 * M + 4096, record, nbd.CMD_FLAG_REQ_ONE)
        assert seen["base:allocation"][1] == [65536 - 4096, 0], seen
        assert seen["qemu:dirty-bitmap:s1"][1] == [M - 4096, 1], seen
        h.shutdown()
        print("OK")
        """])
        #expect(result.output.contains("OK"), "\(result)")
    }

    /// A client that hangs up while its LIST waits for the provider leaves nothing behind:
    /// the consumer the question was asked on is given back once the answer comes.
    @Test func aClientGoneWhileTheProviderIsAskedLeavesNoConsumer() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let exportGeom = try #require(fixture.topology.geom(named: "nbd/later"))
        for _ in 0..<3 {
            let client = try RawClient(path: fixture.socket)
            _ = client.receive(18)
            let list = bigEndian(UInt32(5)) + Array("later".utf8) + bigEndian(UInt32(0))
            client.send(bigEndian(UInt32(3)) + bigEndian(NBDMagic.ihaveopt) + bigEndian(NBDOption.structuredReply.rawValue)
                        + bigEndian(UInt32(0)) + bigEndian(NBDMagic.ihaveopt) + bigEndian(NBDOption.listMetaContext.rawValue)
                        + bigEndian(UInt32(list.count)) + list)
            _ = client.receive(20)
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while fixture.topology.withLock({ !exportGeom.consumers.isEmpty }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(fixture.topology.withLock { exportGeom.consumers.isEmpty })
        let info = try run("nbdinfo", ["--size", fixture.uri(export: "later")])
        #expect(info.output.contains("67108864"), "\(info)")
    }

    /// A provider that lists its bitmaps from another thread holds the options sent after
    /// the one waiting: every reply comes in the order of the options, all sent at once.
    @Test func optionsSentTogetherAreAnsweredInOrderWhileTheProviderIsAsked() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let client = try RawClient(path: fixture.socket)
        #expect(client.receive(18).count == 18, "greeting")
        func option(_ option: NBDOption, _ data: [UInt8] = []) -> [UInt8] {
            bigEndian(NBDMagic.ihaveopt) + bigEndian(option.rawValue) + bigEndian(UInt32(data.count)) + data
        }
        func contexts(_ queries: [String]) -> [UInt8] {
            var bytes = bigEndian(UInt32(5)) + Array("later".utf8) + bigEndian(UInt32(queries.count))
            for query in queries { bytes += bigEndian(UInt32(query.utf8.count)) + Array(query.utf8) }
            return bytes
        }
        let go = bigEndian(UInt32(5)) + Array("later".utf8) + bigEndian(UInt16(0))
        client.send(bigEndian(UInt32(3)) + option(.structuredReply) + option(.listMetaContext, contexts([]))
                    + option(.setMetaContext, contexts(["qemu:dirty-bitmap:s1", "base:allocation"]))
                    + option(.listMetaContext, contexts(["qemu:dirty-bitmap:"])) + option(.go, go)
                    + requestBytes(.blockStatus, cookie: 7, offset: 0, length: 4 << 20))
        var replies: [String] = []
        while replies.last != "7 ack" {
            let header = client.receive(20)
            guard header.count == 20 else { break }
            let option = header[8..<12].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let type = header[12..<16].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let payload = client.receive(Int(header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }))
            switch NBDOptionReply(rawValue: type) {
            case .metaContext?:
                let id = payload[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                replies.append("\(option) \(id) \(String(decoding: payload[4...], as: UTF8.self))")
            case .ack?: replies.append("\(option) ack")
            case .info?: continue
            default: replies.append("\(option) error 0x\(String(type, radix: 16))")
            }
        }
        #expect(replies == [
            "8 ack",
            "9 0 base:allocation", "9 0 qemu:dirty-bitmap:s1", "9 ack",
            "10 1 base:allocation", "10 2 qemu:dirty-bitmap:s1", "10 ack",
            "9 0 qemu:dirty-bitmap:s1", "9 ack",
            "7 ack",
        ])
        // Two chunks: base:allocation, then the bitmap, DONE.
        var chunks: [String] = []
        for _ in 0..<2 {
            let header = client.receive(20)
            guard header.count == 20 else { break }
            let flags = header[4..<6].reduce(UInt16(0)) { $0 << 8 | UInt16($1) }
            let payload = client.receive(Int(header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }))
            let words = stride(from: 0, to: payload.count, by: 4).map {
                payload[$0..<($0 + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            }
            chunks.append("\(flags) \(words)")
        }
        #expect(chunks == ["0 [1, 4194304, 3]", "1 [2, 1048576, 0, 2097152, 1, 1048576, 0]"])
    }
}
