import Strata

/// Opening, formatting and changing the key slots of a LUKS1 volume.
extension LUKS1Header {
    /// The master key and the slot that `passphrase` opens, or nil when none does.
    func openSlot(_ medium: any LUKSMedium, passphrase: SecretBytes) throws -> (slot: Int, masterKey: SecretBytes)? {
        let hash = try HashFunction(named: hashSpec)
        for (index, slot) in keySlots.enumerated() where slot.active {
            // Derived with PBKDF2 as is, whatever the iterations (old volumes may have fewer
            // than cryptsetup's minimum today): `validate` is for what we write.
            let slotKey = try passphrase.withBytes {
                try hash.pbkdf2(password: $0, salt: slot.salt, iterations: Int(slot.iterations), count: Int(keyBytes))
            }
            let splitter = try AntiForensicSplitter(hash: hash, stripes: Int(slot.stripes))
            let candidate = try LUKSKeyMaterial.open(medium, at: Int64(slot.keyMaterialOffset) * Int64(Self.sectorSize),
                                                     keySize: Int(keyBytes), splitter: splitter, slotKey: slotKey)
            if try isMasterKey(candidate) { return (index, candidate) }
        }
        return nil
    }

    /// Whether `candidate` is the volume's master key, by its PBKDF2 digest (compared in
    /// constant time).
    func isMasterKey(_ candidate: SecretBytes) throws -> Bool {
        let hash = try HashFunction(named: hashSpec)
        let digest = try candidate.withBytes {
            try hash.pbkdf2(password: $0, salt: mkDigestSalt, iterations: Int(mkDigestIterations), count: Self.digestSize)
        }
        return digest.withBytes { constantTimeEqual(Array($0), mkDigest) }
    }

    func volume(masterKey: SecretBytes) -> LUKSVolume {
        LUKSVolume(version: .luks1, uuid: uuid, masterKey: masterKey, cipher: cipher, sectorSize: Self.sectorSize,
                   payloadOffset: Int64(payloadOffset) * Int64(Self.sectorSize), payloadSize: nil, ivOffset: 0,
                   ivLargeSectors: false)
    }

    /// cryptsetup's LUKS1 layout for a `keySize`-byte key: the first slot's material at
    /// sector 8 (4 KiB), each slot's area rounded up to 4 KiB, the payload after the
    /// eighth slot rounded up to 1 MiB.
    static func layout(keySize: Int, stripes: Int) -> (slotOffsets: [UInt32], payloadOffset: UInt32) {
        let alignment = 4096 / sectorSize
        let slotSectors = (LUKSKeyMaterial.storedSize(keySize: keySize, stripes: stripes) / sectorSize + alignment - 1)
            / alignment * alignment
        let offsets = (0..<slotCount).map { UInt32(alignment + $0 * slotSectors) }
        let end = alignment + slotCount * slotSectors
        let payloadAlignment = 1_048_576 / sectorSize
        return (offsets, UInt32((end + payloadAlignment - 1) / payloadAlignment * payloadAlignment))
    }

    /// Writes a new LUKS1 volume with one key slot (0) for `passphrase`.
    static func format(_ medium: any LUKSMedium, passphrase: SecretBytes, keySize: Int, hash hashName: String,
                       iterations: Int, digestIterations: Int) throws -> LUKSVolume {
        let stripes = AntiForensicSplitter.defaultStripes
        let (slotOffsets, payloadOffset) = layout(keySize: keySize, stripes: stripes)
        let payloadBytes = Int64(payloadOffset) * Int64(sectorSize)
        guard medium.size >= payloadBytes + Int64(sectorSize) else {
            throw StrataError(.noSpace, "a LUKS1 volume with a \(keySize * 8)-bit key needs more than \(payloadBytes) bytes; the medium has \(medium.size)")
        }
        let hash = try HashFunction(named: hashName)
        let masterKey = try SecretBytes.random(count: keySize)
        let mkDigestSalt = try randomBytes(saltSize)
        let mkDigest = try masterKey.withBytes {
            try hash.pbkdf2(password: $0, salt: mkDigestSalt, iterations: digestIterations, count: digestSize)
        }
        let emptySlots = slotOffsets.map {
            KeySlot(active: false, iterations: 0, salt: [UInt8](repeating: 0, count: saltSize), keyMaterialOffset: $0,
                    stripes: UInt32(stripes))
        }
        var header = LUKS1Header(cipherName: "aes", cipherMode: "xts-plain64", hashSpec: hashName,
                                 payloadOffset: payloadOffset, keyBytes: UInt32(keySize),
                                 mkDigest: mkDigest.withBytes { Array($0) }, mkDigestSalt: mkDigestSalt,
                                 mkDigestIterations: UInt32(digestIterations), uuid: try LUKSBytes.randomUUID(),
                                 keySlots: emptySlots)
        // Whatever was there before (an older header, old key slots) goes first.
        try LUKSFormatter.zero(medium, count: payloadBytes)
        try header.fillSlot(0, on: medium, masterKey: masterKey, passphrase: passphrase, iterations: iterations)
        try medium.write(try header.serialized(), at: 0)
        try medium.flush()
        return header.volume(masterKey: masterKey)
    }

