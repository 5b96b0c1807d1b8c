import Strata

#if canImport(Glibc)
import Glibc
#endif

/// How a passphrase becomes a key slot's key. The KDF is what makes guessing
/// passphrases slow; its cost is fixed when the slot is written and read back from the
/// header when it is opened.
public enum KDFParameters: Sendable, Equatable, Codable {
    /// Argon2id, memory-hard (LUKS2's default). `memory` in KiB, `lanes` threads.
    case argon2id(time: Int = 4, memory: Int = 1_048_576, lanes: Int = 4)
    /// Argon2i (LUKS2 only).
    case argon2i(time: Int = 4, memory: Int = 1_048_576, lanes: Int = 4)
    /// PBKDF2 with HMAC of `hash` (the only KDF LUKS1 has).
    case pbkdf2(hash: String = "sha256", iterations: Int = 1_000_000)

    /// What `format` and `addKey` use when not told: Argon2id with 1 GiB.
    public static let `default` = KDFParameters.argon2id()

    /// The name LUKS2's JSON gives the KDF.
    public var typeName: String {
        switch self {
        case .argon2id: "argon2id"
        case .argon2i: "argon2i"
        case .pbkdf2: "pbkdf2"
        }
    }

    /// Refuses values no LUKS implementation accepts (cryptsetup's own limits: PBKDF2 at
    /// least 1000 iterations; Argon2 at least 4 passes, 32 KiB to 4 GiB, 1 to 16 lanes),
    /// both when writing a slot and when reading one from a possibly hostile header.
    public func validate() throws {
        switch self {
        case .pbkdf2(let hash, let iterations):
            _ = try HashFunction(named: hash)
            guard (1000...Int(UInt32.max)).contains(iterations) else {
                throw StrataError(.invalid, "PBKDF2 iterations \(iterations) out of range 1000...\(UInt32.max)")
            }
        case .argon2i(let time, let memory, let lanes), .argon2id(let time, let memory, let lanes):
            guard (4...Int(UInt32.max)).contains(time) else {
                throw StrataError(.invalid, "\(typeName) time cost \(time) out of range 4...\(UInt32.max)")
            }
            guard (32...4 * 1_048_576).contains(memory) else {
                throw StrataError(.invalid, "\(typeName) memory \(memory) KiB out of range 32...4194304 KiB")
            }
            // Argon2 allocates all of its memory: a header (possibly hostile) may not ask
            // for more than half of this machine's RAM, as cryptsetup also limits it.
            let halfOfRAM = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE))) / 2 / 1024
            guard halfOfRAM <= 0 || memory <= halfOfRAM else {
                throw StrataError(.noMemory, "\(typeName) memory \(memory) KiB is more than half of this machine's RAM (\(halfOfRAM) KiB)")
            }
            guard (1...16).contains(lanes), memory >= 8 * lanes else {
                throw StrataError(.invalid, "\(typeName) lanes \(lanes) out of range 1...16 (and at most memory/8)")
            }
        }
    }

    /// `count` bytes of key from `passphrase` and `salt`.
    func derive(passphrase: SecretBytes, salt: [UInt8], count: Int) throws -> SecretBytes {
        try validate()
        return try passphrase.withBytes { password in
            switch self {
            case .pbkdf2(let hash, let iterations):
                return try HashFunction(named: hash).pbkdf2(password: password, salt: salt, iterations: iterations, count: count)
            case .argon2i(let time, let memory, let lanes):
                return try Argon2Variant.argon2i.derive(password: password, salt: salt, time: time, memory: memory,
                                                        lanes: lanes, count: count)
            case .argon2id(let time, let memory, let lanes):
                return try Argon2Variant.argon2id.derive(password: password, salt: salt, time: time, memory: memory,
                                                         lanes: lanes, count: count)
            }
        }
    }
}
