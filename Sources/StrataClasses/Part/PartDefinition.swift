import Strata

/// `class: part`: the partitions of its one provider, named after it (`name: g0`,
/// `consumers: [g0]`), served as `g0p1`, `g0p2`, … (docs: `part.md`). Its verbs write
/// tables as gpart does: `strata part create|add|delete|destroy|show DISK`.
public enum PartDefinition: ClassDefinition {
    public static let name = "part"
    public static let summary = "One provider per partition of a GPT or MBR: DISKp1, DISKp2, …"
    public static let geomClassName = "PART"
    public static let shape = ClassShape.transform(consumers: 1...1)
    public typealias Settings = NoSettings

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        let disk = entry.consumers[0]
        guard disk.name == entry.name else {
            throw SettingError(key: "consumers", value: disk.name,
                               problem: "a part entry is named after the one provider it reads (name: \(disk.name), consumers: [\(disk.name)])")
        }
        return try PartGeom.create(in: topology, over: disk)
    }

    public static func settings(of geom: Geom) -> Settings? { Settings() }
    public static var taster: (any GeomClass)? { PartClass() }
    public static func geomName(forEntry name: String) -> String { "part/\(name)" }

    /// Partitions are named after the disk: `d0p1`, `d0p2`, …
    public static func offers(_ provider: String, entry: String) -> Bool {
        provider.hasPrefix(entry + "p") && provider.count > entry.count + 1
            && provider.dropFirst(entry.count + 1).allSatisfy { $0.isASCII && $0.isNumber }
    }

    /// GPT partition types by the names `--type` takes (a GUID is taken as well).
    static let gptTypes: [(String, GUID)] = [
        ("linux-data", .linuxData), ("efi", .efiSystem),
        ("linux-swap", GUID("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F")!),
        ("linux-lvm", GUID("E6D6D379-F507-44C2-A23C-238F2A3DF928")!),
        ("linux-raid", GUID("A19D880F-05FC-4D3B-A006-743F0F84911E")!),
        ("microsoft-basic-data", GUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")!),
    ]
    /// MBR partition types by name (a hex byte such as `83` is taken as well).
    static let mbrTypes: [(String, UInt8)] = [("linux-data", 0x83), ("linux-swap", 0x82), ("linux-lvm", 0x8E),
                                              ("linux-raid", 0xFD), ("efi", 0xEF), ("fat32", 0x0C), ("ntfs", 0x07)]

    public static let verbs = [
        ClassVerb("create", "Write an empty partition table on a disk that has none.", target: .provider,
                  options: [VerbParameter("scheme", .choice(["gpt", "mbr"]), help: "gpt (the default) or mbr.")]) { call in
            try editTable(of: call) { disk in
                guard disk.table == nil else {
                    throw StrataError(.exists, "\(disk.provider.name) has a \(disk.table!.scheme.rawValue.uppercased()) already")
                }
                if call.text("scheme") == "mbr" {
                    try MBRWriter.create(sectorSize: disk.sectorSize, read: disk.read, write: disk.write, flush: disk.flush)
                } else {
                    try GPTWriter.create(sectorSize: disk.sectorSize, sectors: disk.sectors, write: disk.write, flush: disk.flush)
                }
            }
        },
        ClassVerb("add", "Add a partition in the first free space, aligned to 1 MiB.", target: .provider, options: [
            VerbParameter("size", .anySize, help: "Its size (required)."),
            VerbParameter("type", .text, help: "linux-data (the default), efi, linux-swap, linux-lvm, linux-raid, microsoft-basic-data, fat32 or ntfs; or a GPT type GUID, or an MBR type byte in hex."),
            VerbParameter("label", .text, help: "Its name (GPT only)."),
        ]) { call in
            guard let size = call.size("size") else { throw SettingError(key: "size", value: nil, problem: "is required") }
            return try editTable(of: call) { disk in
                switch disk.table?.scheme {
                case .gpt?:
                    let typeName = call.text("type") ?? "linux-data"
                    guard let type = gptTypes.first(where: { $0.0 == typeName })?.1 ?? GUID(typeName) else {
                        throw SettingError(key: "type", value: typeName, problem: "is not a GPT type name or GUID")
                    }
                    let label = call.text("label") ?? ""
                    // A GPT entry holds 36 UTF-16 units of name: a longer one would be cut
                    // where the user would not see it until it was read back.
                    guard label.utf16.count <= 36 else {
                        throw SettingError(key: "label", value: label,
                                           problem: "is \(label.utf16.count) UTF-16 units long; a GPT partition's name holds at most 36")
                    }
                    _ = try GPTWriter.add(type: type, name: label, size: size, sectorSize: disk.sectorSize,
                                          sectors: disk.sectors, read: disk.read, write: disk.write, flush: disk.flush)
                case .mbr?:
                    if call.text("label") != nil { throw SettingError(key: "label", value: call.text("label"), problem: "is for GPT partitions") }
                    let typeName = call.text("type") ?? "linux-data"
                    guard let type = mbrTypes.first(where: { $0.0 == typeName })?.1 ?? UInt8(typeName, radix: 16), type != 0 else {
                        throw SettingError(key: "type", value: typeName, problem: "is not an MBR type name or a byte in hex")
                    }
                    _ = try MBRWriter.add(type: type, size: size, sectorSize: disk.sectorSize, sectors: disk.sectors,
                                          read: disk.read, write: disk.write, flush: disk.flush)
                case nil:
                    throw StrataError(.invalid, "\(disk.provider.name) has no partition table; `strata part create \(disk.provider.name)` writes one")
                }
            }
        },
        ClassVerb("delete", "Delete a partition.", target: .provider,
                  options: [VerbParameter("index", .integer(1...128), help: "The partition's number (required).")]) { call in
            guard let index = call.integer("index") else { throw SettingError(key: "index", value: nil, problem: "is required") }
            return try editTable(of: call) { disk in
                switch disk.table?.scheme {
                case .gpt?: try GPTWriter.delete(number: index, sectorSize: disk.sectorSize, sectors: disk.sectors,
                                                 read: disk.read, write: disk.write, flush: disk.flush)
                case .mbr?: try MBRWriter.delete(number: index, read: disk.read, write: disk.write, flush: disk.flush)
                case nil: throw StrataError(.invalid, "\(disk.provider.name) has no partition table")
                }
            }
        },
        ClassVerb("destroy", "Erase a disk's partition table (refused while it has partitions, unless --force).",
                  target: .provider, options: [VerbParameter("force", .boolean, help: "Erase it with its partitions.")]) { call in
            try editTable(of: call) { disk in
                guard let table = disk.table else { throw StrataError(.invalid, "\(disk.provider.name) has no partition table") }
                guard table.partitions.isEmpty || call.flag("force") else {
                    throw StrataError(.busy, "\(disk.provider.name) has \(table.partitions.count) partition(s); delete them or use --force")
                }
                let blank = [UInt8](repeating: 0, count: disk.sectorSize)
                if table.scheme == .gpt {
                    try disk.write(disk.sectors - 1, blank)
                    try disk.write(1, blank)
                }
                var mbr = try disk.read(0, 1)
                mbr.replaceSubrange(446..<512, with: [UInt8](repeating: 0, count: 66))
                try disk.write(0, mbr)
                try disk.flush()
            }
        },
        ClassVerb("show", "A disk's partition table.", target: .provider, onlyLooks: true) { call in
            let provider = call.provider!
            return PartitionTableReport(disk: provider.name, table: try PartGeom.readTable(of: provider, in: call.topology),
                                        sectorSize: provider.sectorSize)
        },
    ]

    /// A disk whose table a verb edits, through a consumer that holds it exclusively.
    struct EditedDisk {
        let provider: Provider
        let consumer: Consumer
        let table: PartitionTable?
        var sectorSize: Int { provider.sectorSize }
        var sectors: Int64 { provider.mediaSize / Int64(provider.sectorSize) }
        func read(_ lba: Int64, _ count: Int) throws -> [UInt8] {
            try consumer.readSync(at: lba * Int64(sectorSize), count: count * sectorSize)
        }
        func write(_ lba: Int64, _ bytes: [UInt8]) throws { try consumer.writeSync(bytes, at: lba * Int64(sectorSize)) }
        func flush() throws {
            do {
                _ = try consumer.performSync(.flush, offset: 0, length: 0)
            } catch let error as StrataError where error.code == .notSupported {
                // No volatile cache to flush.
            }
        }
    }

    /// Runs `edit` on the call's disk, refused while anything has the disk open (its
    /// partitions among them), then makes its partitions again from the new table and
    /// answers with it.
    static func editTable(of call: VerbCall, _ edit: (EditedDisk) throws -> Void) throws -> PartitionTableReport {
        let topology = call.topology
        let provider = call.provider!
        let counts = provider.accessCounts
        guard counts.read == 0 && counts.write == 0 && counts.exclusive == 0 else {
            throw StrataError(.busy, "\(provider.name) is open (a partition of it, an export's client or a geom above); close it first")
        }
        let partitions = topology.geom(named: "part/\(provider.name)")
        let editor = Geom(name: "gpart:\(provider.name):\(UInt32.random(in: 0...UInt32.max))", className: "GPART")
        try topology.add(editor)
        let consumer = topology.createConsumer(for: editor)
        let edited: Result<Void, any Error>
        do {
            try topology.attach(consumer, to: provider)
            try topology.access(consumer, read: 1, write: 1, exclusive: 1)
            defer { try? topology.access(consumer, read: -1, write: -1, exclusive: -1) }
            let table = try PartitionTable.read(sectorSize: provider.sectorSize, sectors: provider.mediaSize / Int64(provider.sectorSize)) { lba, count in
                try consumer.readSync(at: lba * Int64(provider.sectorSize), count: count * provider.sectorSize)
            }
            try edit(EditedDisk(provider: provider, consumer: consumer, table: table))
            edited = .success(())
        } catch {
            edited = .failure(error)
        }
        topology.destroy(consumer)
        topology.remove(editor)
        // Opening the disk to write spoiled the old partitions, whether or not the edit
        // went through: they go, and the table's come, from tasting if the disk is
        // tasted, else made here.
        topology.settle()
        if let partitions { topology.waitUntilGone(partitions) }
        topology.settle()
        let table = try PartGeom.readTable(of: provider, in: topology)
        if table != nil && topology.geom(named: "part/\(provider.name)") == nil {
            try PartGeom.create(in: topology, over: provider)
        }
        try edited.get()
        return PartitionTableReport(disk: provider.name, table: table, sectorSize: provider.sectorSize)
    }
}

/// What `strata part show` (and the verbs that edit a table) answer.
public struct PartitionTableReport: Codable, Sendable {
    public struct Entry: Codable, Sendable {
        public var number: Int
        public var provider: String
        public var start: Int64
        public var size: Int64
        public var type: String
        public var label: String?
    }

    public var disk: String
    /// gpt, mbr, or none.
    public var scheme: String
    public var partitions: [Entry]

    init(disk: String, table: PartitionTable?, sectorSize: Int) {
        self.disk = disk
        scheme = table?.scheme.rawValue ?? "none"
        partitions = (table?.partitions ?? []).map { partition in
            let type = partition.type.map { guid in PartDefinition.gptTypes.first { $0.1 == guid }?.0 ?? "\(guid)" }
                ?? partition.mbrType.map { byte in PartDefinition.mbrTypes.first { $0.1 == byte }?.0 ?? String(byte, radix: 16) } ?? "?"
            return Entry(number: partition.number, provider: "\(disk)p\(partition.number)",
                         start: partition.firstLBA * Int64(sectorSize), size: partition.sectors * Int64(sectorSize),
                         type: type, label: partition.type == nil ? nil : partition.name)
        }
    }
}
