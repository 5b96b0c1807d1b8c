import Dispatch
import Strata

extension MirrorGeom {
    /// Makes a mirror of `providers` (2 to 16): writes each one's metadata and starts
    /// serving. The mirror is one sector smaller than its smallest component.
    /// - Throws: `StrataError` when a component carries another geom's metadata or the
    ///   parameters are out of range.
    @discardableResult
    public static func create(in topology: Topology, name: String, over providers: [Provider],
                              balance: MirrorBalance = .load, slice: Int = 1 << 20,
                              replication: MirrorReplication = .sync) throws -> MirrorGeom {
        guard (2...maximumComponents).contains(providers.count) else {
            throw StrataError(.invalid, "mirror \(name): \(providers.count) components; a mirror has 2 to \(maximumComponents)")
        }
        guard (4096...(1 << 30)).contains(slice), slice & (slice - 1) == 0 else {
            throw StrataError(.invalid, "slice \(slice) must be a power of two from 4KiB to 1GiB")
        }
        let sector = Int64(providers.map(\.sectorSize).max()!)
        let size = (providers.map(\.mediaSize).min()! - sector) / sector * sector
        let mirror = MirrorGeom(name: name, mirrorID: UInt64.random(in: 1...UInt64.max), mediaSize: size, balance: balance,
                                slice: slice, expected: providers.count, genid: 1, syncid: 1, replication: replication)
        try topology.add(mirror)
        do {
            for (index, provider) in providers.enumerated() {
                if let other = readMetadata(of: provider, in: topology), other.name != name {
                    throw StrataError(.busy, "\(provider.name) carries the metadata of mirror \(other.name); forget it first")
                }
                let metadata = MirrorMetadata(name: name, mirrorID: mirror.mirrorID, diskID: UInt64.random(in: 1...UInt64.max),
                                              components: providers.count, genid: 1, syncid: 1, priority: 0, balance: balance,
                                              slice: slice, mediaSize: size, syncOffset: 0, flags: [])
                try mirror.attach(provider, as: index, metadata: metadata, in: topology)
                mirror.slots[index].set(.active)
            }
            mirror.writeMetadata()
            try mirror.launch(in: topology)
        } catch {
            topology.wither(mirror)
            throw error
        }
        return mirror
    }

