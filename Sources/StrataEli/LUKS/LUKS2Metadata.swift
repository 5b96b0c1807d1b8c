import Foundation
import Strata

/// The parts of LUKS2's JSON metadata Strata uses, read and checked. In that JSON,
/// offsets and sizes are strings of decimal digits (64-bit values do not survive every
/// JSON parser as numbers), counts and KDF costs are numbers, and binary values
/// (salts, digests) are base64.
struct LUKS2Metadata {
    struct Keyslot {
        var id: Int
        var type: String
        var keySize: Int
        var priority: Int
        var areaOffset: Int64
        var areaSize: Int64
        /// Nil when the slot is of a kind Strata cannot open; `problem` says why.
        var usable: Usable?
        var problem: String?

        struct Usable {
            var kdf: KDFParameters
            var salt: [UInt8]
            var stripes: Int
            var afHash: String
            var areaKeySize: Int
        }
    }

    struct Segment {
        var offset: Int64
        var size: Int64?
        var ivTweak: UInt64
        var encryption: String
        var sectorSize: Int
    }

    struct Digest {
        var id: Int
        var type: String
        var keyslots: [Int]
        var segments: [Int]
        var hash: String
        var iterations: Int
        var salt: [UInt8]
        var digest: [UInt8]
    }

    static let maximumKeyslots = 32
    static let maximumSaltSize = 1024

    var keyslots: [Keyslot]
    var segment: Segment
    var digests: [Digest]
    var jsonSize: Int64
    var keyslotsSize: Int64

    /// Reads the metadata of `copy`, checked against a medium of `mediumSize` bytes.
    /// Features Strata does not implement are refused here, by name.
    init(_ copy: LUKS2HeaderCopy, mediumSize: Int64) throws {
        let json = copy.json
        let config = try Self.object(json["config"], "config")
        jsonSize = try Self.size(config["json_size"], "config.json_size")
        keyslotsSize = try Self.size(config["keyslots_size"], "config.keyslots_size")
        guard jsonSize == copy.hdrSize - Int64(LUKS2HeaderCopy.binarySize) else {
            throw StrataError(.invalid, "LUKS2 config.json_size \(jsonSize) does not match the header size \(copy.hdrSize)")
        }
        if let requirements = config["requirements"] as? [String: Any],
           let mandatory = requirements["mandatory"] as? [Any], !mandatory.isEmpty {
            throw StrataError(.notSupported, "LUKS2 volume requires \(mandatory.map { "\($0)" }.joined(separator: ", ")) (e.g. an online reencryption in progress), which Strata does not support")
        }
        let metadataEnd = 2 * copy.hdrSize
        guard keyslotsSize >= 0, LUKSBytes.fits(offset: metadataEnd, count: keyslotsSize, in: Int64.max) else {
            throw StrataError(.invalid, "LUKS2 config.keyslots_size \(keyslotsSize) is out of range")
        }

        let segments = try Self.object(json["segments"], "segments")
        guard segments.count == 1, let segmentJSON = segments["0"] else {
            throw StrataError(.notSupported, "LUKS2 volume with segments \(segments.keys.sorted()) (Strata supports one crypt segment, 0)")
        }
        let segmentObject = try Self.object(segmentJSON, "segments.0")
        let segmentType = try Self.string(segmentObject["type"], "segments.0.type")
        guard segmentType == "crypt" else {
            throw StrataError(.notSupported, "LUKS2 segment of type '\(segmentType)' is not supported (only crypt)")
        }
        if let flags = segmentObject["flags"] as? [Any], !flags.isEmpty {
            throw StrataError(.notSupported, "LUKS2 segment flags \(flags) are not supported")
        }
        if segmentObject["integrity"] != nil {
            throw StrataError(.notSupported, "LUKS2 segments with integrity protection are not supported")
        }
        let encryption = try Self.string(segmentObject["encryption"], "segments.0.encryption")
        guard encryption == "aes-xts-plain64" else {
            throw StrataError(.notSupported, "LUKS2 segment cipher '\(encryption)' is not supported (only aes-xts-plain64)")
        }
        let sectorSize = try Self.int(segmentObject["sector_size"], "segments.0.sector_size")
        guard [512, 1024, 2048, 4096].contains(sectorSize) else {
            throw StrataError(.invalid, "LUKS2 segment sector size \(sectorSize) is not 512, 1024, 2048 or 4096")
        }
        let offset = try Self.size(segmentObject["offset"], "segments.0.offset")
        guard offset >= metadataEnd, offset % Int64(sectorSize) == 0, offset <= mediumSize else {
            throw StrataError(.invalid, "LUKS2 data offset \(offset) is inside the metadata, misaligned, or past the \(mediumSize)-byte medium")
        }
        var size: Int64?
        if let text = segmentObject["size"] as? String, text == "dynamic" {
            size = nil
        } else {
            let fixed = try Self.size(segmentObject["size"], "segments.0.size")
            guard fixed % Int64(sectorSize) == 0, LUKSBytes.fits(offset: offset, count: fixed, in: mediumSize) else {
                throw StrataError(.invalid, "LUKS2 data segment of \(fixed) bytes at \(offset) is misaligned or runs past the \(mediumSize)-byte medium")
            }
            size = fixed
        }
        let ivTweak = try Self.size(segmentObject["iv_tweak"], "segments.0.iv_tweak")
        segment = Segment(offset: offset, size: size, ivTweak: UInt64(ivTweak), encryption: encryption, sectorSize: sectorSize)

        let keyslotsJSON = try Self.object(json["keyslots"], "keyslots")
        guard keyslotsJSON.count <= Self.maximumKeyslots else {
            throw StrataError(.invalid, "LUKS2 header lists \(keyslotsJSON.count) key slots (at most \(Self.maximumKeyslots))")
        }
        let keyslotsEnd = metadataEnd + keyslotsSize
        keyslots = try keyslotsJSON.map { key, value in
            try Self.keyslot(id: try Self.id(key, "keyslots"), value, metadataEnd: metadataEnd,
                             keyslotsEnd: keyslotsEnd, mediumSize: mediumSize)
        }.sorted { $0.id < $1.id }
        for (index, slot) in keyslots.enumerated() {
            for other in keyslots[(index + 1)...] {
                let area = slot.areaOffset..<slot.areaOffset + slot.areaSize
                guard !area.overlaps(other.areaOffset..<other.areaOffset + other.areaSize) else {
                    throw StrataError(.invalid, "LUKS2 key slots \(slot.id) and \(other.id) share bytes of their areas")
                }
            }
        }

        let digestsJSON = try Self.object(json["digests"], "digests")
        guard digestsJSON.count <= Self.maximumKeyslots else {
            throw StrataError(.invalid, "LUKS2 header lists \(digestsJSON.count) digests")
        }
        digests = try digestsJSON.map { key, value in try Self.digest(id: try Self.id(key, "digests"), value) }
            .sorted { $0.id < $1.id }
    }

