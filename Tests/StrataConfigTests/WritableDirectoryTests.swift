import Foundation
import Strata
import Testing

/// What the control socket may have the server write: paths beneath the allowed
/// directories, once links are followed.
@Suite struct WritableDirectoryTests {
    @Test func onlyPathsBeneathAnAllowedDirectoryPassEvenThroughLinks() throws {
        let root = NSTemporaryDirectory() + "strata-beneath-\(UUID().uuidString.prefix(8))"
        let data = root + "/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        // A link inside the data directory that leads out of it.
        try FileManager.default.createSymbolicLink(atPath: data + "/out", withDestinationPath: "/etc")

        #expect(isBeneath(data, anyOf: [data]))
        #expect(isBeneath(data + "/crash/new/images", anyOf: [data]), "a path not made yet")
        #expect(isBeneath(root + "/later/x", anyOf: [data, root + "/later"]), "an allowed directory not made yet")
        #expect(!isBeneath(root + "/database", anyOf: [data]), "a name that only starts like the directory")
        #expect(!isBeneath("/etc/cron.d", anyOf: [data]))
        #expect(!isBeneath(data + "/out/cron.d", anyOf: [data]), "through a link out of it")
        #expect(!isBeneath(absolutePath(data + "/../../etc", relativeTo: "/"), anyOf: [data]))

        do {
            try checkBeneath("/etc/x", [data, "/srv"], key: "out", text: "/etc/x")
            Issue.record("/etc/x was let through")
        } catch {
            #expect(error.description == "out '/etc/x': must be beneath \(data) or /srv: the server writes only in its "
                    + "data-directory and the topology file's writable-directories")
        }
    }
}
