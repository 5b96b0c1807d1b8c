#if canImport(Glibc)
import Glibc
#endif
import Strata
import Synchronization

/// A pool's maps, reference counts and free space, and how they are committed: owned by
/// the pool's metadata thread, which alone changes them (the I/O path only reads the
/// atomics: roots, node entries and parents, data chunk references).
///
/// The commit rule: a commit writes every node changed since the last one to a block
/// the last commit does not use, then the volume table likewise, flushes, and only then
/// writes the superblock naming them (the copy the last commit did not write) and
/// flushes again. Nothing the last commit reaches is written in place, so a power cut
/// leaves either commit whole. What a change frees (a node's old block, a data chunk no
/// map holds any more) is reused only once the commit that no longer reaches it is
/// durable and every request that might still read it has finished.
final class ThinMetadata {
    let consumer: Consumer
    let geometry: ThinGeometry
    let epochs: ThinEpochs
    /// How many leaves map each data chunk; a chunk with 0 is free. Read by the I/O path.
    let references: UnsafeMutablePointer<Atomic<UInt32>>
    /// The last commit.
    private(set) var superblock: ThinSuperblock
    private(set) var volumes: [ThinVolume] = []
    private var blockInUse: [Bool]
    private var blockCursor = 2
    private(set) var freeBlocks: Int64 = 0
    private var chunkCursor: Int64 = 0
    private(set) var freeChunks: Int64 = 0
    private var dirtyNodes = 0
    /// What the next commit releases.
    private var releasedBlocks: [UInt64] = []
    private var releasedChunks: [Int64] = []
    private var retiredEntries: [UInt64] = []
    private var tableBlocks: [UInt64] = []
    /// Changed since the last commit.
    private(set) var hasChanges = false
    /// Set when a commit failed: nothing more is written.
    private(set) var failure: String?
    /// Told when `hasChanges` changes (the I/O path's FUA test reads it).
    var onChangesChanged: (Bool) -> Void = { _ in }

    private init(consumer: Consumer, superblock: ThinSuperblock, epochs: ThinEpochs) {
        self.consumer = consumer
        self.superblock = superblock
        self.epochs = epochs
        geometry = ThinGeometry(chunkSize: Int64(superblock.chunkSize), dataStart: superblock.dataStart,
                                dataChunks: superblock.dataChunks, metadataBlocks: superblock.metadataBlocks)
        references = .allocate(capacity: Int(superblock.dataChunks))
        for index in 0..<Int(superblock.dataChunks) { (references + index).initialize(to: Atomic(0)) }
        blockInUse = [Bool](repeating: false, count: Int(superblock.metadataBlocks))
        blockInUse[0] = true
        blockInUse[1] = true
    }

    deinit {
        for entry in retiredEntries { ThinNode.release(entry) }
        volumes.removeAll()
        references.deinitialize(count: Int(geometry.dataChunks))
        references.deallocate()
    }

    // MARK: Opening

    /// The newest sound superblock of the provider `consumer` reads, nil when neither
    /// copy is one, or `.blank` when both are zeros.
    enum Found { case pool(ThinSuperblock), blank, other }

    static func find(on consumer: Consumer) throws -> Found {
        let blocks = try consumer.readSync(at: 0, count: 2 * ThinFormat.blockSize)
        let copies = [Array(blocks[0..<ThinFormat.blockSize]), Array(blocks[ThinFormat.blockSize...])]
        if let newest = copies.compactMap(ThinSuperblock.decode).max(by: { $0.generation < $1.generation }) {
            return .pool(newest)
        }
        return blocks.allSatisfy { $0 == 0 } ? .blank : .other
    }

    /// Writes an empty pool on the provider: both superblock copies, no volumes.
    static func format(_ consumer: Consumer, name: String, chunkSize: Int64, metadataSize: Int64?) throws -> ThinSuperblock {
        let size = consumer.provider!.mediaSize
        let wanted = metadataSize ?? max(1 << 20, size / 64)
        let metadataBytes = (wanted + chunkSize - 1) / chunkSize * chunkSize
        let dataChunks = (size - metadataBytes) / chunkSize
        guard metadataBytes / Int64(ThinFormat.blockSize) >= 16, dataChunks >= 1 else {
            throw SettingError(key: "consumers", value: consumer.provider!.name,
                               problem: "is too small for a thin pool with \(formatByteSize(metadataBytes)) of metadata and \(formatByteSize(chunkSize)) chunks")
        }
        var id = [UInt8](repeating: 0, count: 16)
        for index in id.indices { id[index] = UInt8.random(in: 0...255) }
        let superblock = ThinSuperblock(generation: 1, poolID: id, chunkSize: Int(chunkSize),
                                        metadataBlocks: metadataBytes / Int64(ThinFormat.blockSize), dataChunks: dataChunks,
                                        dataStart: metadataBytes, volumeTable: 0, nextVolumeID: 1, name: name)
        let block = superblock.encoded()
        try consumer.writeSync(block + block, at: 0)
        try flush(consumer)
        return superblock
    }

