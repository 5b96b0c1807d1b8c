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
            slot.syncOffset.store(0, ordering: .releasing)
            slot.set(.synchronizing)
        }
        writeMetadata()
        startRebuild()
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
