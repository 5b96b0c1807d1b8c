import Foundation
import Strata
import StrataClasses
import StrataConfig
import StrataDisks
import StrataNBD
import Synchronization
import Testing

@Suite struct SizeAndURLTests {
    static let sizes: [(String, Int64)] = [
        ("4096", 4096), ("64KiB", 65536), ("64K", 65536), ("64k", 65536), ("1MiB", 1 << 20), ("1M", 1 << 20),
        ("1m", 1 << 20), ("1GiB", 1 << 30), ("1G", 1 << 30), ("1g", 1 << 30), ("1TiB", 1 << 40), ("3T", 3 << 40),
        ("512B", 512),
    ]

    @Test(arguments: sizes)
    func sizesAreBinaryAsFioAndQemuUsersWriteThem(text: String, bytes: Int64) {
        #expect(parseByteSize(text) == bytes)
    }

    @Test(arguments: ["", "0", "12XB", "1.5G", "-4K", "K", "99999999999999999T", "1 G B", "1kib", "4kB"])
    func badSizesAreRefused(text: String) {
        #expect(parseByteSize(text) == nil)
    }

    @Test func listenURLsAreTCPOrUnix() {
        #expect(ListenURL("tcp://127.0.0.1:10809") == .tcp(host: "127.0.0.1", port: 10809))
        #expect(ListenURL("tcp://[::1]:9000") == .tcp(host: "::1", port: 9000))
        #expect(ListenURL("unix:///run/strata/nbd.sock") == .unix(path: "/run/strata/nbd.sock"))
        for bad in ["tcp://host", "tcp://:80", "unix://relative.sock", "http://x:1", "tcp://h:70000"] {
            #expect(ListenURL(bad) == nil, "\(bad)")
        }
        #expect(ListenURL("tcp://0.0.0.0:10809")?.isLoopback == false)
        #expect(ListenURL("tcp://127.0.0.1:10809")?.isLoopback == true)
    }
}

@Suite struct ConfigurationLoaderTests {
    static let example = """
    listen:
      - tcp://127.0.0.1:10809
      - unix:///run/strata/nbd.sock
    control: /run/strata/control.sock
    disks:
      - name: d0
        file: data/d0.img
        size: 1GiB
        sector-size: 512
      - name: scratch
        memory: 256MiB
      - name: sink
        null: 1TiB
        sector-size: 4096
    exports:
      - name: vol
        provider: d0
        read-only: false
        description: main volume
        default: true
    """

    func load(_ yaml: String) throws -> Configuration {
        try ConfigurationLoader.parse(yaml, file: "strata.yaml", baseDirectory: "/etc/strata")
    }