    /// Stores `masterKey` for `passphrase` in slot `index`'s area (durably) and marks
    /// the slot active in this header, which the caller then writes.
    mutating func fillSlot(_ index: Int, on medium: any LUKSMedium, masterKey: SecretBytes, passphrase: SecretBytes,
                           iterations: Int) throws {
        let kdf = KDFParameters.pbkdf2(hash: hashSpec, iterations: iterations)
        try kdf.validate()
        var slot = keySlots[index]
        let area = try self.area(of: slot, index: index)
        let payloadBytes = Int64(payloadOffset) * Int64(Self.sectorSize)
        guard area.lowerBound >= Int64(Self.size), area.upperBound <= payloadBytes else {
            throw StrataError(.invalid, "LUKS1 key slot \(index)'s area \(area) is not between the header and the payload")
        }
        for (other, otherSlot) in keySlots.enumerated() where other != index && otherSlot.active {
            guard try !self.area(of: otherSlot, index: other).overlaps(area) else {
                throw StrataError(.invalid, "LUKS1 key slot \(index)'s area overlaps slot \(other)'s")
            }
        }
        slot.salt = try randomBytes(Self.saltSize)
        slot.iterations = UInt32(iterations)
        let slotKey = try kdf.derive(passphrase: passphrase, salt: slot.salt, count: Int(keyBytes))
        let splitter = try AntiForensicSplitter(hash: try HashFunction(named: hashSpec), stripes: Int(slot.stripes))
        try LUKSKeyMaterial.store(masterKey, on: medium, at: area.lowerBound, splitter: splitter, slotKey: slotKey)
        slot.active = true
        keySlots[index] = slot
    }

    /// Adds `newPassphrase` in slot `requested` (or the first free one): its material
    /// is written and flushed first, and only then the header that points at it, so a
    /// power cut in between leaves the old key set intact.
    static func addKey(_ medium: any LUKSMedium, header: LUKS1Header, masterKey: SecretBytes, newPassphrase: SecretBytes,
                       iterations: Int, slot requested: Int?) throws -> Int {
        var header = header
        let index: Int
        if let requested {
            guard (0..<slotCount).contains(requested) else {
                throw StrataError(.invalid, "LUKS1 has key slots 0...\(slotCount - 1), not \(requested)")
            }
            guard !header.keySlots[requested].active else {
                throw StrataError(.exists, "LUKS1 key slot \(requested) is in use")
            }
            index = requested
        } else {
            guard let free = header.keySlots.firstIndex(where: { !$0.active }) else {
                throw StrataError(.noSpace, "all \(slotCount) LUKS1 key slots are in use")
            }
            index = free
        }
        try header.fillSlot(index, on: medium, masterKey: masterKey, passphrase: newPassphrase, iterations: iterations)
        try medium.write(try header.serialized(), at: 0)
        try medium.flush()
        return index
    }

    /// Removes slot `index`: the header that no longer lists it is written and flushed
    /// first, then its area is overwritten, so that a power cut in between leaves a
    /// volume whose other keys still open it.
    static func removeKey(_ medium: any LUKSMedium, header: LUKS1Header, slot index: Int) throws {
        var header = header
        let area = try header.area(of: header.keySlots[index], index: index)
        header.keySlots[index].active = false
        header.keySlots[index].iterations = 0
        header.keySlots[index].salt = [UInt8](repeating: 0, count: saltSize)
        try medium.write(try header.serialized(), at: 0)
        try medium.flush()
        try LUKSKeyMaterial.wipe(medium, at: area.lowerBound, count: Int(area.upperBound - area.lowerBound))
    }
}
