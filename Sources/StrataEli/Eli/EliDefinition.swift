import Strata

/// `class: eli`: a LUKS1 or LUKS2 volume on its one provider, unlocked with a passphrase,
/// its provider the decrypted data (docs: `eli.md` beside this file).
public enum EliDefinition: ClassDefinition {
    public static let name = "eli"
    public static let summary = "Encrypted sectors (AES-XTS) in LUKS1 and LUKS2 volumes that cryptsetup and qemu open too."
    public static let geomClassName = "ELI"
    public static let shape = ClassShape.transform(consumers: 1...1)

    public struct Settings: ClassSettings {
        public var keyFile: String?
        public var allowDiscards = false
        public init() {}
        public static let keys: [SettingKey<Settings>] = [
            SettingKey("key-file", \.keyFile, .path,
                       help: "The file whose whole content is the passphrase (as cryptsetup's --key-file)."),
            SettingKey("allow-discards", \.allowDiscards, .boolean,
                       help: "Pass TRIM down to the disk below, which then shows which sectors are unused (default false)."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        guard let keyFile = entry.settings.keyFile else {
            throw SettingError(key: "key-file", value: nil, problem: "is required: an eli opens with a passphrase")
        }
        let passphrase = try readPassphrase(fromFile: keyFile)
        return try EliGeom.create(in: topology, name: entry.name, over: entry.consumers[0], passphrase: passphrase,
                                  keyFile: keyFile, allowDiscards: entry.settings.allowDiscards)
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let eli = geom as? EliGeom else { return nil }
        var settings = Settings()
        settings.keyFile = eli.keyFile
        settings.allowDiscards = eli.allowDiscards
        return settings
    }

    public static func status(of geom: Geom) -> GeomStatus? {
        guard let eli = geom as? EliGeom else { return nil }
        let below = eli.consumers.first?.provider
        return GeomStatus(name: eli.name, className: name, state: "ACTIVE", progress: 1,
                          components: below.map { [GeomStatus.Component(name: $0.name, state: "ACTIVE")] } ?? [])
    }

    public static let verbs = [
        ClassVerb("init", "Format a provider as a LUKS volume (refused over one, unless --force).", target: .provider, options: [
            VerbParameter("key-file", .path, help: "The file whose whole content is the passphrase (required)."),
            VerbParameter("type", .choice(["luks2", "luks1"]), help: "The format: luks2 (the default) or luks1."),
            VerbParameter("key-size", .choice(["256", "512"]), help: "Bits of AES-XTS key: 512 (AES-256, the default) or 256."),
            VerbParameter("sector-size", .choice(["512", "1024", "2048", "4096"]), help: "Bytes per encryption sector (LUKS2 only; default 512)."),
            VerbParameter("pbkdf", .choice(["argon2id", "argon2i", "pbkdf2"]),
                          help: "How the passphrase becomes a key: argon2id (the LUKS2 default) or argon2i, or pbkdf2 (LUKS1's only)."),
            VerbParameter("pbkdf-memory", .integer(8...4_194_304), help: "KiB of memory Argon2 uses (default 1048576)."),
            VerbParameter("pbkdf-parallel", .integer(1...16), help: "Argon2's lanes (default 4)."),
            VerbParameter("pbkdf-iterations", .integer(1...Int(Int32.max)),
                          help: "Argon2's passes (default 4) or PBKDF2's iterations (default 1000000)."),
            VerbParameter("force", .boolean, help: "Format over an existing LUKS volume, whose data is then lost."),
        ]) { call in
            try EliVerbs.initialize(call)
        },
        ClassVerb("dump", "A provider's LUKS header, without secrets.", target: .provider, onlyLooks: true) { call in
            try call.topology.withLUKSMedium(call.provider!, writing: false) { medium in
                try LUKSHeader.read(from: medium).dump
            }
        },
    ]
}
