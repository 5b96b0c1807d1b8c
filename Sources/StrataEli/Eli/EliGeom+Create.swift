import Strata

extension EliGeom {
    /// Unlocks the LUKS volume on `below` with `passphrase` and makes an eli over it: its
    /// provider, named `name`, is the volume's decrypted payload.
    /// `forThisRunOnly`: attached by a verb, not made from an entry (`Geom.madeForThisRunOnly`).
    /// - Throws: `StrataError` when `below` holds no LUKS volume Strata can open, or no
    ///   key slot opens with the passphrase; nothing is left in the topology then.
    @discardableResult
    public static func create(in topology: Topology, name: String, over below: Provider, passphrase: SecretBytes,
                              keyFile: String? = nil, allowDiscards: Bool = false,
                              forThisRunOnly: Bool = false) throws -> EliGeom {
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
        guard volume.payloadOffset % Int64(below.sectorSize) == 0 else {
            throw StrataError(.invalid, "the LUKS volume's data starts at byte \(volume.payloadOffset), not on one of the \(below.sectorSize)-byte sectors of \(below.name)")
        }
        let geom = try EliGeom(name: name, volume: volume, keyFile: keyFile, allowDiscards: allowDiscards,
                               forThisRunOnly: forThisRunOnly)
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

/// What the verbs of `strata eli` do.
enum EliVerbs {
    static let kdfOptions = [
        VerbParameter("pbkdf", .choice(["argon2id", "argon2i", "pbkdf2"]),
                      help: "How the passphrase becomes a key: argon2id (the LUKS2 default) or argon2i, or pbkdf2 (LUKS1's only)."),
        VerbParameter("pbkdf-memory", .integer(32...4_194_304), help: "KiB of memory Argon2 uses (default 1048576)."),
        VerbParameter("pbkdf-parallel", .integer(1...16), help: "Argon2's lanes (default 4)."),
        VerbParameter("pbkdf-iterations", .integer(1...Int(Int32.max)),
                      help: "Argon2's passes (default 4) or PBKDF2's iterations (default 1000000)."),
    ]

    /// `strata eli init PROVIDER --key-file F`: formats the provider.
    static func initialize(_ call: VerbCall) throws -> LUKSDump {
        let provider = call.provider!
        let version = LUKSVersion(rawValue: call.text("type") ?? "luks2")!
        let keySize = (call.text("key-size").flatMap { Int($0) } ?? 512) / 8
        let sectorSize = call.text("sector-size").flatMap { Int($0) } ?? 512
        if version == .luks1 && sectorSize != 512 {
            throw SettingError(key: "sector-size", value: String(sectorSize), problem: "is 512 in a LUKS1 volume")
        }
        let kdf = try kdfParameters(call, version: version)
        guard let keyFile = call.text("key-file") else {
            throw SettingError(key: "key-file", value: nil, problem: "is required: it holds the new volume's passphrase")
        }
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

    /// `strata eli attach PROVIDER`: an eli over the provider, for this run.
    static func attach(_ call: VerbCall) throws -> EliReport {
        let provider = call.provider!
        let name = call.text("name") ?? provider.name + ".eli"
        let (passphrase, keyFile) = try passphrase(call, key: "key-file", secret: "passphrase")
        let eli = try EliGeom.create(in: call.topology, name: name, over: provider, passphrase: passphrase,
                                     keyFile: keyFile, allowDiscards: call.flag("allow-discards"), forThisRunOnly: true)
        return EliReport(eli)
    }

    /// `strata eli detach NAME`: the eli goes, and its key with it.
    static func detach(_ call: VerbCall) throws -> EliReport {
        let eli = try call.geom(as: EliGeom.self)
        let report = EliReport(eli)
        if let provider = eli.providers.first, !call.flag("force") {
            let counts = provider.accessCounts
            guard counts.read == 0 && counts.write == 0 && counts.exclusive == 0 else {
                throw StrataError(.busy, "\(provider.name) is open (an export's client or a geom above); close it first, or --force")
            }
        }
        call.topology.wither(eli)
        guard call.topology.waitUntilGone(eli) else {
            throw StrataError(.busy, "\(eli.name) is still finishing requests; it goes once they are done")
        }
        return report
    }

    /// `strata eli add-key PROVIDER`: a passphrase more, in a free key slot.
    static func addKey(_ call: VerbCall) throws -> LUKSDump {
        let (passphrase, _) = try passphrase(call, key: "key-file", secret: "passphrase")
        guard let newKeyFile = call.text("new-key-file") else {
            throw SettingError(key: "new-key-file", value: nil, problem: "is required: it holds the passphrase to add")
        }
        let newPassphrase = try readPassphrase(fromFile: newKeyFile, key: "new-key-file")
        return try call.topology.withLUKSMedium(call.provider!, writing: true) { medium in
            let version = try LUKSHeader.read(from: medium).version
            _ = try LUKSFormatter.addKey(medium, passphrase: passphrase, newPassphrase: newPassphrase,
                                         kdf: try kdfParameters(call, version: version), slot: call.integer("slot"))
            return try LUKSHeader.read(from: medium).dump
        }
    }

    /// `strata eli remove-key PROVIDER`: the key slot a passphrase opens goes.
    static func removeKey(_ call: VerbCall) throws -> LUKSDump {
        let (passphrase, _) = try passphrase(call, key: "key-file", secret: "passphrase")
        return try call.topology.withLUKSMedium(call.provider!, writing: true) { medium in
            _ = try LUKSFormatter.removeKey(medium, passphrase: passphrase)
            return try LUKSHeader.read(from: medium).dump
        }
    }

    /// The passphrase a verb was given, from a key file or typed (`.secret`), and the
    /// file's path if it came from one; exactly one of the two.
    static func passphrase(_ call: VerbCall, key: String, secret: String) throws -> (SecretBytes, String?) {
        switch (call.text(key), call.text(secret)) {
        case (let path?, nil):
            return (try readPassphrase(fromFile: path, key: key), path)
        case (nil, let typed?):
            return (SecretBytes(copying: Array(typed.utf8)), "-")
        case (_?, _?):
            throw SettingError(key: secret, value: nil, problem: "cannot be given with --\(key): one passphrase at a time")
        case (nil, nil):
            throw SettingError(key: key, value: nil, problem: "or --\(secret) is required")
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
        do {
            try kdf.validate()
        } catch let error as StrataError {
            throw SettingError(key: "pbkdf", value: name, problem: "takes other values: \(error.message)")
        }
        return kdf
    }
}

/// What `strata eli attach` and `detach` answer.
public struct EliReport: Codable, Sendable {
    public var name: String
    public var provider: String?
    public var below: String?
    public var version: LUKSVersion
    public var uuid: String
    public var cipher: String
    public var sectorSize: Int
    public var payloadOffset: Int64
    public var size: Int64?
    public var allowDiscards: Bool

    init(_ eli: EliGeom) {
        name = eli.name
        provider = eli.providers.first?.name
        below = eli.consumers.first?.provider?.name
        version = eli.volume.version
        uuid = eli.volume.uuid
        cipher = eli.volume.cipher
        sectorSize = eli.volume.sectorSize
        payloadOffset = eli.volume.payloadOffset
        size = eli.providers.first?.mediaSize
        allowDiscards = eli.allowDiscards
    }
}