    /// The mirror a topology file names over `providers`: reassembled from their
    /// metadata, or created if all are blank.
    ///
    /// Components inserted at run time that the file does not list are found by their
    /// metadata among `others` (providers nothing else uses). Blank providers the file
    /// lists beside the mirror's components are inserted and rebuilt where it has a free
    /// place (one removed at run time is left alone, with a warning); a component of an
    /// older generation (ejected or forgotten) is left alone, with a warning; components
    /// the metadata counts but nobody has are missing, and the mirror starts degraded.
    /// - Throws: `StrataError` when a provider carries another mirror's metadata, the
    ///   components belong to different mirrors, one disk is listed twice, or the
    ///   parameters are out of range.
    public static func assemble(in topology: Topology, name: String, over providers: [Provider], others: [Provider] = [],
                                balance: MirrorBalance = .load, slice: Int = 1 << 20,
                                replication: MirrorReplication = .sync) throws -> MirrorGeom {
        let listed = providers.map { ($0, readMetadata(of: $0, in: topology)) }
        for case let (provider, metadata?) in listed where metadata.name != name {
            throw StrataError(.busy, "\(provider.name) carries the metadata of mirror \(metadata.name); forget it first")
        }
        let labelled = listed.compactMap { provider, metadata in metadata.map { (provider, $0) } }
        guard let mirrorID = labelled.first?.1.mirrorID else {
            return try create(in: topology, name: name, over: providers, balance: balance, slice: slice,
                              replication: replication)
        }
        guard labelled.allSatisfy({ $0.1.mirrorID == mirrorID }) else {
            throw StrataError(.invalid, "the components carry the metadata of different mirrors named \(name)")
        }
        var byDisk: [UInt64: String] = [:]
        for (provider, metadata) in labelled {
            if let earlier = byDisk[metadata.diskID] {
                throw StrataError(.invalid, "\(earlier) and \(provider.name) are one component seen twice (the same disk id)")
            }
            byDisk[metadata.diskID] = provider.name
        }
        var unlisted: [(Provider, MirrorMetadata)] = []
        for provider in others {
            guard let metadata = readMetadata(of: provider, in: topology), metadata.mirrorID == mirrorID,
                  byDisk[metadata.diskID] == nil else { continue }
            byDisk[metadata.diskID] = provider.name
            unlisted.append((provider, metadata))
        }
        let newest = (labelled + unlisted).map(\.1).max { $0.isOlder(than: $1) }!
        let members = (labelled + unlisted).filter { $0.1.genid == newest.genid }
        guard members.count <= newest.components else {
            throw StrataError(.invalid, "mirror \(name) has \(newest.components) components, but \(members.count) providers carry its metadata: \(members.map(\.0.name).joined(separator: ", "))")
        }
        guard (4096...(1 << 30)).contains(slice), slice & (slice - 1) == 0 else {
            throw StrataError(.invalid, "slice \(slice) must be a power of two from 4KiB to 1GiB")
        }
        let mirror = MirrorGeom(name: name, mirrorID: mirrorID, mediaSize: newest.mediaSize, balance: balance, slice: slice,
                                expected: newest.components, genid: newest.genid, syncid: newest.syncid,
                                replication: replication)
        try topology.add(mirror)
        do {
            for (index, (provider, metadata)) in members.enumerated() {
                try mirror.attach(provider, as: index, metadata: metadata, in: topology)
            }
            if members.count < newest.components {
                topology.emit(.warning, "mirror \(name): \(members.count) of its \(newest.components) components are present; starting degraded")
            }
            try mirror.launch(in: topology)
            for (provider, metadata) in labelled + unlisted where metadata.genid != newest.genid {
                topology.emit(.warning, "mirror \(name): \(provider.name) was ejected earlier; `strata mirror insert \(name) \(provider.name)` takes it back")
            }
            for (provider, _) in unlisted where members.contains(where: { $0.0 === provider }) {
                topology.emit(.warning, "mirror \(name): \(provider.name) is a member but the topology file does not list it")
            }
            for case let (provider, nil) in listed {
                // A component removed at run time is blank, and the file may still list it.
                guard mirror.slots.prefix(mirror.expected).contains(where: { $0.state == .empty }) else {
                    topology.emit(.warning, "mirror \(name): \(provider.name) is blank and the mirror has no free place; not inserted")
                    continue
                }
                try mirror.insert(provider, in: topology)
                topology.emit(.notice, "mirror \(name): inserted \(provider.name) from the topology file; rebuilding it")
            }
        } catch {
            topology.wither(mirror)
            throw error
        }
        return mirror
    }

    /// Opens `provider` as component `index`: mirrors keep their components open.
    func attach(_ provider: Provider, as index: Int, metadata: MirrorMetadata, in topology: Topology) throws {
        let consumer = topology.createConsumer(for: self)
        try topology.attach(consumer, to: provider)
        try topology.access(consumer, read: 1, write: 1, exclusive: 1)
        slots[index].consumer = consumer
        slots[index].metadata = metadata
        slots[index].priority = metadata.priority
        let link = MirrorGeom.link(of: consumer)
        slots[index].isRemote = link != nil
        slots[index].linkEpoch.store(link?.epoch ?? 0, ordering: .relaxed)
    }

