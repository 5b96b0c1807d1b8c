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
                       help: "The file whose whole content is the passphrase (as cryptsetup's --key-file); - reads a line from standard input at start."),
            SettingKey("allow-discards", \.allowDiscards, .boolean,
                       help: "Pass TRIM down to the disk below, which then shows which sectors are unused (default false)."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        guard let keyFile = entry.settings.keyFile else {
            throw SettingError(key: "key-file", value: nil, problem: "is required: an eli opens with a passphrase")
        }
        let passphrase = keyFile == "-"
            ? try readPassphraseLine(prompt: "Passphrase for eli \(entry.name) on \(entry.consumers[0].name): ")
            : try readPassphrase(fromFile: keyFile)
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
            VerbParameter("cipher", .choice(["aes-xts-plain64"]), help: "The cipher: aes-xts-plain64, the one Strata implements."),
            VerbParameter("key-size", .choice(["256", "512"]), help: "Bits of AES-XTS key: 512 (AES-256, the default) or 256."),
            VerbParameter("sector-size", .choice(["512", "1024", "2048", "4096"]), help: "Bytes per encryption sector (LUKS2 only; default 512)."),
            VerbParameter("force", .boolean, help: "Format over an existing LUKS volume, whose data is then lost."),
        ] + EliVerbs.kdfOptions) { call in
            try EliVerbs.initialize(call)
        },
        ClassVerb("dump", "A provider's LUKS header, without secrets.", target: .provider, onlyLooks: true) { call in
            try call.topology.withLUKSMedium(call.provider!, writing: false) { medium in
                try LUKSHeader.read(from: medium).dump
            }
        },
        ClassVerb("attach", "Unlock a provider's LUKS volume for this run: its data appears as provider NAME (default PROVIDER.eli).",
                  target: .provider, options: [
            VerbParameter("name", .text, help: "The new provider's name (default: the provider's, with .eli after it)."),
            VerbParameter("key-file", .path, help: "The file whose whole content is the passphrase."),
            VerbParameter("passphrase", .secret, help: "Passphrase of the volume."),
            VerbParameter("allow-discards", .boolean, help: "Pass TRIM down to the disk below."),
        ]) { call in
            try EliVerbs.attach(call)
        },
        ClassVerb("detach", "Lock an eli again: its provider goes, and its key is wiped from memory (refused while the provider is open, unless --force).",
                  options: [VerbParameter("force", .boolean, help: "Detach even with the provider open; its users get errors.")]) { call in
            try EliVerbs.detach(call)
        },
        ClassVerb("add-key", "Add a passphrase to a provider's LUKS volume, in a free key slot.", target: .provider, options: [
            VerbParameter("key-file", .path, help: "A file holding a passphrase the volume opens with now."),
            VerbParameter("passphrase", .secret, help: "A passphrase the volume opens with now."),
            VerbParameter("new-key-file", .path, help: "The file holding the passphrase to add (required)."),
            VerbParameter("slot", .integer(0...31), help: "The key slot to use (default: the first free one)."),
        ] + EliVerbs.kdfOptions) { call in
            try EliVerbs.addKey(call)
        },
        ClassVerb("remove-key", "Remove the key slot a passphrase opens (refused for the volume's last one).", target: .provider,
                  options: [
            VerbParameter("key-file", .path, help: "A file holding the passphrase whose slot goes."),
            VerbParameter("passphrase", .secret, help: "The passphrase whose slot goes."),
        ]) { call in
            try EliVerbs.removeKey(call)
        },
    ]
}
