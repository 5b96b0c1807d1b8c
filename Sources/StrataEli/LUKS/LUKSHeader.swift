import Strata

/// A LUKS volume's header, either version: what the eli geom reads before it can
/// decrypt anything, and what the `eli` verbs show.
///
///     let header = try LUKSHeader.read(from: medium)
///     let volume = try header.unlock(passphrase: passphrase)   // LUKSVolume: key, offsets
///
/// Reading checks every length and offset against the medium, so a damaged or
/// hostile header gives a `StrataError` saying what is wrong, never a crash or a huge
/// allocation. Volumes whose cipher or features Strata does not implement (anything
/// but aes-xts-plain64; LUKS2 integrity, reencryption, more than one segment) are
/// refused with `.notSupported`, by name.
public struct LUKSHeader {
    enum Format {
        case luks1(LUKS1Header)
        case luks2(LUKS2Header)
    }

    let format: Format
    let medium: any LUKSMedium

    public var version: LUKSVersion {
        switch format {
        case .luks1: .luks1
        case .luks2: .luks2
        }
    }

    public var uuid: String {
        switch format {
        case .luks1(let header): header.uuid
        case .luks2(let header): header.uuid
        }
    }

    /// The numbers of the key slots in use.
    public var activeKeySlots: [Int] {
        switch format {
        case .luks1(let header): header.keySlots.indices.filter { header.keySlots[$0].active }
        case .luks2(let header): header.metadata.keyslots.map(\.id)
        }
    }

    /// The header's contents, without secrets.
    public var dump: LUKSDump {
        switch format {
        case .luks1(let header):
            let slots = header.keySlots.enumerated().filter(\.element.active).map { index, slot in
                let area = (try? header.area(of: slot, index: index)) ?? 0..<0
                return LUKSDump.KeySlot(id: index, kdf: .pbkdf2(hash: header.hashSpec, iterations: Int(slot.iterations)),
                                        stripes: Int(slot.stripes), areaOffset: area.lowerBound, areaSize: Int64(area.count),
                                        keySize: Int(header.keyBytes), priority: 1, problem: nil)
            }
            let digest = LUKSDump.Digest(id: 0, type: "pbkdf2", hash: header.hashSpec, iterations: Int(header.mkDigestIterations),
                                         keySlots: slots.map(\.id), segments: [0])
            return LUKSDump(version: .luks1, uuid: header.uuid, label: nil, cipher: header.cipher, keySize: Int(header.keyBytes),
                            sectorSize: LUKS1Header.sectorSize,
                            payloadOffset: Int64(header.payloadOffset) * Int64(LUKS1Header.sectorSize), payloadSize: nil,
                            sequence: nil, keySlots: slots, digests: [digest])
        case .luks2(let header):
            let metadata = header.metadata
            let slots = metadata.keyslots.map { slot in
                LUKSDump.KeySlot(id: slot.id, kdf: slot.usable?.kdf, stripes: slot.usable?.stripes, areaOffset: slot.areaOffset,
                                 areaSize: slot.areaSize, keySize: slot.keySize, priority: slot.priority, problem: slot.problem)
            }
            let digests = metadata.digests.map {
                LUKSDump.Digest(id: $0.id, type: $0.type, hash: $0.hash, iterations: $0.iterations, keySlots: $0.keyslots,
                                segments: $0.segments)
            }
            return LUKSDump(version: .luks2, uuid: header.uuid, label: header.copy.label, cipher: metadata.segment.encryption,
                            keySize: metadata.keyslots.first?.keySize ?? 0, sectorSize: metadata.segment.sectorSize,
                            payloadOffset: metadata.segment.offset, payloadSize: metadata.segment.size,
                            sequence: header.copy.seqid, keySlots: slots, digests: digests)
        }
    }

    /// Reads the header of `medium`: LUKS1, or LUKS2 from whichever of its two copies
    /// is valid and newest (a damaged primary falls back to the secondary).
    public static func read(from medium: any LUKSMedium) throws -> LUKSHeader {
        guard medium.size >= Int64(LUKS1Header.size) else {
            throw StrataError(.invalid, "a \(medium.size)-byte medium is too small to hold a LUKS header")
        }
        let start = try medium.read(at: 0, count: LUKS1Header.size)
        guard start.count == LUKS1Header.size else { throw StrataError(.io, "short read of the LUKS header") }
        if Array(start[0..<6]) == LUKS1Header.magic, LUKSBytes.uint16(start, at: 6) == 1 {
            return LUKSHeader(format: .luks1(try LUKS1Header(parsing: start, mediumSize: medium.size)), medium: medium)
        }
        // Version 2, or a primary too damaged to tell: LUKS2 may still have a secondary.
        do {
            return LUKSHeader(format: .luks2(try LUKS2Header.read(from: medium)), medium: medium)
        } catch let error as StrataError where Array(start[0..<6]) != LUKS1Header.magic && error.code == .invalid
            && error.message.hasPrefix("no valid LUKS2 header") {
            throw StrataError(.invalid, "not a LUKS volume: no LUKS1 or LUKS2 header (\(error.message))")
        }
    }

    /// The unlocked volume, when `passphrase` opens one of the key slots; else a
    /// `StrataError` with code `.permission` and the message "no key slot opens with
    /// this passphrase". Every slot is tried, so this takes as long as their KDFs.
    public func unlock(passphrase: SecretBytes) throws -> LUKSVolume {
        let (_, masterKey) = try openSlot(passphrase: passphrase)
        switch format {
        case .luks1(let header): return header.volume(masterKey: masterKey)
        case .luks2(let header): return header.volume(masterKey: masterKey)
        }
    }

    /// The slot `passphrase` opens and the master key, or the `.permission` error.
    func openSlot(passphrase: SecretBytes) throws -> (slot: Int, masterKey: SecretBytes) {
        let opened = switch format {
        case .luks1(let header): try header.openSlot(medium, passphrase: passphrase)
        case .luks2(let header): try header.openSlot(medium, passphrase: passphrase)
        }
        guard let opened else {
            // Slots Strata cannot use are named, as they may be why.
            var unusable: [String] = []
            if case .luks2(let header) = format {
                unusable = header.metadata.keyslots.compactMap { slot in slot.problem.map { "key slot \(slot.id): \($0)" } }
            }
            let detail = unusable.isEmpty ? "" : " (\(unusable.joined(separator: "; ")))"
            throw StrataError(.permission, "no key slot opens with this passphrase\(detail)")
        }
        return opened
    }
}
