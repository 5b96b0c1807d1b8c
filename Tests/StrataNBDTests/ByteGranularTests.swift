import Foundation
import Strata
import StrataClasses
import StrataDisks
@testable import StrataNBD
import Testing

/// Any byte range and requests up to the maximum request, through the clients that send
/// them: libnbd from Python and from C (built here against Debian's libnbd-dev, as its own
/// test programs and examples are), qemu-io and nbdcopy.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ByteGranularTests {
    /// Memory disks with 512- and 4096-byte sectors, a file disk whose completions come
    /// from worker threads, a stripe (which splits what it is given), and a null disk.
    static func fixture(limits: NBDServer.Limits = NBDServer.Limits()) async throws -> ServerFixture {
        try await ServerFixture(limits: limits) { topology, directory in
            _ = try MemoryDisk.create(in: topology, name: "bm512", size: 128 << 20)
            _ = try MemoryDisk.create(in: topology, name: "bm4k", size: 16 << 20, sectorSize: 4096)
            _ = try FileDisk.create(in: topology, name: "bfile", path: directory + "/file.img", size: 16 << 20,
                                    engine: .threads)
            let halves = try (0..<2).map { try MemoryDisk.create(in: topology, name: "bhalf\($0)", size: 64 << 20) }
            try StripeGeom.create(in: topology, name: "bstripe", over: halves.map(\.provider))
            _ = try NullDisk.create(in: topology, name: "bnull", size: 1 << 30)
            return [
                NBDExport(name: "m512", provider: "bm512", isDefault: true),
                NBDExport(name: "m4k", provider: "bm4k"),
                NBDExport(name: "file", provider: "bfile"),
                NBDExport(name: "stripe", provider: "bstripe"),
                NBDExport(name: "null", provider: "bnull"),
            ]
        }
    }

    /// Runs a Python script with `uri(export)` defined and the arguments given; it prints
    /// OK at the end.
    static func python(_ script: String, fixture: ServerFixture, _ arguments: [String] = []) throws -> ProgramResult {
        let prelude = """
        import nbd, errno, random, sys
        def uri(name=""):
            return "nbd+unix:///" + name + "?socket=\(fixture.socket)"

        """
        return try run("/usr/bin/python3", ["-c", prelude + script] + arguments)
    }

    // MARK: Any byte range

    /// Every class of offset and length around a sector (and a 4 KiB page), against a
    /// model of the bytes: writes with and without FUA, WRITE_ZEROES and TRIM inside them,
    /// reads with a margin on each side, block status from the offset.
    @Test(arguments: [("m512", 512, true), ("m512", 512, false), ("m4k", 4096, true), ("file", 512, true),
                      ("file", 512, false), ("stripe", 512, true)])
    func byteRangesReadAndWriteLikeAModel(export: String, sector: Int, structured: Bool) async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let result = try Self.python("""
        export, sector, structured = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
        rng = random.Random(21)
        h = nbd.NBD()
        h.set_request_structured_replies(structured)
        h.add_meta_context("base:allocation")
        h.connect_uri(uri(export))
        assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
        span = 1 << 20
        model = bytearray(h.pread(span, 0))
        def check(off, n):
            got = h.pread(n, off)
            assert got == bytes(model[off:off + n]), ("read", off, n)
        offsets = [0, 1, 2, 3, sector - 1, sector, sector + 1, 2 * sector - 3, 4095, 4096, 4097, 3 * sector + 7]
        lengths = [1, 2, 3, sector - 1, sector, sector + 1, 2 * sector - 1, 2 * sector + 1, 4096 + 3, 65536 + 5]
        base, count = 0, 0
        for o in offsets:
            for n in lengths:
                off = base + o
                data = rng.randbytes(n)
                flags = nbd.CMD_FLAG_FUA if count % 3 == 0 else 0
                h.pwrite(data, off, flags)
                model[off:off + n] = data
                check(off, n)
                check(max(0, off - 7), n + 14)
                if count % 4 == 1:
                    z0, zn = off + n // 3, max(1, n // 3)
                    h.zero(zn, z0, flags | (nbd.CMD_FLAG_NO_HOLE if count % 8 == 1 else 0))
                    model[z0:z0 + zn] = bytes(zn)
                    check(max(0, off - 7), n + 14)
                if count % 4 == 3:
                    # Only the whole sectors inside a TRIM are trimmed (read as zeros here).
                    t0 = off + 1
                    h.trim(n, t0, flags)
                    lo, hi = -(-t0 // sector) * sector, (t0 + n) // sector * sector
                    if lo < hi:
                        model[lo:hi] = bytes(hi - lo)
                    check(max(0, off - sector), n + 2 * sector)
                if structured and count % 5 == 0:
                    seen = []
                    h.block_status(n, off, lambda context, start, entries, error: seen.append((start, list(entries))))
                    assert seen and seen[0][0] == off and all(length > 0 for length in seen[0][1][0::2]), seen
                base, count = (base + 77777) % (span - 200000), count + 1
        check(0, span)
        try:
            h.zero(3, 1, nbd.CMD_FLAG_FAST_ZERO)
            raise SystemExit("a fast zero of part of a sector succeeded")
        except nbd.Error as e:
            assert e.errno in (errno.ENOTSUP, "ENOTSUP", "EOPNOTSUPP"), e.errno
        check(0, 4096)
        print("OK", count)
        """, fixture: fixture, [export, "\(sector)", structured ? "1" : "0"])
        #expect(result.output.contains("OK 120"), "\(result)")
    }

    /// A C client built here against libnbd, doing what libnbd's examples and test
    /// programs do with byte offsets: a 1-byte read at offset 1, a 3-byte write at 511,
    /// then four threads, each with its own connection and 64 requests in flight,
    /// writing 16-byte pieces that interleave inside every sector (each piece a
    /// read-modify-write racing the other connections'), checked byte for byte.
    @Test func aLibnbdCProgramWithByteOffsetsAndFourConnectionsLosesNothing() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let program = try Self.buildLibnbdProgram(in: fixture.directory)
        for export in ["m512", "file"] {
            let result = try run(program, [fixture.uri(export: export)], seconds: 150)
            #expect(result.status == 0 && result.output.contains("verified 262144 bytes"), "\(export): \(result)")
        }
    }

    /// Compiles `libnbdProgram` with the system's C compiler and libnbd-dev.
    static func buildLibnbdProgram(in directory: String) throws -> String {
        let source = directory + "/bytes.c"
        let binary = directory + "/bytes"
        try libnbdProgram.write(toFile: source, atomically: true, encoding: .utf8)
        let build = try run("cc", ["-O1", "-Wall", "-o", binary, source, "-lnbd", "-lpthread"])
        guard build.status == 0 else {
            throw StrataError(.invalid, "cannot build the libnbd program (is libnbd-dev installed?): \(build)")
        }
        return binary
    }

    static let libnbdProgram = """
    #include <libnbd.h>
    #include <pthread.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>

    #define THREADS 4
    #define SPAN (256 * 1024)
    #define PIECE 16
    #define DEPTH 64
    #define ROUNDS 2

    static const char *uri;
    static unsigned char expected[SPAN];

    static void die(struct nbd_handle *nbd, const char *what) {
        fprintf(stderr, "%s: %s (errno %d)\\n", what, nbd_get_error(), nbd_get_errno());
        exit(1);
    }

    static struct nbd_handle *connect_to_server(void) {
        struct nbd_handle *nbd = nbd_create();
        if (nbd == NULL) die(NULL, "nbd_create");
        if (nbd_connect_uri(nbd, uri) == -1) die(nbd, "nbd_connect_uri");
        return nbd;
    }

    /// Thread t owns bytes [k * 64 + t * 16, + 16) for every k: pieces of every sector.
    static void *writer(void *argument) {
        int t = (int)(intptr_t)argument;
        struct nbd_handle *nbd = connect_to_server();
        unsigned seed = 1000 + t;
        static __thread unsigned char buffers[DEPTH][PIECE];
        int64_t cookies[DEPTH];
        for (int round = 0; round < ROUNDS; round++) {
            int pieces = SPAN / (THREADS * PIECE);
            for (int first = 0; first < pieces; first += DEPTH) {
                int batch = pieces - first < DEPTH ? pieces - first : DEPTH;
                for (int i = 0; i < batch; i++) {
                    uint64_t offset = (uint64_t)(first + i) * THREADS * PIECE + t * PIECE;
                    for (int b = 0; b < PIECE; b++) buffers[i][b] = rand_r(&seed) & 0xff;
                    memcpy(expected + offset, buffers[i], PIECE);
                    cookies[i] = nbd_aio_pwrite(nbd, buffers[i], PIECE, offset, NBD_NULL_COMPLETION,
                                                i % 5 == 0 ? LIBNBD_CMD_FLAG_FUA : 0);
                    if (cookies[i] == -1) die(nbd, "nbd_aio_pwrite");
                }
                while (nbd_aio_in_flight(nbd) > 0) {
                    if (nbd_poll(nbd, -1) == -1) die(nbd, "nbd_poll");
                }
                for (int i = 0; i < batch; i++) {
                    if (nbd_aio_command_completed(nbd, cookies[i]) != 1) die(nbd, "a write");
                }
            }
        }
        if (nbd_flush(nbd, 0) == -1) die(nbd, "nbd_flush");
        nbd_shutdown(nbd, 0);
        nbd_close(nbd);
        return NULL;
    }

    int main(int argc, char **argv) {
        if (argc != 2) { fprintf(stderr, "usage: bytes URI\\n"); return 2; }
        uri = argv[1];
        struct nbd_handle *nbd = connect_to_server();
        if (nbd_get_block_size(nbd, LIBNBD_SIZE_MINIMUM) != 1) { fprintf(stderr, "minimum block size is not 1\\n"); return 1; }
        unsigned char one = 0x5a, three[3] = { 1, 2, 3 }, back[5];
        if (nbd_pwrite(nbd, &one, 1, 1, 0) == -1) die(nbd, "1-byte write at 1");
        if (nbd_pread(nbd, back, 1, 1, 0) == -1) die(nbd, "1-byte read at 1");
        if (back[0] != 0x5a) { fprintf(stderr, "1-byte read at 1 gave %d\\n", back[0]); return 1; }
        if (nbd_pwrite(nbd, three, 3, 511, LIBNBD_CMD_FLAG_FUA) == -1) die(nbd, "3-byte write at 511");
        if (nbd_pread(nbd, back, 5, 510, 0) == -1) die(nbd, "5-byte read at 510");
        if (back[0] != 0 || back[1] != 1 || back[2] != 2 || back[3] != 3 || back[4] != 0) {
            fprintf(stderr, "bytes 510..514 are %d %d %d %d %d\\n", back[0], back[1], back[2], back[3], back[4]);
            return 1;
        }
        pthread_t threads[THREADS];
        for (int t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, writer, (void *)(intptr_t)t);
        for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
        static unsigned char actual[SPAN];
        if (nbd_pread(nbd, actual, SPAN, 0, 0) == -1) die(nbd, "read back");
        for (int i = 0; i < SPAN; i++) {
            if (actual[i] != expected[i]) {
                fprintf(stderr, "byte %d is %d, expected %d (sector %d)\\n", i, actual[i], expected[i], i / 512);
                return 1;
            }
        }
        printf("verified %d bytes\\n", SPAN);
        nbd_shutdown(nbd, 0);
        nbd_close(nbd);
        return 0;
    }
    """

    /// qemu-io over the raw format sends what it is told, byte for byte: qemu takes the
    /// export's minimum block size as its request alignment.
    @Test func qemuIoWritesAndReadsBytes() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let commands = [
            "write -P 0xab 1 3", "read -P 0xab 1 3", "read -P 0 0 1", "read -P 0 4 508",
            "write -P 0xcd 511 2", "read -P 0xcd 511 2", "read -P 0xab 1 3",
            "write -P 0x11 4095 4098", "read -P 0x11 4095 4098", "write -z 4097 100", "read -P 0 4097 100",
            "read -P 0x11 4197 3996", "aio_write -P 0x22 100001 7", "aio_write -P 0x33 100008 9", "aio_flush",
            "read -P 0x22 100001 7", "read -P 0x33 100008 9", "flush",
        ]
        for export in ["m512", "m4k"] {
            let result = try run("qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [fixture.qemuURI(export: export)])
            #expect(result.status == 0, "\(export): \(result)")
            #expect(!result.output.contains("Pattern verification failed"), "\(export): \(result.output)")
            #expect(!result.output.lowercased().contains("error"), "\(export): \(result.output)")
        }
    }

    /// nbdcopy writes what it reads from a pipe as it comes: fed 1000 bytes at a time,
    /// its writes start and end inside sectors. A file whose size no sector divides ends
    /// with a short write. Both land byte for byte.
    @Test func nbdcopyWritesPiecesThatStartInsideSectors() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let source = fixture.directory + "/in.raw"
        let back = fixture.directory + "/out.raw"
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<((1 << 20) + 333)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try Data(bytes).write(to: URL(fileURLWithPath: source))
        for export in ["m4k", "file"] {
            let trickle = """
            import os, sys, time
            data = open(sys.argv[1], "rb").read()
            for i in range(0, len(data), 1000):
                os.write(1, data[i:i + 1000])
                time.sleep(0.0002)
            """
            let piped = try run("/bin/sh", ["-c", "/usr/bin/python3 -c \"$0\" \"$1\" | nbdcopy -- - \"$2\"", trickle, source,
                                            fixture.uri(export: export)])
            #expect(piped.status == 0, "\(export): \(piped)")
            let from = try run("nbdcopy", [fixture.uri(export: export), back])
            #expect(from.status == 0, "\(export): \(from)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: back)).prefix(bytes.count) == Data(bytes), "\(export)")
            // Zeros, then the file again: its last write is 333 bytes long.
            _ = try Self.python("h = nbd.NBD(); h.connect_uri(uri(sys.argv[1])); h.zero(4 << 20, 0)", fixture: fixture, [export])
            let copy = try run("nbdcopy", [source, fixture.uri(export: export)])
            #expect(copy.status == 0, "\(export): \(copy)")
            _ = try run("nbdcopy", [fixture.uri(export: export), back])
            let copied = try Data(contentsOf: URL(fileURLWithPath: back))
            #expect(copied.prefix(bytes.count) == Data(bytes) && copied[bytes.count..<(bytes.count + 4096)].allSatisfy { $0 == 0 },
                    "\(export)")
        }
    }

    // MARK: Large requests

    /// 64 MiB, the default maximum, in one request each way, aligned and not, on a
    /// memory disk, a file disk and a stripe: the providers take it as one request (a
    /// stripe splits it into its 64 KiB chunks itself).
    @Test(arguments: ["m512", "stripe"])
    func aSixtyFourMiBWriteAndReadArriveWhole(export: String) async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let result = try Self.python("""
        h = nbd.NBD()
        h.connect_uri(uri(sys.argv[1]))
        largest = h.get_block_size(nbd.SIZE_MAXIMUM)
        assert largest == 64 * 1024 * 1024, largest
        data = random.Random(5).randbytes(largest)
        h.pwrite(data, 1 << 20, nbd.CMD_FLAG_FUA)
        assert h.pread(largest, 1 << 20) == data
        h.pwrite(data, 12345)
        assert h.pread(largest, 12345) == data
        # Past the second write's end, the first one's bytes are still there.
        assert h.pread(100, 12345 + largest - 50) == data[-50:] + data[12345 + largest - (1 << 20):][:50]
        print("OK")
        """, fixture: fixture, [export])
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func aSixtyFourMiBWriteAndReadOnAFileDisk() async throws {
        let fixture = try await ServerFixture { topology, directory in
            _ = try FileDisk.create(in: topology, name: "bigfile", path: directory + "/big.img", size: 80 << 20,
                                    engine: .threads)
            return [NBDExport(name: "big", provider: "bigfile", isDefault: true)]
        }
        defer { Task { await fixture.stop() } }
        let result = try Self.python("""
        h = nbd.NBD()
        h.connect_uri(uri("big"))
        data = random.Random(6).randbytes(64 * 1024 * 1024)
        h.pwrite(data, 3, nbd.CMD_FLAG_FUA)
        assert h.pread(len(data), 3) == data
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    /// A server told `max-request: 1MiB` says so, and answers longer READs and WRITEs
    /// with EOVERFLOW (libnbd itself refuses anything over 64 MiB, so the limit is
    /// lowered to reach it); the connection goes on.
    @Test func requestsOverTheMaximumGetOverflowAndTheConnectionGoesOn() async throws {
        let fixture = try await Self.fixture(limits: NBDServer.Limits(maximumRequest: 1 << 20))
        defer { Task { await fixture.stop() } }
        let result = try Self.python("""
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.connect_uri(uri("m512"))
        assert h.get_block_size(nbd.SIZE_MAXIMUM) == 1 << 20
        for what, call in [("read", lambda: h.pread((1 << 20) + 1, 0)),
                           ("write", lambda: h.pwrite(bytes((1 << 20) + 1), 7))]:
            try:
                call()
                raise SystemExit(what + " over the maximum succeeded")
            except nbd.Error as e:
                assert e.errno in (errno.EOVERFLOW, "EOVERFLOW"), (what, e.errno, e.string)
        h.pwrite(bytes([9]) * (1 << 20), 7)
        assert h.pread(1 << 20, 7) == bytes([9]) * (1 << 20)
        h.zero(8 << 20, 0)
        assert h.pread(1 << 20, 7) == bytes(1 << 20), "WRITE_ZEROES carries no payload and may be longer"
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    /// Two clients each send three 64 MiB writes (384 MiB) to an export that holds every
    /// request for a second, at a server budget of 64 MiB: the server takes in at most
    /// the budget and one request per connection before it stops reading, and answers
    /// every write in the end.
    @Test func theBudgetStillBoundsPayloadWithSixtyFourMiBRequests() async throws {
        let budget = 64 << 20
        let fixture = try await ServerFixture(limits: NBDServer.Limits(serverBytes: budget)) { topology, _ in
            let memory = try MemoryDisk.create(in: topology, name: "bbudget", size: 512 << 20)
            _ = try NopGeom.create(in: topology, name: "bheld", over: memory.provider,
                                   settings: NopGeom.Settings(delayMilliseconds: 1000))
            return [NBDExport(name: "held", provider: "bheld", isDefault: true)]
        }
        defer { Task { await fixture.stop() } }
        let payload = [UInt8](repeating: 0x5a, count: 64 << 20)
        let clients = try (0..<2).map { _ in try RawClient(path: fixture.socket) }
        for (index, client) in clients.enumerated() {
            _ = client.receive(18)
            client.send(handshake(export: "held"))
            #expect(client.receiveOptionRepliesUntilAck())
            // Sent from threads of their own: a stopped connection blocks its sender.
            startWorkerThread {
                for write in 0..<3 {
                    let offset = UInt64(index * 3 + write) << 26
                    _ = client.send(requestBytes(.write, cookie: UInt64(write), offset: offset + 1, length: 64 << 20) + payload,
                                    seconds: 60)
                }
            }
        }
        // Sampled while the writes come in and complete (each is held for a second).
        var highest = 0
        let deadline = ContinuousClock.now + .seconds(4)
        while ContinuousClock.now < deadline {
            highest = max(highest, fixture.server.payloadBytesInFlight)
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(highest <= budget + 2 * (64 << 20), "\(highest >> 20) MiB in flight")
        #expect(highest >= budget, "the budget was reached: \(highest >> 20) MiB in flight")
        for client in clients {
            let replies = client.receive(3 * 16)
            #expect(replies.count == 3 * 16)
            #expect(stride(from: 4, to: replies.count, by: 16).allSatisfy { replies[$0..<($0 + 4)].allSatisfy { $0 == 0 } },
                    "every write succeeded")
        }
        #expect(fixture.server.payloadBytesInFlight == 0)
    }
}
