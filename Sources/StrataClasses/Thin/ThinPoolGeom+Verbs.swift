import Strata

/// One volume or snapshot as `strata thin list` shows it.
public struct ThinVolumeReport: Codable, Sendable, Equatable {
    public var name: String
    public var provider: String
    public var kind: String
    public var size: Int64
    /// Bytes of chunks it maps.
    public var allocated: Int64
    /// Of those, bytes another volume or snapshot maps too.
    public var shared: Int64
    /// The volume or snapshot it was made from, if it still exists.
    public var parent: String?
    public var created: UInt64
}

/// What `strata thin list` answers.
public struct ThinListReport: Codable, Sendable, Equatable {
    public var pool: ThinPoolReport
    public var volumes: [ThinVolumeReport]
    /// Map nodes in memory, and their bytes per allocated chunk.
    public var nodes: Int
    public var memoryPerChunk: Double

    enum CodingKeys: String, CodingKey { case pool, volumes, nodes, memoryPerChunk = "memory-per-chunk" }
}

/// A volume as any thread may look it up by name (dirty bitmaps, settings).
struct ThinCatalogEntry: Sendable {
    let name: String
    let id: UInt32
    let origin: UInt32
    let isSnapshot: Bool
    let size: Int64
    let volume: ThinVolume
}

extension ThinPoolGeom {
    // The verbs run on the caller's thread: what changes metadata runs on the metadata
    // thread (`perform`) and is committed before the verb answers; providers are made
    // and taken away here, where the topology may be locked.

    func create(_ name: String, size: Int64, in topology: Topology) throws -> ThinVolumeReport {
        let volume = try perform { metadata in
            let volume = try metadata.createVolume(name, size: size)
            try self.commitOrUndo(metadata) { metadata.delete(volume) }
            return volume
        }
        try makeProvider(for: volume, in: topology)
        return try report(of: volume)
    }

    /// A snapshot (read-only) or a clone (writable) of `sourceName`.
    func share(_ sourceName: String, as name: String, snapshot: Bool, in topology: Topology) throws -> ThinVolumeReport {
        let volume = try perform { metadata in
            guard let source = metadata.volume(named: sourceName) else {
                throw StrataError(.noDevice, "thin pool \(self.name) has no volume or snapshot named \(sourceName)")
            }
            if !snapshot && !source.isSnapshot {
                throw StrataError(.invalid, "\(sourceName) is a volume; clone a snapshot of it (strata thin snapshot \(self.name) \(sourceName) NAME)")
            }
            let volume = try metadata.share(source, as: name, snapshot: snapshot)
            // Writes that found the source's chunks its own before they became shared
            // finish before the snapshot counts as taken.
            self.epochs.synchronize()
            try self.commitOrUndo(metadata) { metadata.delete(volume) }
            return volume
        }
        try makeProvider(for: volume, in: topology)
        return try report(of: volume)
    }

    func revert(_ volumeName: String, to snapshotName: String, force: Bool, in topology: Topology) throws -> ThinVolumeReport {
        let (volume, snapshot) = try perform { metadata in
            guard let volume = metadata.volume(named: volumeName), !volume.isSnapshot else {
                throw StrataError(.noDevice, "thin pool \(self.name) has no volume named \(volumeName)")
            }
            guard let snapshot = metadata.volume(named: snapshotName), snapshot.isSnapshot else {
                throw StrataError(.noDevice, "thin pool \(self.name) has no snapshot named \(snapshotName)")
            }
            return (volume, snapshot)
        }
        try checkUnused(volume, force: force, doing: "revert")
        try perform { metadata in
            metadata.revert(volume, to: snapshot)
            try self.commitLogged(metadata)
        }
        if let provider = volume.provider { topology.resize(provider, to: volume.size) }
        return try report(of: volume)
    }

    func delete(_ name: String, force: Bool, in topology: Topology) throws -> ThinListReport {
        let volume = try perform { metadata in
            guard let volume = metadata.volume(named: name) else {
                throw StrataError(.noDevice, "thin pool \(self.name) has no volume or snapshot named \(name)")
            }
            return volume
        }
        try checkUnused(volume, force: force, doing: "delete")
        if let provider = volume.provider, !force {
            // As `geom destroy`: a volume that an export serves, or another geom stands
            // on, would leave that user on a provider gone for good.
            if let user = topology.userStacked(on: provider) {
                throw StrataError(.busy, "\(user.name) is stacked on \(provider.name); destroy it first, or delete with --force")
            }
            if topology.isClaimed(provider.name) {
                throw StrataError(.busy, "an export or an entry of the topology uses \(provider.name); remove it first, or delete with --force")
            }
        }
        removeProvider(of: volume, in: topology)
        try perform { metadata in
            metadata.delete(volume)
            try self.commitLogged(metadata)
        }
        return try list()
    }