    /// The pool the superblock describes, its maps read and checked.
    static func open(_ consumer: Consumer, superblock: ThinSuperblock, epochs: ThinEpochs) throws -> ThinMetadata {
        guard superblock.chunkSize >= ThinFormat.blockSize, superblock.chunkSize & (superblock.chunkSize - 1) == 0,
              superblock.metadataBlocks >= 16, superblock.dataStart >= superblock.metadataBlocks * Int64(ThinFormat.blockSize),
              superblock.dataChunks >= 1,
              superblock.dataStart + superblock.dataChunks * Int64(superblock.chunkSize) <= consumer.provider!.mediaSize else {
            throw StrataError(.invalid, "\(consumer.provider!.name): thin pool \(superblock.name)'s superblock does not fit the provider (damaged, or the provider shrank)")
        }
        let metadata = ThinMetadata(consumer: consumer, superblock: superblock, epochs: epochs)
        do {
            try metadata.load()
        } catch let damage as ThinDamage {
            throw StrataError(.invalid, "\(consumer.provider!.name): thin pool \(superblock.name) is damaged: \(damage)")
        }
        return metadata
    }

    private func readBlock(_ number: UInt64) throws -> [UInt8] {
        try consumer.readSync(at: Int64(number) * Int64(ThinFormat.blockSize), count: ThinFormat.blockSize)
    }

    private func load() throws {
        var reader = ThinTreeReader(geometry: geometry, read: readBlock)
        let records = try reader.volumeTable(superblock.volumeTable)
        tableBlocks = reader.tableBlocks
        var nodes: [UInt64: ThinNode] = [:]
        func loadNode(_ block: UInt64, level: Int) throws -> ThinNode {
            if let node = nodes[block] {
                guard node.level == level else { throw ThinDamage("node block \(block) is reached at two levels") }
                node.parents.add(1, ordering: .relaxed)
                return node
            }
            let (entries) = try reader.node(block, level: level)
            let node = ThinNode(level: level)
            node.block = block
            node.dirty = false
            nodes[block] = node
            for (index, entry) in entries.enumerated() where entry != 0 {
                if level == 0 {
                    references[Int(entry - 1)].add(1, ordering: .relaxed)
                    node[index] = entry
                } else {
                    node[index] = ThinNode.entry(retaining: try loadNode(entry, level: level - 1))
                }
            }
            return node
        }
        for record in records {
            let volume = ThinVolume(id: record.id, name: record.name, isSnapshot: record.flags.contains(.snapshot),
                                    size: record.size, depth: record.depth, origin: record.origin, created: record.created)
            if record.root != 0 {
                volume.root.store(ThinNode.entry(retaining: try loadNode(record.root, level: record.depth - 1)), ordering: .releasing)
            }
            volumes.append(volume)
        }
        for block in reader.usedBlocks { blockInUse[Int(block)] = true }
        freeBlocks = Int64(blockInUse.count(where: { !$0 }))
        freeChunks = (0..<Int(geometry.dataChunks)).reduce(0) { $0 + (references[$1].load(ordering: .relaxed) == 0 ? 1 : 0) }
    }

    // MARK: Space

    var usedChunks: Int64 { geometry.dataChunks - freeChunks }

    /// Takes a free data chunk for a write (its reference is the write's until the map
    /// takes it), nil when none is left.
    func allocateChunk() -> Int64? {
        guard freeChunks > 0 else { return nil }
        var chunk = chunkCursor
        for _ in 0..<geometry.dataChunks {
            if chunk >= geometry.dataChunks { chunk = 0 }
            if references[Int(chunk)].load(ordering: .relaxed) == 0 {
                references[Int(chunk)].store(1, ordering: .releasing)
                freeChunks -= 1
                chunkCursor = chunk + 1
                return chunk
            }
            chunk += 1
        }
        return nil
    }

