import Foundation
import Strata
import StrataConfig
import StrataDisks
import Testing

/// One file is one disk: two entries naming it by different paths are a mistake found
/// before anything is opened. Read-only disks are exported read-only unless the file
/// asks otherwise, which is a mistake too.
@Suite(.serialized) struct ExclusiveAccessTests {
    typealias Workspace = AssemblyTests.Workspace

    /// The error building `yaml` in `workspace` throws, if it is a `ConfigError`.
    static func mistake(_ yaml: String, in workspace: Workspace) -> ConfigError? {
        do {
            let built = try workspace.build(yaml)
            built.topology.shutdown()
            return nil
        } catch {
            return error as? ConfigError
        }
    }

    /// A `bytes`-long image at `name` in the workspace, filled with `byte`.
    static func image(_ name: String, in workspace: Workspace, byte: UInt8 = 0x5A, bytes: Int = 4 << 20) throws {
        try Data(repeating: byte, count: bytes).write(to: URL(fileURLWithPath: "\(workspace.directory)/\(name)"))
    }

    @Test func twoDisksNamingOneFileByDifferentPathsAreAMistakeNamingBoth() throws {
        let workspace = try Workspace()
        try Self.image("a.img", in: workspace)
        try FileManager.default.createSymbolicLink(atPath: "\(workspace.directory)/link.img", withDestinationPath: "a.img")
        let before = try workspace.snapshot()
        for (second, expected) in [
            ("link.img", "t.yaml:3: disks[1].file: 'link.img': is the file d0 opens (t.yaml:2: disks[0].file: 'a.img'); a file can be one disk only"),
            ("../\(URL(fileURLWithPath: workspace.directory).lastPathComponent)/a.img", "t.yaml:3: disks[1].file: '../"),
            ("\(workspace.directory)/a.img", "t.yaml:3: disks[1].file: '\(workspace.directory)/a.img': is the file d0 opens"),
        ] {
            let error = Self.mistake("""
                disks:
                  - {name: d0, file: a.img}
                  - {name: d1, file: \(second)}
                """, in: workspace)
            #expect(error?.description.hasPrefix(expected) == true, "\(second): \(String(describing: error))")
        }
        // A file still to be made, named twice.
        let new = Self.mistake("""
            disks:
              - {name: d0, file: new.img, size: 1MiB}
              - {name: d1, file: sub/../new.img, size: 1MiB}
            """, in: workspace)
        #expect(new?.description.hasPrefix("t.yaml:3: disks[1].file: 'sub/../new.img': is the file d0 opens") == true,
                "\(String(describing: new))")
        #expect(try workspace.snapshot() == before, "nothing was made or changed")
    }

    @Test func aMirrorOfAFileWithItselfIsRefusedBeforeAnythingIsWritten() throws {
        let workspace = try Workspace()
        try Self.image("a.img", in: workspace)
        try FileManager.default.createSymbolicLink(atPath: "\(workspace.directory)/b.img", withDestinationPath: "a.img")
        let before = try workspace.snapshot()
        let error = Self.mistake("""
            disks:
              - {name: d0, file: a.img}
              - {name: d1, file: b.img}
            geoms:
              - {name: m0, class: mirror, consumers: [d0, d1]}
            exports:
              - {name: vol, provider: m0}
            """, in: workspace)
        #expect(error?.description.hasPrefix("t.yaml:3: disks[1].file: 'b.img': is the file d0 opens") == true,
                "\(String(describing: error))")
        #expect(try workspace.snapshot() == before)
    }

    @Test func aReadOnlyDiskAndWhatIsBuiltOnItAreExportedReadOnly() throws {
        let workspace = try Workspace()
        try Self.image("a.img", in: workspace)
        let built = try workspace.build("""
            disks:
              - {name: d0, file: a.img, read-only: true}
              - {name: d1, file: b.img, size: 1MiB}
            geoms:
              - {name: n0, class: nop, consumers: [d0]}
            exports:
              - {name: plain, provider: d0}
              - {name: stacked, provider: n0}
              - {name: asked, provider: d0, read-only: true}
              - {name: writable, provider: d1}
            """)
        defer { built.topology.shutdown() }
        #expect(built.exports.map { "\($0.name):\($0.readOnly)" } == ["plain:true", "stacked:true", "asked:true", "writable:false"])
        let disk = try #require(built.disks.first as? FileDisk)
        #expect(disk.isReadOnly && disk.provider.isReadOnly)
        #expect(FileDiskDefinition.writtenSettings(of: disk)?.contains { $0 == ("read-only", "true") } == true)
    }

    @Test func aWritableExportOfAReadOnlyDiskIsAMistakeNamingTheExport() throws {
        let workspace = try Workspace()
        try Self.image("a.img", in: workspace)
        let error = Self.mistake("""
            disks:
              - {name: d0, file: a.img, read-only: true}
            exports:
              - {name: vol, provider: d0, read-only: false}
            """, in: workspace)
        #expect(error?.description == "t.yaml:4: exports[0].read-only: 'false': provider d0 is read-only; leave read-only out or set it to true",
                "\(String(describing: error))")
    }

    @Test func aMirrorOverAReadOnlyDiskFailsItsStartNamingTheDisk() throws {
        let workspace = try Workspace()
        try Self.image("a.img", in: workspace)
        try Self.image("b.img", in: workspace, byte: 0)
        let before = try workspace.snapshot()
        let error = Self.mistake("""
            disks:
              - {name: d0, file: a.img, read-only: true}
              - {name: d1, file: b.img}
            geoms:
              - {name: m0, class: mirror, consumers: [d1, d0]}
            """, in: workspace)
        #expect(error?.description == "t.yaml:5: geoms[0]: 'm0': write open of d0: it is read-only", "\(String(describing: error))")
        #expect(try workspace.snapshot() == before, "the mirror wrote nothing")
    }
}
