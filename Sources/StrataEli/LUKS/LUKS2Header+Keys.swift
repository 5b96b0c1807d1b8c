import Foundation
import Strata

/// Formatting a LUKS2 volume and adding or removing its keys.
extension LUKS2Header {
    /// Writes a new LUKS2 volume in cryptsetup's default layout, with one key slot (0)
    /// for `passphrase`.
    static func format(_ medium: any LUKSMedium, passphrase: SecretBytes, keySize: Int, sectorSize: Int,
                       kdf: KDFParameters) throws -> LUKSVolume {
        let dataOffset = defaultDataOffset
        guard medium.size >= dataOffset + Int64(sectorSize) else {
            throw StrataError(.noSpace, "a LUKS2 volume needs more than \(dataOffset) bytes (16 MiB of header and key slots); the medium has \(medium.size)")
        }
        let metadataEnd = 2 * defaultHeaderSize
        let area = metadataEnd..<metadataEnd + areaSize(keySize: keySize)
        let masterKey = try SecretBytes.random(count: keySize)
        // Whatever was there before (an older header, old key slots) goes first.
        try LUKSFormatter.zero(medium, count: dataOffset)
        let keyslot = try fillSlot(on: medium, area: area, masterKey: masterKey, passphrase: passphrase, kdf: kdf)

        let digestSalt = try randomBytes(32)
        let hash = try HashFunction(named: "sha256")
        let digest = try masterKey.withBytes {
            try hash.pbkdf2(password: $0, salt: digestSalt, iterations: digestIterations, count: hash.size)
        }
        let json: [String: Any] = [
            "keyslots": ["0": keyslot],
            "tokens": [String: Any](),
            "segments": ["0": [
                "type": "crypt", "offset": String(dataOffset), "size": "dynamic", "iv_tweak": "0",
                "encryption": "aes-xts-plain64", "sector_size": sectorSize,
            ] as [String: Any]],
            "digests": ["0": [
                "type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": "sha256",
                "iterations": digestIterations, "salt": Data(digestSalt).base64EncodedString(),
                "digest": digest.withBytes { Data($0).base64EncodedString() },
            ] as [String: Any]],
            "config": [
                "json_size": String(defaultHeaderSize - Int64(LUKS2HeaderCopy.binarySize)),
                "keyslots_size": String(dataOffset - metadataEnd),
            ],
        ]
        let empty = LUKS2HeaderCopy(hdrSize: defaultHeaderSize, seqid: 0, label: "", salt: [], uuid: try LUKSBytes.randomUUID(),
                                    subsystem: "", hdrOffset: 0, json: json)
        let header = LUKS2Header(copy: empty, metadata: try LUKS2Metadata(empty, mediumSize: medium.size))
        try header.commit(json, to: medium)
        return header.volume(masterKey: masterKey)
    }

    /// Adds `newPassphrase` for `masterKey` (which the digest `digestID` verifies) in
    /// slot `requested` or the lowest free one. The new slot's material is written and
    /// flushed in an area no header points at, and only then the header that lists it.
    func addKey(_ medium: any LUKSMedium, masterKey: SecretBytes, digestID: Int, newPassphrase: SecretBytes,
                kdf: KDFParameters, slot requested: Int?) throws -> Int {
        let used = Set(metadata.keyslots.map(\.id))
        let id: Int
        if let requested {
            guard (0..<LUKS2Metadata.maximumKeyslots).contains(requested) else {
                throw StrataError(.invalid, "LUKS2 has key slots 0...\(LUKS2Metadata.maximumKeyslots - 1), not \(requested)")
            }
            guard !used.contains(requested) else { throw StrataError(.exists, "LUKS2 key slot \(requested) is in use") }
            id = requested
        } else {
            guard let free = (0..<LUKS2Metadata.maximumKeyslots).first(where: { !used.contains($0) }) else {
                throw StrataError(.noSpace, "all \(LUKS2Metadata.maximumKeyslots) LUKS2 key slots are in use")
            }
            id = free
        }
        let area = try freeArea(size: Self.areaSize(keySize: masterKey.count), mediumSize: medium.size)
        let keyslot = try Self.fillSlot(on: medium, area: area, masterKey: masterKey, passphrase: newPassphrase, kdf: kdf)

        var json = copy.json
        var keyslots = try LUKS2Metadata.object(json["keyslots"], "keyslots")
        keyslots[String(id)] = keyslot
        json["keyslots"] = keyslots
        var digests = try LUKS2Metadata.object(json["digests"], "digests")
        var digest = try LUKS2Metadata.object(digests[String(digestID)], "digests.\(digestID)")
        digest["keyslots"] = ((digest["keyslots"] as? [Any]) ?? []) + [String(id)]
        digests[String(digestID)] = digest
        json["digests"] = digests
        try commit(json, to: medium)
        return id
    }

    /// The first 4 KiB-aligned gap of `size` bytes in the key slots area that no slot uses.
    func freeArea(size: Int64, mediumSize: Int64) throws -> Range<Int64> {
        let start = 2 * copy.hdrSize
        let end = min(start + metadata.keyslotsSize, metadata.segment.offset, mediumSize)
        let taken = metadata.keyslots.map { $0.areaOffset..<$0.areaOffset + $0.areaSize }.sorted { $0.lowerBound < $1.lowerBound }
        var candidate = start
        for area in taken {
            if candidate + size <= area.lowerBound { break }
            candidate = max(candidate, (area.upperBound + Self.areaAlignment - 1) / Self.areaAlignment * Self.areaAlignment)
        }
        guard candidate + size <= end else {
            throw StrataError(.noSpace, "no room for another \(size)-byte key slot area in the LUKS2 key slots area")
        }
        return candidate..<candidate + size
    }

    /// Removes key slot `id`: the header without it (and without it in any digest or
    /// token) is written first, then its area is overwritten with random bytes.
    func removeKey(_ medium: any LUKSMedium, slot id: Int) throws {
        guard let slot = metadata.keyslots.first(where: { $0.id == id }) else {
            throw StrataError(.invalid, "LUKS2 key slot \(id) is not in use")
        }
        let name = String(id)
        var json = copy.json
        var keyslots = try LUKS2Metadata.object(json["keyslots"], "keyslots")
        keyslots[name] = nil
        json["keyslots"] = keyslots
        for section in ["digests", "tokens"] {
            guard var entries = json[section] as? [String: Any] else { continue }
            for (key, value) in entries {
                guard var entry = value as? [String: Any], let list = entry["keyslots"] as? [Any] else { continue }
                entry["keyslots"] = list.filter { ($0 as? String) != name }
                entries[key] = entry
            }
            json[section] = entries
        }
        try commit(json, to: medium)
        try LUKSKeyMaterial.wipe(medium, at: slot.areaOffset, count: Int(slot.areaSize))
    }

    /// The digest that verifies the master key of slot `id`.
    func digestID(forSlot id: Int) throws -> Int {
        guard let digest = metadata.digests.first(where: { $0.keyslots.contains(id) && $0.segments.contains(0) }) else {
            throw StrataError(.invalid, "LUKS2 key slot \(id) has no digest")
        }
        return digest.id
    }
}
