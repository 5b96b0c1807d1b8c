import Foundation
import Strata
import StrataDisks
import StrataNBD
import Testing

/// libnbd driven from Python (Debian's /usr/bin/python3 has the `nbd` module, as nbdsh
/// does): option haggling, block status, error replies with strict checking off.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct LibnbdScriptTests {
    /// Runs a Python script with `URI` and `SOCKET` defined; it prints OK at the end.
    func python(_ script: String, fixture: ServerFixture) throws -> ProgramResult {
        let prelude = """
        import nbd, errno, sys
        SOCKET = \"\(fixture.socket)\"
        def uri(name=""):
            return "nbd+unix:///" + name + "?socket=" + SOCKET

        """
        return try run("/usr/bin/python3", ["-c", prelude + script])
    }

    @Test func optionHagglingListsInfosAndRefusesAnUnknownExport() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.connect_uri(uri())
        names = []
        h.opt_list(lambda name, description: names.append((name, description)))
        assert sorted(names) == [("disk0", "scratch disk"), ("null", ""), ("ro", "read-only view")], names
        h.set_export_name("ro")
        h.opt_info()
        assert h.get_size() == 64 * 1024 * 1024
        assert h.is_read_only() == 1
        h.set_export_name("nope")
        try:
            h.opt_info()
            raise SystemExit("opt_info of an unknown export succeeded")
        except nbd.Error:
            pass
        contexts = []
        h.set_export_name("disk0")
        h.opt_list_meta_context(lambda name: contexts.append(name))
        assert contexts == ["base:allocation"], contexts
        h.add_meta_context("base:allocation")
        h.opt_go()
        assert h.can_meta_context("base:allocation") == 1
        assert h.get_size() == 64 * 1024 * 1024
        assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
        assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 * 1024 * 1024
        h.shutdown()
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func theEmptyNameIsTheDefaultExport() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        h = nbd.NBD()
        h.connect_uri(uri(""))
        h.pwrite(b"\\x42" * 4096, 8192)
        g = nbd.NBD()
        g.connect_uri(uri("disk0"))
        assert g.pread(4096, 8192) == b"\\x42" * 4096
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func blockStatusReportsExtentsAndHonoursRequestOne() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.connect_uri(uri("disk0"))
        h.pwrite(b"\\x01" * 65536, 1048576)
        seen = []
        def record(context, offset, entries, error):
            seen.append((context, offset, list(entries)))
        h.block_status(4 * 1048576, 0, record)
        context, offset, entries = seen[0]
        assert context == "base:allocation"
        assert entries[:6] == [1048576, 3, 65536, 0, 4 * 1048576 - 1048576 - 65536, 3], entries
        seen.clear()
        h.block_status(4 * 1048576, 0, record, nbd.CMD_FLAG_REQ_ONE)
        entries = seen[0][2]
        assert len(entries) == 2 and entries == [1048576, 3], entries
        seen.clear()
        h.block_status(65536, 1048576, record, nbd.CMD_FLAG_REQ_ONE)
        assert seen[0][2] == [65536, 0], seen
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func badRequestsGetTheErrorsTheSpecAsksFor() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        def expect_error(what, call, code):
            try:
                call()
            except nbd.Error as e:
                assert e.errno in (code, errno.errorcode[code]), (what, e.errno, e.string)
                return
            raise SystemExit(what + " succeeded")
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.connect_uri(uri("disk0"))
        size = h.get_size()
        expect_error("read past the end", lambda: h.pread(4096, size), errno.EINVAL)
        expect_error("byte read past the end", lambda: h.pread(2, size - 1), errno.EINVAL)
        expect_error("write past the end", lambda: h.pwrite(b"x" * 4096, size), errno.ENOSPC)
        expect_error("trim past the end", lambda: h.trim(4096, size - 512), errno.ENOSPC)
        assert h.pread(512, 0) == b"\\0" * 512
        r = nbd.NBD()
        r.set_strict_mode(0)
        r.connect_uri(uri("ro"))
        expect_error("write to read-only", lambda: r.pwrite(b"x" * 512, 0), errno.EPERM)
        expect_error("trim on read-only", lambda: r.trim(512, 0), errno.EPERM)
        expect_error("zero on read-only", lambda: r.zero(512, 0), errno.EPERM)
        assert h.pread(512, 0) == b"\\0" * 512, "the connection still works"
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func zeroingAndTrimmingWithFuaAndFastZero() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        h = nbd.NBD()
        h.connect_uri(uri("disk0"))
        h.pwrite(b"\\x7f" * 131072, 0)
        h.zero(65536, 0, nbd.CMD_FLAG_FUA)
        assert h.pread(65536, 0) == b"\\0" * 65536
        assert h.pread(65536, 65536) == b"\\x7f" * 65536
        h.zero(65536, 65536, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
        assert h.pread(65536, 65536) == b"\\0" * 65536
        h.pwrite(b"\\x11" * 4096, 0, nbd.CMD_FLAG_FUA)
        h.trim(4096, 0, nbd.CMD_FLAG_FUA)
        assert h.pread(4096, 0) == b"\\0" * 4096
        h.cache(4096, 0)
        h.flush()
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func sparseReadsOfHolesAndDontFragment() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        h = nbd.NBD()
        h.connect_uri(uri("disk0"))
        chunks = []
        def chunk(buf, offset, status, error):
            chunks.append((offset, status, len(buf)))
            return 0
        buf = h.pread_structured(65536, 0, chunk)
        assert buf == b"\\0" * 65536
        assert chunks == [(0, nbd.READ_HOLE, 65536)], chunks
        chunks.clear()
        buf = h.pread_structured(65536, 0, chunk, nbd.CMD_FLAG_DF)
        assert chunks == [(0, nbd.READ_DATA, 65536)], chunks
        h.pwrite(b"\\x09" * 512, 512)
        chunks.clear()
        buf = h.pread_structured(1024, 0, chunk)
        assert buf == b"\\0" * 512 + b"\\x09" * 512 and chunks == [(0, nbd.READ_DATA, 1024)], chunks
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func multiConnFlushCoversWritesFromAnotherConnection() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        a = nbd.NBD(); a.connect_uri(uri("disk0"))
        b = nbd.NBD(); b.connect_uri(uri("disk0"))
        assert a.can_multi_conn() == 1
        a.pwrite(b"\\x31" * 4096, 0)
        b.flush()
        assert b.pread(4096, 0) == b"\\x31" * 4096
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func simpleRepliesServeAClientThatAsksForNoStructuredReplies() async throws {
        // The kernel's nbd-client speaks simple replies only; libnbd can too.
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let result = try python("""
        h = nbd.NBD()
        h.set_request_structured_replies(False)
        h.set_strict_mode(0)
        h.connect_uri(uri("disk0"))
        assert h.get_structured_replies_negotiated() == 0
        h.pwrite(b"\\x66" * 65536, 131072, nbd.CMD_FLAG_FUA)
        assert h.pread(65536, 131072) == b"\\x66" * 65536
        assert h.pread(4096, 0) == b"\\0" * 4096
        h.zero(4096, 131072)
        assert h.pread(4096, 131072) == b"\\0" * 4096
        assert h.pread(512, 131072 + 4096 - 7) == b"\\0" * 7 + b"\\x66" * 505, "a read the sectors do not fit"
        try:
            h.pread(512, 64 * 1024 * 1024 - 7)
            raise SystemExit("a read past the end succeeded")
        except nbd.Error as e:
            assert e.errno in (errno.EINVAL, "EINVAL"), e.errno
        h.flush()
        print("OK")
        """, fixture: fixture)
        #expect(result.output.contains("OK"), "\(result)")
    }

    @Test func nbdshRunsAScriptAgainstTheServer() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        // nbdsh runs the first python3 on PATH, which may lack the nbd module: put
        // Debian's first.
        let result = try run("/usr/bin/env", ["PATH=/usr/bin:/bin", "nbdsh", "-u", fixture.uri(export: "disk0"), "-c", """
        h.pwrite(b"nbdsh!" * 512, 0)
        assert h.pread(3072, 0) == b"nbdsh!" * 512
        print(h.get_size(), h.can_trim(), h.can_multi_conn(), h.get_export_name())
        """])
        #expect(result.status == 0, "\(result)")
        #expect(result.output.contains("67108864 True True disk0"), "\(result)")
    }
}
