import Foundation
import Testing

/// A mirror across two machines, as HAST keeps one: two network namespaces joined by a
/// veth pair stand for the hosts; `strata serve` on the far one exports the remote leg
/// over TLS (PSK); on the near one, a mirror of a local file disk and that remote disk.
/// fio writes and verifies while the link is cut and restored: the mirror degrades,
/// loses nothing, takes the remote leg back by itself and copies only what changed;
/// under either replication mode (async reports its lag).
@Suite(.serialized, .timeLimit(.minutes(4)),
       .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip")
                    && FileManager.default.isExecutableFile(atPath: "/usr/bin/psktool"), "needs root, iproute2 and gnutls-bin"))
struct CrossHostMirrorTests {
    /// Two network namespaces, `near` (10.250.0.1) and `far` (10.250.0.2), joined by a
    /// veth pair; deleted with their links at the end.
    final class Hosts {
        let near: String
        let far: String
        let farLink: String

        init() throws {
            let tag = UUID().uuidString.prefix(8).lowercased()
            near = "strata-near-\(tag)"
            far = "strata-far-\(tag)"
            let nearLink = "sn-\(tag)"
            farLink = "sf-\(tag)"
            let steps = [
                ["netns", "add", near], ["netns", "add", far],
                ["link", "add", nearLink, "type", "veth", "peer", "name", farLink],
                ["link", "set", nearLink, "netns", near], ["link", "set", farLink, "netns", far],
                ["-n", near, "addr", "add", "10.250.0.1/24", "dev", nearLink],
                ["-n", far, "addr", "add", "10.250.0.2/24", "dev", farLink],
                ["-n", near, "link", "set", "lo", "up"], ["-n", far, "link", "set", "lo", "up"],
                ["-n", near, "link", "set", nearLink, "up"], ["-n", far, "link", "set", farLink, "up"],
            ]
            for step in steps {
                let result = try runProgram("/usr/sbin/ip", step)
                guard result.0 == 0 else {
                    Self.remove(near, far)
                    throw CocoaError(.featureUnsupported, userInfo: [NSLocalizedDescriptionKey: "ip \(step): \(result.2)"])
                }
            }
        }

        /// Cuts the cable (the far end's link goes down) or plugs it back.
        func setLink(up: Bool) throws {
            let result = try runProgram("/usr/sbin/ip", ["-n", far, "link", "set", farLink, up ? "up" : "down"])
            #expect(result.0 == 0, "\(result)")
        }

        /// `strata serve --config t.yaml` in namespace `host`, in `directory`.
        func serve(on host: String, _ config: String, in directory: String) throws -> ServeProcess {
            try ServeProcess(executable: "/usr/sbin/ip", arguments: ["netns", "exec", host, strataBinary, "serve", "--config", "t.yaml"],
                             directory: directory, files: ["t.yaml": config])
        }

        static func remove(_ names: String...) {
            for name in names { _ = try? runProgram("/usr/sbin/ip", ["netns", "del", name]) }
        }

        deinit { Self.remove(near, far) }
    }

    /// Polls until `condition` holds on mirror m0's status, for up to `seconds`.
    static func waitForMirror(_ directory: String, seconds: Double,
                              _ condition: ((state: String, components: [String])) -> Bool) throws -> (state: String, components: [String]) {
        let deadline = Date().addingTimeInterval(seconds)
        var status = try RestartTests.mirrorStatus(directory)
        while !condition(status) && Date() < deadline {
            usleep(100_000)
            status = try RestartTests.mirrorStatus(directory)
        }
        return status
    }

