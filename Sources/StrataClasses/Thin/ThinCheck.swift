/// Reads a pool's committed metadata block by block and checks each block as it comes:
/// opening a pool and `strata thin check` read through it.
struct ThinTreeReader {
    let geometry: ThinGeometry
    let read: (UInt64) throws -> [UInt8]
    /// Every metadata block reached, each once.
    private(set) var usedBlocks = Set<UInt64>()
    private(set) var tableBlocks: [UInt64] = []

    init(geometry: ThinGeometry, read: @escaping (UInt64) throws -> [UInt8]) {
        self.geometry = geometry
        self.read = read
    }

    private func checkRange(_ block: UInt64, _ what: String) throws {
        guard block >= 2, block < UInt64(geometry.metadataBlocks) else {
            throw ThinDamage("\(what) points at block \(block), outside the metadata area (2..<\(geometry.metadataBlocks))")
        }
    }

    mutating func volumeTable(_ first: UInt64) throws -> [ThinVolumeRecord] {
        var records: [ThinVolumeRecord] = []
        var block = first
        while block != 0 {
            try checkRange(block, "the volume table")
            guard usedBlocks.insert(block).inserted else { throw ThinDamage("the volume table reaches block \(block) twice") }
            tableBlocks.append(block)
            let (found, next) = try ThinVolumeTable.decode(try read(block), number: block).get()
            records += found
            block = next
        }
        var ids = Set<UInt32>()
        var names = Set<String>()
        for record in records {
            guard ids.insert(record.id).inserted, names.insert(record.name).inserted else {
                throw ThinDamage("the volume table names volume \(record.id) (\(record.name)) twice")
            }
            let chunks = (record.size + geometry.chunkSize - 1) / geometry.chunkSize
            guard record.size > 0, (1...ThinFormat.maximumDepth).contains(record.depth),
                  ThinFormat.depth(forChunks: chunks) <= record.depth else {
                throw ThinDamage("volume \(record.name): size \(record.size) and depth \(record.depth) do not agree")
            }
        }
        return records
    }

    /// The entries of node `block`, checked: its level, and each entry in range.
    mutating func node(_ block: UInt64, level: Int) throws -> [UInt64] {
        try checkRange(block, "a level-\(level + 1) node")
        guard !tableBlocks.contains(block) else { throw ThinDamage("node block \(block) is a volume table block too") }
        usedBlocks.insert(block)
        let (found, entries) = try ThinNodeBlock.decode(try read(block), number: block).get()
        guard found == level else { throw ThinDamage("node block \(block) is level \(found) where level \(level) is expected") }
        for (index, entry) in entries.enumerated() where entry != 0 {
            if level == 0 {
                guard entry <= UInt64(geometry.dataChunks) else {
                    throw ThinDamage("leaf block \(block) entry \(index) maps data chunk \(entry - 1), past the \(geometry.dataChunks) the pool has")
                }
            } else {
                try checkRange(entry, "node block \(block) entry \(index)")
            }
        }
        return entries
    }
}

/// What `strata thin check` finds in a pool's committed metadata.
public struct ThinCheckReport: Codable, Sendable, Equatable {
    public var pool: String
    public var generation: UInt64
    public var volumes: Int
    public var nodes: Int
    public var metadataBlocksUsed: Int
    public var dataChunksUsed: Int64
    /// Problems found; empty for a sound pool.
    public var problems: [String]

    enum CodingKeys: String, CodingKey {
        case pool, generation, volumes, nodes, problems
        case metadataBlocksUsed = "metadata-blocks-used", dataChunksUsed = "data-chunks-used"
    }
}

/// Checks a pool's committed metadata, as `thin_check` checks dm-thin's: both superblock
/// copies, the volume table, every node of every map (each block read once, its CRC,
/// level and self-reference, every entry in range), and the reference count of every
/// data chunk derived from the maps. Reads only what `read` returns: a running pool's
/// provider or an image file.
public enum ThinChecker {
    /// - Parameters:
    ///   - read: the 4 KiB metadata block at a block number.
    ///   - providerSize: bytes of the provider, to check the superblock's extent.
    /// - Returns: the report, and the reference counts derived (one per data chunk).
    public static func check(providerSize: Int64, read: @escaping (UInt64) throws -> [UInt8]) -> (ThinCheckReport, [UInt32]) {
        var report = ThinCheckReport(pool: "?", generation: 0, volumes: 0, nodes: 0, metadataBlocksUsed: 2, dataChunksUsed: 0,
                                     problems: [])
        let copies = [0, 1].map { (try? read(UInt64($0))).flatMap(ThinSuperblock.decode) }
        guard let superblock = copies.compactMap({ $0 }).max(by: { $0.generation < $1.generation }) else {
            report.problems.append("neither superblock copy is sound")
            return (report, [])
        }
        report.pool = superblock.name
        report.generation = superblock.generation
        let geometry = ThinGeometry(chunkSize: Int64(superblock.chunkSize), dataStart: superblock.dataStart,
                                    dataChunks: superblock.dataChunks, metadataBlocks: superblock.metadataBlocks)
        guard superblock.dataStart + superblock.dataChunks * Int64(superblock.chunkSize) <= providerSize,
              superblock.dataStart >= superblock.metadataBlocks * Int64(ThinFormat.blockSize) else {
            report.problems.append("the superblock's areas do not fit the provider")
            return (report, [])
        }
        var references = [UInt32](repeating: 0, count: Int(superblock.dataChunks))
        var reader = ThinTreeReader(geometry: geometry, read: read)
        var levels: [UInt64: Int] = [:]
        do {
            let records = try reader.volumeTable(superblock.volumeTable)
            report.volumes = records.count
            func visit(_ block: UInt64, level: Int) throws {
                if let seen = levels[block] {
                    guard seen == level else { throw ThinDamage("node block \(block) is reached at two levels") }
                    return
                }
                levels[block] = level
                let entries = try reader.node(block, level: level)
                for entry in entries where entry != 0 {
                    if level == 0 { references[Int(entry - 1)] += 1 } else { try visit(entry, level: level - 1) }
                }
            }
            for record in records where record.root != 0 { try visit(record.root, level: record.depth - 1) }
        } catch {
            report.problems.append("\(error)")
        }
        report.nodes = levels.count
        report.metadataBlocksUsed = 2 + reader.usedBlocks.count
        report.dataChunksUsed = Int64(references.count(where: { $0 > 0 }))
        return (report, references)
    }
}
