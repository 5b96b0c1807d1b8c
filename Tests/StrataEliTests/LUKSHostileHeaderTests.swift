import Foundation
import Strata
import StrataEli
import Testing

/// Damaged or hostile headers give a `StrataError` that says what is wrong: never a
/// crash, never an allocation the header's numbers ask for unchecked.
@Suite struct LUKSHostileHeaderTests {
    static func luks1() throws -> MemoryMedium {
        let medium = MemoryMedium(size: (2 << 20) + 65536)
        _ = try LUKSFormatter.format(medium, version: .luks1, passphrase: secret("p"), kdf: tinyPBKDF2)
        return medium
    }

    static func luks2() throws -> MemoryMedium {
        let medium = MemoryMedium(size: (16 << 20) + 65536)
        _ = try LUKSFormatter.format(medium, version: .luks2, passphrase: secret("p"), kdf: tinyPBKDF2)
        return medium
    }

    /// Reading and unlocking `medium` fails with a StrataError whose message has `text`.
    func expectRefused(_ medium: MemoryMedium, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let error = #expect(throws: StrataError.self, "expected: \(text)", sourceLocation: sourceLocation) {
            try LUKSHeader.read(from: medium).unlock(passphrase: secret("p"))
        }
        #expect(error?.message.contains(text) == true, "expected '\(text)' in: \(error?.message ?? "no error")",
                sourceLocation: sourceLocation)
    }

    @Test func randomBytesAfterAValidMagic() throws {
        for version: UInt8 in [1, 2] {
            for _ in 0..<200 {
                let medium = MemoryMedium(size: 1 << 20)
                medium.bytes.replaceSubrange(0..<65536, with: try randomBytes(65536))
                medium.bytes.replaceSubrange(0..<8, with: [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, version])
                // Either refused, or (vanishingly unlikely) a header no passphrase opens.
                #expect(throws: StrataError.self) { try LUKSHeader.read(from: medium).unlock(passphrase: secret("p")) }
            }
        }
        let empty = MemoryMedium(size: 1 << 20)
        expectRefused(empty, "not a LUKS volume")
        expectRefused(MemoryMedium(size: 100), "too small")
    }

    @Test func luks1ValuesOutOfRange() throws {
        // Slot 0's stripes (at 208 + 44), the most the header can say.
        var medium = try Self.luks1()
        medium.bytes.replaceSubrange(252..<256, with: [0xff, 0xff, 0xff, 0xff])
        expectRefused(medium, "stripes")
        // Slot 0's key material past the end of the medium.
        medium = try Self.luks1()
        medium.bytes.replaceSubrange(248..<252, with: [0x7f, 0xff, 0xff, 0x00])
        expectRefused(medium, "is not between the header and the payload")
        // The payload past the end.
        medium = try Self.luks1()
        medium.bytes.replaceSubrange(104..<108, with: [0xff, 0xff, 0xff, 0xff])
        expectRefused(medium, "payload offset")
        // A key of 1 GiB.
        medium = try Self.luks1()
        medium.bytes.replaceSubrange(108..<112, with: [0x40, 0, 0, 0])
        expectRefused(medium, "AES-XTS takes 32 or 64")
        // Another cipher.
        medium = try Self.luks1()
        medium.bytes.replaceSubrange(40..<51, with: Array("cbc-essiv:s".utf8))
        expectRefused(medium, "not supported")
        // A slot state that is neither active nor inactive.
        medium = try Self.luks1()
        medium.bytes.replaceSubrange(208 + 48..<212 + 48, with: [1, 2, 3, 4])
        expectRefused(medium, "invalid state")
        // Two slots sharing an area.
        medium = try Self.luks1()
        _ = try LUKSFormatter.addKey(medium, passphrase: secret("p"), newPassphrase: secret("q"), kdf: tinyPBKDF2)
        medium.bytes.replaceSubrange(208 + 48 + 40..<208 + 48 + 44, with: Array(medium.bytes[248..<252]))
        expectRefused(medium, "overlaps")
    }

    /// Rewrites the JSON of both LUKS2 copies through `edit` and checksums them again,
    /// as a hostile writer would.
    func editJSON(_ medium: MemoryMedium, _ edit: (String) -> String) throws {
        let sha256 = try HashFunction(named: "sha256")
        for offset in [0, 16384] {
            var area = Array(medium.bytes[offset..<offset + 16384])
            let json = String(decoding: area[4096...].prefix(while: { $0 != 0 }), as: UTF8.self)
            let edited = Array(edit(json).utf8)
            #expect(edited.count < 12288)
            area.replaceSubrange(4096..<16384, with: edited + [UInt8](repeating: 0, count: 12288 - edited.count))
            area.replaceSubrange(448..<512, with: [UInt8](repeating: 0, count: 64))
            let sum = area.withUnsafeBytes { sha256.digest($0) }
            area.replaceSubrange(448..<448 + sum.count, with: sum)
            medium.bytes.replaceSubrange(offset..<offset + 16384, with: area)
        }
    }

    @Test func luks2ValuesOutOfRange() throws {
        let cases: [(String, String, String)] = [
            ("\"stripes\":4000", "\"stripes\":4000000000", "stripes"),
            ("\"offset\":\"32768\"", "\"offset\":\"999999999999\"", "outside the key slots area"),
            ("\"offset\":\"16777216\"", "\"offset\":\"99999999999999\"", "data offset"),
            ("\"offset\":\"16777216\"", "\"offset\":\"-5\"", "not a decimal size"),
            ("\"size\":\"dynamic\"", "\"size\":\"1099511627776\"", "runs past"),
            ("\"sector_size\":512", "\"sector_size\":333", "sector size"),
            ("\"type\":\"crypt\"", "\"type\":\"linear\"", "not supported"),
            ("\"encryption\":\"aes-xts-plain64\",\"iv_tweak\"", "\"encryption\":\"serpent-xts-plain64\",\"iv_tweak\"", "not supported"),
            ("\"config\":{", "\"config\":{\"requirements\":{\"mandatory\":[\"online-reencrypt-v2\"]},", "online-reencrypt-v2"),
            ("\"keyslots_size\":\"16744448\"", "\"keyslots_size\":\"4096\"", "outside the key slots area"),
            ("\"json_size\":\"12288\"", "\"json_size\":\"4096\"", "json_size"),
            ("\"key_size\":64", "\"key_size\":1073741824", "no key slot opens"),
            ("\"iterations\":1000", "\"iterations\":0", "iterations"),
            ("{", "[", "JSON does not parse"),
        ]
        for (from, to, message) in cases {
            let medium = try Self.luks2()
            var found = false
            try editJSON(medium) { json in
                found = json.contains(from)
                return json.replacingOccurrences(of: from, with: to)
            }
            #expect(found, "the formatted JSON has no \(from)")
            expectRefused(medium, message)
        }
    }

    /// An Argon2 slot asking for more memory than the machine can give.
    @Test func luks2ArgonMemoryIsBounded() throws {
        let medium = MemoryMedium(size: (16 << 20) + 65536)
        _ = try LUKSFormatter.format(medium, version: .luks2, passphrase: secret("p"), kdf: tinyArgon2)
        try editJSON(medium) { $0.replacingOccurrences(of: "\"memory\":32", with: "\"memory\":4194304000") }
        expectRefused(medium, "no key slot opens")
        #expect(try LUKSHeader.read(from: medium).dump.keySlots.first?.problem?.contains("memory") == true)
    }
}
