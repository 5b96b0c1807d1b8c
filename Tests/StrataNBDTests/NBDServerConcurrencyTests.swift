import Foundation
import Strata
import StrataClasses
import StrataDisks
import StrataNBD
import StrataNBDClient
import Testing

/// Many connections at once on a file-backed export, where completions arrive on the
/// disk's worker threads and hop to each connection's event loop, and large reads leave
/// from another thread than the event loop. Run under
/// ThreadSanitizer by scripts/check.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct NBDServerConcurrency {
    static func fileFixture() async throws -> ServerFixture {
        try await ServerFixture { topology, directory in
            _ = try FileDisk.create(in: topology, name: "fd0", path: directory + "/disk.img", size: 64 << 20)
            return [NBDExport(name: "disk0", provider: "fd0", isDefault: true)]
        }
    }

    @Test func fourConnectionsWritingAndVerifyingTheirOwnRegionsLoseNothing() async throws {
        let fixture = try await Self.fileFixture()
        defer { Task { await fixture.stop() } }
        let script = """
        import nbd, random, sys
        region = int(sys.argv[1])
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///disk0?socket=\(fixture.socket)")
        base = region * 16 * 1024 * 1024
        rng = random.Random(region)
        written = {}
        buffers = []
        # Distinct blocks: two writes to one block in flight together may land in
        # either order (NBD orders nothing between requests in flight).
        blocks = rng.sample(range(4096), 400)
        for i in range(400):
            block = blocks[i]
            data = bytes([(region * 31 + i) % 251]) * 4096
            written[block] = data
            buf = nbd.Buffer.from_bytearray(bytearray(data))
            buffers.append(buf)
            h.aio_pwrite(buf, base + block * 4096, completion=lambda *a: 1,
                         flags=nbd.CMD_FLAG_FUA if i % 7 == 0 else 0)
            while h.aio_in_flight() >= 32:
                h.poll(-1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        h.flush()
        for block, data in written.items():
            assert h.pread(4096, base + block * 4096) == data, block
        # The region again in 1 MiB reads, 16 in flight: reads this large are sent to
        # the provider from another thread than the event loop.
        large = {}
        for piece in range(16):
            buf = nbd.Buffer(1 << 20)
            large[piece] = buf
            h.aio_pread(buf, base + piece * (1 << 20), completion=lambda *a: 1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        zeros = bytes(4096)
        for piece, buf in large.items():
            data = buf.to_bytearray()
            for index in range(256):
                block = piece * 256 + index
                assert data[index * 4096:(index + 1) * 4096] == written.get(block, zeros), block
        print("verified", len(written))
        """
        let results = Locked<[ProgramResult]>([])
        await withTaskGroup(of: Void.self) { group in
            for region in 0..<4 {
                group.addTask {
                    if let result = try? run("/usr/bin/python3", ["-c", script, "\(region)"]) {
                        results.update { $0.append(result) }
                    }
                }
            }
        }
        let all = results.get()
        #expect(all.count == 4)
        for result in all { #expect(result.output.contains("verified"), "\(result)") }
    }

    @Test func fuaWritesAreInTheFileWhenAcknowledged() async throws {
        let fixture = try await Self.fileFixture()
        defer { Task { await fixture.stop() } }
        let result = try run("/usr/bin/python3", ["-c", """
        import nbd
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///disk0?socket=\(fixture.socket)")
        h.pwrite(b"\\xa5" * 8192, 1048576, nbd.CMD_FLAG_FUA)
        print("acknowledged")
        """])
        #expect(result.output.contains("acknowledged"), "\(result)")
        // Read the backing file directly, not through the server.
        let file = try FileHandle(forReadingFrom: URL(fileURLWithPath: fixture.directory + "/disk.img"))
        try file.seek(toOffset: 1048576)
        let bytes = try file.read(upToCount: 8192)
        try file.close()
        #expect(bytes == Data(repeating: 0xa5, count: 8192))
    }

    // MARK: Read-modify-writes against each other and against aligned writes

    /// Every request held 2 ms below the export (a nop with a delay over a memory disk),
    /// completing on a timer thread, so that requests of one sector overlap in flight:
    /// a read-modify-write without its hold would read the sector while the other write
    /// is under way and write back the stale copy. "alias" is a second export of the
    /// same provider; the connections are spread over the server's two event loops.
    static func heldFixture() async throws -> ServerFixture {
        try await ServerFixture { topology, _ in
            let memory = try MemoryDisk.create(in: topology, name: "rmw-md", size: 16 << 20)
            _ = try NopGeom.create(in: topology, name: "rmw-held", over: memory.provider,
                                   settings: NopGeom.Settings(delayMilliseconds: 2))
            return [NBDExport(name: "held", provider: "rmw-held", isDefault: true),
                    NBDExport(name: "alias", provider: "rmw-held")]
        }
    }

    /// Per round, 32 sectors each get two writes at once from two connections (and
    /// exports), at bytes that do not overlap; both must be there afterwards.
    @Test func concurrentUnalignedWritesToOneSectorFromTwoConnectionsLoseNeither() async throws {
        let fixture = try await Self.heldFixture()
        defer { Task { await fixture.stop() } }
        let result = try run("/usr/bin/python3", ["-c", """
        import nbd, random
        def connect(name):
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///" + name + "?socket=\(fixture.socket)")
            return h
        a, b, c = connect("held"), connect("held"), connect("alias")
        rng = random.Random(3)
        def settle(handles):
            while any(h.aio_in_flight() > 0 for h in handles):
                for h in handles:
                    if h.aio_in_flight() > 0:
                        h.poll(1)
        for round in range(40):
            other = b if round % 2 == 0 else c
            writes = []
            for sector in range(32):
                base = (round * 32 + sector) * 512
                first, second = rng.randrange(0, 250), rng.randrange(256, 509)
                x, y = bytes([round % 250 + 1]) * 3, bytes([sector + 100]) * 3
                pair = [(a, x, base + first), (other, y, base + second)]
                rng.shuffle(pair)
                for h, data, offset in pair:
                    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), offset, completion=lambda *e: 1)
                writes.append((base, first, x, second, y))
            settle([a, other])
            for base, first, x, second, y in writes:
                sector = a.pread(512, base)
                assert sector[first:first + 3] == x and sector[second:second + 3] == y, (round, base)
        print("OK")
        """])
        #expect(result.output.contains("OK"), "\(result)")
    }

    /// Per round, 32 sectors each get an aligned write of the whole sector and an
    /// unaligned write of 3 bytes in it at once, from two connections, in either order.
    /// Either may land last, but nothing of the sector's old contents may survive the
    /// aligned write: that would be the read-modify-write's stale copy.
    @Test func anUnalignedWriteRacingAnAlignedWriteOfItsSectorLosesNeither() async throws {
        let fixture = try await Self.heldFixture()
        defer { Task { await fixture.stop() } }
        let result = try run("/usr/bin/python3", ["-c", """
        import nbd, random
        def connect(name):
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///" + name + "?socket=\(fixture.socket)")
            return h
        a, b = connect("held"), connect("alias")
        rng = random.Random(4)
        def settle(handles):
            while any(h.aio_in_flight() > 0 for h in handles):
                for h in handles:
                    if h.aio_in_flight() > 0:
                        h.poll(1)
        unaligned_last = aligned_last = 0
        for round in range(40):
            old, new, small = bytes([1]) * 512, bytes([2]) * 512, bytes([3]) * 3
            for sector in range(32):
                a.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(old)), sector * 512, completion=lambda *e: 1)
            settle([a])
            places = []
            for sector in range(32):
                place = rng.randrange(0, 509)
                pair = [(a, new, sector * 512), (b, small, sector * 512 + place)]
                rng.shuffle(pair)
                for h, data, offset in pair:
                    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), offset, completion=lambda *e: 1)
                places.append(place)
            settle([a, b])
            for sector, place in enumerate(places):
                got = a.pread(512, sector * 512)
                outside = got[:place] + got[place + 3:]
                assert outside == new[:509], (round, sector, got)
                assert got[place:place + 3] in (small, new[:3]), (round, sector, got)
                if got[place:place + 3] == small:
                    unaligned_last += 1
                else:
                    aligned_last += 1
        print("OK", unaligned_last, aligned_last)
        """])
        #expect(result.output.contains("OK"), "\(result)")
    }

    // The same two orders made certain: writes held below the export until let go.

    static func gatedFixture() async throws -> (ServerFixture, WriteGate) {
        let gate = Locked<WriteGate?>(nil)
        let fixture = try await ServerFixture { topology, _ in
            let memory = try MemoryDisk.create(in: topology, name: "gate-md", size: 1 << 20)
            gate.set(try WriteGate.create(in: topology, name: "gated", over: memory.provider))
            return [NBDExport(name: "gated", provider: "gated", isDefault: true)]
        }
        return (fixture, gate.get()!)
    }

    /// Waits until `condition` holds, for up to 5 s.
    static func eventually(_ condition: () -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while !condition() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        return condition()
    }

    /// An aligned write of a sector is in flight when an unaligned write of that sector
    /// arrives on another connection: the read-modify-write must not read the sector
    /// before the aligned write has landed, or it writes back the old contents over it.
    @Test func anUnalignedWriteWaitsForAnAlignedWriteOfItsSectorInFlight() async throws {
        let (fixture, gate) = try await Self.gatedFixture()
        defer { Task { await fixture.stop() } }
        let a = try await NBDClient.connect(to: .unix(path: fixture.socket))
        let b = try await NBDClient.connect(to: .unix(path: fixture.socket))
        async let old: Void = a.write([UInt8](repeating: 1, count: 512), offset: 0)
        #expect(try await Self.eventually { gate.heldCount == 1 })
        gate.releaseAll()
        try await old
        async let aligned: Void = a.write([UInt8](repeating: 2, count: 512), offset: 0)
        #expect(try await Self.eventually { gate.heldCount == 1 })
        async let small: Void = b.write([3, 3, 3], offset: 100)
        try await Task.sleep(for: .milliseconds(100))
        #expect(gate.heldCount == 1, "the read-modify-write waits: it has neither read nor written")
        gate.releaseAll()
        #expect(try await Self.eventually { gate.heldCount == 1 }, "then it reads and writes")
        gate.releaseAll()
        try await aligned
        try await small
        let sector = try await a.read(offset: 0, length: 512)
        #expect(Array(sector.readableBytesView) == [UInt8](repeating: 2, count: 100) + [3, 3, 3] + [UInt8](repeating: 2, count: 409))
        await a.disconnect()
        await b.disconnect()
    }

    /// A read-modify-write is under way (its write held) when an aligned write of its
    /// sector arrives on another connection: the aligned write is parked until the
    /// read-modify-write is done, so the two cannot land in the other order.
    @Test func anAlignedWriteWaitsForAReadModifyWriteOfItsSector() async throws {
        let (fixture, gate) = try await Self.gatedFixture()
        defer { Task { await fixture.stop() } }
        let a = try await NBDClient.connect(to: .unix(path: fixture.socket))
        let b = try await NBDClient.connect(to: .unix(path: fixture.socket))
        async let small: Void = b.write([3, 3, 3], offset: 100)
        #expect(try await Self.eventually { gate.heldCount == 1 }, "the read-modify-write's write")
        async let aligned: Void = a.write([UInt8](repeating: 2, count: 512), offset: 0)
        try await Task.sleep(for: .milliseconds(100))
        #expect(gate.heldCount == 1, "the aligned write is parked, not sent")
        gate.releaseAll()
        #expect(try await Self.eventually { gate.heldCount == 1 }, "then it is sent")
        gate.releaseAll()
        try await small
        try await aligned
        let sector = try await a.read(offset: 0, length: 512)
        #expect(Array(sector.readableBytesView) == [UInt8](repeating: 2, count: 512))
        await a.disconnect()
        await b.disconnect()
    }
}