    @Test(arguments: ["sync", "async"])
    func aCutLinkDegradesTheMirrorAndOnlyWhatChangedIsCopiedWhenItIsBack(replication: String) throws {
        let directory = NSTemporaryDirectory() + "strata-crosshost-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory + "/near", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try runProgram("/usr/bin/psktool", ["-u", "near", "-p", directory + "/keys.psk"]).0 == 0)
        let hosts = try Hosts()

        let far = try hosts.serve(on: hosts.far, """
            listen: [tcp://10.250.0.2:10809]
            control: \(directory)/far/control.sock
            tls: require
            tls-psk-file: \(directory)/keys.psk
            disks:
              - {name: leg, file: leg.img, size: 64MiB}
            exports:
              - {name: leg, provider: leg, tls-allow: [near]}
            """, in: directory + "/far")
        defer { _ = far.stop() }
        #expect(far.waitForOutput("control socket"), "\(far.stderr)")
        let near = try hosts.serve(on: hosts.near, """
            listen: [unix://\(directory)/near/nbd.sock]
            control: \(directory)/near/control.sock
            disks:
              - {name: local, file: local.img, size: 64MiB}
              - name: far
                remote: "nbds://near@10.250.0.2:10809/leg"
                tls-psk-file: \(directory)/keys.psk
                reconnect-timeout: 2
                request-timeout: 2
            geoms:
              - {name: m0, class: mirror, consumers: [local, far], balance: prefer-local, replication: \(replication)}
            exports:
              - {name: vol, provider: m0}
            """, in: directory + "/near")
        defer { _ = near.stop() }
        #expect(near.waitForOutput("control socket"), "\(near.stderr)")
        #expect(try RestartTests.mirrorStatus(directory + "/near").state == "COMPLETE")

        // fio writes 12 MiB of the 64 at 1 MiB/s, then reads it all back and checks it.
        let fio = Process()
        fio.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        fio.arguments = ["--name=crosshost", "--ioengine=nbd", "--uri=nbd+unix:///vol?socket=\(directory)/near/nbd.sock",
                         "--rw=randwrite", "--bs=16k", "--iodepth=8", "--size=12m", "--rate=1m", "--verify=crc32c",
                         "--verify_fatal=1", "--do_verify=1", "--output-format=terse"]
        let fioOutput = Pipe()
        let fioErrors = Pipe()
        fio.standardOutput = fioOutput
        fio.standardError = fioErrors
        try fio.run()
        defer { if fio.isRunning { fio.terminate() } }

        sleep(2)
        if replication == "async" {
            // The lag, in status and in /metrics.
            let status = try runProgram(strataBinary, ["status", "--json", "--control", directory + "/near/control.sock"])
            let object = try JSONSerialization.jsonObject(with: Data(status.1.utf8)) as? [String: Any]
            let mirror = (object?["geoms"] as? [[String: Any]])?.first { $0["name"] as? String == "m0" }
            #expect((mirror?["figures"] as? [String: Any])?["replication_lag_bytes"] is NSNumber, "\(status)")
            let table = try runProgram(strataBinary, ["status", "--control", directory + "/near/control.sock"])
            #expect(table.1.contains("far (ACTIVE), replication lag "), "\(table)")
            let metrics = try runProgram("/usr/bin/env", ["curl", "-sf", "--unix-socket", directory + "/near/control.sock",
                                                          "http://strata/metrics"])
            #expect(metrics.1.contains(#"strata_mirror_replication_lag_bytes{geom="m0"}"#), "\(metrics)")
        }
        try hosts.setLink(up: false)
        let degraded = try Self.waitForMirror(directory + "/near", seconds: 20) { $0.state == "DEGRADED" }
        #expect(degraded.state == "DEGRADED" && degraded.components == ["local:ACTIVE", "far:BROKEN"], "\(degraded) \(near.stderr)")
        sleep(3)  // writes go on, to the local leg only
        try hosts.setLink(up: true)
        let complete = try Self.waitForMirror(directory + "/near", seconds: 60) { $0.state == "COMPLETE" }
        #expect(complete.state == "COMPLETE" && complete.components == ["local:ACTIVE", "far:ACTIVE"], "\(complete) \(near.stderr)")

        fio.waitUntilExit()
        let fioText = String(decoding: fioOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            + String(decoding: fioErrors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(fio.terminationStatus == 0 && !fioText.contains("verify:") && !fioText.contains("bad"), "\(fioText)")

        // The link's loss and return, in the near host's log; the copy was at most what
        // fio can have written (12 MiB), never the whole 64.
        let log = near.stderr
        #expect(log.contains("remote disk far: lost"), "\(log)")
        // The cut cable closes nothing: the connection is reset for going unanswered.
        #expect(log.contains("no answer for 2"), "\(log)")
        #expect(log.contains("mirror m0: component far failed"), "\(log)")
        #expect(log.contains("remote disk far: reconnected"), "\(log)")
        let copiedLine = log.split(separator: "\n").first { $0.contains("mirror m0: far synchronized (") }
        let copied = copiedLine.flatMap { line in
            line.split(separator: "(").last?.split(separator: " ").first.map(String.init)
        }
        let copiedBytes = copied.flatMap { text -> Int64? in
            for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] where text.hasSuffix(unit) {
                return Int64(text.dropLast(3)).map { $0 << shift }
            }
            return Int64(text)
        }
        #expect(copiedBytes.map { $0 <= 13 << 20 } == true, "copied \(copied ?? "?"): \(log)")

        // Stopped cleanly, the two legs hold the same bytes outside their metadata sector.
        #expect(near.stop() == 0)
        #expect(far.stop() == 0)
        let size = (64 << 20) - 512
        let local = try Data(contentsOf: URL(fileURLWithPath: directory + "/near/local.img")).prefix(size)
        let leg = try Data(contentsOf: URL(fileURLWithPath: directory + "/far/leg.img")).prefix(size)
        let same = local == leg  // (a failed #expect would print both operands, megabytes each)
        #expect(same, "the legs differ")
    }
}