    /// Gives back a chunk `allocateChunk` took that no map holds (its write failed).
    func unallocate(_ chunk: Int64) {
        references[Int(chunk)].store(0, ordering: .releasing)
        freeChunks += 1
    }

    /// Whether the metadata area has room for the nodes changed so far plus `nodes`
    /// more and the volume table, so that the next commit cannot run out.
    func hasMetadataRoom(forNodes nodes: Int) -> Bool {
        let tables = Int64((volumes.count + 1 + ThinFormat.volumesPerBlock - 1) / ThinFormat.volumesPerBlock)
        return freeBlocks >= Int64(dirtyNodes + nodes) + tables + 4
    }

    /// Whether a commit would give back space (chunks or blocks) the last changes freed.
    var commitReleasesSpace: Bool { !releasedBlocks.isEmpty || !releasedChunks.isEmpty }

    private func allocateBlock() -> UInt64? {
        guard freeBlocks > 0 else { return nil }
        var block = blockCursor
        for _ in 0..<blockInUse.count {
            if block >= blockInUse.count { block = 2 }
            if !blockInUse[block] {
                blockInUse[block] = true
                freeBlocks -= 1
                blockCursor = block + 1
                return UInt64(block)
            }
            block += 1
        }
        return nil
    }

    // MARK: Changing maps

    private func changed() {
        if !hasChanges {
            hasChanges = true
            onChangesChanged(true)
        }
    }

    private func newNode(level: Int) -> ThinNode {
        dirtyNodes += 1
        changed()
        return ThinNode(level: level)
    }

    private func markDirty(_ node: ThinNode) {
        if !node.dirty {
            node.dirty = true
            dirtyNodes += 1
        }
        changed()
    }

    /// A copy of a shared node for the volume writing through it: what it points at
    /// gains a parent (a data chunk, a reference).
    private func copyNode(_ node: ThinNode) -> ThinNode {
        let copy = node.copy()
        dirtyNodes += 1
        changed()
        if node.level == 0 {
            copy.forEachEntry { _, entry in references[Int(entry - 1)].add(1, ordering: .relaxed) }
        }
        return copy
    }

    /// The leaf that maps virtual chunk `chunk` of `volume`, made if missing, and made the
    /// volume's own (with every node above it) if shared with another volume.
    private func exclusiveLeaf(_ volume: ThinVolume, _ chunk: Int64) -> ThinNode {
        var node: ThinNode
        let rootEntry = volume.root.load(ordering: .acquiring)
        if let root = ThinNode.child(rootEntry) {
            if root.parents.load(ordering: .acquiring) == 1 {
                markDirty(root)
                node = root
            } else {
                node = copyNode(root)
                root.parents.subtract(1, ordering: .releasing)
                volume.root.store(ThinNode.entry(retaining: node), ordering: .releasing)
                retiredEntries.append(rootEntry)
            }
        } else {
            node = newNode(level: volume.depth - 1)
            volume.root.store(ThinNode.entry(retaining: node), ordering: .releasing)
        }
        while node.level > 0 {
            let index = ThinGeometry.index(of: chunk, at: node.level)
            let entry = node[index]
            if let child = ThinNode.child(entry) {
                if child.parents.load(ordering: .acquiring) == 1 {
                    markDirty(child)
                    node = child
                } else {
                    let copy = copyNode(child)
                    child.parents.subtract(1, ordering: .releasing)
                    node[index] = ThinNode.entry(retaining: copy)
                    retiredEntries.append(entry)
                    node = copy
                }
            } else {
                let child = newNode(level: node.level - 1)
                node[index] = ThinNode.entry(retaining: child)
                node = child
            }
        }
        return node
    }

    /// Nodes a change to one chunk's mapping may add: a copy of each level.
    func nodesPerMapping(_ volume: ThinVolume) -> Int { volume.depth }

    /// Maps virtual chunk `chunk` of `volume` to data chunk `data`, whose reference (from
    /// `allocateChunk`) the map takes. The chunk it mapped before loses one at the commit.
    func map(_ volume: ThinVolume, chunk: Int64, to data: Int64) {
        let leaf = exclusiveLeaf(volume, chunk)
        let index = ThinGeometry.index(of: chunk, at: 0)
        let old = leaf[index]
        leaf[index] = UInt64(data + 1)
        if old != 0 { releasedChunks.append(Int64(old - 1)) }
    }

