import Foundation
import Strata
import StrataEli
import Testing

/// Formatting, unlocking and changing keys in memory, without outside tools; and what
/// a power cut between (or during) the writes of a key change leaves.
@Suite struct LUKSFormatTests {
    static func size(_ version: LUKSVersion) -> Int { version == .luks2 ? (16 << 20) + 65536 : (2 << 20) + 65536 }
    static func kdf(_ version: LUKSVersion) -> KDFParameters { version == .luks2 ? tinyArgon2 : tinyPBKDF2 }

    @Test(arguments: [LUKSVersion.luks1, .luks2])
    func formatsUnlocksAndChangesKeys(version: LUKSVersion) throws {
        let medium = MemoryMedium(size: Self.size(version))
        let volume = try LUKSFormatter.format(medium, version: version, passphrase: secret("one"), kdf: Self.kdf(version))
        #expect(volume.version == version)
        #expect(volume.masterKey.count == 64)
        #expect(volume.payloadOffset == (version == .luks2 ? 16 << 20 : 2 << 20))
        #expect(volume.cipher == "aes-xts-plain64")
        let header = try LUKSHeader.read(from: medium)
        #expect(header.version == version)
        #expect(header.uuid == volume.uuid)
        #expect(header.uuid.count == 36)
        #expect(header.activeKeySlots == [0])
        #expect(header.dump.keySlots.first?.kdf == Self.kdf(version))
        #expect(header.dump.payloadOffset == volume.payloadOffset)
        #expect(try header.unlock(passphrase: secret("one")).masterKey.isEqual(to: volume.masterKey))

        #expect(try LUKSFormatter.addKey(medium, passphrase: secret("one"), newPassphrase: secret("two"), kdf: Self.kdf(version)) == 1)
        #expect(try LUKSFormatter.addKey(medium, passphrase: secret("two"), newPassphrase: secret("three"), kdf: Self.kdf(version),
                                         slot: 6) == 6)
        let taken = #expect(throws: StrataError.self) {
            try LUKSFormatter.addKey(medium, passphrase: secret("two"), newPassphrase: secret("four"), kdf: Self.kdf(version), slot: 6)
        }
        #expect(taken?.code == .exists)
        #expect(try LUKSHeader.read(from: medium).activeKeySlots == [0, 1, 6])
        for passphrase in ["one", "two", "three"] {
            #expect(try LUKSHeader.read(from: medium).unlock(passphrase: secret(passphrase)).masterKey.isEqual(to: volume.masterKey))
        }
        #expect(try LUKSFormatter.removeKey(medium, passphrase: secret("two")) == 1)
        #expect(try LUKSHeader.read(from: medium).activeKeySlots == [0, 6])
        let gone = #expect(throws: StrataError.self) { try LUKSHeader.read(from: medium).unlock(passphrase: secret("two")) }
        #expect(gone?.code == .permission)
        #expect(gone?.message == "no key slot opens with this passphrase")
        // The freed slot (and, in LUKS2, its area) is used again.
        #expect(try LUKSFormatter.addKey(medium, passphrase: secret("three"), newPassphrase: secret("five"), kdf: Self.kdf(version)) == 1)
        #expect(try LUKSHeader.read(from: medium).unlock(passphrase: secret("five")).masterKey.isEqual(to: volume.masterKey))
    }

    @Test func formatRefusesWhatItCannotWrite() throws {
        let small = MemoryMedium(size: 1 << 20)
        #expect((#expect(throws: StrataError.self) {
            try LUKSFormatter.format(small, version: .luks1, passphrase: secret("p"), kdf: tinyPBKDF2)
        })?.code == .noSpace)
        let luks1Sized = MemoryMedium(size: 3 << 20)
        #expect((#expect(throws: StrataError.self) {
            try LUKSFormatter.format(luks1Sized, version: .luks2, passphrase: secret("p"), kdf: tinyArgon2)
        })?.code == .noSpace)
        #expect((#expect(throws: StrataError.self) {
            try LUKSFormatter.format(luks1Sized, version: .luks1, passphrase: secret("p"), kdf: tinyArgon2)
        })?.code == .notSupported)
        #expect((#expect(throws: StrataError.self) {
            try LUKSFormatter.format(luks1Sized, version: .luks1, passphrase: secret("p"), sectorSize: 4096, kdf: tinyPBKDF2)
        })?.code == .notSupported)
        #expect((#expect(throws: StrataError.self) {
            try LUKSFormatter.format(luks1Sized, version: .luks1, passphrase: secret("p"), keySize: 48, kdf: tinyPBKDF2)
        })?.code == .invalid)
        #expect((#expect(throws: StrataError.self) {
            try LUKSFormatter.format(luks1Sized, version: .luks1, passphrase: secret("p"), kdf: .pbkdf2(iterations: 10))
        })?.code == .invalid)
        // Nothing was written by any of these.
        #expect(luks1Sized.writes.isEmpty)
    }

    /// Replays every prefix of a key change's writes (a power cut after each), and
    /// each write torn in half: the volume always opens with the passphrases that open
    /// it both before and after the change, and with the old or the new set.
    @Test(arguments: [LUKSVersion.luks1, .luks2])
    func aPowerCutDuringAKeyChangeLeavesTheVolumeOpenable(version: LUKSVersion) throws {
        let medium = MemoryMedium(size: Self.size(version))
        _ = try LUKSFormatter.format(medium, version: version, passphrase: secret("old"), kdf: tinyPBKDF2)
        _ = try LUKSFormatter.addKey(medium, passphrase: secret("old"), newPassphrase: secret("stays"), kdf: tinyPBKDF2)

        try checkEveryCut(of: medium, change: { medium in
            _ = try LUKSFormatter.addKey(medium, passphrase: secret("stays"), newPassphrase: secret("new"), kdf: tinyPBKDF2)
        }, alwaysOpen: ["old", "stays"], added: "new")
        try checkEveryCut(of: medium, change: { medium in
            _ = try LUKSFormatter.removeKey(medium, passphrase: secret("old"))
        }, alwaysOpen: ["stays"], added: nil)
    }

    private func checkEveryCut(of original: MemoryMedium, change: (MemoryMedium) throws -> Void, alwaysOpen: [String],
                               added: String?) throws {
        let recording = MemoryMedium(copying: original.bytes)
        try change(recording)
        let writes = recording.writes
        #expect(!writes.isEmpty)
        for cut in 0...writes.count {
            for torn in [false, true] where !(torn && cut == writes.count) {
                let state = MemoryMedium(copying: original.bytes)
                for write in writes[0..<cut] { try state.write(write.bytes, at: write.offset) }
                if torn {
                    let write = writes[cut]
                    try state.write(Array(write.bytes[0..<write.bytes.count / 2]), at: write.offset)
                }
                let header = try LUKSHeader.read(from: state)
                for passphrase in alwaysOpen {
                    #expect((try? header.unlock(passphrase: secret(passphrase))) != nil,
                            "cut after \(cut) of \(writes.count) writes\(torn ? " and half of the next" : ""): '\(passphrase)' does not open")
                }
                if let added, cut == writes.count {
                    #expect((try? header.unlock(passphrase: secret(added))) != nil)
                }
            }
        }
        // Then the change for real, for the next one.
        original.bytes = recording.bytes
    }
}

