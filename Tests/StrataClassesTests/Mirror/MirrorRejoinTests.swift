import Foundation
import Strata
import StrataClasses
import StrataDisks
import Synchronization
import Testing

/// A provider that says it is on another machine, as a remote disk does: it answers
/// "STRATA::link" with what the test sets, and passes everything else down, writes after
/// a random delay of up to `jitterMilliseconds` (so they overtake each other, as they
/// can on a network server).
final class LinkStandIn: Geom, @unchecked Sendable {
    let answer = Mutex("CONNECTED 1")
    let jitterMilliseconds = Atomic<Int>(0)

    static func create(in topology: Topology, name: String, over below: Provider) throws -> LinkStandIn {
        let geom = LinkStandIn(name: name, className: "LINK-STAND-IN")
        try topology.add(geom)
        let consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: below)
        try topology.createProvider(for: geom, name: name, mediaSize: below.mediaSize, sectorSize: below.sectorSize)
        return geom
    }

    override func start(_ bio: consuming ProviderBio) {
        if bio.command == .getattr && bio.attribute == .link {
            bio.deliverAttribute(string: answer.withLock { $0 })
            return
        }
        guard let clone = bio.clone() else { return bio.deliver(.noMemory) }
        let jitter = jitterMilliseconds.load(ordering: .relaxed)
        guard jitter > 0 && bio.command == .write else { return passOnToFirstConsumer(bio, clone) }
        let (parent, child) = (bio.unmanaged(), clone.unmanaged())
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int.random(in: 0...jitter))) {
            self.passOnToFirstConsumer(parent.takeProviderBio(), child.takeBio())
        }
    }
}

/// Components taken back after a while away get only what was written meanwhile; remote
/// ones come back by themselves when their link does; `prefer-local` reads stay local.
@Suite(.timeLimit(.minutes(3)))
struct MirrorRejoinTests {
    static let size: Int64 = 64 << 20

    /// Writes `blocks` 64 KiB blocks spread over the mirror, each its own pattern.
    static func fill(_ device: BlockDevice, blocks: Range<Int>) async throws {
        for block in blocks {
            try await device.write(MirrorTests.pattern(65536, seed: block), at: Int64(block) * (512 << 10))
        }
    }

