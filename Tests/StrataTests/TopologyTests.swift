import Strata
import StrataDisks
import Synchronization
import Testing

/// Classes, geoms, providers and consumers: attaching, rank, tasting, orphaning,
/// withering, spoiling, attributes, and the event queue never stalling I/O.
@Suite struct TopologyTests {
    @Test func rankGrowsUpTheStack() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "rank-md", size: 1 << 20)
        let first = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "rank-1")
        let second = try PassThroughGeom.stack(on: first.providers[0], in: topology, name: "rank-2")
        #expect([disk.rank, first.rank, second.rank] == [1, 2, 3])
    }

    @Test func anAttachmentThatWouldMakeACycleIsRefused() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "cycle-md", size: 1 << 20)
        let lower = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "cycle-lower")
        let upper = try PassThroughGeom.stack(on: lower.providers[0], in: topology, name: "cycle-upper")
        let back = topology.createConsumer(for: lower)
        do {
            try topology.attach(back, to: upper.providers[0])
            Issue.record("a cycle was allowed")
        } catch let error as StrataError {
            #expect(error.code == .loop)
        }
        let own = topology.createConsumer(for: upper)
        #expect(throws: StrataError.self) { try topology.attach(own, to: upper.providers[0]) }
    }

    @Test func namesAreUniqueInATopology() throws {
        let topology = Topology()
        _ = try MemoryDisk.create(in: topology, name: "same", size: 1 << 20)
        #expect(throws: StrataError.self) { _ = try MemoryDisk.create(in: topology, name: "same", size: 1 << 20) }
        let geom = Geom(name: "other", className: "TEST")
        try topology.add(geom)
        #expect(throws: StrataError.self) {
            try topology.createProvider(for: geom, name: "same", mediaSize: 4096, sectorSize: 512)
        }
    }

    @Test func aProviderSectorSizeMustBeAPowerOfTwo() throws {
        let topology = Topology()
        let geom = Geom(name: "odd", className: "TEST")
        try topology.add(geom)
        #expect(throws: StrataError.self) {
            try topology.createProvider(for: geom, name: "odd", mediaSize: 4096, sectorSize: 1000)
        }
    }

    /// The index a class gives each of its providers comes back on every request sent to
    /// that provider, so the class finds its per-provider state without a lookup.
    @Test func aRequestCarriesTheIndexItsClassGaveItsProvider() throws {
        final class IndexingGeom: Geom, @unchecked Sendable {
            let seen = Mutex<[Int]>([])
            override func start(_ bio: consuming ProviderBio) {
                let index = bio.providerIndex
                seen.withLock { $0.append(index) }
                bio.deliverAll()
            }
        }
        let topology = Topology()
        let geom = IndexingGeom(name: "indexing", className: "TEST")
        try topology.add(geom)
        let providers = try [7, 0, 3].map {
            try topology.createProvider(for: geom, name: "indexed\($0)", mediaSize: 4096, sectorSize: 512, index: $0,
                                        announce: false)
        }
        #expect(providers.map(\.index) == [7, 0, 3])
        for provider in providers {
            let issuer = try TestIssuer(on: provider, in: topology, name: "issuer-\(provider.name)")
            #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
        }
        let seen = geom.seen.withLock { $0 }
        #expect(seen == [7, 0, 3])
    }

    /// A class that recognizes providers whose first sector starts with "TASTEME!" and
    /// stacks a pass-through geom named after them.
    final class TastingClass: GeomClass, @unchecked Sendable {
        let name = "TASTER"
        let offered = EventLog()

        func taste(_ provider: Provider, in topology: Topology) -> Geom? {
            offered.append(provider.name)
            guard !provider.name.hasSuffix(".t") else { return nil }
            let probe = Geom(name: "taster-probe-\(provider.name)-\(offered.entries.count)", className: "TEST")
            do {
                try topology.add(probe)
                let consumer = topology.createConsumer(for: probe)
                try topology.attach(consumer, to: provider)
                try topology.access(consumer, read: 1, write: 0, exclusive: 0)
                let label = Array(try consumer.readSync(at: 0, count: provider.sectorSize).prefix(8))
                try topology.access(consumer, read: -1, write: 0, exclusive: 0)
                topology.destroy(consumer)
                topology.wither(probe)
                guard label == Array("TASTEME!".utf8) else { return nil }
                return try PassThroughGeom.stack(on: provider, in: topology, name: provider.name + ".t")
            } catch {
                return nil
            }
        }
    }

    @Test func aRegisteredClassTastesEveryProviderAndAssemblesFromMetadata() throws {
        let topology = Topology()
        let marked = try MemoryDisk.create(in: topology, name: "marked", size: 1 << 20)
        _ = try MemoryDisk.create(in: topology, name: "plain", size: 1 << 20)
        let writer = try TestIssuer(on: marked.provider, in: topology, read: 0, write: 1, name: "labeller")
        try writer.consumer.writeSync(Array("TASTEME!".utf8) + [UInt8](repeating: 0, count: 504), at: 0)
        try topology.access(writer.consumer, read: 0, write: -1, exclusive: 0)
        let taster = TastingClass()
        topology.register(taster)
        topology.settle()
        #expect(topology.provider(named: "marked.t") != nil)
        #expect(topology.provider(named: "plain.t") == nil)
        #expect(Set(taster.offered.entries).isSuperset(of: ["marked", "plain"]))
        // A provider that appears later is tasted too.
        _ = try MemoryDisk.create(in: topology, name: "late", size: 1 << 20)
        topology.settle()
        #expect(taster.offered.entries.contains("late"))
    }

    @Test func orphaningPropagatesUpAndWithersTheStack() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "orphan-md", size: 1 << 20)
        let lower = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "orphan-lower")
        let upper = try PassThroughGeom.stack(on: lower.providers[0], in: topology, name: "orphan-upper")
        let user = try TestIssuer(on: upper.providers[0], in: topology, name: "orphan-user")
        #expect(user.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
        topology.wither(disk)
        topology.settle()
        #expect(user.consumer.outcome(.flush, offset: 0, length: 0).error == .noDevice)
        #expect(topology.waitUntilGone(disk))
        #expect(topology.waitUntilGone(lower))
        #expect(topology.waitUntilGone(upper))
        #expect(topology.provider(named: "orphan-md") == nil)
        #expect(topology.geoms.allSatisfy { $0.className != "PASS" && $0.className != "MEMORY" })
    }

    @Test func aGeomWithersOnlyAfterItsUsersCloseAndTheirRequestsFinish() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "held-md", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "held-pass")
        let device = try BlockDevice(opening: pass.providers[0], in: topology, writable: true)
        topology.wither(disk)
        topology.settle()
        #expect(!topology.waitUntilGone(pass, seconds: 0.2), "an open user keeps the geom")
        device.close()
        #expect(topology.waitUntilGone(pass))
        #expect(topology.waitUntilGone(disk))
    }

    @Test func theFirstWriterSpoilsATasterAndTheLastWriterClosingHasItTastedAgain() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "spoil-md", size: 1 << 20)
        let writer = try TestIssuer(on: disk.provider, in: topology, read: 0, write: 1, name: "spoil-writer")
        try writer.consumer.writeSync(Array("TASTEME!".utf8) + [UInt8](repeating: 0, count: 504), at: 0)
        try topology.access(writer.consumer, read: 0, write: -1, exclusive: 0)
        // A geom that tasted the provider and holds a consumer on it without access.
        final class Watcher: Geom, @unchecked Sendable {
            let spoils = Atomic<Int>(0)
            override func spoiled(_ consumer: Consumer) {
                spoils.wrappingAdd(1, ordering: .relaxed)
                super.spoiled(consumer)
            }
        }
        let watcher = Watcher(name: "spoil-watcher", className: "WATCH")
        try topology.add(watcher)
        try topology.attach(topology.createConsumer(for: watcher), to: disk.provider)
        let taster = TastingClass()
        topology.register(taster)
        topology.settle()
        let tastedBefore = taster.offered.entries.filter { $0 == "spoil-md" }.count
        try topology.access(writer.consumer, read: 0, write: 1, exclusive: 0)
        topology.settle()
        #expect(watcher.spoils.load(ordering: .relaxed) == 1)
        #expect(topology.waitUntilGone(watcher), "the default reaction to spoiling is to wither")
        try topology.access(writer.consumer, read: 0, write: -1, exclusive: 0)
        topology.settle()
        let tastedAfter = taster.offered.entries.filter { $0 == "spoil-md" }.count
        #expect(tastedAfter == tastedBefore + 1, "the provider is offered again when the writer closes")
    }

    @Test func aSpoilNoticeForAConsumerWashedAwayMeanwhileIsDropped() throws {
        // A closed device's consumer stays attached, without access, until the washer
        // takes its geom away, and the next writer spoils it. When the washer gets there
        // before the notice does, the geom is gone and must not be told.
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "respoil-md", size: 1 << 20)
        for _ in 0..<2000 {
            let device = try BlockDevice(opening: disk.provider, in: topology, writable: true)
            device.close()
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while topology.geoms.count > 1 && ContinuousClock.now < deadline { topology.settle() }
        #expect(topology.geoms.map(\.name) == ["respoil-md"], "every closed device was washed away")
    }

    @Test func attributesPassThroughTheStackToTheDisk() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "attr-md", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "attr-pass")
        let user = try TestIssuer(on: pass.providers[0], in: topology)
        let answer = PatternBuffer(count: 256)
        let canDelete = user.consumer.outcome(.getattr, offset: 0, length: 0, buffer: answer.bytes, attribute: .canDelete)
        #expect(canDelete.completed == 4 && answer.bytes.load(as: Int32.self) == 1)
        let ident = user.consumer.outcome(.getattr, offset: 0, length: 0, buffer: answer.bytes, attribute: .ident)
        #expect(String(decoding: answer.bytes.prefix(Int(ident.completed) - 1), as: UTF8.self) == "memory:attr-md")
        let unknown = user.consumer.outcome(.getattr, offset: 0, length: 0, buffer: answer.bytes,
                                            attribute: BioAttribute("GEOM::nonesuch"))
        #expect(unknown.error == .notSupported)
    }

    @Test func theExtentsAttributeReportsDataAndHoles() async throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "extents-md", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "extents-pass")
        let device = try BlockDevice(opening: pass.providers[0], in: topology, writable: true)
        try await device.write([UInt8](repeating: 7, count: 8192), at: 65536)
        let extents = try await device.extents(at: 0, length: 1 << 20)
        #expect(extents == [
            BioExtent(offset: 0, length: 65536, kind: [.hole, .zero]),
            BioExtent(offset: 65536, length: 8192, kind: []),
            BioExtent(offset: 73728, length: (1 << 20) - 73728, kind: [.hole, .zero]),
        ])
        device.close()
    }

    @Test func ioGoesOnWhileTheTopologyIsLocked() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "locked-md", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "locked-pass")
        let user = try TestIssuer(on: pass.providers[0], in: topology)
        let locked = Gate()
        let release = Gate()
        startWorkerThread {
            topology.withLock {
                locked.open()
                release.wait()
            }
        }
        #expect(locked.wait())
        let buffer = PatternBuffer(count: 4096, seed: 8)
        let written = user.consumer.outcome(.write, offset: 0, length: 4096, buffer: buffer.bytes)
        release.open()
        #expect(written.error == nil, "a held topology lock did not stall I/O")
    }
}

