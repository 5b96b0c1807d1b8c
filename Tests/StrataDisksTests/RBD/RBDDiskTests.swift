import Foundation
import Strata
import StrataDisks
import StrataRBD
import Synchronization
import Testing

/// The test cluster `scripts/check` starts (`scripts/ceph-test-cluster`), named by
/// STRATA_CEPH_CONF; the rbd tests are skipped without one.
enum CephTestCluster {
    static let configuration = ProcessInfo.processInfo.environment["STRATA_CEPH_CONF"]

    /// Runs the `rbd` command against the cluster.
    @discardableResult
    static func rbd(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try command("/usr/bin/rbd", arguments)
    }

    /// Runs the `ceph` command against the cluster.
    @discardableResult
    static func ceph(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try command("/usr/bin/ceph", arguments)
    }

    private static func command(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["-c", configuration ?? "/nonexistent"] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// A name no other test uses, in pool `rbd`.
    static func uniqueImage(_ prefix: String) -> String { "rbd/\(prefix)-\(UUID().uuidString.prefix(8).lowercased())" }

    /// Removes an image and its snapshots (memstore keeps the cluster's data in memory).
    static func remove(_ image: String) {
        _ = try? rbd(["snap", "purge", image])
        _ = try? rbd(["rm", "--no-progress", image])
    }
}

/// A topology with one rbd disk and an issuer on it.
final class RBDDiskFixture {
    let topology: Topology
    let disk: RBDDisk
    let issuer: Issuer
    let messages = FailureLog()

    init(_ image: String, size: Int64? = 64 << 20, readOnly: Bool = false, timeout: Int = 30,
         clientID: String = "admin", keyring: String? = nil) throws {
        let messages = messages
        topology = Topology(log: { _, message in messages.add(message) })
        var options = RBDDisk.Options()
        options.configuration = CephTestCluster.configuration
        options.size = size
        options.readOnly = readOnly
        options.timeoutSeconds = timeout
        options.clientID = clientID
        options.keyring = keyring
        disk = try RBDDisk.create(in: topology, name: "r0", spec: RBDImageSpec(image)!, options: options)
        issuer = try Issuer(on: disk.provider, in: topology, write: readOnly ? 0 : 1)
    }

    /// Closes the image (writing back librbd's cache and letting go of the lock).
    func close() {
        try? issuer.close()
        #expect(witherAndWait(disk, in: topology))
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)),
       .enabled(if: CephTestCluster.configuration != nil, "needs a Ceph cluster: STRATA_CEPH_CONF (scripts/check starts one)"))
struct RBDDiskTests {
    @Test func imageSpecsParseAsTheRbdCommandWritesThem() {
        #expect(RBDImageSpec("rbd/vm1")?.description == "rbd/vm1")
        #expect(RBDImageSpec("rbd/tenant/vm1@before")?.namespace == "tenant")
        #expect(RBDImageSpec("rbd/tenant/vm1@before")?.snapshot == "before")
        for bad in ["", "rbd", "rbd/", "/vm1", "rbd//vm1", "a/b/c/d", "rbd/vm1@", "rbd/vm1@a@b"] {
            #expect(RBDImageSpec(bad) == nil, "\(bad)")
        }
    }

