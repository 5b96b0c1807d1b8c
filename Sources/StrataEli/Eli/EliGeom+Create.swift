import Strata

extension EliGeom {
    /// Unlocks the LUKS volume on `below` with `passphrase` and makes an eli over it: its
    /// provider, named `name`, is the volume's decrypted payload.
    /// - Throws: `StrataError` when `below` holds no LUKS volume Strata can open, or no
    ///   key slot opens with the passphrase; nothing is left in the topology then.
    @discardableResult
    public static func create(in topology: Topology, name: String, over below: Provider, passphrase: SecretBytes,
                              keyFile: String? = nil, allowDiscards: Bool = false) throws -> EliGeom {
        let volume = try topology.withLUKSMedium(below, writing: false) { medium in
            try LUKSHeader.read(from: medium).unlock(passphrase: passphrase)
        }
        let sectorSize = max(volume.sectorSize, below.sectorSize)
        let available = below.mediaSize - volume.payloadOffset
        let payload = min(volume.payloadSize ?? available, available) / Int64(sectorSize) * Int64(sectorSize)
        guard payload > 0 else {
            throw StrataError(.invalid, "the LUKS volume on \(below.name) leaves no room for data: its payload starts at \(volume.payloadOffset) of \(below.mediaSize) bytes")
        }
        guard volume.sectorSize % below.sectorSize == 0 || below.sectorSize % volume.sectorSize == 0 else {
            throw StrataError(.invalid, "\(below.name) has \(below.sectorSize)-byte sectors, the volume \(volume.sectorSize)-byte ones")
        }
        let geom = try EliGeom(name: name, volume: volume, keyFile: keyFile, allowDiscards: allowDiscards)
        try topology.add(geom)
        let consumer = topology.createConsumer(for: geom)
        do {
            try topology.attach(consumer, to: below)
            try topology.createProvider(for: geom, name: name, mediaSize: payload, sectorSize: sectorSize)
        } catch {
            topology.wither(geom)
            throw error
        }
        return geom
    }
}

/// The verbs of `strata eli` that change a provider.
enum EliVerbs {
    /// `strata eli init PROVIDER --key-file F`: formats the provider.
    static func initialize(_ call: VerbCall) throws -> LUKSDump {
        let provider = call.provider!
        guard let keyFile = call.text("key-file") else {
            throw SettingError(key: "key-file", value: nil, problem: "is required: it holds the new volume's passphrase")
        }
        let version = LUKSVersion(rawValue: call.text("type") ?? "luks2")!
        let keySize = (call.text("key-size").flatMap { Int($0) } ?? 512) / 8
        let sectorSize = call.text("sector-size").flatMap { Int($0) } ?? 512
        if version == .luks1 && sectorSize != 512 {
            throw SettingError(key: "sector-size", value: String(sectorSize), problem: "is 512 in a LUKS1 volume")
        }
        let kdf = try kdfParameters(call, version: version)
        let passphrase = try readPassphrase(fromFile: keyFile)
        let counts = provider.accessCounts
        guard counts.read == 0 && counts.write == 0 && counts.exclusive == 0 else {
            throw StrataError(.busy, "\(provider.name) is open (an eli over it, an export's client or a geom above); close it first")
        }
        return try call.topology.withLUKSMedium(provider, writing: true) { medium in
            if !call.flag("force"), let existing = try? LUKSHeader.read(from: medium) {
                throw StrataError(.exists, "\(provider.name) holds a \(existing.version.rawValue.uppercased()) volume already (UUID \(existing.uuid)); --force formats over it and loses its data")
            }
            _ = try LUKSFormatter.format(medium, version: version, passphrase: passphrase, keySize: keySize,
                                         sectorSize: sectorSize, kdf: kdf)
            return try LUKSHeader.read(from: medium).dump
        }
    }

    /// The key derivation the options ask for, with the defaults of the format.
    static func kdfParameters(_ call: VerbCall, version: LUKSVersion) throws -> KDFParameters {
        let name = call.text("pbkdf") ?? (version == .luks1 ? "pbkdf2" : "argon2id")
        let iterations = call.integer("pbkdf-iterations")
        let kdf: KDFParameters
        switch name {
        case "pbkdf2":
            if let memory = call.integer("pbkdf-memory") {
                throw SettingError(key: "pbkdf-memory", value: String(memory), problem: "is for argon2i and argon2id")
            }
            kdf = .pbkdf2(hash: "sha256", iterations: iterations ?? 1_000_000)
        default:
            guard version == .luks2 else {
                throw SettingError(key: "pbkdf", value: name, problem: "is not one LUKS1 has: it takes pbkdf2 only")
            }
            let time = iterations ?? 4
            let memory = call.integer("pbkdf-memory") ?? 1_048_576
            let lanes = call.integer("pbkdf-parallel") ?? 4
            kdf = name == "argon2i" ? .argon2i(time: time, memory: memory, lanes: lanes)
                : .argon2id(time: time, memory: memory, lanes: lanes)
        }
        try kdf.validate()
        return kdf
    }
}