    private static func keyslot(id: Int, _ value: Any, metadataEnd: Int64, keyslotsEnd: Int64, mediumSize: Int64) throws -> Keyslot {
        let name = "keyslots.\(id)"
        let object = try object(value, name)
        let type = try string(object["type"], "\(name).type")
        let keySize = try int(object["key_size"], "\(name).key_size")
        let area = try self.object(object["area"], "\(name).area")
        let areaOffset = try size(area["offset"], "\(name).area.offset")
        let areaSize = try size(area["size"], "\(name).area.size")
        guard areaOffset >= metadataEnd, LUKSBytes.fits(offset: areaOffset, count: areaSize, in: min(keyslotsEnd, mediumSize)) else {
            throw StrataError(.invalid, "LUKS2 key slot \(id)'s area (\(areaSize) bytes at \(areaOffset)) is outside the key slots area")
        }
        let priority = (object["priority"] as? Int) ?? 1
        var slot = Keyslot(id: id, type: type, keySize: keySize, priority: priority, areaOffset: areaOffset,
                           areaSize: areaSize, usable: nil, problem: nil)
        do {
            slot.usable = try usable(object, area: area, name: name, keySize: keySize, areaSize: areaSize)
        } catch let error as StrataError {
            slot.problem = error.message
        }
        return slot
    }

    /// How to open a key slot, or why Strata cannot.
    private static func usable(_ object: [String: Any], area: [String: Any], name: String, keySize: Int,
                               areaSize: Int64) throws -> Keyslot.Usable {
        let type = try string(object["type"], "\(name).type")
        guard type == "luks2" else { throw StrataError(.notSupported, "key slot type '\(type)' is not supported") }
        guard XTSCipher.keySizes.contains(keySize) else {
            throw StrataError(.invalid, "\(name): a \(keySize)-byte volume key, AES-XTS takes 32 or 64")
        }
        let areaType = try string(area["type"], "\(name).area.type")
        guard areaType == "raw" else { throw StrataError(.notSupported, "key slot area type '\(areaType)' is not supported") }
        let areaEncryption = try string(area["encryption"], "\(name).area.encryption")
        guard areaEncryption == "aes-xts-plain64" else {
            throw StrataError(.notSupported, "key slot area cipher '\(areaEncryption)' is not supported (only aes-xts-plain64)")
        }
        let areaKeySize = try int(area["key_size"], "\(name).area.key_size")
        guard XTSCipher.keySizes.contains(areaKeySize) else {
            throw StrataError(.invalid, "\(name): a \(areaKeySize)-byte area key, AES-XTS takes 32 or 64")
        }
        let af = try self.object(object["af"], "\(name).af")
        let afType = try string(af["type"], "\(name).af.type")
        guard afType == "luks1" else { throw StrataError(.notSupported, "anti-forensic splitter '\(afType)' is not supported") }
        let stripes = try int(af["stripes"], "\(name).af.stripes")
        guard (1...AntiForensicSplitter.maximumStripes).contains(stripes) else {
            throw StrataError(.invalid, "\(name): \(stripes) stripes (at most \(AntiForensicSplitter.maximumStripes))")
        }
        guard Int64(LUKSKeyMaterial.storedSize(keySize: keySize, stripes: stripes)) <= areaSize else {
            throw StrataError(.invalid, "\(name): \(stripes) stripes of a \(keySize)-byte key do not fit its \(areaSize)-byte area")
        }
        let afHash = try string(af["hash"], "\(name).af.hash")
        _ = try HashFunction(named: afHash)
        let kdfObject = try self.object(object["kdf"], "\(name).kdf")
        let kdfType = try string(kdfObject["type"], "\(name).kdf.type")
        let salt = try base64(kdfObject["salt"], "\(name).kdf.salt")
        let kdf: KDFParameters
        switch kdfType {
        case "pbkdf2":
            kdf = .pbkdf2(hash: try string(kdfObject["hash"], "\(name).kdf.hash"),
                          iterations: try int(kdfObject["iterations"], "\(name).kdf.iterations"))
        case "argon2i", "argon2id":
            let time = try int(kdfObject["time"], "\(name).kdf.time")
            let memory = try int(kdfObject["memory"], "\(name).kdf.memory")
            let lanes = try int(kdfObject["cpus"], "\(name).kdf.cpus")
            kdf = kdfType == "argon2i" ? .argon2i(time: time, memory: memory, lanes: lanes)
                : .argon2id(time: time, memory: memory, lanes: lanes)
        default:
            throw StrataError(.notSupported, "KDF '\(kdfType)' is not supported")
        }
        try kdf.validate()
        return Keyslot.Usable(kdf: kdf, salt: salt, stripes: stripes, afHash: afHash, areaKeySize: areaKeySize)
    }

