import Foundation
import Strata
import StrataClasses
import StrataConfig
import StrataDisks
import Synchronization
import Testing

/// Assembly from a topology file: the file decides, in the same way every time; tasting
/// never reads what belongs to a class or a client; and a start that fails leaves every
/// disk as it was and reports its one error.
@Suite(.serialized) struct AssemblyTests {
    /// A folder of images and the messages topologies built in it logged.
    final class Workspace: Sendable {
        let directory: String
        let messages = Mutex<[String]>([])

        init() throws {
            directory = NSTemporaryDirectory() + "strata-assembly-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }

        deinit { try? FileManager.default.removeItem(atPath: directory) }

        /// Builds `yaml` (relative paths in this folder) into a topology that logs here.
        func build(_ yaml: String) throws -> BuiltTopology {
            let topology = Topology { [weak self] _, message in self?.messages.withLock { $0.append(message) } }
            return try TopologyBuilder.build(ConfigurationLoader.parse(yaml, file: "t.yaml", baseDirectory: directory),
                                             topology: topology)
        }

        /// The messages logged since the last call.
        func takeMessages() -> [String] {
            messages.withLock { messages in
                defer { messages.removeAll() }
                return messages
            }
        }

        /// Every file in the folder with a digest of its bytes.
        func snapshot() throws -> [String: Int] {
            var files: [String: Int] = [:]
            for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
                files[name] = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name)")).hashValue
            }
            return files
        }
    }

    static func mirror(_ built: BuiltTopology, _ name: String = "m0") throws -> MirrorGeom {
        try #require(built.topology.geom(named: name) as? MirrorGeom)
    }

    /// Polls until the mirror is COMPLETE or 20 s pass; returns its last state.
    static func waitForComplete(_ mirror: MirrorGeom) -> String {
        let deadline = Date().addingTimeInterval(20)
        while mirror.status.state != "COMPLETE" && Date() < deadline { usleep(5000) }
        return mirror.status.state
    }

    /// The documented fault-injection setup: a mirror whose second leg is a nop over a
    /// file disk.
    static let mirrorOverNop = """
    disks:
      - {name: d0, file: d0.img, size: 4MiB}
      - {name: d1, file: d1.img, size: 4MiB}
    geoms:
      - {name: n1, class: nop, consumers: [d1]}
      - {name: m0, class: mirror, consumers: [d0, n1]}
    exports:
      - {name: vol, provider: m0}
    """

    @Test func aMirrorOverANopComesBackCompleteFiftyTimesInARow() throws {
        let workspace = try Workspace()
        let first = try workspace.build(Self.mirrorOverNop)
        #expect(try Self.mirror(first).status.state == "COMPLETE")
        #expect(first.topology.shutdown())
        _ = workspace.takeMessages()
        for start in 1...50 {
            let built = try workspace.build(Self.mirrorOverNop)
            let mirror = try Self.mirror(built)
            let status = mirror.status
            #expect(status.state == "COMPLETE", "start \(start): \(status)")
            #expect(status.components.map(\.name) == ["d0", "n1"], "start \(start): \(status)")
            #expect(built.topology.geoms.map(\.name) == ["d0", "d1", "n1", "m0"], "start \(start)")
            let messages = workspace.takeMessages()
            #expect(!messages.contains { $0.contains("rebuild") || $0.contains("resynchroniz") || $0.contains("tasted") },
                    "start \(start): \(messages)")
            #expect(built.topology.shutdown())
        }
    }

    @Test func whatAClientWritesToAnExportNeverChangesHowTheTopologyIsBuilt() throws {
        let workspace = try Workspace()
        // Real metadata to forge with: a mirror's, from its component, and a label.
        let made = try workspace.build("""
        disks:
          - {name: a, file: a.img, size: 4MiB}
          - {name: b, file: b.img, size: 4MiB}
        geoms:
          - {name: m0, class: mirror, consumers: [a, b]}
        """)
        #expect(made.topology.shutdown())
        let mirrorSector = try Data(contentsOf: URL(fileURLWithPath: workspace.directory + "/b.img")).suffix(512)
        let labelSector = ComponentLabel(kind: .label, name: "forged", id: 7, index: 0, count: 1, dataSize: 4 << 20 - 512)
            .encoded(sectorSize: 512)
        let exported = """
        disks:
          - {name: d5, file: d5.img, size: 4MiB}
          - {name: d6, file: d6.img, size: 4MiB}
        geoms:
          - {name: n6, class: nop, consumers: [d6]}
        exports:
          - {name: plain, provider: d5}
          - {name: through-nop, provider: n6}
        """
        for forged in [Array(mirrorSector), labelSector] {
            let built = try workspace.build(exported)
            for name in ["d5", "n6"] {
                let provider = try #require(built.topology.provider(named: name))
                let client = try BlockDevice(opening: provider, in: built.topology, writable: true)
                try client.consumerForBenchmark.writeSync(forged, at: provider.mediaSize - 512)
                client.close()
            }
            #expect(built.topology.shutdown())
            _ = workspace.takeMessages()
            let again = try workspace.build(exported)
            #expect(again.topology.geoms.map(\.className) == ["FILE", "FILE", "NOP"], "\(again.topology.geoms)")
            #expect(again.exports.map(\.provider) == ["d5", "n6"])
            #expect(!workspace.takeMessages().contains { $0.contains("tasted") })
            #expect(again.topology.shutdown())
        }
    }

    @Test func aComponentInsertedAtRunTimeComesBackWithoutTheFileListingIt() throws {
        let workspace = try Workspace()
        let yaml = """
        disks:
          - {name: d0, file: d0.img, size: 4MiB}
          - {name: d1, file: d1.img, size: 4MiB}
          - {name: spare, file: spare.img, size: 4MiB}
        geoms:
          - {name: m0, class: mirror, consumers: [d0, d1]}
        """
        let first = try workspace.build(yaml)
        let mirror = try Self.mirror(first)
        try mirror.remove("d1", in: first.topology)
        try mirror.insert(try #require(first.topology.provider(named: "spare")), in: first.topology)
        #expect(Self.waitForComplete(mirror) == "COMPLETE")
        #expect(first.topology.shutdown())
        _ = workspace.takeMessages()
        let second = try workspace.build(yaml)
        let back = try Self.mirror(second)
        #expect(back.status.state == "COMPLETE")
        #expect(Set(back.status.components.map(\.name)) == ["d0", "spare"], "\(back.status)")
        let messages = workspace.takeMessages()
        #expect(messages.contains { $0.contains("spare is a member but the topology file does not list it") }, "\(messages)")
        #expect(!messages.contains { $0.contains("rebuild") }, "\(messages)")
        #expect(second.topology.shutdown())
    }

    /// A good topology of every kind of geom, on images that already carry its metadata,
    /// and ways to get it wrong.
    static let good = """
    disks:
      - {name: d0, file: d0.img, size: 4MiB}
      - {name: d1, file: d1.img, size: 4MiB}
      - {name: d2, file: d2.img, size: 4MiB}
      - {name: d3, file: d3.img, size: 4MiB}
      - {name: x0, file: x0.img, size: 4MiB}
    geoms:
      - {name: n1, class: nop, consumers: [d1]}
      - {name: m0, class: mirror, consumers: [d0, n1]}
      - {name: s0, class: stripe, consumers: [d2, d3]}
    exports:
      - {name: vol, provider: m0}
      - {name: striped, provider: s0}
    """

    static let mistakes: [(String, String)] = [
        ("an export naming nothing", good.replacingOccurrences(of: "provider: s0", with: "provider: s9")),
        ("a consumer naming nothing, after the others",
         good.replacingOccurrences(of: "exports:", with: "  - {name: n9, class: nop, consumers: [d9]}\nexports:")),
        ("a cycle", good.replacingOccurrences(of: "consumers: [d1]}", with: "consumers: [m0]}")),
        ("an unknown class", good.replacingOccurrences(of: "class: stripe", with: "class: strip")),
        ("a value out of range", good.replacingOccurrences(of: "consumers: [d1]}", with: "consumers: [d1], delay-ms: 70000}")),
        ("a nop past its disk", good.replacingOccurrences(of: "exports:", with: "  - {name: n9, class: nop, consumers: [s0], offset: 1GiB}\nexports:")),
        ("a mirror over another mirror's component", good.replacingOccurrences(of: "consumers: [d0, n1]", with: "consumers: [d0, n1, x0]")),
        ("a stripe in another order", good.replacingOccurrences(of: "consumers: [d2, d3]", with: "consumers: [d3, d2]")),
        ("a part over a disk without a table", good.replacingOccurrences(of: "exports:", with: "  - {name: d2, class: part, consumers: [s0]}\nexports:")),
        ("a new mirror on new disks, then a mistake", good.replacingOccurrences(of: "exports:", with: """
              - {name: m9, class: mirror, consumers: [e0, e1]}
              - {name: n9, class: nop, consumers: [nothing]}
            exports:
            """).replacingOccurrences(of: "geoms:", with: """
              - {name: e0, file: e0.img, size: 4MiB}
              - {name: e1, file: e1.img, size: 4MiB}
            geoms:
            """)),
        ("a missing file disk after new ones", good.replacingOccurrences(of: "geoms:", with: """
              - {name: e0, file: e0.img, size: 4MiB}
              - {name: gone, file: gone.img}
            geoms:
            """)),
    ]

    @Test func aStartThatFailsWritesNothingAndReportsOnlyItsError() throws {
        let workspace = try Workspace()
        // x0 carries another mirror's metadata; the good topology's geoms are on their disks.
        let other = try workspace.build("""
        disks:
          - {name: x0, file: x0.img, size: 4MiB}
          - {name: x1, file: x1.img, size: 4MiB}
        geoms:
          - {name: x, class: mirror, consumers: [x0, x1]}
        """)
        #expect(other.topology.shutdown())
        let good = try workspace.build(Self.good)
        #expect(good.topology.shutdown())
        let before = try workspace.snapshot()
        for (what, yaml) in Self.mistakes {
            _ = workspace.takeMessages()
            do {
                let built = try workspace.build(yaml)
                built.topology.shutdown()
                Issue.record("\(what): built")
                continue
            } catch let error as ConfigError {
                #expect(error.file == "t.yaml", "\(what): \(error)")
            }
            #expect(try workspace.snapshot() == before, "\(what): the images changed")
            #expect(workspace.takeMessages() == [], "\(what): logged more than its error")
        }
        // The good topology still comes back as it was.
        let again = try workspace.build(Self.good)
        #expect(try Self.mirror(again).status.state == "COMPLETE")
        #expect(again.topology.shutdown())
    }
}