    @Test func readsWritesFlushesTrimsAndZeroesReachTheImage() throws {
        let image = CephTestCluster.uniqueImage("io")
        defer { CephTestCluster.remove(image) }
        let fixture = try RBDDiskFixture(image)
        let issuer = fixture.issuer
        #expect(fixture.disk.provider.mediaSize == 64 << 20)
        #expect(try issuer.bytes(at: 0, count: 8192) == zeros(8192), "a new image reads as zeros")
        let data = pattern(count: 1 << 20, at: 3 << 20, seed: 7)
        #expect(try issuer.write(data, at: 3 << 20) == 1 << 20)
        #expect(try issuer.write(pattern(count: 4096, at: 0, seed: 1), at: 0, flags: .fua) == 4096)
        #expect(try issuer.write(pattern(count: 4096, at: 8192, seed: 2), at: 8192, flags: [.preflush, .fua]) == 4096)
        try issuer.flush()
        let back = try issuer.bytes(at: 3 << 20, count: 1 << 20) == data
        #expect(back)
        #expect(try issuer.bytes(at: 0, count: 4096) == pattern(count: 4096, at: 0, seed: 1))
        #expect(try issuer.bytes(at: 8192, count: 4096) == pattern(count: 4096, at: 8192, seed: 2))

        // Scattered buffers, both ways (librbd's vector calls).
        let pieces = [512, 3584, 4096, 8192]
        let filling = pattern(count: 16384, at: 5 << 20, seed: 9)
        let written = try FileEngineTests.transfer(.write, on: issuer.consumer, at: 5 << 20, pieces: pieces, filling: filling)
        #expect(written.error == nil && written.completed == 16384)
        let read = try FileEngineTests.transfer(.read, on: issuer.consumer, at: 5 << 20, pieces: pieces.reversed(),
                                                filling: zeros(16384))
        #expect(read.error == nil && read.completed == 16384)
        #expect(read.bytes == filling)

        // WRITE_ZEROES zeroes; with NO_HOLE and FAST_ZERO it is refused (zeros that stay
        // allocated are written out).
        try issuer.send(.writeZeroes, at: 3 << 20, length: 65536)
        #expect(try issuer.bytes(at: 3 << 20, count: 65536) == zeros(65536))
        try issuer.send(.writeZeroes, at: (3 << 20) + 65536, length: 4096, flags: .noHole)
        #expect(try issuer.bytes(at: (3 << 20) + 65536, count: 4096) == zeros(4096))
        #expect(errorCode { try issuer.send(.writeZeroes, at: 0, length: 4096, flags: [.noHole, .fastZero]) } == .notSupported)
        #expect(try issuer.bytes(at: 0, count: 4096) == pattern(count: 4096, at: 0, seed: 1), "the refused zeroing changed nothing")
        // TRIM of whole objects frees them: they read as zeros.
        try issuer.send(.delete, at: 0, length: 8 << 20)
        #expect(try issuer.bytes(at: 3 << 20, count: 4096) == zeros(4096))
        #expect(try issuer.attributeInt32(.canDelete) == 1)
        fixture.close()

        // What the disk wrote is what `rbd export` reads.
        let reopened = try RBDDiskFixture(image)
        let tail = pattern(count: 65536, at: 40 << 20, seed: 3)
        try reopened.issuer.write(tail, at: 40 << 20)
        reopened.close()
        let exported = NSTemporaryDirectory() + "strata-rbd-export-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: exported) }
        #expect(try CephTestCluster.rbd(["export", "--no-progress", image, exported]).status == 0)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: exported))
        #expect(bytes.count == 64 << 20)
        let same = Array(bytes[(40 << 20)..<((40 << 20) + 65536)]) == tail
        #expect(same)
    }

    @Test func blockStatusShowsWhatIsAllocated() throws {
        let image = CephTestCluster.uniqueImage("map")
        defer { CephTestCluster.remove(image) }
        let fixture = try RBDDiskFixture(image)
        defer { fixture.close() }
        #expect(try fixture.issuer.extents(at: 0, length: 64 << 20) == [BioExtent(offset: 0, length: 64 << 20, kind: [.hole, .zero])])
        try fixture.issuer.write(pattern(count: 65536, at: 8 << 20, seed: 1), at: 8 << 20)
        try fixture.issuer.write(pattern(count: 4096, at: 40 << 20, seed: 1), at: 40 << 20)
        let extents = try fixture.issuer.extents(at: 0, length: 64 << 20)
        #expect(extentsTile(extents, 0..<(64 << 20)), "\(extents)")
        for offset: Int64 in [8 << 20, (8 << 20) + 65535, 40 << 20] {
            #expect(extentKind(at: offset, in: extents) == [], "\(offset) in \(extents)")
        }
        for offset: Int64 in [0, 20 << 20, 60 << 20] {
            #expect(extentKind(at: offset, in: extents) == [.hole, .zero], "\(offset) in \(extents)")
        }
        // A range inside the media is answered for that range only.
        let inner = try fixture.issuer.extents(at: 20 << 20, length: 1 << 20)
        #expect(inner == [BioExtent(offset: 20 << 20, length: 1 << 20, kind: [.hole, .zero])])
    }

