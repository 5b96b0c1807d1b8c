import Foundation
import Strata
import StrataDisks
import StrataNBD
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
}