extension TopologyTests {
    @Test func shutdownWithersEverythingAndReleasesTheDisks() throws {
        final class CountingDisk: Geom, @unchecked Sendable {
            let released = Atomic<Int>(0)
            override func start(_ bio: consuming ProviderBio) { bio.deliverAll() }
            override func destroyed() { released.wrappingAdd(1, ordering: .relaxed) }
        }
        let topology = Topology()
        let disk = CountingDisk(name: "shutdown-disk", className: "COUNT")
        try topology.add(disk)
        try topology.createProvider(for: disk, name: "shutdown-disk", mediaSize: 1 << 20, sectorSize: 512)
        let pass = try PassThroughGeom.stack(on: disk.providers[0], in: topology, name: "shutdown-pass")
        let device = try BlockDevice(opening: pass.providers[0], in: topology, writable: true)
        #expect(topology.shutdown())
        #expect(topology.geoms.isEmpty)
        let released = disk.released.load(ordering: .relaxed)
        #expect(released == 1)
        device.close()
    }
}

extension TopologyTests {
    @Test func providersCountOperationsBytesErrorsAndBusyTime() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "stats-md", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "stats-pass")
        let user = try TestIssuer(on: pass.providers[0], in: topology)
        let buffer = PatternBuffer(count: 8192)
        for block in 0..<4 {
            #expect(user.consumer.outcome(.write, offset: Int64(block) * 8192, length: 8192, buffer: buffer.bytes).error == nil)
        }
        #expect(user.consumer.outcome(.read, offset: 0, length: 8192, buffer: buffer.bytes).error == nil)
        #expect(user.consumer.outcome(.delete, offset: 0, length: 4096).error == nil)
        #expect(user.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
        #expect(user.consumer.outcome(.read, offset: 100, length: 512, buffer: buffer.bytes).error == .invalid)
        for provider in [pass.providers[0], disk.provider] {
            let stats = provider.statistics.snapshot
            #expect(stats.operations(.write) == 4 && stats.bytes(.write) == 32768, "\(provider.name)")
            #expect(stats.operations(.read) == (provider === disk.provider ? 1 : 2) && stats.bytes(.read) == 8192)
            #expect(stats.operations(.delete) == 1 && stats.bytes(.delete) == 4096)
            #expect(stats.operations(.flush) == 1)
            #expect(stats.inFlight == 0)
            #expect(stats.nanoseconds(.write) > 0 && stats.busyNanoseconds > 0)
        }
        #expect(pass.providers[0].statistics.snapshot.errors(.read) == 1, "the refused read counts where it was refused")
        #expect(disk.provider.statistics.snapshot.errors(.read) == 0)
        // Every timed request is in exactly one latency bucket; the refused read was never timed.
        for provider in [pass.providers[0], disk.provider] {
            let stats = provider.statistics.snapshot
            for kind in [ProviderStatistics.Kind.read, .write, .delete, .flush] {
                let timed = stats.operations(kind) - (provider === disk.provider ? 0 : stats.errors(kind))
                #expect(stats.latencyBuckets(kind).reduce(0, +) == timed, "\(provider.name) \(kind.name)")
            }
        }
    }

    @Test func latencyBucketsDoubleFrom1024Nanoseconds() {
        let bounds = ProviderStatistics.latencyBucketBounds
        #expect(bounds.count == ProviderStatistics.latencyBucketCount - 1)
        #expect(bounds.first == 1024 && bounds.last == 1 << 30)
        #expect(ProviderStatistics.latencyBucket(0) == 0)
        for (index, bound) in bounds.enumerated() {
            #expect(ProviderStatistics.latencyBucket(bound - 1) == index, "just below \(bound)")
            #expect(ProviderStatistics.latencyBucket(bound) == index + 1, "at \(bound)")
        }
        #expect(ProviderStatistics.latencyBucket(UInt64.max) == ProviderStatistics.latencyBucketCount - 1)
    }
}