    @Test func aSecondWriterIsKeptOutByTheExclusiveLock() throws {
        let image = CephTestCluster.uniqueImage("lock")
        defer { CephTestCluster.remove(image) }
        let first = try RBDDiskFixture(image)
        try first.issuer.write(pattern(count: 4096, at: 0, seed: 1), at: 0)
        // Another connection (another timeout makes one), as another process would have.
        do {
            let second = try RBDDiskFixture(image, timeout: 29)
            second.close()
            Issue.record("a second writer opened \(image)")
        } catch let error as StrataError {
            #expect(error.message.contains("image \(image) is in use"), "\(error.message)")
            #expect(error.message.contains("exclusive lock"), "\(error.message)")
        }
        // `rbd` itself cannot write it either, and the data is untouched.
        let bench = ["bench", "--io-type", "write", "--io-size", "4096", "--io-total", "4096", "--io-pattern", "seq", image]
        let foreign = try CephTestCluster.rbd(bench)
        #expect(foreign.status != 0 && foreign.output.contains("Read-only file system"), "\(foreign.output)")
        #expect(try first.issuer.bytes(at: 0, count: 4096) == pattern(count: 4096, at: 0, seed: 1))
        // A reader without the lock is let in.
        let reader = try RBDDiskFixture(image, readOnly: true, timeout: 29)
        #expect(try reader.issuer.bytes(at: 0, count: 4096) == pattern(count: 4096, at: 0, seed: 1))
        reader.close()
        // Once the first lets go, others write again.
        first.close()
        let after = try CephTestCluster.rbd(bench)
        #expect(after.status == 0, "\(after.output)")
        let next = try RBDDiskFixture(image, timeout: 29)
        try next.issuer.write(zeros(4096), at: 0)
        next.close()
    }

