import Foundation
import Strata
import StrataConfig
import StrataDisks
import Testing

/// A file disk's `cache:` key in a topology file: `writeback` (the default) or `none`
/// (O_DIRECT), written back when it is `none`, and each refusal of `none` reported at
/// the key that asked for it.
@Suite(.serialized) struct FileCacheTests {
    typealias Workspace = AssemblyTests.Workspace

    static func mistake(_ yaml: String, in workspace: Workspace) -> String {
        do {
            let built = try workspace.build(yaml)
            built.topology.shutdown()
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func cacheIsWritebackOrNoneAndAnythingElseIsAMistakeNamingIt() throws {
        let load = { (yaml: String) in try ConfigurationLoader.parse(yaml, file: "strata.yaml", baseDirectory: "/etc/strata") }
        let parsed = try load("disks:\n  - name: a\n    file: /a.img\n    cache: none\n  - name: b\n    file: /b.img")
        #expect(try parsed.disks.map { try FileDiskDefinition.Settings.parse($0.settings).cache } == [.direct, .writeback])
        do {
            _ = try load("disks:\n  - name: a\n    file: /a.img\n    cache: direct")
            Issue.record("cache: direct was taken")
        } catch {
            #expect("\(error)" == "strata.yaml:4: disks[0].cache: 'direct': must be writeback or none")
        }
    }

    @Test func aDiskWithCacheNoneOpensItsFileDirectAndSaysSoInItsSettings() throws {
        let workspace = try Workspace()
        let built = try workspace.build("""
            disks:
              - {name: d0, file: a.img, size: 1MiB, cache: none}
              - {name: d1, file: b.img, size: 1MiB}
            """)
        defer { built.topology.shutdown() }
        let disks = built.disks.compactMap { $0 as? FileDisk }
        #expect(disks.map(\.cache) == [.direct, .writeback])
        #expect(disks[0].directAlignment != nil && disks[1].directAlignment == nil)
        // What the file needs is what its provider asks of the memory it is given.
        #expect(disks.map(\.provider.memoryAlignment) == [disks[0].directAlignment?.memory ?? 0, 1])
        #expect(FileDiskDefinition.writtenSettings(of: disks[0])?.contains { $0 == ("cache", "none") } == true)
        #expect(FileDiskDefinition.writtenSettings(of: disks[1])?.contains { $0.key == "cache" } == false)
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/shm")))
    func cacheNoneOnTmpfsIsAMistakeAtTheKeyNamingTheFile() throws {
        let workspace = try Workspace()
        let path = "/dev/shm/strata-cache-\(getpid()).img"
        defer { unlink(path) }
        let error = Self.mistake("""
            disks:
              - name: d0
                file: \(path)
                size: 1MiB
                cache: none
            """, in: workspace)
        #expect(error.hasPrefix("t.yaml:5: disks[0].cache: 'none': is not possible on tmpfs or ramfs"), "\(error)")
        #expect(error.contains("(file \(path))"), "\(error)")
        #expect(!FileManager.default.fileExists(atPath: path), "the file was made and left behind")
    }

    @Test func theInlineEngineWithCacheNoneIsAMistakeAtIo() throws {
        let workspace = try Workspace()
        let error = Self.mistake("""
            disks:
              - name: d0
                file: a.img
                size: 1MiB
                io: inline
                cache: none
            """, in: workspace)
        #expect(error.hasPrefix("t.yaml:5: disks[0].io: 'inline': cannot go with cache: none"), "\(error)")
    }
}
