import Strata

/// PART (gpart): one provider per partition of a disk's GPT or MBR, named
/// `<provider>p<N>`. Requests are shifted by the partition's start. A damaged primary
/// GPT is read from its backup, and the topology's log says so.
public final class PartGeom: Geom, @unchecked Sendable {
    public let table: PartitionTable
    /// Partition start in bytes, by provider index (`Provider.index`).
    private var starts: [Int64] = []

    init(disk: String, table: PartitionTable) {
        self.table = table
        super.init(name: "part/\(disk)", className: "PART", startOnlyPassesOn: true)
    }

    /// Reads the table of `provider` and makes its partitions' providers.
    /// - Throws: `StrataError` when the provider has no table, or a damaged one.
    @discardableResult
    public static func create(in topology: Topology, over provider: Provider) throws -> PartGeom {
        guard let table = try readTable(of: provider, in: topology) else {
            throw StrataError(.invalid, "\(provider.name) has no partition table (GPT or MBR)")
        }
        return try make(table: table, over: provider, in: topology)
    }

    static func make(table: PartitionTable, over provider: Provider, in topology: Topology) throws -> PartGeom {
        let geom = PartGeom(disk: provider.name, table: table)
        try topology.add(geom)
        do {
            try topology.attach(topology.createConsumer(for: geom), to: provider)
            let sector = Int64(provider.sectorSize)
            for partition in table.partitions {
                guard partition.firstLBA >= 1, partition.lastLBA >= partition.firstLBA,
                      (partition.lastLBA + 1) * sector <= provider.mediaSize else {
                    topology.emit(.warning, "\(provider.name): partition \(partition.number) lies outside the disk; skipped")
                    continue
                }
                // The start is in place before the provider exists, so its first request
                // finds it.
                geom.starts.append(partition.firstLBA * sector)
                try topology.createProvider(for: geom, name: "\(provider.name)p\(partition.number)",
                                            mediaSize: partition.sectors * sector, sectorSize: provider.sectorSize,
                                            index: geom.starts.count - 1)
            }
        } catch {
            topology.wither(geom)
            throw error
        }
        if table.usedBackup {
            topology.emit(.warning, "\(provider.name): the primary GPT is damaged; read the backup at the end of the disk")
        }
        return geom
    }

    /// Reads the partition table of `provider` (nil when there is none).
    public static func readTable(of provider: Provider, in topology: Topology) throws -> PartitionTable? {
        try topology.probing(provider, for: "part") { probe in
            let sector = provider.sectorSize
            return try PartitionTable.read(sectorSize: sector, sectors: provider.mediaSize / Int64(sector)) { lba, count in
                try probe.readSync(at: lba * Int64(sector), count: count * sector)
            }
        }
    }

    override public func start(_ bio: consuming ProviderBio) {
        let start = starts[bio.providerIndex]
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        clone.offset += start
        if bio.command == .getattr && bio.attribute == .extents {
            clone.setCallerTag(ExtentsShift(-start), in: .caller1)
            clone.done = .handler(self)
        }
        passOnToFirstConsumer(bio, clone)
    }

    /// Extents come back in disk coordinates: shift them into the partition's.
    override public func bioDone(_ bio: consuming Bio) {
        bio.shiftExtents(by: bio.callerTag(.caller1, as: ExtentsShift.self).bytes)
        bio.finishClone()
    }
}

/// The partition class: makes partitions for every provider with a table.
public final class PartClass: GeomClass {
    public let name = "PART"
    public init() {}

    public func taste(_ provider: Provider, in topology: Topology) -> Geom? {
        guard topology.geom(named: "part/\(provider.name)") == nil,
              let table = try? PartGeom.readTable(of: provider, in: topology) else { return nil }
        return try? PartGeom.make(table: table, over: provider, in: topology)
    }
}
