import Strata

/// A key slot's stored material: the master key's anti-forensic split form, encrypted
/// with AES-XTS (plain64, 512-byte sectors, the IV counting from 0 at the start of the
/// slot's area) under the key the KDF derives from the passphrase. LUKS1 and LUKS2
/// store it the same way; only where the area is and how big differ.
enum LUKSKeyMaterial {
    static let sectorSize = 512

    /// Bytes on the medium the split form of a `keySize`-byte key in `stripes` stripes
    /// takes: whole 512-byte sectors.
    static func storedSize(keySize: Int, stripes: Int) -> Int {
        (keySize * stripes + sectorSize - 1) / sectorSize * sectorSize
    }

    /// The master key a slot holds, if `slotKey` is the right one (else some other value,
    /// which the volume's digest then refuses).
    static func open(_ medium: any LUKSMedium, at offset: Int64, keySize: Int, splitter: AntiForensicSplitter,
                     slotKey: SecretBytes) throws -> SecretBytes {
        let size = storedSize(keySize: keySize, stripes: splitter.stripes)
        guard LUKSBytes.fits(offset: offset, count: Int64(size), in: medium.size) else {
            throw StrataError(.invalid, "key slot area of \(size) bytes at \(offset) runs past the end of the \(medium.size)-byte medium")
        }
        let cipher = try XTSCipher(key: slotKey)
        let stored = try medium.read(at: offset, count: size)
        guard stored.count == size else { throw StrataError(.io, "short read of a key slot area at \(offset)") }
        let split = SecretBytes(count: size) { out in
            stored.withUnsafeBytes { input in
                cipher.decrypt(input.baseAddress!, to: out.baseAddress!, count: size, sectorSize: sectorSize, firstSector: 0)
            }
        }
        return try split.withBytes { try splitter.merge($0, keySize: keySize) }
    }

    /// Writes `masterKey`'s split form, encrypted with `slotKey`, at `offset`, and makes
    /// it durable: a header may only point at the slot after this returns.
    static func store(_ masterKey: SecretBytes, on medium: any LUKSMedium, at offset: Int64,
                      splitter: AntiForensicSplitter, slotKey: SecretBytes) throws {
        let size = storedSize(keySize: masterKey.count, stripes: splitter.stripes)
        guard LUKSBytes.fits(offset: offset, count: Int64(size), in: medium.size) else {
            throw StrataError(.noSpace, "key slot area of \(size) bytes at \(offset) does not fit the \(medium.size)-byte medium")
        }
        let cipher = try XTSCipher(key: slotKey)
        let split = try splitter.split(masterKey)
        var stored = [UInt8](repeating: 0, count: size)
        split.withBytes { input in
            // The tail of the last sector past the split form is zero, as cryptsetup leaves it.
            let padded = SecretBytes(count: size) { buffer in
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
                buffer.copyMemory(from: input)
            }
            padded.withBytes { plain in
                stored.withUnsafeMutableBytes { out in
                    cipher.encrypt(plain.baseAddress!, to: out.baseAddress!, count: size, sectorSize: sectorSize, firstSector: 0)
                }
            }
        }
        try medium.write(stored, at: offset)
        try medium.flush()
    }

    /// Overwrites `count` bytes at `offset` with random bytes, then flushes: what is left
    /// of a removed slot's split key is noise. In 1 MiB pieces, as a header may give an
    /// area as large as the medium.
    static func wipe(_ medium: any LUKSMedium, at offset: Int64, count: Int) throws {
        guard LUKSBytes.fits(offset: offset, count: Int64(count), in: medium.size) else {
            throw StrataError(.invalid, "key slot area of \(count) bytes at \(offset) runs past the end of the medium")
        }
        var done = 0
        while done < count {
            let length = min(1_048_576, count - done)
            try medium.write(try randomBytes(length), at: offset + Int64(done))
            done += length
        }
        try medium.flush()
    }
}
