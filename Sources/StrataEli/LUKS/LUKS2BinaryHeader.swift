import Foundation
import Strata

/// One copy of the LUKS2 header area: a 4096-byte binary header followed by the JSON
/// metadata, `hdrSize` bytes in all, checksummed (SHA-256 over the whole area with the
/// checksum field zeroed). A LUKS2 volume keeps two copies, the primary at 0 and the
/// secondary right after it at `hdrSize`, so that a write torn by a power cut, or a
/// damaged sector, never loses the metadata: the valid copy with the highest `seqid`
/// is the current one.
struct LUKS2HeaderCopy {
    static let binarySize = 4096
    static let primaryMagic: [UInt8] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]
    static let secondaryMagic: [UInt8] = [0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe]
    /// The header area sizes LUKS2 allows (16 KiB to 4 MiB), which are also where a
    /// secondary copy may be when the primary is unreadable.
    static let allowedSizes: [Int64] = (0...8).map { Int64(16384) << $0 }
    static let checksumOffset = 448
    static let checksumLength = 64
    // OpenSSL always has SHA-256.
    static let sha256 = try! HashFunction(named: "sha256")

    var hdrSize: Int64
    var seqid: UInt64
    var label: String
    var salt: [UInt8]
    var uuid: String
    var subsystem: String
    var hdrOffset: Int64
    /// The JSON metadata, parsed.
    var json: [String: Any]

    var isPrimary: Bool { hdrOffset == 0 }

    /// Reads and checks the copy at `offset` (0 for the primary); throws saying what is
    /// wrong with it.
    static func read(from medium: any LUKSMedium, at offset: Int64) throws -> LUKS2HeaderCopy {
        let which = offset == 0 ? "primary" : "secondary at \(offset)"
        guard LUKSBytes.fits(offset: offset, count: Int64(binarySize), in: medium.size) else {
            throw StrataError(.invalid, "LUKS2 \(which) header: past the end of the medium")
        }
        let binary = try medium.read(at: offset, count: binarySize)
        guard binary.count == binarySize else { throw StrataError(.io, "LUKS2 \(which) header: short read") }
        guard Array(binary[0..<6]) == (offset == 0 ? primaryMagic : secondaryMagic) else {
            throw StrataError(.invalid, "LUKS2 \(which) header: no magic")
        }
        let version = LUKSBytes.uint16(binary, at: 6)
        guard version == 2 else { throw StrataError(.invalid, "LUKS2 \(which) header: version \(version), not 2") }
        let hdrSize = LUKSBytes.uint64(binary, at: 8)
        guard let size = allowedSizes.first(where: { UInt64($0) == hdrSize }) else {
            throw StrataError(.invalid, "LUKS2 \(which) header: header size \(hdrSize) is not a LUKS2 size")
        }
        // A secondary sits right after the primary, so its offset is the header size.
        guard offset == 0 || size == offset else {
            throw StrataError(.invalid, "LUKS2 \(which) header: header size \(size) does not put a secondary here")
        }
        let hdrOffset = LUKSBytes.uint64(binary, at: 256)
        guard hdrOffset == UInt64(offset) else {
            throw StrataError(.invalid, "LUKS2 \(which) header: says it is at \(hdrOffset)")
        }
        let checksumAlgorithm = LUKSBytes.string(binary, at: 72, length: 32)
        guard checksumAlgorithm == "sha256" else {
            throw StrataError(.notSupported, "LUKS2 \(which) header: checksum '\(checksumAlgorithm)' is not supported (only sha256)")
        }
        guard LUKSBytes.fits(offset: offset, count: size, in: medium.size) else {
            throw StrataError(.invalid, "LUKS2 \(which) header: its \(size) bytes run past the end of the medium")
        }
        var area = try medium.read(at: offset, count: Int(size))
        guard area.count == Int(size) else { throw StrataError(.io, "LUKS2 \(which) header: short read") }
        let stored = Array(area[checksumOffset..<checksumOffset + 32])
        guard constantTimeEqual(try checksum(of: &area), stored) else {
            throw StrataError(.invalid, "LUKS2 \(which) header: checksum mismatch")
        }
        let jsonArea = area[binarySize...]
        let jsonBytes = jsonArea.prefix(while: { $0 != 0 })
        guard jsonBytes.count < jsonArea.count else {
            throw StrataError(.invalid, "LUKS2 \(which) header: JSON area not terminated")
        }
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: Data(jsonBytes))
        } catch {
            throw StrataError(.invalid, "LUKS2 \(which) header: JSON does not parse: \(error)")
        }
        guard let json = parsed as? [String: Any] else {
            throw StrataError(.invalid, "LUKS2 \(which) header: JSON is not an object")
        }
        return LUKS2HeaderCopy(hdrSize: size, seqid: LUKSBytes.uint64(binary, at: 16),
                               label: LUKSBytes.string(binary, at: 24, length: 48),
                               salt: Array(binary[104..<168]), uuid: LUKSBytes.string(binary, at: 168, length: 40),
                               subsystem: LUKSBytes.string(binary, at: 208, length: 48), hdrOffset: offset, json: json)
    }

    /// SHA-256 of the area with its checksum field zeroed (which this does in place).
    static func checksum(of area: inout [UInt8]) throws -> [UInt8] {
        for index in checksumOffset..<checksumOffset + checksumLength { area[index] = 0 }
        return area.withUnsafeBytes { sha256.digest($0) }
    }

    /// The bytes of this copy, checksummed, for writing at `hdrOffset`.
    func serialized() throws -> [UInt8] {
        let options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
        let text = try JSONSerialization.data(withJSONObject: json, options: options)
        let jsonSize = Int(hdrSize) - Self.binarySize
        guard text.count < jsonSize else {
            throw StrataError(.noSpace, "LUKS2 metadata of \(text.count) bytes does not fit its \(jsonSize)-byte JSON area")
        }
        var area = [UInt8](repeating: 0, count: Int(hdrSize))
        area.replaceSubrange(0..<6, with: isPrimary ? Self.primaryMagic : Self.secondaryMagic)
        LUKSBytes.put(UInt16(2), into: &area, at: 6)
        LUKSBytes.put(UInt64(hdrSize), into: &area, at: 8)
        LUKSBytes.put(seqid, into: &area, at: 16)
        try LUKSBytes.put(label, into: &area, at: 24, length: 48)
        try LUKSBytes.put("sha256", into: &area, at: 72, length: 32)
        area.replaceSubrange(104..<168, with: salt)
        try LUKSBytes.put(uuid, into: &area, at: 168, length: 40)
        try LUKSBytes.put(subsystem, into: &area, at: 208, length: 48)
        LUKSBytes.put(UInt64(hdrOffset), into: &area, at: 256)
        area.replaceSubrange(Self.binarySize..<Self.binarySize + text.count, with: [UInt8](text))
        let sum = try Self.checksum(of: &area)
        area.replaceSubrange(Self.checksumOffset..<Self.checksumOffset + sum.count, with: sum)
        return area
    }

    /// The current copy: the valid one with the highest seqid among the primary and
    /// the secondary (looked for where the primary says, or, when the primary is
    /// unreadable, at every offset a LUKS2 secondary can have).
    static func readCurrent(from medium: any LUKSMedium) throws -> LUKS2HeaderCopy {
        var problems: [String] = []
        var copies: [LUKS2HeaderCopy] = []
        var secondaryOffsets = allowedSizes
        do {
            let primary = try read(from: medium, at: 0)
            copies.append(primary)
            secondaryOffsets = [primary.hdrSize]
        } catch let error as StrataError {
            problems.append(error.message)
        }
        for offset in secondaryOffsets where offset < medium.size {
            do {
                let secondary = try read(from: medium, at: offset)
                // A secondary of another volume (left by an earlier format) is not a copy.
                if let primary = copies.first, primary.uuid != secondary.uuid {
                    problems.append("LUKS2 secondary at \(offset) header: UUID \(secondary.uuid) is not the primary's")
                    break
                }
                copies.append(secondary)
                break
            } catch let error as StrataError {
                // Probing every offset, only copies that at least have the magic are worth naming.
                if secondaryOffsets.count == 1 || !error.message.hasSuffix("no magic") { problems.append(error.message) }
            }
        }
        guard let best = copies.max(by: { $0.seqid < $1.seqid }) else {
            if secondaryOffsets.count > 1 && problems.count == 1 { problems.append("no secondary header at any LUKS2 offset") }
            throw StrataError(.invalid, "no valid LUKS2 header: \(problems.joined(separator: "; "))")
        }
        return best
    }
}