    /// Unmaps virtual chunk `chunk` of `volume` (nothing if it is unmapped). Nodes left
    /// empty go, so a volume's map stays in proportion to what it maps.
    func unmap(_ volume: ThinVolume, chunk: Int64) {
        guard ThinLookup.entry(root: volume.root.load(ordering: .acquiring), chunk: chunk) != 0 else { return }
        let leaf = exclusiveLeaf(volume, chunk)
        let index = ThinGeometry.index(of: chunk, at: 0)
        let old = leaf[index]
        leaf[index] = 0
        if old != 0 { releasedChunks.append(Int64(old - 1)) }
        pruneEmptyNodes(of: volume, above: chunk)
    }

    private static func isEmpty(_ node: ThinNode) -> Bool {
        (0..<ThinFormat.fanout).allSatisfy { node[$0] == 0 }
    }

    /// Takes out the nodes on the way to `chunk` that map nothing, from the leaf up
    /// (the way is the volume's own: `exclusiveLeaf` made it so).
    private func pruneEmptyNodes(of volume: ThinVolume, above chunk: Int64) {
        var path: [(node: ThinNode, index: Int)] = []
        var entry = volume.root.load(ordering: .acquiring)
        while let node = ThinNode.child(entry), node.level > 0 {
            let index = ThinGeometry.index(of: chunk, at: node.level)
            path.append((node, index))
            entry = node[index]
        }
        guard let leaf = ThinNode.child(entry), Self.isEmpty(leaf) else { return }
        var emptied = entry
        for (parent, index) in path.reversed() {
            parent[index] = 0
            drop(emptied)
            retiredEntries.append(emptied)
            guard Self.isEmpty(parent) else { return }
            emptied = ThinNode.entry(unretained: parent)
        }
        // Every node of the map is empty: the volume maps nothing.
        dropRoot(of: volume)
    }

    /// Takes away one reference to the node `entry` points at (a root's or a parent's
    /// that goes); a node left with none frees its block and what it points at.
    private func drop(_ entry: UInt64) {
        guard let node = ThinNode.child(entry) else { return }
        let (_, left) = node.parents.subtract(1, ordering: .acquiringAndReleasing)
        guard left == 0 else { return }
        if node.block != 0 { releasedBlocks.append(node.block) }
        if node.dirty { dirtyNodes -= 1 }
        changed()
        node.forEachEntry { _, child in
            if node.level == 0 { releasedChunks.append(Int64(child - 1)) } else { drop(child) }
        }
    }

    /// Drops a volume's whole map (deleting or reverting it).
    private func dropRoot(of volume: ThinVolume) {
        let rootEntry = volume.root.exchange(0, ordering: .acquiringAndReleasing)
        guard rootEntry != 0 else { return }
        drop(rootEntry)
        retiredEntries.append(rootEntry)
        changed()
    }

    // MARK: Volumes

    func volume(named name: String) -> ThinVolume? { volumes.first { $0.name == name } }
    func volume(id: UInt32) -> ThinVolume? { volumes.first { $0.id == id } }

    /// Checks that `name` may name a volume or snapshot.
    static func checkName(_ name: String, key: String = "name") throws(SettingError) {
        guard !name.isEmpty, name.utf8.count <= ThinFormat.maximumNameLength,
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.:+@".contains($0)) }),
              name != ".", name != ".." else {
            throw SettingError(key: key, value: name,
                               problem: "must be 1 to \(ThinFormat.maximumNameLength) letters, digits or - _ . : + @, and not . or ..")
        }
    }

    private func checkNewName(_ name: String) throws {
        try Self.checkName(name)
        guard volume(named: name) == nil else { throw StrataError(.exists, "pool \(superblock.name) has a volume or snapshot named \(name)") }
    }

    private func nextID() -> UInt32 {
        let id = superblock.nextVolumeID
        superblock.nextVolumeID += 1
        return id
    }

    private static func now() -> UInt64 { UInt64(time(nil)) }

    func createVolume(_ name: String, size: Int64) throws -> ThinVolume {
        try checkNewName(name)
        try checkSize(size)
        let volume = ThinVolume(id: nextID(), name: name, isSnapshot: false, size: size,
                                depth: ThinFormat.depth(forChunks: chunks(of: size)), origin: 0, created: Self.now())
        volumes.append(volume)
        changed()
        return volume
    }