    private static func digest(id: Int, _ value: Any) throws -> Digest {
        let name = "digests.\(id)"
        let object = try object(value, name)
        let type = try string(object["type"], "\(name).type")
        guard type == "pbkdf2" else { throw StrataError(.notSupported, "LUKS2 digest type '\(type)' is not supported") }
        let keyslots = try ids(object["keyslots"], "\(name).keyslots")
        let segments = try ids(object["segments"], "\(name).segments")
        let hash = try string(object["hash"], "\(name).hash")
        let hashFunction = try HashFunction(named: hash)
        let iterations = try int(object["iterations"], "\(name).iterations")
        guard (1...Int(UInt32.max)).contains(iterations) else {
            throw StrataError(.invalid, "\(name): \(iterations) iterations")
        }
        let salt = try base64(object["salt"], "\(name).salt")
        let digest = try base64(object["digest"], "\(name).digest")
        guard digest.count == LUKS1Header.digestSize || digest.count == hashFunction.size else {
            throw StrataError(.invalid, "\(name): a \(digest.count)-byte digest for \(hash)")
        }
        return Digest(id: id, type: type, keyslots: keyslots, segments: segments, hash: hash, iterations: iterations,
                      salt: salt, digest: digest)
    }

    // MARK: JSON values

    static func object(_ value: Any?, _ name: String) throws -> [String: Any] {
        guard let object = value as? [String: Any] else { throw StrataError(.invalid, "LUKS2 \(name) is missing or not an object") }
        return object
    }

    static func string(_ value: Any?, _ name: String) throws -> String {
        guard let text = value as? String else { throw StrataError(.invalid, "LUKS2 \(name) is missing or not a string") }
        return text
    }

    static func int(_ value: Any?, _ name: String) throws -> Int {
        // Foundation bridges a JSON number to Int only when it is exactly an integer.
        guard let integer = value as? Int else {
            throw StrataError(.invalid, "LUKS2 \(name) is missing or not an integer")
        }
        return integer
    }

    /// A size or offset: a string of decimal digits that fits a signed 64-bit value.
    static func size(_ value: Any?, _ name: String) throws -> Int64 {
        let text = try string(value, name)
        guard !text.isEmpty, text.count <= 19, text.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int64(text) else {
            throw StrataError(.invalid, "LUKS2 \(name) '\(text)' is not a decimal size")
        }
        return number
    }

    static func base64(_ value: Any?, _ name: String) throws -> [UInt8] {
        let text = try string(value, name)
        guard text.utf8.count <= 4 * maximumSaltSize, let data = Data(base64Encoded: text) else {
            throw StrataError(.invalid, "LUKS2 \(name) is not base64 (or is too long)")
        }
        return [UInt8](data)
    }

    static func id(_ key: String, _ name: String) throws -> Int {
        guard key.count <= 3, key.allSatisfy({ $0.isASCII && $0.isNumber }), let id = Int(key) else {
            throw StrataError(.invalid, "LUKS2 \(name) has the id '\(key)', not a small number")
        }
        return id
    }

    static func ids(_ value: Any?, _ name: String) throws -> [Int] {
        guard let list = value as? [Any] else { throw StrataError(.invalid, "LUKS2 \(name) is missing or not a list") }
        return try list.map { try id(try string($0, name), name) }
    }
}
