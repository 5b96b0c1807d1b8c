import Foundation
import Strata

/// A LUKS2 volume's current header: the copy with the highest seqid and its metadata.
struct LUKS2Header {
    var copy: LUKS2HeaderCopy
    var metadata: LUKS2Metadata

    /// cryptsetup's default layout: 16 KiB header copies (12 KiB of JSON), key slot
    /// areas from 32 KiB, the data at 16 MiB.
    static let defaultHeaderSize: Int64 = 16384
    static let defaultDataOffset: Int64 = 16 * 1_048_576
    static let areaAlignment: Int64 = 4096

    static func read(from medium: any LUKSMedium) throws -> LUKS2Header {
        let copy = try LUKS2HeaderCopy.readCurrent(from: medium)
        return LUKS2Header(copy: copy, metadata: try LUKS2Metadata(copy, mediumSize: medium.size))
    }

    var uuid: String { copy.uuid }

    /// The volume. Its IV counts 512-byte sectors whatever the segment's sector size:
    /// cryptsetup never sets dm-crypt's `iv_large_sectors` for LUKS2, so a 4096-byte
    /// sector's tweak is `iv_tweak` plus its offset in 512-byte units (data that
    /// cryptsetup encrypts with 4096-byte sectors decrypts only so, which the tests check).
    func volume(masterKey: SecretBytes) -> LUKSVolume {
        let segment = metadata.segment
        return LUKSVolume(version: .luks2, uuid: copy.uuid, masterKey: masterKey, cipher: segment.encryption,
                          sectorSize: segment.sectorSize, payloadOffset: segment.offset, payloadSize: segment.size,
                          ivOffset: segment.ivTweak, ivLargeSectors: false)
    }

    /// The master key and the slot that `passphrase` opens, or nil when none does.
    /// Slots are tried as cryptsetup tries them: priority 2 (prefer) first, then 1
    /// (normal); priority 0 means "only when named" and is skipped.
    func openSlot(_ medium: any LUKSMedium, passphrase: SecretBytes) throws -> (slot: Int, masterKey: SecretBytes)? {
        let candidates = metadata.keyslots.filter { $0.priority > 0 }.sorted { ($0.priority, -$0.id) > ($1.priority, -$1.id) }
        for slot in candidates {
            guard let usable = slot.usable,
                  let digest = metadata.digests.first(where: { $0.keyslots.contains(slot.id) && $0.segments.contains(0) })
            else { continue }
            do {
                let slotKey = try usable.kdf.derive(passphrase: passphrase, salt: usable.salt, count: usable.areaKeySize)
                let splitter = try AntiForensicSplitter(hash: try HashFunction(named: usable.afHash), stripes: usable.stripes)
                let candidate = try LUKSKeyMaterial.open(medium, at: slot.areaOffset, keySize: slot.keySize, splitter: splitter,
                                                         slotKey: slotKey)
                if try Self.matches(candidate, digest) { return (slot.id, candidate) }
            } catch let error as StrataError where error.code != .io {
                // A slot whose values the KDF or the cipher refuse (a too short salt, a
                // derived key OpenSSL rejects) does not keep the others from being tried.
                continue
            }
        }
        return nil
    }

    /// Whether `candidate` is the key `digest` describes (compared in constant time).
    static func matches(_ candidate: SecretBytes, _ digest: LUKS2Metadata.Digest) throws -> Bool {
        let hash = try HashFunction(named: digest.hash)
        let computed = try candidate.withBytes {
            try hash.pbkdf2(password: $0, salt: digest.salt, iterations: digest.iterations, count: digest.digest.count)
        }
        return computed.withBytes { constantTimeEqual(Array($0), digest.digest) }
    }

    /// The PBKDF2 iterations of the master key digest Strata writes. The digest only
    /// tells the right master key from a wrong one; the key is random and 256 or 512
    /// bits, so no work factor adds to what guessing it costs, and passphrases are
    /// protected by the key slots' KDF. 1000 is the least cryptsetup accepts.
    static let digestIterations = 1000

    /// Writes `json` as the new header: both copies with seqid one above the current,
    /// the primary first and flushed, then the secondary and flushed. A power cut
    /// during the primary's write leaves it invalid and the old secondary current;
    /// after it, the new primary is current whatever happens to the secondary.
    func commit(_ json: [String: Any], to medium: any LUKSMedium) throws {
        var primary = copy
        primary.json = json
        primary.seqid = copy.seqid &+ 1
        primary.hdrOffset = 0
        primary.salt = try randomBytes(64)
        var secondary = primary
        secondary.hdrOffset = copy.hdrSize
        secondary.salt = try randomBytes(64)
        try medium.write(try primary.serialized(), at: 0)
        try medium.flush()
        try medium.write(try secondary.serialized(), at: secondary.hdrOffset)
        try medium.flush()
    }

    /// The JSON of a key slot holding a `keySize`-byte key in `area`, opened by `kdf`
    /// with `salt`.
    static func keyslotJSON(keySize: Int, area: Range<Int64>, kdf: KDFParameters, salt: [UInt8]) -> [String: Any] {
        var kdfJSON: [String: Any] = ["type": kdf.typeName, "salt": Data(salt).base64EncodedString()]
        let afHash: String
        switch kdf {
        case .pbkdf2(let hash, let iterations):
            kdfJSON["hash"] = hash
            kdfJSON["iterations"] = iterations
            afHash = hash
        case .argon2i(let time, let memory, let lanes), .argon2id(let time, let memory, let lanes):
            kdfJSON["time"] = time
            kdfJSON["memory"] = memory
            kdfJSON["cpus"] = lanes
            afHash = "sha256"
        }
        return [
            "type": "luks2",
            "key_size": keySize,
            "af": ["type": "luks1", "stripes": AntiForensicSplitter.defaultStripes, "hash": afHash] as [String: Any],
            "area": ["type": "raw", "offset": String(area.lowerBound), "size": String(area.count),
                     "encryption": "aes-xts-plain64", "key_size": keySize] as [String: Any],
            "kdf": kdfJSON,
        ]
    }

    /// Bytes a key slot area for a `keySize`-byte key takes: its split form in 4 KiB units.
    static func areaSize(keySize: Int) -> Int64 {
        let stored = Int64(LUKSKeyMaterial.storedSize(keySize: keySize, stripes: AntiForensicSplitter.defaultStripes))
        return (stored + areaAlignment - 1) / areaAlignment * areaAlignment
    }

    /// Stores `masterKey` for `passphrase` (durably) in `area`, returning the slot's JSON.
    static func fillSlot(on medium: any LUKSMedium, area: Range<Int64>, masterKey: SecretBytes, passphrase: SecretBytes,
                         kdf: KDFParameters) throws -> [String: Any] {
        try kdf.validate()
        let salt = try randomBytes(32)
        let json = keyslotJSON(keySize: masterKey.count, area: area, kdf: kdf, salt: salt)
        let slotKey = try kdf.derive(passphrase: passphrase, salt: salt, count: masterKey.count)
        let afHash: String = if case .pbkdf2(let hash, _) = kdf { hash } else { "sha256" }
        let splitter = try AntiForensicSplitter(hash: try HashFunction(named: afHash))
        try LUKSKeyMaterial.store(masterKey, on: medium, at: area.lowerBound, splitter: splitter, slotKey: slotKey)
        return json
    }
}