    private func checkSize(_ size: Int64) throws {
        let sector = Int64(consumer.provider?.sectorSize ?? 512)
        guard size > 0, size % sector == 0, chunks(of: size) <= Int64(1) << 40 else {
            throw SettingError(key: "size", value: formatByteSize(size), problem: "must be a multiple of \(sector) bytes, up to 2^40 chunks")
        }
    }

    func chunks(of size: Int64) -> Int64 { (size + geometry.chunkSize - 1) >> Int64(geometry.chunkShift) }

    /// A volume sharing `source`'s map: a snapshot (read-only) or a clone (writable).
    /// Constant time: the new volume's root is the source's root, now shared.
    func share(_ source: ThinVolume, as name: String, snapshot: Bool) throws -> ThinVolume {
        try checkNewName(name)
        let volume = ThinVolume(id: nextID(), name: name, isSnapshot: snapshot, size: source.size, depth: source.depth,
                                origin: source.id, created: Self.now())
        if let root = source.rootNode {
            root.parents.add(1, ordering: .sequentiallyConsistent)
            volume.root.store(ThinNode.entry(retaining: root), ordering: .releasing)
        }
        volumes.append(volume)
        changed()
        return volume
    }

    /// Makes `volume` what `snapshot` holds (its map and size).
    func revert(_ volume: ThinVolume, to snapshot: ThinVolume) {
        dropRoot(of: volume)
        if let root = snapshot.rootNode {
            root.parents.add(1, ordering: .sequentiallyConsistent)
            volume.root.store(ThinNode.entry(retaining: root), ordering: .releasing)
        }
        volume.depth = snapshot.depth
        volume.size = snapshot.size
        changed()
    }

    func delete(_ volume: ThinVolume) {
        dropRoot(of: volume)
        volumes.removeAll { $0 === volume }
        changed()
    }

    /// Grows or shrinks `volume` to `size`; chunks past a smaller size are unmapped.
    func resize(_ volume: ThinVolume, to size: Int64) throws {
        try checkSize(size)
        let newChunks = chunks(of: size)
        let depth = ThinFormat.depth(forChunks: newChunks)
        while volume.depth < depth {
            let rootEntry = volume.root.load(ordering: .acquiring)
            if rootEntry != 0 {
                let root = newNode(level: volume.depth)
                root[0] = rootEntry
                volume.root.store(ThinNode.entry(retaining: root), ordering: .releasing)
            }
            volume.depth += 1
        }
        let oldChunks = chunks(of: volume.size)
        if newChunks < oldChunks {
            var mapped: [(Int64, Int64)] = []
            ThinLookup.runs(root: volume.root.load(ordering: .acquiring), from: newChunks, to: oldChunks) { start, count, isMapped in
                if isMapped { mapped.append((start, count)) }
                return true
            }
            for (start, count) in mapped {
                for chunk in start..<(start + count) { unmap(volume, chunk: chunk) }
            }
        }
        volume.size = size
        changed()
    }

    // MARK: Commit

    static func flush(_ consumer: Consumer) throws {
        do {
            try consumer.performSync(.flush, offset: 0, length: 0)
        } catch let error as StrataError where error.code == .notSupported {
            // Nothing volatile below.
        }
    }

    /// Makes the current maps the pool's durable state (see the type's comment). With
    /// nothing changed, only flushes the provider, so data written in place is durable.
    /// Commits with the superblock naming the pool `name` (the topology file's entry).
    func commit(renaming name: String) throws {
        superblock.name = name
        changed()
        try commit()
    }