    /// The error a file gives, as text.
    func failure(_ yaml: String) -> String {
        do {
            _ = try load(yaml)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func theExampleFromTheDocsLoads() throws {
        let configuration = try load(Self.example)
        #expect(configuration.listen == [.tcp(host: "127.0.0.1", port: 10809), .unix(path: "/run/strata/nbd.sock")])
        #expect(configuration.control == "/run/strata/control.sock")
        #expect(configuration.disks.map(\.name) == ["d0", "scratch", "sink"])
        #expect(configuration.disks.map(\.className) == ["file", "memory", "null"])
        let file = try FileDiskDefinition.Settings.parse(configuration.disks[0].settings, relativeTo: configuration.directory)
        #expect(file.path == "/etc/strata/data/d0.img", "file paths are relative to the file's folder")
        #expect(file.size == 1 << 30 && file.sectorSize == 512 && file.engine == .automatic)
        #expect(try MemoryDiskDefinition.Settings.parse(configuration.disks[1].settings).size == 256 << 20)
        let sink = try NullDiskDefinition.Settings.parse(configuration.disks[2].settings)
        #expect(sink.size == 1 << 40 && sink.sectorSize == 4096)
        #expect(configuration.exports == [ExportSpec(name: "vol", provider: "d0", readOnly: false, description: "main volume",
                                                     isDefault: true, line: 16)])
    }

    @Test func anEmptyFileMeansDefaults() throws {
        let configuration = try load("")
        #expect(configuration.listen == Configuration.defaultListen)
        #expect(configuration.control == "/etc/strata/strata-data/control.sock")
        #expect(configuration.disks.isEmpty && configuration.exports.isEmpty)
    }

    @Test func serverLimitsAreReadAndCheckedAtTheirKeys() throws {
        #expect(try load("").limits == NBDServer.Limits())
        let limits = try load("limits:\n  requests: 64\n  connection-bytes: 64MiB\n  server-bytes: 1GiB").limits
        #expect(limits == NBDServer.Limits(requests: 64, bytes: 64 << 20, serverBytes: 1 << 30))
        #expect(failure("limits:\n  server-bytes: 1MiB")
                == "strata.yaml:2: limits.server-bytes: '1MiB': must be at least limits.max-request (64MiB)")
        #expect(failure("limits:\n  requests: 0").hasPrefix("strata.yaml:2: limits.requests: '0': must be"))
        #expect(failure("limits:\n  server_bytes: 1GiB")
                == "strata.yaml:2: limits.server_bytes: is not a known key; did you mean 'server-bytes'?")
    }

    @Test func theMaximumRequestIsReadAndBoundedAndTheByteLimitsHoldOne() throws {
        #expect(try load("").limits.maximumRequest == 64 << 20)
        #expect(try load("limits:\n  max-request: 1MiB\n  connection-bytes: 1MiB\n  server-bytes: 1MiB").limits
                == NBDServer.Limits(bytes: 1 << 20, serverBytes: 1 << 20, maximumRequest: 1 << 20))
        #expect(try load("limits:\n  max-request: 1GiB\n  connection-bytes: 1GiB\n  server-bytes: 2GiB").limits.maximumRequest
                == 1 << 30)
        #expect(failure("limits:\n  max-request: 512KiB")
                == "strata.yaml:2: limits.max-request: '512KiB': must be from 1MiB to 1GiB")
        #expect(failure("limits:\n  max-request: 2GiB")
                == "strata.yaml:2: limits.max-request: '2GiB': must be from 1MiB to 1GiB")
        #expect(failure("limits:\n  max-request: 256MiB\n  server-bytes: 1GiB")
                == "strata.yaml:2: limits.max-request: '256MiB': is over the default limits.connection-bytes (128MiB); raise that too")
        #expect(failure("limits:\n  max-request: 128MiB\n  connection-bytes: 64MiB")
                == "strata.yaml:3: limits.connection-bytes: '64MiB': must be at least limits.max-request (128MiB)")
    }

    @Test func busyPollingIsOnByDefaultAndReadInMicroseconds() throws {
        #expect(try load("").busyPoll == .microseconds(50))
        #expect(try load("busy-poll-us: 0").busyPoll == .zero)
        #expect(try load("busy-poll-us: 200").busyPoll == .microseconds(200))
        #expect(failure("listen: [unix:///tmp/s.sock]\nbusy-poll-us: 5000")
                == "strata.yaml:2: busy-poll-us: '5000': must be a whole number from 0 to 1000")
        #expect(failure("busy-poll-us: 50us") == "strata.yaml:1: busy-poll-us: '50us': must be a whole number from 0 to 1000")
    }

    @Test func inputCoalescingIsOffByDefaultAndReadInMicroseconds() throws {
        #expect(try load("").coalescing == .zero)
        #expect(try load("coalesce-us: 50").coalescing == .microseconds(50))
        #expect(failure("listen: [unix:///tmp/s.sock]\ncoalesce-us: 1001")
                == "strata.yaml:2: coalesce-us: '1001': must be a whole number from 0 to 1000")
        #expect(failure("coalesce-us: -5") == "strata.yaml:1: coalesce-us: '-5': must be a whole number from 0 to 1000")
    }

    @Test func theControlSocketsGroupIsLookedUpAsTheFileIsRead() throws {
        #expect(try load("").controlGroup == nil)
        // Group 0 is root on every system.
        #expect(try load("control-group: root").controlGroup == ControlGroup(name: "root", id: 0))
        #expect(failure("control: /run/s.sock\ncontrol-group: no-such-group-here")
                == "strata.yaml:2: control-group: 'no-such-group-here': names no group of this system")
    }

    @Test func writableDirectoriesAreAbsoluteAndFollowTheDataDirectory() throws {
        let plain = try load("")
        #expect(plain.writableDirectories.isEmpty && plain.controlWritableDirectories == ["/etc/strata/strata-data"])
        let configuration = try load("data-directory: /var/lib/strata\nwritable-directories: [crash, /srv/images/]")
        #expect(configuration.controlWritableDirectories == ["/var/lib/strata", "/etc/strata/crash", "/srv/images"])
        #expect(failure("writable-directories: /srv") == "strata.yaml:1: writable-directories: '/srv': must be a list")
    }

    @Test func anUnknownKeyNamesTheNearestKnownOne() {
        #expect(failure("lisen: [tcp://127.0.0.1:1]") == "strata.yaml:1: lisen: is not a known key; did you mean 'listen'?")
        #expect(failure("disks:\n  - name: a\n    memory: 1M\n    sector_size: 512")
                == "strata.yaml:4: disks[0].sector_size: is not a key of memory disks; did you mean 'sector-size'?")
        #expect(failure("exports:\n  - name: a\n    provider: b\n    readonly: true")
                == "strata.yaml:4: exports[0].readonly: is not a known key; did you mean 'read-only'?")
    }

    @Test func badValuesNameTheirKeyValueAndWhatIsAllowed() {
        #expect(failure("disks:\n  - name: a\n    memory: 12XB")
                == "strata.yaml:3: disks[0].memory: '12XB': must be a size like 4096, 4k, 64KiB, 64K, 1m, 1MiB, 1G or 1TiB")
        #expect(failure("disks:\n  - name: a\n    memory: 1M\n    sector-size: 1000")
                == "strata.yaml:4: disks[0].sector-size: '1000': must be 512 or 4096")
        #expect(failure("listen: [ftp://x:1]") == "strata.yaml:1: listen[0]: 'ftp://x:1': is not tcp://HOST:PORT or unix:///absolute/path")
        #expect(failure("exports:\n  - name: a\n    provider: b\n    read-only: maybe")
                == "strata.yaml:4: exports[0].read-only: 'maybe': must be true or false")
    }

    @Test func aDiskIsExactlyOneKind() {
        #expect(failure("disks:\n  - name: a\n    size: 1M").contains("needs one of file, memory, null, zero, powercut, remote or rbd"))
        #expect(failure("disks:\n  - name: a\n    memory: 1M\n    null: 1M").contains("has memory and null"))
        #expect(failure("disks:\n  - name: a\n    memory: 1M\n    size: 2M")
                == "strata.yaml:4: disks[0].size: is not a key of memory disks (known: name, memory, sector-size, huge-pages)")
    }

    @Test func aFileDiskChoosesItsIOEngine() throws {
        let chosen = try load("disks:\n  - name: a\n    file: /a.img\n    io: threads\n  - name: b\n    file: /b.img\n    io: uring")
        #expect(try chosen.disks.map { try FileDiskDefinition.Settings.parse($0.settings).engine } == [.threads, .uring])
        #expect(try FileDiskDefinition.Settings.parse(load("disks:\n  - name: a\n    file: /a.img").disks[0].settings).engine
                == .automatic)
        #expect(failure("disks:\n  - name: a\n    file: /a.img\n    io: aio")
                == "strata.yaml:4: disks[0].io: 'aio': must be automatic, inline, uring or threads")
        #expect(failure("disks:\n  - name: a\n    memory: 1M\n    io: uring")
                == "strata.yaml:4: disks[0].io: is not a key of memory disks (known: name, memory, sector-size, huge-pages)")
    }

    @Test func namesAreRequiredAndUsedOnce() {
        #expect(failure("disks:\n  - memory: 1M") == "strata.yaml:2: disks[0].name: is missing")
        #expect(failure("disks:\n  - name: a\n    memory: 1M\ngeoms:\n  - name: a\n    class: nop\n    consumers: [a]")
                == "strata.yaml:5: geoms[0].name: 'a': is already the name of a disk")
        #expect(failure("exports:\n  - name: v\n    provider: a\n  - name: v\n    provider: b")
                == "strata.yaml:4: exports[1].name: 'v': is already the name of an export")
        #expect(failure("exports:\n  - name: v\n    provider: a\n    default: true\n  - name: w\n    provider: a\n    default: true")
                .contains("only one export can be the default (v is)"))
    }

    @Test func malformedYAMLIsReportedAsSuch() {
        #expect(failure("disks: [unclosed").hasPrefix("strata.yaml: (file): is not valid YAML"))
        #expect(failure("disks: 3") == "strata.yaml:1: disks: '3': must be a list")
    }

    @Test func classKeysAreCheckedByTheirClassAsTheFileIsRead() throws {
        let configuration = try load("geoms:\n  - name: s0\n    class: stripe\n    consumers: [a, b]\n    stripe-size: 16K")
        let value = try #require(configuration.geoms.first?.parameters["stripe-size"])
        #expect(value.line == 5 && value.key == "geoms[0].stripe-size")
        #expect(try StripeDefinition.Settings.parse(configuration.geoms[0].settings).stripeSize == 16384)
        #expect(failure("geoms:\n  - name: s0\n    class: stripe\n    consumers: [a, b]\n    stripe-size: 3000")
                == "strata.yaml:5: geoms[0].stripe-size: '3000': must be a power of two from 512 to 1GiB")
        #expect(failure("geoms:\n  - name: n0\n    class: nop\n    consumers: [a]\n    delay: 5")
                == "strata.yaml:5: geoms[0].delay: is not a key of class nop; did you mean 'delay-ms'?")
    }
}

