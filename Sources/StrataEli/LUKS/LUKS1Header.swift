import Strata

/// The LUKS1 header: 592 bytes at the start of the volume, big endian, followed by
/// eight key slots' areas and then the payload (the encrypted data).
///
/// Only what Strata can decrypt is accepted: cipher `aes` in mode `xts-plain64` with a
/// 256- or 512-bit key (cryptsetup's default since 1.6). Other ciphers and modes
/// (cbc-essiv, serpent, twofish...) are refused with `.notSupported` naming them.
struct LUKS1Header {
    static let size = 592
    static let magic: [UInt8] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]
    static let slotCount = 8
    static let activeMarker: UInt32 = 0x00ac_71f3
    static let inactiveMarker: UInt32 = 0x0000_dead
    static let digestSize = 20
    static let saltSize = 32
    static let sectorSize = 512

    struct KeySlot {
        var active: Bool
        var iterations: UInt32
        var salt: [UInt8]
        /// In 512-byte sectors from the start of the volume.
        var keyMaterialOffset: UInt32
        var stripes: UInt32
    }

    var cipherName: String
    var cipherMode: String
    var hashSpec: String
    /// In 512-byte sectors.
    var payloadOffset: UInt32
    var keyBytes: UInt32
    var mkDigest: [UInt8]
    var mkDigestSalt: [UInt8]
    var mkDigestIterations: UInt32
    var uuid: String
    var keySlots: [KeySlot]

    /// The header in `bytes` (at least 592 of them), checked against a medium of
    /// `mediumSize` bytes: every length and offset is checked here, before anything is
    /// read or allocated from it.
    init(parsing bytes: [UInt8], mediumSize: Int64) throws {
        guard bytes.count >= Self.size, Array(bytes[0..<6]) == Self.magic else {
            throw StrataError(.invalid, "not a LUKS volume (no LUKS magic)")
        }
        let version = LUKSBytes.uint16(bytes, at: 6)
        guard version == 1 else { throw StrataError(.invalid, "LUKS header version \(version) is not 1") }
        cipherName = LUKSBytes.string(bytes, at: 8, length: 32)
        cipherMode = LUKSBytes.string(bytes, at: 40, length: 32)
        hashSpec = LUKSBytes.string(bytes, at: 72, length: 32)
        payloadOffset = LUKSBytes.uint32(bytes, at: 104)
        keyBytes = LUKSBytes.uint32(bytes, at: 108)
        mkDigest = Array(bytes[112..<132])
        mkDigestSalt = Array(bytes[132..<164])
        mkDigestIterations = LUKSBytes.uint32(bytes, at: 164)
        uuid = LUKSBytes.string(bytes, at: 168, length: 40)
        keySlots = (0..<Self.slotCount).map { index in
            let base = 208 + 48 * index
            return KeySlot(active: LUKSBytes.uint32(bytes, at: base) == Self.activeMarker,
                           iterations: LUKSBytes.uint32(bytes, at: base + 4),
                           salt: Array(bytes[base + 8..<base + 40]),
                           keyMaterialOffset: LUKSBytes.uint32(bytes, at: base + 40),
                           stripes: LUKSBytes.uint32(bytes, at: base + 44))
        }
        for index in 0..<Self.slotCount {
            let marker = LUKSBytes.uint32(bytes, at: 208 + 48 * index)
            guard marker == Self.activeMarker || marker == Self.inactiveMarker else {
                throw StrataError(.invalid, "LUKS1 key slot \(index) has the invalid state 0x\(String(marker, radix: 16))")
            }
        }
        try validate(mediumSize: mediumSize)
    }

    init(cipherName: String, cipherMode: String, hashSpec: String, payloadOffset: UInt32, keyBytes: UInt32,
         mkDigest: [UInt8], mkDigestSalt: [UInt8], mkDigestIterations: UInt32, uuid: String, keySlots: [KeySlot]) {
        self.cipherName = cipherName
        self.cipherMode = cipherMode
        self.hashSpec = hashSpec
        self.payloadOffset = payloadOffset
        self.keyBytes = keyBytes
        self.mkDigest = mkDigest
        self.mkDigestSalt = mkDigestSalt
        self.mkDigestIterations = mkDigestIterations
        self.uuid = uuid
        self.keySlots = keySlots
    }

    /// The cipher as dm-crypt names it.
    var cipher: String { "\(cipherName)-\(cipherMode)" }

    func validate(mediumSize: Int64) throws {
        guard cipherName == "aes", cipherMode == "xts-plain64" else {
            throw StrataError(.notSupported, "LUKS1 cipher \(cipherName)-\(cipherMode) is not supported (only aes-xts-plain64)")
        }
        _ = try HashFunction(named: hashSpec)
        guard XTSCipher.keySizes.contains(Int(keyBytes)) else {
            throw StrataError(.invalid, "LUKS1 key of \(keyBytes) bytes: AES-XTS takes 32 or 64")
        }
        guard mkDigestIterations >= 1 else { throw StrataError(.invalid, "LUKS1 master key digest has 0 iterations") }
        let payloadBytes = Int64(payloadOffset) * Int64(Self.sectorSize)
        guard payloadBytes >= Int64(Self.size), payloadBytes <= mediumSize else {
            throw StrataError(.invalid, "LUKS1 payload offset \(payloadBytes) is outside the \(mediumSize)-byte medium")
        }
        var areas: [Range<Int64>] = []
        for (index, slot) in keySlots.enumerated() where slot.active {
            guard slot.iterations >= 1 else { throw StrataError(.invalid, "LUKS1 key slot \(index) has 0 iterations") }
            let area = try self.area(of: slot, index: index)
            guard area.lowerBound >= Int64(Self.size), area.upperBound <= payloadBytes else {
                throw StrataError(.invalid, "LUKS1 key slot \(index)'s area \(area) is not between the header and the payload at \(payloadBytes)")
            }
            guard !areas.contains(where: { $0.overlaps(area) }) else {
                throw StrataError(.invalid, "LUKS1 key slot \(index)'s area overlaps another slot's")
            }
            areas.append(area)
        }
    }

    /// Bytes of the medium a slot's material takes.
    func area(of slot: KeySlot, index: Int) throws -> Range<Int64> {
        guard slot.stripes >= 1, slot.stripes <= AntiForensicSplitter.maximumStripes else {
            throw StrataError(.invalid, "LUKS1 key slot \(index) has \(slot.stripes) stripes (at most \(AntiForensicSplitter.maximumStripes))")
        }
        let start = Int64(slot.keyMaterialOffset) * Int64(Self.sectorSize)
        let size = Int64(LUKSKeyMaterial.storedSize(keySize: Int(keyBytes), stripes: Int(slot.stripes)))
        return start..<start + size
    }

    /// The 592 bytes on the medium.
    func serialized() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.replaceSubrange(0..<6, with: Self.magic)
        LUKSBytes.put(UInt16(1), into: &bytes, at: 6)
        try LUKSBytes.put(cipherName, into: &bytes, at: 8, length: 32)
        try LUKSBytes.put(cipherMode, into: &bytes, at: 40, length: 32)
        try LUKSBytes.put(hashSpec, into: &bytes, at: 72, length: 32)
        LUKSBytes.put(payloadOffset, into: &bytes, at: 104)
        LUKSBytes.put(keyBytes, into: &bytes, at: 108)
        bytes.replaceSubrange(112..<132, with: mkDigest)
        bytes.replaceSubrange(132..<164, with: mkDigestSalt)
        LUKSBytes.put(mkDigestIterations, into: &bytes, at: 164)
        try LUKSBytes.put(uuid, into: &bytes, at: 168, length: 40)
        for (index, slot) in keySlots.enumerated() {
            let base = 208 + 48 * index
            LUKSBytes.put(slot.active ? Self.activeMarker : Self.inactiveMarker, into: &bytes, at: base)
            LUKSBytes.put(slot.iterations, into: &bytes, at: base + 4)
            bytes.replaceSubrange(base + 8..<base + 40, with: slot.salt)
            LUKSBytes.put(slot.keyMaterialOffset, into: &bytes, at: base + 40)
            LUKSBytes.put(slot.stripes, into: &bytes, at: base + 44)
        }
        return bytes
    }
}
