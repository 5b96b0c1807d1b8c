import Strata

/// Writing LUKS volumes and changing their keys, in the layouts cryptsetup writes, so
/// that what Strata makes opens with cryptsetup and the reverse.
///
/// Every change is ordered so that a power cut between any two writes leaves a volume
/// that opens with the old key set or the new one: a new key slot's material is
/// written and flushed before the header that lists it; a removed slot leaves the
/// header (both LUKS2 copies) before its material is overwritten. A format over an
/// existing volume may also leave no volume (its headers are wiped first, durably,
/// then its key slots), never the old one with some of its keys.
public enum LUKSFormatter {
    /// Writes a new volume on `medium` with a random master key and one key slot (0)
    /// for `passphrase`, and returns it unlocked. Everything before the data offset
    /// is overwritten.
    ///
    /// - `keySize`: 32 (AES-128-XTS) or 64 bytes (AES-256-XTS).
    /// - `sectorSize`: 512, or for LUKS2 also 1024, 2048, 4096.
    /// - LUKS1 takes only `.pbkdf2`; its layout needs the medium over 2 MiB. LUKS2
    ///   needs it over 16 MiB.
    public static func format(_ medium: any LUKSMedium, version: LUKSVersion, passphrase: SecretBytes, keySize: Int = 64,
                              sectorSize: Int = 512, kdf: KDFParameters = .default) throws -> LUKSVolume {
        guard XTSCipher.keySizes.contains(keySize) else {
            throw StrataError(.invalid, "a LUKS volume key for AES-XTS is 32 or 64 bytes, not \(keySize)")
        }
        try kdf.validate()
        switch version {
        case .luks1:
            guard sectorSize == 512 else { throw StrataError(.notSupported, "LUKS1 has 512-byte sectors only, not \(sectorSize)") }
            guard case .pbkdf2(let hash, let iterations) = kdf else {
                throw StrataError(.notSupported, "LUKS1 key slots use PBKDF2 only, not \(kdf.typeName)")
            }
            return try LUKS1Header.format(medium, passphrase: passphrase, keySize: keySize, hash: hash, iterations: iterations,
                                          digestIterations: LUKS2Header.digestIterations)
        case .luks2:
            guard [512, 1024, 2048, 4096].contains(sectorSize) else {
                throw StrataError(.invalid, "LUKS2 sectors are 512, 1024, 2048 or 4096 bytes, not \(sectorSize)")
            }
            return try LUKS2Header.format(medium, passphrase: passphrase, keySize: keySize, sectorSize: sectorSize, kdf: kdf)
        }
    }

    /// Adds `newPassphrase` to the volume that `passphrase` opens, in key slot `slot`
    /// (which must be free) or the lowest free one; returns the slot's number. LUKS1
    /// takes `.pbkdf2` only, with the header's hash whatever `kdf` names.
    public static func addKey(_ medium: any LUKSMedium, passphrase: SecretBytes, newPassphrase: SecretBytes,
                              kdf: KDFParameters = .default, slot: Int? = nil) throws -> Int {
        try kdf.validate()
        let header = try LUKSHeader.read(from: medium)
        let (opened, masterKey) = try header.openSlot(passphrase: passphrase)
        switch header.format {
        case .luks1(let luks1):
            // LUKS1 has one hash for the whole header: the slot takes it, and the
            // iterations of `kdf`.
            guard case .pbkdf2(_, let iterations) = kdf else {
                throw StrataError(.notSupported, "LUKS1 key slots use PBKDF2 only, not \(kdf.typeName)")
            }
            return try LUKS1Header.addKey(medium, header: luks1, masterKey: masterKey, newPassphrase: newPassphrase,
                                          iterations: iterations, slot: slot)
        case .luks2(let luks2):
            return try luks2.addKey(medium, masterKey: masterKey, digestID: try luks2.digestID(forSlot: opened),
                                    newPassphrase: newPassphrase, kdf: kdf, slot: slot)
        }
    }

    /// Removes the key slot that `passphrase` opens and returns its number. The last
    /// key slot is not removed: that would leave a volume nobody can open.
    public static func removeKey(_ medium: any LUKSMedium, passphrase: SecretBytes) throws -> Int {
        let header = try LUKSHeader.read(from: medium)
        let (slot, _) = try header.openSlot(passphrase: passphrase)
        guard header.activeKeySlots.count > 1 else {
            throw StrataError(.busy, "key slot \(slot) is the volume's last; removing it would leave the volume unopenable")
        }
        switch header.format {
        case .luks1(let luks1): try LUKS1Header.removeKey(medium, header: luks1, slot: slot)
        case .luks2(let luks2): try luks2.removeKey(medium, slot: slot)
        }
        return slot
    }

    /// Writes zeros over the first `count` bytes of `medium`, and flushes. The places a
    /// header can be read from go first, each made durable before the next: LUKS1's and
    /// the LUKS2 primary at 0, then every offset a LUKS2 secondary can have, in order.
    /// Only then the rest, 1 MiB at a time. A power cut in the middle leaves the old
    /// volume whole or no volume, never an old header over key slots partly zeroed
    /// (which would open with some of the old passphrases only). In order, each zeroed
    /// place lies in the area of a copy already gone, or is the next copy itself.
    static func zero(_ medium: any LUKSMedium, count: Int64) throws {
        let headerSize = Int64(LUKS2HeaderCopy.binarySize)
        for offset in [0] + LUKS2HeaderCopy.allowedSizes where offset + headerSize <= count {
            try medium.write([UInt8](repeating: 0, count: Int(headerSize)), at: offset)
            try medium.flush()
        }
        let chunk = 1_048_576
        let zeros = [UInt8](repeating: 0, count: chunk)
        var offset: Int64 = 0
        while offset < count {
            let length = Int(min(Int64(chunk), count - offset))
            try medium.write(length == chunk ? zeros : Array(zeros[0..<length]), at: offset)
            offset += Int64(length)
        }
        try medium.flush()
    }
}
