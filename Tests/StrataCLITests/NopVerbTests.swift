import Foundation
import Testing

@Suite(.serialized, .timeLimit(.minutes(2)))
struct NopVerbTests {
    @Test func nopConfigureChangesFailureInjectionOnARunningServer() throws {
        let (server, socket, control) = try ServeProcess.serving("""
            disks:
              - name: m0
                memory: 16MiB
            geoms:
              - name: n0
                class: nop
                consumers: [m0]
            exports:
              - name: vol
                provider: n0
            """, prefix: "strata-nop")
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        func write() throws -> String {
            try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD()
            h.connect_uri("nbd+unix:///vol?socket=\(socket)")
            try:
                h.pwrite(b"x" * 4096, 0)
                print("ok")
            except nbd.Error as e:
                print("failed", e.errno)
            """]).1
        }
        #expect(try write().contains("ok"))
        let configure = try runProgram(strataBinary, ["nop", "configure", "n0", "--write-fail-percent", "100", "--error", "28",
                                                      "--control", control])
        #expect(configure.0 == 0 && configure.1.contains("\nwrite-fail-percent: 100\n"), "\(configure)")
        let failed = try write()
        #expect(failed.contains("failed") && (failed.contains("28") || failed.contains("ENOSPC")), "\(failed)")
        let show = try runProgram(strataBinary, ["nop", "show", "n0", "--control", control])
        #expect(show.1.contains("statistics:\n") && show.1.contains("\n  failures: 1\n") && show.1.contains("\n  writes: 2\n")
                && show.1.contains("\n  bytesWritten: 4KiB\n"), "\(show)")
        let json = try runProgram(strataBinary, ["nop", "show", "n0", "--json", "--control", control])
        #expect(json.1.contains("\"failures\" : 1") && json.1.contains("\"writes\" : 2"), "\(json)")
        _ = try runProgram(strataBinary, ["nop", "configure", "n0", "--write-fail-percent", "0", "--control", control])
        #expect(try write().contains("ok"))
        let bad = try runProgram(strataBinary, ["nop", "configure", "n0", "--read-fail-percent", "150", "--control", control])
        #expect(bad.0 == 1 && bad.2.contains("read-fail-percent '150': must be a whole number from 0 to 100"), "\(bad)")
        let missing = try runProgram(strataBinary, ["nop", "configure", "nope", "--delay-ms", "1", "--control", control])
        #expect(missing.0 == 1 && missing.2.contains("no nop geom named nope"), "\(missing)")
    }
}
