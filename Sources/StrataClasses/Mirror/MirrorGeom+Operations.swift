import Dispatch
import Strata

extension MirrorGeom {
    /// The place of the component whose provider is named `component`.
    private func slot(named component: String) throws -> Slot {
        guard let slot = slots.prefix(expected).first(where: { $0.consumer?.provider?.name == component && $0.state != .empty }) else {
            let names = slots.prefix(expected).filter { $0.state != .empty }.map(\.name)
            throw StrataError(.noDevice, "mirror \(name) has no component \(component) (components: \(names.joined(separator: ", ")))")
        }
        return slot
    }

    /// Takes a component out (`strata mirror remove`): its metadata is cleared so it is
    /// not taken for a member again. The last up-to-date component cannot be removed.
    public func remove(_ component: String, in topology: Topology) throws {
        try topology.withLock {
            let slot = try slot(named: component)
            let others = slots.prefix(expected).filter { $0 !== slot && $0.state == .active }
            guard !others.isEmpty else {
                throw StrataError(.busy, "\(component) is the last up-to-date component of mirror \(name)")
            }
            slot.set(.empty)
            if let consumer = slot.consumer, let provider = consumer.provider {
                try? consumer.writeSync([UInt8](repeating: 0, count: provider.sectorSize),
                                        at: provider.mediaSize - Int64(provider.sectorSize), flags: .fua)
                try? topology.access(consumer, read: -consumer.readCount, write: -consumer.writeCount,
                                     exclusive: -consumer.exclusiveCount)
                topology.detach(consumer)
            }
            bumpGeneration()
        }
        writeMetadata()
    }

    /// Copies everything to a component again (`strata mirror rebuild`), whatever its
    /// state, while I/O goes on.
    public func rebuild(_ component: String, in topology: Topology) throws {
        try topology.withLock {
            let slot = try slot(named: component)
            guard slot.consumer?.provider != nil else { throw StrataError(.noDevice, "\(component) is gone; insert another") }
            let others = slots.prefix(expected).filter { $0 !== slot && $0.state == .active }
            guard !others.isEmpty else {
                throw StrataError(.busy, "mirror \(name) has no other up-to-date component to rebuild \(component) from")
            }
            if slot.consumer!.writeCount == 0 {
                try topology.access(slot.consumer!, read: 1 - slot.consumer!.readCount, write: 1, exclusive: 1)
            }
            slot.missed!.mark(from: 0)
            slot.syncOffset.store(0, ordering: .releasing)
            slot.set(.synchronizing)
        }
        writeMetadata()
        startRebuild()
    }

    /// Takes a broken component back (`strata mirror rejoin`), copying only the regions
    /// written while it was out: everything, when that is not known (it failed a flush).
    /// For a component that was out for a while and is sound again: a remote one whose
    /// link was cut (taken back by itself when the link returns), a disk that was
    /// unplugged. A component that failed a read may have bad sectors nobody wrote;
    /// `rebuild` copies it all.
    public func rejoin(_ component: String, in topology: Topology) throws {
        // Writes it was sent in the background before it went out end first: one
        // landing after a newer write taken directly would undo it.
        waitForLaggingWrites(of: try topology.withLock { try slot(named: component) })
        try topology.withLock {
            let slot = try slot(named: component)
            try admitAgain(slot, in: topology)
        }
        writeMetadata()
        startRebuild()
    }

    /// Turns a BROKEN component into a SYNCHRONIZING one that keeps its map of missed
    /// regions. Under the topology lock.
    private func admitAgain(_ slot: Slot, in topology: Topology) throws {
        guard slot.state == .broken else {
            throw StrataError(.busy, "\(slot.name) is \(slot.state.name) in mirror \(name); only a BROKEN component is taken back")
        }
        guard let consumer = slot.consumer, consumer.provider != nil else {
            throw StrataError(.noDevice, "\(slot.name) is gone; insert another")
        }
        guard slots.prefix(expected).contains(where: { $0 !== slot && $0.state == .active }) else {
            throw StrataError(.busy, "mirror \(name) has no up-to-date component to copy \(slot.name) from")
        }
        if consumer.writeCount == 0 {
            try topology.access(consumer, read: 1 - consumer.readCount, write: 1, exclusive: 1)
        }
        if let (_, epoch) = MirrorGeom.link(of: consumer) { slot.linkEpoch.store(epoch, ordering: .relaxed) }
        slot.syncOffset.store(0, ordering: .releasing)
        slot.set(.synchronizing)
        topology.emit(.notice, "mirror \(name): taking \(slot.name) back; copying the \(formatByteSize(slot.missed!.markedBytes)) written while it was out")
    }

    /// What a component's provider answers for "STRATA::link" (a remote one: its phase,
    /// and how many times its connection was made); nil for a local one. Blocks: never
    /// from an I/O thread.
    static func link(of consumer: Consumer) -> (phase: String, epoch: Int)? {
        var answer = [UInt8](repeating: 0, count: 64)
        let completed = answer.withUnsafeMutableBytes { buffer in
            try? consumer.performSync(.getattr, offset: 0, length: 0, buffer: buffer, attribute: .link).completed
        }
        guard let completed, completed > 0 else { return nil }
        let words = String(decoding: answer.prefix(Int(completed)).prefix { $0 != 0 }, as: UTF8.self).split(separator: " ")
        guard words.count == 2, let epoch = Int(words[1]) else { return nil }
        return (String(words[0]), epoch)
    }

    /// Looks every second for a broken remote component's link to come back (made again
    /// since the component was taken in), and then takes the component back.
    func watchLink(of slot: Slot) {
        guard !slot.watchingLink.exchange(true, ordering: .acquiringAndReleasing) else { return }
        DispatchQueue.global().asyncAfter(deadline: .now() + 1) { [weak self] in
            guard let self else { return }
            guard let topology, slot.state == .broken, let consumer = slot.consumer, consumer.provider != nil else {
                slot.watchingLink.store(false, ordering: .releasing)
                return
            }
            guard slot.laggingWrites.load(ordering: .acquiring) == 0,
                  let (phase, epoch) = MirrorGeom.link(of: consumer), phase == "CONNECTED",
                  epoch != slot.linkEpoch.load(ordering: .relaxed) else {
                slot.watchingLink.store(false, ordering: .releasing)
                return watchLink(of: slot)
            }
            slot.watchingLink.store(false, ordering: .releasing)
            do {
                try topology.withLock { try admitAgain(slot, in: topology) }
                writeMetadata()
                startRebuild()
            } catch {
                topology.emit(.warning, "mirror \(name): \(slot.name)'s link is back, but it cannot be taken back: \(error)")
            }
        }
    }

    /// Forgets components that are broken or gone (`strata mirror forget`): their
    /// places become free, and a new genid makes sure they are never taken back as
    /// up to date.
    public func forget(in topology: Topology) {
        topology.withLock {
            for slot in slots.prefix(expected) where slot.state == .broken || slot.state == .stale {
                slot.set(.empty)
                if let consumer = slot.consumer, consumer.provider != nil {
                    try? topology.access(consumer, read: -consumer.readCount, write: -consumer.writeCount,
                                         exclusive: -consumer.exclusiveCount)
                    topology.detach(consumer)
                }
            }
            bumpGeneration()
        }
        writeMetadata()
    }
}
