import Foundation
import Testing

/// `strata eli` on a running server: keys added and removed while the volume is in use,
/// and cryptsetup agreeing; a volume attached for one run with a passphrase typed on
/// standard input, then detached; a passphrase piped into `strata serve`.
@Suite(.serialized, .timeLimit(.minutes(5)),
       .enabled(if: cryptsetupInstalled, "needs cryptsetup (scripts/check installs cryptsetup-bin)"))
struct EliVerbTests {
    func eli(_ control: String, _ words: [String], input: String? = nil) throws -> (Int32, String, String) {
        guard let input else { return try runProgram(strataBinary, ["eli"] + words + ["--json", "--control", control]) }
        let quoted = (["eli"] + words + ["--json", "--control", control]).map { "'\($0)'" }.joined(separator: " ")
        return try runProgram("/bin/sh", ["-c", "printf '%s' '\(input)' | '\(strataBinary)' \(quoted)"])
    }

    static func cryptsetupOpens(_ image: String, keyFile: String) throws -> Bool {
        try EliServeTests.cryptsetup(["open", "--test-passphrase", "--key-file", keyFile, image]).0 == 0
    }

    static func keyFile(_ directory: String, _ name: String, _ text: String) -> String {
        let path = directory + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    @Test func keysAddedAndRemovedWhileTheVolumeIsServedAreWhatCryptsetupOpens() throws {
        let (directory, image, key) = try EliServeTests.volumeFiles("strata-eli-keys", size: 40 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try EliServeTests.cryptsetup(["luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                                              "--key-file", key, image]).0 == 0)
        let second = Self.keyFile(directory, "second.key", "a second passphrase")
        let (server, uri) = try EliServeTests.serveEli(directory, image: image, key: key, writable: true)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let control = directory + "/control.sock"
        // A client keeps the volume open for writing throughout.
        #expect(EliServeTests.succeeded(try EliServeTests.qemuIO(uri, ["write -P 0x3c 2M 1M"])))

        let added = try eli(control, ["add-key", "d0", "--key-file", key, "--new-key-file", second, "--pbkdf", "pbkdf2",
                                      "--pbkdf-iterations", "1000"])
        #expect(added.0 == 0 && added.1.contains("\"id\" : 1"), "\(added)")
        let wrong = Self.keyFile(directory, "wrong.key", "not a passphrase of it")
        let refused = try eli(control, ["add-key", "d0", "--key-file", wrong, "--new-key-file", second])
        #expect(refused.0 != 0 && refused.2.contains("no key slot opens with this passphrase"), "\(refused)")
        let removed = try eli(control, ["remove-key", "d0", "--key-file", key])
        #expect(removed.0 == 0, "\(removed)")
        let last = try eli(control, ["remove-key", "d0", "--key-file", second])
        #expect(last.0 != 0 && last.2.contains("last"), "\(last)")
        #expect(EliServeTests.succeeded(try EliServeTests.qemuIO(uri, ["read -P 0x3c 2M 1M", "write -P 0x3d 4M 64k"])))
        #expect(server.stop() == 0)

        #expect(try Self.cryptsetupOpens(image, keyFile: second))
        #expect(try !Self.cryptsetupOpens(image, keyFile: key), "the removed passphrase no longer opens the volume")
        let keyHex = try EliServeTests.dumpedVolumeKey(image, key: second)
        #expect(try EliServeTests.decryptsTo(0x3d, image: image, keyHex: keyHex, payloadOffset: 16 << 20,
                                             sectorSize: try EliServeTests.dumpedSectorSize(image), offset: 4 << 20, count: 64 << 10))
    }

    @Test func aVolumeAttachedWithATypedPassphraseServesUntilItIsDetached() throws {
        let (directory, image, _) = try EliServeTests.volumeFiles("strata-eli-attach", size: 40 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A typed passphrase is a line without its newline; the key file holds just that.
        let typed = "typed at a prompt"
        let key = Self.keyFile(directory, "typed.key", typed)
        #expect(try EliServeTests.cryptsetup(["luksFormat", "--type", "luks1", "--pbkdf-force-iterations", "1000",
                                              "--key-file", key, image]).0 == 0)
        let control = directory + "/control.sock"
        let socket = directory + "/nbd.sock"
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": """
            listen: [unix://\(socket)]
            control: \(control)
            disks:
              - {name: d0, file: \(image)}
            """])
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")

        let wrong = try eli(control, ["attach", "d0", "--passphrase"], input: "guess\n")
        #expect(wrong.0 != 0 && wrong.2.contains("no key slot opens"), "\(wrong)")
        let onCommandLine = try eli(control, ["attach", "d0", "--passphrase=secret"])
        #expect(onCommandLine.0 != 0 && onCommandLine.2.contains("read from standard input"), "\(onCommandLine)")
        let attached = try eli(control, ["attach", "d0", "--passphrase"], input: typed + "\n")
        #expect(attached.0 == 0 && attached.1.contains("\"provider\" : \"d0.eli\""), "\(attached)")

        // The passphrase is nowhere the server shows or logs.
        let dump = try runProgram(strataBinary, ["config", "dump", "--control", control])
        let status = try runProgram(strataBinary, ["status", "--json", "--control", control])
        let metrics = try runProgram("/usr/bin/env", ["curl", "-sf", "--unix-socket", control, "http://strata/metrics"])
        #expect(dump.0 == 0 && status.0 == 0 && metrics.0 == 0)
        #expect(status.1.contains("d0.eli"), "\(status)")
        for shown in [dump.1, status.1, metrics.1, server.stdout, server.stderr] {
            #expect(!shown.contains(typed))
        }

        let exported = try runProgram(strataBinary, ["export", "add", "vol", "d0.eli", "--control", control])
        #expect(exported.0 == 0, "\(exported)")
        let uri = "nbd+unix:///vol?socket=\(socket)"
        #expect(EliServeTests.succeeded(try EliServeTests.qemuIO(uri, ["write -P 0x44 1M 1M", "read -P 0x44 1M 1M"])))
        #expect(try runProgram(strataBinary, ["export", "remove", "vol", "--control", control]).0 == 0)
        let detached = try eli(control, ["detach", "d0.eli"])
        #expect(detached.0 == 0, "\(detached)")
        let list = try runProgram(strataBinary, ["list", "--control", control])
        #expect(!list.1.contains("d0.eli"), "\(list)")
        #expect(server.stop() == 0)
        #expect(EliServeTests.succeeded(try EliServeTests.qemuLUKS(image, key: key, ["read -P 0x44 1M 1M"])))
    }

    /// An attached volume lasts for the run: a geom made over it and an export of it last
    /// as long, so a restart neither names a missing provider nor withdraws an export of
    /// the same name that the topology file gains later. Standard input, which only a
    /// start reads, is no key file for an eli made at run time.
    @Test func whatStandsOnAnAttachedVolumeIsNotKeptAcrossARestart() throws {
        let (directory, image, key) = try EliServeTests.volumeFiles("strata-eli-run", size: 40 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try EliServeTests.cryptsetup(["luksFormat", "--type", "luks1", "--pbkdf-force-iterations", "1000",
                                              "--key-file", key, image]).0 == 0)
        let control = directory + "/control.sock"
        let state = directory + "/strata-data/state.yaml"
        let topology = """
            listen: [unix://\(directory)/nbd.sock]
            control: \(control)
            writable-directories: [\(directory)]
            disks:
              - {name: d0, file: \(image)}
              - {name: m1, memory: 8MiB}
            """
        let server = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": topology])
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        let attached = try eli(control, ["attach", "d0", "--key-file", key])
        #expect(attached.0 == 0, "\(attached)")
        let nop = try runProgram(strataBinary, ["geom", "create", "nop", "n9", "--consumers", "d0.eli", "--control", control])
        #expect(nop.0 == 0, "\(nop)")
        let exported = try runProgram(strataBinary, ["export", "add", "vol", "n9", "--control", control])
        #expect(exported.0 == 0 && exported.1.contains("for this run only") && exported.1.contains("d0.eli"), "\(exported)")
        // Recorded changes still are: a nop over the memory disk.
        #expect(try runProgram(strataBinary, ["geom", "create", "nop", "n1", "--consumers", "m1", "--control", control]).0 == 0)
        let list = try runProgram(strataBinary, ["list", "--json", "--control", control])
        #expect(list.1.contains("\"this-run-only\" : true"), "\(list)")
        let stdin = try runProgram(strataBinary, ["geom", "create", "eli", "e9", "--consumers", "m1", "key-file=-", "--control", control])
        #expect(stdin.0 != 0 && stdin.2.contains("key-file") && stdin.2.contains("standard input"), "\(stdin)")

        let recorded = (try? String(contentsOfFile: state, encoding: .utf8)) ?? ""
        #expect(recorded.contains("n1") && !recorded.contains("n9") && !recorded.contains("vol"), "\(recorded)")
        #expect(try runProgram(strataBinary, ["export", "remove", "vol", "--control", control]).0 == 0)
        let afterRemoval = (try? String(contentsOfFile: state, encoding: .utf8)) ?? ""
        #expect(!afterRemoval.contains("vol") && !afterRemoval.contains("removed"), "\(afterRemoval)")
        #expect(try runProgram(strataBinary, ["export", "add", "vol", "n9", "--control", control]).0 == 0)
        // Destroying one records no withdrawal either.
        #expect(try runProgram(strataBinary, ["geom", "create", "nop", "n8", "--consumers", "d0.eli", "--control", control]).0 == 0)
        #expect(try runProgram(strataBinary, ["geom", "destroy", "n8", "--control", control]).0 == 0)
        let afterDestroy = (try? String(contentsOfFile: state, encoding: .utf8)) ?? ""
        #expect(!afterDestroy.contains("n8") && !afterDestroy.contains("removed"), "\(afterDestroy)")
        #expect(server.stop() == 0)

        let again = try ServeProcess(arguments: ["serve", "--config", "t.yaml"], directory: directory, files: ["t.yaml": topology])
        #expect(again.waitForOutput("control socket"), "\(again.stderr)")
        let names = try runProgram(strataBinary, ["list", "--control", control])
        #expect(names.1.contains("n1") && !names.1.contains("n9") && !names.1.contains("d0.eli"), "\(names)")
        #expect(again.stop() == 0)
    }

    @Test func aPassphrasePipedIntoServeOpensAnEntryWithoutAKeyFile() throws {
        let (directory, image, key) = try EliServeTests.volumeFiles("strata-eli-stdin", size: 40 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try EliServeTests.cryptsetup(["luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                                              "--key-file", key, image]).0 == 0)
        let socket = directory + "/nbd.sock"
        let topology = """
            listen: [unix://\(socket)]
            control: \(directory)/control.sock
            disks:
              - {name: d0, file: \(image)}
            geoms:
              - {name: e0, class: eli, consumers: [d0], key-file: "-"}
            exports:
              - {name: vol, provider: e0}
            """
        // The key file holds the passphrase with its newline; a line piped in is without.
        let line = EliServeTests.passphrase.trimmingCharacters(in: .newlines)
        #expect(try EliServeTests.cryptsetup(["luksAddKey", "--key-file", key, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                                              "1000", image, Self.keyFile(directory, "line.key", line)]).0 == 0)
        let server = try ServeProcess(executable: "/bin/sh", arguments: ["-c", "exec '\(strataBinary)' serve --config t.yaml < line.txt"],
                                      directory: directory, files: ["t.yaml": topology, "line.txt": line + "\n"])
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        #expect(EliServeTests.succeeded(try EliServeTests.qemuIO("nbd+unix:///vol?socket=\(socket)", ["write -P 0x55 1M 4k"])))
        #expect(server.stop() == 0)

        let empty = try ServeProcess(executable: "/bin/sh", arguments: ["-c", "exec '\(strataBinary)' serve --config t.yaml < /dev/null"],
                                     directory: directory, files: ["t.yaml": topology])
        #expect(empty.waitForExit() == 1)
        #expect(empty.stderr.contains("t.yaml") && empty.stderr.contains("standard input ended"), "\(empty.stderr)")
    }
}