    /// Decides each present component's state from the metadata and starts serving:
    /// stale copies (older genid or syncid) and interrupted rebuilds are synchronized;
    /// if the mirror was not closed cleanly, every copy but one is resynchronized, and
    /// an interrupted rebuild starts again from the beginning.
    func launch(in topology: Topology) throws {
        let present = slots.prefix(expected).filter { $0.consumer != nil && $0.metadata != nil }
        guard let newest = present.map({ $0.metadata! }).max(by: { $0.isOlder(than: $1) }) else {
            throw StrataError(.noDevice, "mirror \(name): no component present")
        }
        let dirty = present.contains { !$0.metadata!.isOlder(than: newest) && $0.metadata!.flags.contains(.dirty) }
        var sources: [Slot] = []
        for slot in present {
            let metadata = slot.metadata!
            if metadata.isOlder(than: newest) {
                slot.missed!.mark(from: 0)
                slot.syncOffset.store(0, ordering: .releasing)
                slot.set(.synchronizing)
                topology.emit(.notice, "mirror \(name): \(slot.name) is stale; rebuilding it")
            } else if metadata.flags.contains(.synchronizing) && dirty {
                // Writes below the saved offset went to this copy too, and those in flight
                // at the crash may have reached the source and not this copy: the offset
                // no longer says where the copies agree.
                slot.missed!.mark(from: 0)
                slot.syncOffset.store(0, ordering: .releasing)
                slot.set(.synchronizing)
                topology.emit(.notice, "mirror \(name) was not closed cleanly; rebuilding \(slot.name) from the start")
            } else if metadata.flags.contains(.synchronizing) {
                slot.missed!.mark(from: metadata.syncOffset)
                slot.syncOffset.store(metadata.syncOffset, ordering: .releasing)
                slot.set(.synchronizing)
                topology.emit(.notice, "mirror \(name): resuming the rebuild of \(slot.name) at \(metadata.syncOffset)")
            } else {
                sources.append(slot)
                slot.set(.active)
            }
        }
        // A local copy first: under async replication, a remote one may lack the last
        // writes acknowledged before the crash.
        func rank(_ slot: Slot) -> (Int, Int, Int) { (slot.isRemote ? 0 : 1, slot.metadata!.priority, -slot.index) }
        guard let source = sources.max(by: { rank($0) < rank($1) }) else {
            throw StrataError(.noDevice, "mirror \(name): no up-to-date component present")
        }
        if sources.contains(where: { $0.metadata!.flags.contains(.dirty) }) {
            // Not closed cleanly: the copies may differ where writes were in flight.
            for slot in sources where slot !== source {
                slot.missed!.mark(from: 0)
                slot.syncOffset.store(0, ordering: .releasing)
                slot.set(.synchronizing)
            }
            topology.emit(.notice, "mirror \(name) was not closed cleanly; resynchronizing from \(source.name)")
        }
        setGenerations(genid: newest.genid, syncid: newest.syncid)
        writeMetadata()
        let sector = present.map { $0.consumer!.provider!.sectorSize }.max()!
        try topology.createProvider(for: self, name: name, mediaSize: mirrorSize, sectorSize: sector)
        startRebuildWhenAssembled(in: topology)
    }

    /// Adds `provider` as a new component and rebuilds it while I/O goes on
    /// (`strata mirror insert`).
    public func insert(_ provider: Provider, in topology: Topology) throws {
        if let other = MirrorGeom.readMetadata(of: provider, in: topology), other.mirrorID != mirrorID {
            throw StrataError(.busy, "\(provider.name) carries the metadata of mirror \(other.name); forget it there first")
        }
        try topology.withLock {
            guard provider.mediaSize - Int64(provider.sectorSize) >= mirrorSize else {
                throw StrataError(.noSpace, "\(provider.name) is smaller than mirror \(name) needs")
            }
            guard let slot = slots.prefix(expected).first(where: { $0.state == .broken || $0.state == .empty }) else {
                throw StrataError(.busy, "mirror \(name) has no broken or empty component place to insert into")
            }
            if let old = slot.consumer {
                if old.provider != nil {
                    try? topology.access(old, read: -old.readCount, write: -old.writeCount, exclusive: -old.exclusiveCount)
                }
                topology.destroy(old)
            }
            let template = slots.prefix(expected).compactMap(\.metadata).first!
            var metadata = template
            metadata.diskID = UInt64.random(in: 1...UInt64.max)
            metadata.priority = 0
            try attach(provider, as: slot.index, metadata: metadata, in: topology)
            slot.missed!.mark(from: 0)
            slot.syncOffset.store(0, ordering: .releasing)
            slot.set(.synchronizing)
        }
        writeMetadata()
        startRebuildWhenAssembled(in: topology)
    }