    func resize(_ name: String, to size: Int64, force: Bool, in topology: Topology) throws -> ThinVolumeReport {
        let volume = try perform { metadata in
            guard let volume = metadata.volume(named: name), !volume.isSnapshot else {
                throw StrataError(.noDevice, "thin pool \(self.name) has no volume named \(name)")
            }
            return volume
        }
        if size < volume.size { try checkUnused(volume, force: force, doing: "shrink") }
        try perform { metadata in
            guard metadata.hasMetadataRoom(forNodes: 2 * ThinFormat.maximumDepth) else {
                throw StrataError(.noSpace, "thin pool \(self.name): its metadata area is full")
            }
            let oldSize = volume.size
            try metadata.resize(volume, to: size)
            // A volume that grows reads zeros past its old end, though the old end's chunk
            // may hold bytes past it (written before a shrink).
            let chunkSize = self.geometry.chunkSize
            let tail = oldSize % chunkSize
            if size > oldSize && tail != 0,
               ThinLookup.entry(root: volume.root.load(ordering: .acquiring), chunk: oldSize / chunkSize) != 0 {
                try self.write(volume, chunk: oldSize / chunkSize, at: tail, length: chunkSize - tail) { buffer in
                    buffer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(chunkSize - tail))
                }
            }
            try self.commitLogged(metadata)
        }
        if let provider = volume.provider { topology.resize(provider, to: size) }
        return try report(of: volume)
    }

    func list() throws -> ThinListReport {
        try perform { metadata in
            let reports = metadata.volumes.map { self.report(of: $0, metadata) }
            let nodes = metadata.nodeCount()
            let used = max(1, metadata.usedChunks)
            return ThinListReport(pool: self.report, volumes: reports, nodes: nodes,
                                  memoryPerChunk: Double(nodes * ThinNode.memorySize) / Double(used))
        }
    }

    /// Commits, then reads the metadata back from the provider and checks it; the
    /// reference counts it derives must be the running pool's.
    func check() throws -> ThinCheckReport {
        try perform { metadata in
            try self.commitLogged(metadata)
            let consumer = self.consumers[0]
            var (report, references) = ThinChecker.check(providerSize: consumer.provider!.mediaSize) { block in
                try consumer.readSync(at: Int64(block) * Int64(ThinFormat.blockSize), count: ThinFormat.blockSize)
            }
            if report.problems.isEmpty {
                let running = metadata.referenceCounts()
                let wrong = zip(references, running).enumerated().filter { $0.element.0 != $0.element.1 }
                if let first = wrong.first {
                    references = []
                    report.problems.append("\(wrong.count) data chunks have other reference counts on disk than in the running pool (chunk \(first.offset): \(first.element.0) on disk, \(first.element.1) running)")
                }
                if Int64(report.metadataBlocksUsed) != metadata.usedMetadataBlocks {
                    report.problems.append("the maps on disk use \(report.metadataBlocksUsed) metadata blocks; the running pool counts \(metadata.usedMetadataBlocks) in use")
                }
            }
            return report
        }
    }

    func catalogEntries(_ metadata: ThinMetadata) -> [ThinCatalogEntry] {
        metadata.volumes.map { ThinCatalogEntry(name: $0.name, id: $0.id, origin: $0.origin, isSnapshot: $0.isSnapshot, size: $0.size, volume: $0) }
    }

    private func checkUnused(_ volume: ThinVolume, force: Bool, doing what: String) throws {
        guard let provider = volume.provider, !force else { return }
        let counts = provider.accessCounts
        guard counts.read == 0 && counts.write == 0 && counts.exclusive == 0 else {
            throw StrataError(.busy, "\(provider.name) is open (\(provider.mode)); close it first, or \(what) with --force")
        }
    }

    private func report(of volume: ThinVolume) throws -> ThinVolumeReport {
        try perform { metadata in self.report(of: volume, metadata) }
    }

    private func report(of volume: ThinVolume, _ metadata: ThinMetadata) -> ThinVolumeReport {
        let usage = metadata.usage(of: volume)
        return ThinVolumeReport(name: volume.name, provider: "\(name)/\(volume.name)", kind: volume.isSnapshot ? "snapshot" : "volume",
                                size: volume.size, allocated: usage.mapped * geometry.chunkSize,
                                shared: usage.shared * geometry.chunkSize,
                                parent: metadata.volume(id: volume.origin)?.name, created: volume.created)
    }
}