@Suite struct TopologyBuilderTests {
    func build(_ yaml: String, in directory: String = NSTemporaryDirectory()) throws -> BuiltTopology {
        try TopologyBuilder.build(ConfigurationLoader.parse(yaml, file: "t.yaml", baseDirectory: directory))
    }

    func failure(_ yaml: String) -> String {
        do {
            _ = try build(yaml)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func disksAndExportsAreBuilt() throws {
        let directory = NSTemporaryDirectory() + "strata-build-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let built = try build("""
        disks:
          - name: d0
            file: d0.img
            size: 8MiB
          - name: m0
            memory: 4MiB
            sector-size: 4096
        exports:
          - name: vol
            provider: d0
          - name: fast
            provider: m0
            read-only: true
        """, in: directory)
        #expect(built.topology.provider(named: "d0")?.mediaSize == 8 << 20)
        #expect(built.topology.provider(named: "m0")?.sectorSize == 4096)
        #expect(FileManager.default.fileExists(atPath: directory + "/d0.img"), "the file is created next to the config")
        #expect(built.exports.map(\.name) == ["vol", "fast"] && built.exports[1].readOnly)
        built.topology.shutdown()
    }

    @Test func powerCutDisksOfOneFileRecordIntoOneLog() throws {
        let built = try build("""
        disks:
          - name: p0
            powercut: 4MiB
          - name: p1
            powercut: 4MiB
            sector-size: 4096
        """)
        defer { built.topology.shutdown() }
        let disks = built.disks.compactMap { $0 as? PowerCutDisk }
        #expect(disks.map(\.name) == ["p0", "p1"] && disks[1].provider.sectorSize == 4096)
        #expect(disks[0].log === disks[1].log && disks[0].log.disks == ["p0", "p1"])
        let entry = try ConfigurationLoader.parse("disks:\n  - name: p\n    powercut: 1M", file: "t.yaml", baseDirectory: "/").disks[0]
        #expect(entry.className == "powercut" && entry.parameters["powercut"]?.text == "1M")
    }

    @Test func rbdEntriesAreCheckedBeforeAnyClusterIsCalled() {
        #expect(failure("disks:\n  - name: r0\n    rbd: vm1")
                == "t.yaml:3: disks[0].rbd: 'vm1': is not POOL/IMAGE, POOL/NAMESPACE/IMAGE or either with @SNAPSHOT")
        #expect(failure("disks:\n  - name: r0\n    rbd: rbd/vm1@monday\n    size: 1GiB")
                == "t.yaml:4: disks[0].size: '1GiB': cannot be given for a snapshot, which is read-only")
        #expect(failure("disks:\n  - name: r0\n    rbd: rbd/vm1\n    timeout: -1")
                == "t.yaml:4: disks[0].timeout: '-1': must be a whole number from 0 to 3600")
        // Two entries naming one image through one configuration are refused up front.
        #expect(failure("disks:\n  - {name: r0, rbd: rbd/vm1, ceph-conf: /etc/hosts}\n  - {name: r1, rbd: rbd/vm1, ceph-conf: /etc/./hosts}")
                == "t.yaml:3: disks[1].rbd: 'rbd/vm1': is the image r0 opens (t.yaml:2: disks[0].rbd: 'rbd/vm1'); an image can be one disk only")
    }

    @Test func eliEntriesNameTheirKeyAndVolumeProblems() {
        let head = "disks:\n  - name: d0\n    memory: 24M\ngeoms:\n  - name: e0\n    class: eli\n    consumers: [d0]"
        #expect(failure(head) == "t.yaml:5: geoms[0].key-file: 'e0': is required: an eli opens with a passphrase")
        #expect(failure(head + "\n    key-file: /nonexistent/pass.key")
                == "t.yaml:8: geoms[0].key-file: '/nonexistent/pass.key': cannot be read: No such file or directory")
        #expect(failure(head + "\n    key-file: /etc")
                == "t.yaml:8: geoms[0].key-file: '/etc': is not a regular file")
        #expect(failure(head + "\n    key-file: /etc/hostname\n    allow-discards: maybe")
                == "t.yaml:9: geoms[0].allow-discards: 'maybe': must be true or false")
        #expect(failure(head + "\n    key-file: /etc/hostname").hasPrefix("t.yaml:5: geoms[0]: 'e0': not a LUKS volume: no LUKS1 or LUKS2 header"))
    }

    @Test func anExportOfAMissingProviderNamesTheNearestOne() {
        #expect(failure("disks:\n  - name: disk0\n    memory: 1M\nexports:\n  - name: v\n    provider: disc0")
                == "t.yaml:5: exports[0].provider: 'disc0': names no provider; did you mean 'disk0'?")
    }

    @Test func aConsumerNamingNothingIsAnError() {
        #expect(failure("disks:\n  - name: d0\n    memory: 1M\ngeoms:\n  - name: n0\n    class: nop\n    consumers: [d9]")
                .hasPrefix("t.yaml:5: geoms[0].consumers[0]: 'd9': names no provider"))
    }

    /// Names may hold slashes, as GEOM's do, but not parts a URL's path would collapse
    /// or drop, nor control characters that would forge log lines.
    @Test(arguments: [("..", "must not begin or end with /, nor hold //, nor . or .. as a part between slashes"),
                      ("a/./b", "must not begin or end with /, nor hold //, nor . or .. as a part between slashes"),
                      ("/d0", "must not begin or end with /, nor hold //, nor . or .. as a part between slashes"),
                      ("a//b", "must not begin or end with /, nor hold //, nor . or .. as a part between slashes"),
                      ("a\\tb", "must not hold control characters (a newline, a tab)")])
    func entryNamesThatAURLOrALogWouldMangleAreRefused(name: String, problem: String) {
        let shown = name.replacingOccurrences(of: "\\t", with: "\t")
        #expect(failure("disks:\n  - name: \"\(name)\"\n    memory: 1M") == "t.yaml:2: disks[0].name: '\(shown)': \(problem)")
        #expect(failure("disks:\n  - {name: d0, memory: 1M}\ngeoms:\n  - {name: \"\(name)\", class: nop, consumers: [d0]}")
                == "t.yaml:4: geoms[0].name: '\(shown)': \(problem)")
        #expect(failure("disks:\n  - {name: d0, memory: 1M}\nexports:\n  - {name: \"\(name)\", provider: d0}")
                == "t.yaml:4: exports[0].name: '\(shown)': \(problem)")
        #expect(EntryName.problem("label/data") == nil && EntryName.problem("pool/vm1.snap") == nil)
    }

    /// Two consumers of one geom on one provider would be one disk used as two: a
    /// stripe's neighbouring chunks at one offset, a mirror's copies on one disk.
    @Test(arguments: ["stripe", "concat", "mirror"])
    func aGeomNamingAProviderTwiceAmongItsConsumersIsRefusedAtTheSecond(className: String) {
        let yaml = """
        disks:
          - {name: d0, memory: 1M}
          - {name: d1, memory: 1M}
        geoms:
          - name: g
            class: \(className)
            consumers:
              - d0
              - d1
              - d0
        """
        #expect(failure(yaml) == "t.yaml:10: geoms[0].consumers[2]: 'd0': is consumers[0] already; a geom consumes a provider once")
    }

    @Test func geomsThatConsumeEachOtherAreACycle() {
        let yaml = """
        geoms:
          - name: a
            class: nop
            consumers: [b]
          - name: b
            class: nop
            consumers: [a]
        """
        #expect(failure(yaml) == "t.yaml:2: geoms[0].consumers: make a cycle: a → b → a")
    }

    @Test func anUnknownClassIsNamed() {
        #expect(failure("disks:\n  - name: d0\n    memory: 1M\ngeoms:\n  - name: g\n    class: mirorr\n    consumers: [d0]")
                == "t.yaml:6: geoms[0].class: 'mirorr': is not a known class; did you mean 'mirror'?")
        #expect(failure("disks:\n  - name: d0\n    memory: 1M\ngeoms:\n  - name: g\n    class: bogus\n    consumers: [d0]")
                == "t.yaml:6: geoms[0].class: 'bogus': is not a known class (known: nop, concat, stripe, label, part, mirror, thin, eli)")
        #expect(failure("disks:\n  - name: d0\n    memory: 1M\ngeoms:\n  - name: g\n    class: nopp\n    consumers: [d0]")
                == "t.yaml:6: geoms[0].class: 'nopp': is not a known class; did you mean 'nop'?")
    }

    @Test func aDiskThatCannotBeOpenedIsReportedAtItsLine() {
        let message = failure("disks:\n  - name: d0\n    file: /nonexistent-dir/d0.img")
        #expect(message.hasPrefix("t.yaml:2: disks[0]: 'd0': open /nonexistent-dir/d0.img"), "\(message)")
    }

    @Test func aNopIsBuiltFromItsKeys() throws {
        let built = try build("""
        disks:
          - name: d0
            memory: 4MiB
        geoms:
          - name: n0
            class: nop
            consumers: [d0]
            offset: 1MiB
            read-fail-percent: 10
            delay-ms: 0
        exports:
          - name: vol
            provider: n0
        """)
        defer { built.topology.shutdown() }
        #expect(built.topology.provider(named: "n0")?.mediaSize == 3 << 20)
        #expect(built.geoms.map(\.className) == ["NOP"])
    }

    @Test func nopKeysAreCheckedByTheClassWithTheirPlace() {
        let base = "disks:\n  - name: d0\n    memory: 4MiB\ngeoms:\n  - name: n0\n    class: nop\n    consumers: [d0]\n"
        #expect(failure(base + "    read-fail-percent: 101")
                == "t.yaml:8: geoms[0].read-fail-percent: '101': must be a whole number from 0 to 100")
        #expect(failure(base + "    delay: 5") == "t.yaml:8: geoms[0].delay: is not a key of class nop; did you mean 'delay-ms'?")
        #expect(failure(base + "    offset: 8MiB")
                == "t.yaml:8: geoms[0].offset: '8MiB': must be a multiple of 512 inside d0 (4194304 bytes)")
        // A size that does not fit past a good offset is blamed on the size line, though its
        // message mentions the offset.
        #expect(failure(base + "    offset: 1MiB\n    size: 4MiB")
                == "t.yaml:9: geoms[0].size: '4MiB': must be a multiple of 512 and at most 3145728 (what d0 has past offset 1048576)")
        #expect(failure("disks:\n  - name: a\n    memory: 1M\n  - name: b\n    memory: 1M\ngeoms:\n  - name: n\n    class: nop\n    consumers: [a, b]")
                .contains("a nop consumes exactly one provider"))
    }
}

/// Concat and stripe from a topology file, and back by tasting alone.
@Suite struct LabelledConfigurationTests {
    static func directory() throws -> String {
        let path = NSTemporaryDirectory() + "strata-labelled-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static let disks = """
    disks:
      - name: d0
        file: d0.img
        size: 4MiB
      - name: d1
        file: d1.img
        size: 4MiB
    """

    func build(_ yaml: String, in directory: String) throws -> BuiltTopology {
        try TopologyBuilder.build(ConfigurationLoader.parse(yaml, file: "t.yaml", baseDirectory: directory))
    }

    @Test func aStripeDeclaredOnceComesBackFromTheDisksAlone() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try build(Self.disks + "\ngeoms:\n  - name: s0\n    class: stripe\n    consumers: [d0, d1]\n    stripe-size: 16KiB\n", in: directory)
        #expect(first.topology.provider(named: "s0")?.stripeSize == 16384)
        #expect(first.topology.shutdown())
        let second = try build(Self.disks + "\nexports:\n  - name: vol\n    provider: s0\n", in: directory)
        defer { second.topology.shutdown() }
        #expect(second.topology.provider(named: "s0")?.stripeSize == 16384, "tasting reassembled it with no geoms entry")
        #expect(second.exports.map(\.provider) == ["s0"])
    }

    @Test func anEntryThatDisagreesWithTheDisksNamesTheDifference() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try build(Self.disks + "\ngeoms:\n  - name: s0\n    class: stripe\n    consumers: [d0, d1]\n", in: directory)
        #expect(first.topology.shutdown())
        for (entry, difference) in [
            ("class: stripe\n    consumers: [d1, d0]", "its metadata has components [d0, d1], the file says [d1, d0]"),
            ("class: stripe\n    consumers: [d0, d1]\n    stripe-size: 128KiB", "its metadata says stripe-size 65536, the file says 131072"),
            ("class: concat\n    consumers: [d0, d1]", "d0 carries the metadata of stripe s0; clear it first"),
        ] {
            do {
                let built = try build(Self.disks + "\ngeoms:\n  - name: s0\n    \(entry)\n", in: directory)
                built.topology.shutdown()
                Issue.record("accepted \(entry)")
            } catch let error as ConfigError {
                #expect(error.problem == difference, "\(error)")
                #expect(error.line == 9 && error.value == "s0")
            }
        }
    }

    @Test func aBadStripeSizeIsReportedAtItsKey() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let built = try build(Self.disks + "\ngeoms:\n  - name: s0\n    class: stripe\n    consumers: [d0, d1]\n    stripe-size: 3000\n", in: directory)
            built.topology.shutdown()
            Issue.record("accepted stripe-size 3000")
        } catch let error as ConfigError {
            #expect("\(error)" == "t.yaml:12: geoms[0].stripe-size: '3000': must be a power of two from 512 to 1GiB")
        }
    }
}

extension LabelledConfigurationTests {
    @Test func aLabelEntryMakesLabelSlashNameAndComesBackByItself() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let yaml = Self.disks + "\ngeoms:\n  - name: home\n    class: label\n    consumers: [d1]\nexports:\n  - name: vol\n    provider: label/home\n"
        let first = try build(yaml, in: directory)
        let size: Int64? = first.topology.provider(named: "label/home")?.mediaSize
        #expect(size == Int64(4 << 20) - 512)
        #expect(first.topology.shutdown())
        let second = try build(Self.disks + "\nexports:\n  - name: vol\n    provider: label/home\n", in: directory)
        defer { second.topology.shutdown() }
        #expect(second.exports.first?.provider == "label/home")
        #expect(second.topology.provider(named: "label/home") != nil, "tasting found the label with no geoms entry")
    }
}

extension LabelledConfigurationTests {
    @Test func aPartEntryNamedAfterItsDiskServesItsPartitions() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = directory + "/g0.img"
        FileManager.default.createFile(atPath: image, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
        try handle.truncate(atOffset: 32 << 20)
        try handle.close()
        let sfdisk = Process()
        sfdisk.executableURL = URL(fileURLWithPath: "/usr/sbin/sfdisk")
        sfdisk.arguments = ["--no-reread", "--no-tell-kernel", image]
        let input = Pipe()
        sfdisk.standardInput = input
        sfdisk.standardOutput = FileHandle.nullDevice
        try sfdisk.run()
        input.fileHandleForWriting.write(Data("label: gpt\nsize=4MiB\nsize=8MiB\n".utf8))
        try input.fileHandleForWriting.close()
        sfdisk.waitUntilExit()
        let built = try build("""
        disks:
          - name: g0
            file: g0.img
        geoms:
          - name: g0
            class: part
            consumers: [g0]
        exports:
          - name: boot
            provider: g0p1
          - name: data
            provider: g0p2
        """, in: directory)
        defer { built.topology.shutdown() }
        let sizes: [Int64?] = [built.topology.provider(named: "g0p1")?.mediaSize, built.topology.provider(named: "g0p2")?.mediaSize]
        #expect(sizes == [4 << 20, 8 << 20])
    }
}

extension LabelledConfigurationTests {
    @Test func aBlankComponentListedForAMirrorIsInsertedAndRebuilt() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let yaml = Self.disks + "\ngeoms:\n  - name: m0\n    class: mirror\n    consumers: [d0, d1]\nexports:\n  - name: vol\n    provider: m0\n"
        let first = try build(yaml, in: directory)
        #expect(first.topology.shutdown())
        // d1 is replaced by a blank disk.
        try FileManager.default.removeItem(atPath: directory + "/d1.img")
        let second = try build(yaml, in: directory)
        defer { second.topology.shutdown() }
        let mirror = try #require(second.topology.geom(named: "m0") as? MirrorGeom)
        let deadline = Date().addingTimeInterval(30)
        while mirror.status.state != "COMPLETE" && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        #expect(mirror.status.state == "COMPLETE", "\(mirror.status)")
        #expect(mirror.status.components.map(\.name) == ["d0", "d1"])
    }

    @Test func aMirrorComponentOfAnotherMirrorIsRefusedFromTheFile() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let three = Self.disks + "\n  - name: d2\n    file: d2.img\n    size: 4MiB\n"
        let first = try build(three + "geoms:\n  - name: m0\n    class: mirror\n    consumers: [d0, d1]\n", in: directory)
        #expect(first.topology.shutdown())
        do {
            let built = try build(three + "geoms:\n  - name: m1\n    class: mirror\n    consumers: [d1, d2]\n", in: directory)
            built.topology.shutdown()
            Issue.record("m1 took a component of m0")
        } catch let error as ConfigError {
            #expect(error.problem.contains("d1 is already a component of mirror m0")
                    || error.problem.contains("carries the metadata of mirror m0"), "\(error)")
        }
    }
}

extension LabelledConfigurationTests {
    @Test func mirrorParametersAreCheckedByName() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let base = Self.disks + "\ngeoms:\n  - name: m0\n    class: mirror\n    consumers: [d0, d1]\n"
        for (line, message) in [
            ("balance: fastest", "t.yaml:12: geoms[0].balance: 'fastest': must be load, prefer, round-robin, split or prefer-local"),
            ("slice: 3000", "t.yaml:12: geoms[0].slice: '3000': must be a power of two from 4KiB to 1GiB"),
            ("rebuild-rate: 4K", "t.yaml:12: geoms[0].rebuild-rate: '4K': must be at least 1MiB (per second), or 0 for no limit"),
            ("rebuild_rate: 4M", "t.yaml:12: geoms[0].rebuild_rate: is not a key of class mirror; did you mean 'rebuild-rate'?"),
            ("replication: semi", "t.yaml:12: geoms[0].replication: 'semi': must be sync or async"),
            ("async-lag: 4K", "t.yaml:12: geoms[0].async-lag: '4K': must be a size from 1MiB to 1TiB"),
        ] {
            do {
                let built = try build(base + "    \(line)\n", in: directory)
                built.topology.shutdown()
                Issue.record("accepted \(line)")
            } catch let error as ConfigError {
                #expect("\(error)" == message)
            }
        }
        let built = try build(base + "    rebuild-rate: 32MiB\n    balance: split\n    replication: async\n    async-lag: 16MiB\n",
                              in: directory)
        defer { built.topology.shutdown() }
        let mirror = try #require(built.topology.geom(named: "m0") as? MirrorGeom)
        #expect(mirror.rebuildRate.load(ordering: .relaxed) == 32 << 20)
        #expect(mirror.balance == .split)
        #expect(mirror.replication == .async(lag: 16 << 20))
        let settings = try #require(MirrorDefinition.settings(of: mirror))
        #expect(settings.replication == .async && settings.asyncLag == 16 << 20)
    }
}