    func commit() throws {
        if let failure { throw StrataError(.io, "thin pool \(superblock.name) failed: \(failure)") }
        guard hasChanges else {
            try Self.flush(consumer)
            return
        }
        let tableCount = (volumes.count + ThinFormat.volumesPerBlock - 1) / ThinFormat.volumesPerBlock
        guard freeBlocks >= Int64(dirtyNodes + tableCount) else {
            throw StrataError(.noSpace, "thin pool \(superblock.name): its metadata area is full")
        }
        let generation = superblock.generation + 1
        var writes: [(UInt64, [UInt8])] = []
        var freed: [UInt64] = []
        func write(_ node: ThinNode) -> UInt64 {
            guard node.dirty, node.writtenInCommit != generation else { return node.block }
            var children = [UInt64](repeating: 0, count: node.level > 0 ? ThinFormat.fanout : 0)
            if node.level > 0 {
                node.forEachEntry { index, entry in children[index] = write(ThinNode.child(entry)!) }
            }
            let block = allocateBlock()!
            if node.block != 0 { freed.append(node.block) }
            node.block = block
            node.writtenInCommit = generation
            node.dirty = false
            dirtyNodes -= 1
            writes.append((block, ThinNodeBlock.encode(level: node.level, block: block) { index in
                node.level > 0 ? children[index] : node[index]
            }))
            return block
        }
        var records: [ThinVolumeRecord] = []
        for volume in volumes {
            let root = volume.rootNode.map(write) ?? 0
            records.append(ThinVolumeRecord(id: volume.id, flags: volume.isSnapshot ? .snapshot : [], size: volume.size,
                                            root: root, depth: volume.depth, origin: volume.origin,
                                            created: volume.created, name: volume.name))
        }
        let newTable = (0..<tableCount).map { _ in allocateBlock()! }
        for (index, block) in newTable.enumerated() {
            let next = index + 1 < newTable.count ? newTable[index + 1] : 0
            let slice = records[(index * ThinFormat.volumesPerBlock)..<min(records.count, (index + 1) * ThinFormat.volumesPerBlock)]
            writes.append((block, ThinVolumeTable.encode(slice, block: block, next: next)))
        }
        freed += tableBlocks
        var next = superblock
        next.generation = generation
        next.volumeTable = newTable.first ?? 0
        do {
            for (block, bytes) in writes.sorted(by: { $0.0 < $1.0 }) {
                try consumer.writeSync(bytes, at: Int64(block) * Int64(ThinFormat.blockSize))
            }
            try Self.flush(consumer)
            try consumer.writeSync(next.encoded(), at: Int64(generation % 2) * Int64(ThinFormat.blockSize), flags: .fua)
            try Self.flush(consumer)
        } catch {
            failure = "a commit could not be written (\(error)); the pool is as its last commit left it"
            throw StrataError(.io, "thin pool \(superblock.name): \(failure!)")
        }
        superblock = next
        tableBlocks = newTable
        for block in freed + releasedBlocks {
            blockInUse[Int(block)] = false
            freeBlocks += 1
        }
        releasedBlocks.removeAll()
        hasChanges = false
        onChangesChanged(false)
        // What the commit no longer reaches may still be under a request that looked it
        // up before: wait for those before anything is reused or freed.
        guard !releasedChunks.isEmpty || !retiredEntries.isEmpty else { return }
        epochs.synchronize()
        for chunk in releasedChunks {
            let (_, left) = references[Int(chunk)].subtract(1, ordering: .acquiringAndReleasing)
            if left == 0 { freeChunks += 1 }
        }
        releasedChunks.removeAll()
        for entry in retiredEntries { ThinNode.release(entry) }
        retiredEntries.removeAll()
    }

    // MARK: Reports

    struct Usage {
        var mapped: Int64 = 0
        var shared: Int64 = 0
    }

    /// Chunks `volume` maps, and how many of them another volume maps too.
    func usage(of volume: ThinVolume) -> Usage {
        var usage = Usage()
        func walk(_ node: ThinNode, shared: Bool) {
            let shared = shared || node.parents.load(ordering: .relaxed) > 1
            node.forEachEntry { _, entry in
                if node.level == 0 {
                    usage.mapped += 1
                    if shared || references[Int(entry - 1)].load(ordering: .relaxed) > 1 { usage.shared += 1 }
                } else {
                    walk(ThinNode.child(entry)!, shared: shared)
                }
            }
        }
        if let root = volume.rootNode { walk(root, shared: false) }
        return usage
    }

    /// Nodes in memory and the bytes they take, for the memory report.
    func nodeCount() -> Int {
        var seen = Set<ObjectIdentifier>()
        func walk(_ node: ThinNode) {
            guard seen.insert(ObjectIdentifier(node)).inserted else { return }
            if node.level > 0 { node.forEachEntry { _, entry in walk(ThinNode.child(entry)!) } }
        }
        for volume in volumes { if let root = volume.rootNode { walk(root) } }
        return seen.count
    }

    /// The data chunk references as the maps give them, for comparing with a check of
    /// what is on disk.
    func referenceCounts() -> [UInt32] {
        (0..<Int(geometry.dataChunks)).map { references[$0].load(ordering: .relaxed) }
    }

    var usedMetadataBlocks: Int64 { geometry.metadataBlocks - freeBlocks }
}
