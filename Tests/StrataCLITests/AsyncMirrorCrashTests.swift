import Foundation
import Testing

/// A mirror with `replication: async` whose host is killed while its remote leg still
/// lacks acknowledged writes: at the next start the local leg is the source, whatever the
/// order of the components, and the remote leg is made whole from it.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct AsyncMirrorCrashTests {
    @Test func aCrashWithWritesOnTheirWayToTheRemoteLegLosesNone() throws {
        let directory = NSTemporaryDirectory() + "strata-async-crash-\(UUID().uuidString.prefix(8))"
        let (nearDirectory, farDirectory) = (directory + "/near", directory + "/far")
        for path in [nearDirectory, farDirectory] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let farConfig = """
            listen: [unix://\(farDirectory)/nbd.sock]
            control: \(farDirectory)/control.sock
            disks:
              - {name: leg, file: leg.img, size: 16MiB}
            geoms:
              - {name: slow, class: nop, consumers: [leg]}
            exports:
              - {name: leg, provider: slow}
            """
        // The remote leg first: a rule that took the first copy as the source would
        // take the one that lacks the writes.
        let nearConfig = """
            disks:
              - {name: local, file: local.img, size: 16MiB}
              - {name: far, remote: "nbd+unix:///leg?socket=\(farDirectory)/nbd.sock"}
            geoms:
              - {name: m0, class: mirror, consumers: [far, local], balance: prefer-local, replication: async}
            exports:
              - {name: vol, provider: m0}
            """
        var far = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: farDirectory, files: ["t.yaml": farConfig])
        #expect(far.waitForOutput("control socket"), "\(far.stderr)")
        var near = try RestartTests.serve(nearConfig, in: nearDirectory)
        #expect(near.waitForOutput("control socket"), "\(near.stderr)")
        #expect(try RestartTests.mirrorStatus(nearDirectory).state == "COMPLETE")

        // The far host grows slow: writes reach its leg 5 s after they are sent.
        #expect(try runProgram(strataBinary, ["nop", "configure", "slow", "--delay-ms", "5000",
                                              "--control", farDirectory + "/control.sock"]).0 == 0)
        let (writer, output) = try RestartTests.writerThatStays(nearDirectory, byte: 0x5A)
        defer { kill(writer.processIdentifier, SIGKILL) }
        #expect(String(decoding: output.fileHandleForReading.availableData, as: UTF8.self).contains("written"))
        // Written and flushed on the local leg, acknowledged; still on its way to the far one.
        let status = try runProgram(strataBinary, ["status", "--json", "--control", nearDirectory + "/control.sock"])
        let object = try JSONSerialization.jsonObject(with: Data(status.1.utf8)) as? [String: Any]
        let mirror = (object?["geoms"] as? [[String: Any]])?.first { $0["name"] as? String == "m0" }
        let lag = ((mirror?["figures"] as? [String: Any])?["replication_lag_bytes"] as? NSNumber)?.int64Value ?? 0
        #expect(lag >= 1 << 20, "\(status.1)")

        // Both hosts die: the far one never gets those writes.
        #expect(near.stop(signal: SIGKILL) != nil)
        #expect(far.stop(signal: SIGKILL) != nil)
        kill(writer.processIdentifier, SIGKILL)
        writer.waitUntilExit()

        far = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: farDirectory, files: ["t.yaml": farConfig])
        defer { _ = far.stop() }
        #expect(far.waitForOutput("control socket"), "\(far.stderr)")
        near = try RestartTests.serve(nearConfig, in: nearDirectory)
        defer { _ = near.stop() }
        #expect(near.waitForOutput("control socket"), "\(near.stderr)")
        let complete = try CrossHostMirrorTests.waitForMirror(nearDirectory, seconds: 60) { $0.state == "COMPLETE" }
        #expect(complete.state == "COMPLETE" && complete.components == ["far:ACTIVE", "local:ACTIVE"], "\(complete)")
        #expect(near.stderr.contains("was not closed cleanly"), "\(near.stderr)")
        // (Compared first: a failed #expect would print both operands, megabytes each.)
        let read = try RestartTests.firstMiB(nearDirectory) == Data(repeating: 0x5A, count: 1 << 20)
        #expect(read, "the mirror lost acknowledged writes")

        // Stopped cleanly, the legs hold the same bytes outside their metadata sector.
        #expect(near.stop() == 0)
        #expect(far.stop() == 0)
        let size = (16 << 20) - 512
        let local = try Data(contentsOf: URL(fileURLWithPath: nearDirectory + "/local.img")).prefix(size)
        let leg = try Data(contentsOf: URL(fileURLWithPath: farDirectory + "/leg.img")).prefix(size)
        let (same, written) = (local == leg, local.prefix(1 << 20) == Data(repeating: 0x5A, count: 1 << 20))
        #expect(same, "the legs differ")
        #expect(written, "the local leg lacks the writes")
    }
}