@Suite struct LUKS2HeaderCopyTests {
    /// Of two valid copies, the one with the higher seqid is current, whichever it is.
    @Test func theNewerCopyWins() throws {
        let medium = MemoryMedium(size: (16 << 20) + 65536)
        _ = try LUKSFormatter.format(medium, version: .luks2, passphrase: secret("old"), kdf: tinyPBKDF2)
        let oldPrimary = Array(medium.bytes[0..<16384])
        _ = try LUKSFormatter.addKey(medium, passphrase: secret("old"), newPassphrase: secret("new"), kdf: tinyPBKDF2)
        #expect(try LUKSHeader.read(from: medium).dump.sequence == 2)
        // The old primary back (valid, seqid 1), the secondary at seqid 2: the secondary is current.
        medium.bytes.replaceSubrange(0..<16384, with: oldPrimary)
        let header = try LUKSHeader.read(from: medium)
        #expect(header.dump.sequence == 2)
        #expect(header.activeKeySlots == [0, 1])
        #expect(try header.unlock(passphrase: secret("new")).masterKey.isEqual(to: try header.unlock(passphrase: secret("old")).masterKey))
        // The next change writes both copies again, at seqid 3.
        _ = try LUKSFormatter.removeKey(medium, passphrase: secret("old"))
        let primaryOnly = MemoryMedium(copying: medium.bytes)
        primaryOnly.bytes.replaceSubrange(16384..<32768, with: [UInt8](repeating: 0, count: 16384))
        #expect(try LUKSHeader.read(from: primaryOnly).dump.sequence == 3)
        let secondaryOnly = MemoryMedium(copying: medium.bytes)
        secondaryOnly.bytes.replaceSubrange(0..<16384, with: [UInt8](repeating: 0, count: 16384))
        #expect(try LUKSHeader.read(from: secondaryOnly).dump.sequence == 3)
        #expect(try LUKSHeader.read(from: secondaryOnly).activeKeySlots == [1])
    }

    /// A secondary copy of another volume (even a newer one) is not taken for this one's.
    @Test func aSecondaryOfAnotherVolumeIsIgnored() throws {
        let other = MemoryMedium(size: (16 << 20) + 65536)
        _ = try LUKSFormatter.format(other, version: .luks2, passphrase: secret("a"), kdf: tinyPBKDF2)
        _ = try LUKSFormatter.addKey(other, passphrase: secret("a"), newPassphrase: secret("b"), kdf: tinyPBKDF2)
        let medium = MemoryMedium(size: (16 << 20) + 65536)
        let volume = try LUKSFormatter.format(medium, version: .luks2, passphrase: secret("c"), kdf: tinyPBKDF2)
        medium.bytes.replaceSubrange(16384..<32768, with: other.bytes[16384..<32768])
        let header = try LUKSHeader.read(from: medium)
        #expect(header.uuid == volume.uuid)
        #expect(header.dump.sequence == 1)
        #expect(try header.unlock(passphrase: secret("c")).masterKey.isEqual(to: volume.masterKey))
    }

    /// A LUKS1 key added with another hash takes the header's.
    @Test func aLUKS1KeyTakesTheHeadersHash() throws {
        let medium = MemoryMedium(size: (2 << 20) + 65536)
        _ = try LUKSFormatter.format(medium, version: .luks1, passphrase: secret("a"), kdf: .pbkdf2(hash: "sha1", iterations: 1000))
        _ = try LUKSFormatter.addKey(medium, passphrase: secret("a"), newPassphrase: secret("b"), kdf: tinyPBKDF2)
        let header = try LUKSHeader.read(from: medium)
        #expect(header.dump.keySlots.map(\.kdf) == [.pbkdf2(hash: "sha1", iterations: 1000), .pbkdf2(hash: "sha1", iterations: 1000)])
        #expect(try header.unlock(passphrase: secret("b")).masterKey.isEqual(to: try header.unlock(passphrase: secret("a")).masterKey))
    }
}