    @Test func aComponentTakenBackGetsOnlyWhatWasWrittenWhileItWasOut() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "rj\($0)", size: Self.size) }
        let nop = try NopGeom.create(in: topology, name: "rj-nop", over: disks[1].provider)
        let mirror = try MirrorGeom.create(in: topology, name: "mrj", over: [disks[0].provider, nop.providers[0]])
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await Self.fill(device, blocks: 0..<120)
        try nop.configure(.init(writeFailPercent: 100))
        // While it is out: one block, one write across two regions, a trim.
        try await device.write(MirrorTests.pattern(65536, seed: 500), at: 5 << 20)
        #expect(mirror.status.components.map(\.state) == ["ACTIVE", "BROKEN"])
        try await device.write(MirrorTests.pattern(1 << 20, seed: 501), at: (20 << 20) + (512 << 10))
        try await device.delete(at: 40 << 20, length: 4096)
        try nop.configure(.init())
        let before = nop.statistics.bytesWritten
        mirror.rebuildRate.store(2 << 20, ordering: .relaxed)
        try mirror.rejoin("rj-nop", in: topology)
        #expect(mirror.status.state == "SYNCHRONIZING")
        // Writes go on while it copies, above and below where the copy is, over regions
        // it has to copy and regions it passes over.
        for round in 0..<30 {
            let offset = Int64((round * 7919) % 120) * (512 << 10) + 8192
            try await device.write(MirrorTests.pattern(16384, seed: 900 + round), at: offset)
        }
        #expect(try await MirrorTests.waitFor(mirror, state: "COMPLETE"), "\(mirror.status)")
        #expect(try await MirrorTests.identical(disks[0].provider, nop.providers[0], in: topology, size: mirror.mirrorSize))
        // Four regions of 1 MiB (5, 20, 21 and 40 MiB), the writes made meanwhile, and
        // the metadata: far from the 64 MiB of a full copy.
        let copied = nop.statistics.bytesWritten - before
        #expect(copied < 6 << 20, "\(copied) bytes written to the component taken back")
        #expect(copied >= 4 << 20, "\(copied) bytes written to the component taken back")
    }

    @Test func onlyABrokenComponentWithAnotherUpToDateIsTakenBack() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "rk\($0)", size: 8 << 20) }
        let mirror = try MirrorGeom.create(in: topology, name: "mrk", over: disks.map(\.provider))
        #expect(throws: StrataError.self) { try mirror.rejoin("rk1", in: topology) }
        #expect(throws: StrataError.self) { try mirror.rejoin("nothing", in: topology) }
        #expect(mirror.status.state == "COMPLETE")
    }

    @Test func aRemoteComponentComesBackByItselfWhenItsLinkDoes() async throws {
        let log = LogLines()
        let topology = Topology(log: { _, message in log.append(message) })
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "rl\($0)", size: Self.size) }
        let nop = try NopGeom.create(in: topology, name: "rl-nop", over: disks[1].provider)
        let remote = try LinkStandIn.create(in: topology, name: "rl-remote", over: nop.providers[0])
        let mirror = try MirrorGeom.create(in: topology, name: "mrl", over: [disks[0].provider, remote.providers[0]])
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await Self.fill(device, blocks: 0..<64)
        // The link goes: requests fail, the remote component is ejected.
        remote.answer.withLock { $0 = "FAILED 1" }
        try nop.configure(.init(writeFailPercent: 100))
        try await device.write(MirrorTests.pattern(65536, seed: 700), at: 3 << 20)
        try await device.write(MirrorTests.pattern(65536, seed: 701), at: 30 << 20)
        #expect(mirror.status.state == "DEGRADED")
        // Reconnected on the same connection count: not taken for a link that came back.
        try nop.configure(.init())
        remote.answer.withLock { $0 = "CONNECTED 1" }
        try await Task.sleep(for: .milliseconds(2500))
        #expect(mirror.status.state == "DEGRADED", "a component whose link never dropped is not taken back by itself")
        let before = nop.statistics.bytesWritten
        remote.answer.withLock { $0 = "CONNECTED 2" }
        #expect(try await MirrorTests.waitFor(mirror, state: "COMPLETE", seconds: 90), "\(mirror.status)")
        #expect(try await MirrorTests.identical(disks[0].provider, remote.providers[0], in: topology, size: mirror.mirrorSize))
        let copied = nop.statistics.bytesWritten - before
        #expect(copied < 3 << 20, "\(copied) bytes copied for two regions")
        #expect(log.lines.contains { $0.contains("taking rl-remote back; copying the 2MiB") }, "\(log.lines)")
    }

    @Test func preferLocalReadsStayOnTheLocalComponent() async throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disks = try (0..<2).map { try MemoryDisk.create(in: topology, name: "pl\($0)", size: 8 << 20) }
        let local = try NopGeom.create(in: topology, name: "pl-local", over: disks[0].provider)
        let below = try NopGeom.create(in: topology, name: "pl-below", over: disks[1].provider)
        let remote = try LinkStandIn.create(in: topology, name: "pl-remote", over: below.providers[0])
        let mirror = try MirrorGeom.create(in: topology, name: "mpl", over: [remote.providers[0], local.providers[0]],
                                           balance: .preferLocal)
        let device = try BlockDevice(opening: mirror.providers[0], in: topology, writable: true)
        defer { device.close() }
        try await device.write(MirrorTests.pattern(65536, seed: 3), at: 0)
        let (remoteBefore, localBefore) = (below.statistics.reads, local.statistics.reads)
        // Many at once, so a least-busy choice would send some to the remote one.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<64 {
                group.addTask { _ = try await device.read(at: Int64(index % 16) * 4096, count: 4096) }
            }
            try await group.waitForAll()
        }
        #expect(below.statistics.reads == remoteBefore)
        #expect(local.statistics.reads - localBefore == 64)
        // With the local component out, the remote one serves.
        try local.configure(.init(readFailPercent: 100))
        #expect(try await device.read(at: 0, count: 65536) == MirrorTests.pattern(65536, seed: 3))
        #expect(below.statistics.reads > remoteBefore)
    }
}