    @Test func snapshotsOpenReadOnly() throws {
        let image = CephTestCluster.uniqueImage("snap")
        defer { CephTestCluster.remove(image) }
        let fixture = try RBDDiskFixture(image)
        try fixture.issuer.write(pattern(count: 65536, at: 0, seed: 1), at: 0)
        fixture.close()
        #expect(try CephTestCluster.rbd(["snap", "create", image + "@before"]).status == 0)
        let writer = try RBDDiskFixture(image)
        try writer.issuer.write(pattern(count: 65536, at: 0, seed: 2), at: 0)
        let snapshot = try RBDDiskFixture(image + "@before", size: nil, readOnly: true)
        #expect(snapshot.disk.isReadOnly && snapshot.disk.provider.isReadOnly)
        #expect(try snapshot.issuer.bytes(at: 0, count: 65536) == pattern(count: 65536, at: 0, seed: 1))
        #expect(try writer.issuer.bytes(at: 0, count: 65536) == pattern(count: 65536, at: 0, seed: 2))
        #expect(throws: StrataError.self) {
            try snapshot.topology.access(snapshot.issuer.consumer, read: 0, write: 1, exclusive: 0)
        }
        snapshot.close()
        writer.close()
    }

    @Test func mistakesAreRefusedWithWhatWasWrongAndNothingIsLeftOpen() throws {
        let image = CephTestCluster.uniqueImage("bad")
        defer { CephTestCluster.remove(image) }
        func failure(_ body: () throws -> Void) -> String {
            do {
                try body()
                return "(no error)"
            } catch let error as StrataError {
                return error.message
            } catch {
                return "\(error)"
            }
        }
        #expect(failure { _ = try RBDDiskFixture(image, size: nil) }.contains("image \(image) does not exist; give size: to create it"))
        #expect(failure { _ = try RBDDiskFixture(image, size: nil, readOnly: true) }.contains("does not exist"))
        #expect(failure { _ = try RBDDiskFixture("nopool/x") }.contains("cannot open pool nopool"))
        #expect(failure { _ = try RBDDiskFixture(image + "@nosnap", size: nil) }.contains("snapshot nosnap of \(image) does not exist"))
        let made = try RBDDiskFixture(image, size: 32 << 20)
        made.close()
        #expect(failure { _ = try RBDDiskFixture(image, size: 64 << 20) }.contains("image \(image) is 33554432 bytes, not 67108864 as size says"))
        let keyring = NSTemporaryDirectory() + "strata-rbd-keyring-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: keyring) }
        try "[client.admin]\n\tkey = AQBzZ2hnAAAAABAAnotTheRealKeyAtAllxxxxxxx==\n".write(toFile: keyring, atomically: true, encoding: .utf8)
        let wrongKey = failure { _ = try RBDDiskFixture(image, timeout: 5, keyring: keyring) }
        #expect(wrongKey.contains("cannot") && wrongKey.contains("client.admin"), "\(wrongKey)")
        // An image without the exclusive-lock feature is refused for writing, read-only it opens.
        let unlocked = CephTestCluster.uniqueImage("nolock")
        defer { CephTestCluster.remove(unlocked) }
        #expect(try CephTestCluster.rbd(["create", "--size", "16", "--image-feature", "layering", unlocked]).status == 0)
        #expect(failure { _ = try RBDDiskFixture(unlocked, size: nil) }
                .contains("image \(unlocked) lacks the exclusive-lock feature, which keeps a second writer out: run `rbd feature enable \(unlocked) exclusive-lock`"))
        let reader = try RBDDiskFixture(unlocked, size: nil, readOnly: true)
        #expect(try reader.issuer.bytes(at: 0, count: 4096) == zeros(4096))
        reader.close()
        // After every refusal the image opens for writing: nothing held its lock.
        let again = try RBDDiskFixture(image, size: nil, timeout: 28)
        try again.issuer.write(zeros(4096), at: 0)
        again.close()
    }

    @Test func aClusterThatDoesNotAnswerFailsTheStartWithinTheTimeout() throws {
        let directory = NSTemporaryDirectory() + "strata-rbd-dead-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A monitor address where nothing listens.
        try "[global]\nmon host = 127.0.0.1:1\n[client]\nlog file = /dev/null\n"
            .write(toFile: directory + "/ceph.conf", atomically: true, encoding: .utf8)
        let topology = Topology()
        var options = RBDDisk.Options()
        options.configuration = directory + "/ceph.conf"
        options.timeoutSeconds = 2
        options.size = 1 << 20
        let started = ContinuousClock.now
        do {
            _ = try RBDDisk.create(in: topology, name: "r0", spec: RBDImageSpec("rbd/x")!, options: options)
            Issue.record("a disk was made on a cluster that does not answer")
        } catch let error as StrataError {
            #expect(error.message.contains("cannot connect to the Ceph cluster of \(directory)/ceph.conf as client.admin: ETIMEDOUT"),
                    "\(error.message)")
        }
        #expect(ContinuousClock.now - started < .seconds(20))
        #expect(topology.geoms.isEmpty)
    }

    @Test func aClientWithProfileRbdCapsIsEnough() throws {
        let image = CephTestCluster.uniqueImage("caps")
        defer { CephTestCluster.remove(image) }
        let client = "strata-\(UUID().uuidString.prefix(6).lowercased())"
        let created = try CephTestCluster.ceph(["auth", "get-or-create", "client.\(client)", "mon", "profile rbd", "osd", "profile rbd pool=rbd"])
        #expect(created.status == 0, "\(created.output)")
        defer { _ = try? CephTestCluster.ceph(["auth", "del", "client.\(client)"]) }
        let keyring = NSTemporaryDirectory() + "strata-rbd-keyring-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: keyring) }
        try created.output.write(toFile: keyring, atomically: true, encoding: .utf8)
        let fixture = try RBDDiskFixture(image, clientID: client, keyring: keyring)
        try fixture.issuer.write(pattern(count: 8192, at: 4096, seed: 4), at: 4096)
        #expect(try fixture.issuer.bytes(at: 4096, count: 8192) == pattern(count: 8192, at: 4096, seed: 4))
        fixture.close()
    }

    @Test func aBlocklistedClientsRequestsFailWithTheirErrnoAndTheImageNamed() throws {
        let image = CephTestCluster.uniqueImage("blocklist")
        defer { CephTestCluster.remove(image) }
        // A connection of its own (timeout 11), which the blocklist spoils for good.
        let fixture = try RBDDiskFixture(image, timeout: 11)
        try fixture.issuer.write(pattern(count: 4096, at: 0, seed: 1), at: 0)
        let watchers = try CephTestCluster.rbd(["status", image]).output
        guard let range = watchers.range(of: #"watcher=(\S+)"#, options: .regularExpression) else {
            Issue.record("no watcher in \(watchers)")
            return fixture.close()
        }
        let address = String(watchers[range].dropFirst("watcher=".count))
        #expect(try CephTestCluster.ceph(["osd", "blocklist", "add", address]).status == 0)
        defer { _ = try? CephTestCluster.ceph(["osd", "blocklist", "rm", address]) }
        let error = errorCode { try fixture.issuer.write(pattern(count: 4096, at: 0, seed: 2), at: 0) }
        #expect(error != nil)
        let status = fixture.disk.status
        #expect(status.state == "FAILING" && status.failures >= 1, "\(status)")
        #expect(status.detail.contains("WRITE at 0+4096 of image \(image) failed"), "\(status.detail)")
        #expect(fixture.messages.all.contains { $0.contains("rbd disk r0") && $0.contains(image) }, "\(fixture.messages.all)")
        try? fixture.issuer.close()
        fixture.topology.wither(fixture.disk)
        #expect(fixture.topology.waitUntilGone(fixture.disk))
    }
}