    /// Lets go of a component before the mirror starts (not a member after all).
    func release(_ slot: Slot, in topology: Topology) {
        guard let consumer = slot.consumer else { return }
        try? topology.access(consumer, read: -consumer.readCount, write: -consumer.writeCount, exclusive: -consumer.exclusiveCount)
        topology.destroy(consumer)
        slot.consumer = nil
        slot.metadata = nil
    }

    func setGenerations(genid: UInt32, syncid: UInt32) {
        updateGenerations(genid, syncid)
    }

    /// The mirror metadata `provider` carries, if any.
    public static func readMetadata(of provider: Provider, in topology: Topology) -> MirrorMetadata? {
        try? topology.probing(provider, for: "mirror") { probe in MirrorMetadata.decode(try probe.readLastSector()) }
    }
}

/// The mirror class: reassembles mirrors from their components' metadata. A mirror
/// starts when all its components are present, or after `wait` seconds with those that
/// are (degraded).
public final class MirrorClass: GeomClass, @unchecked Sendable {
    public let name = "MIRROR"
    let wait: Double

    public init(wait: Double = 2) { self.wait = wait }

    public func taste(_ provider: Provider, in topology: Topology) -> Geom? {
        guard let metadata = MirrorGeom.readMetadata(of: provider, in: topology) else { return nil }
        let mirror: MirrorGeom
        if let existing = topology.geom(named: metadata.name) {
            guard let same = existing as? MirrorGeom, same.mirrorID == metadata.mirrorID else {
                topology.emit(.warning, "\(provider.name) carries mirror \(metadata.name) metadata, but a different geom has that name")
                return nil
            }
            guard same.providers.isEmpty else {
                topology.emit(.notice, "\(provider.name) belongs to mirror \(metadata.name), which is running; insert it to use it")
                return nil
            }
            mirror = same
        } else {
            mirror = MirrorGeom(name: metadata.name, mirrorID: metadata.mirrorID, mediaSize: metadata.mediaSize,
                                balance: metadata.balance, slice: metadata.slice, expected: metadata.components,
                                genid: metadata.genid, syncid: metadata.syncid)
            guard (try? topology.add(mirror)) != nil else { return nil }
            topology.beginGathering()
            DispatchQueue.global().asyncAfter(deadline: .now() + wait) {
                defer { topology.endGathering() }
                topology.withLock {
                    guard mirror.topology === topology, mirror.providers.isEmpty else { return }
                    do { try mirror.launch(in: topology) } catch {
                        topology.emit(.error, "mirror \(mirror.name): \(error)")
                    }
                }
            }
        }
        // Membership: components of an older generation were ejected or forgotten and
        // are not members; a newer one evicts them. Two providers with one disk id are
        // one disk seen through a pass-through: the one stacked higher wins.
        let attached = mirror.slots.prefix(mirror.expected).filter { $0.consumer != nil && $0.metadata != nil }
        if let newest = attached.map({ $0.metadata! }).max(by: { $0.genid < $1.genid }), metadata.genid < newest.genid {
            topology.emit(.notice, "\(provider.name) was ejected from mirror \(metadata.name) (older generation); not a member")
            return nil
        }
        for slot in attached where slot.metadata!.genid < metadata.genid
            || (slot.metadata!.diskID == metadata.diskID && (slot.consumer!.provider?.geom.rank ?? 0) < provider.geom.rank) {
            mirror.release(slot, in: topology)
        }
        if attached.contains(where: { $0.consumer != nil && $0.metadata?.diskID == metadata.diskID }) {
            return nil
        }
        guard let slot = mirror.slots.prefix(mirror.expected).first(where: { $0.consumer == nil }) else { return nil }
        do {
            try mirror.attach(provider, as: slot.index, metadata: metadata, in: topology)
            if mirror.slots.prefix(mirror.expected).allSatisfy({ $0.consumer != nil }) {
                try mirror.launch(in: topology)
            }
        } catch {
            topology.emit(.warning, "mirror \(metadata.name): \(provider.name): \(error)")
            return nil
        }
        return mirror
    }
}
