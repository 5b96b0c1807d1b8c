import Strata
import StrataEli
import Testing

@Suite struct AntiForensicSplitterTests {
    @Test(arguments: [(32, "sha256"), (64, "sha256"), (64, "sha1"), (64, "sha512"), (20, "sha256")])
    func splitThenMergeGivesTheKey(keySize: Int, hash: String) throws {
        let splitter = try AntiForensicSplitter(hash: HashFunction(named: hash), stripes: 4000)
        let key = try SecretBytes.random(count: keySize)
        let split = try splitter.split(key)
        #expect(split.count == keySize * 4000)
        let merged = try split.withBytes { try splitter.merge($0, keySize: keySize) }
        #expect(merged.isEqual(to: key))
    }

    /// Every stripe matters: changing one bit anywhere gives another key.
    @Test func oneChangedBitLosesTheKey() throws {
        let splitter = try AntiForensicSplitter(hash: HashFunction(named: "sha256"), stripes: 50)
        let key = try SecretBytes.random(count: 64)
        var split = try splitter.split(key).withBytes { Array($0) }
        split[17 * 64 + 5] ^= 0x10
        let merged = try split.withUnsafeBytes { try splitter.merge($0, keySize: 64) }
        #expect(!merged.isEqual(to: key))
    }

    /// One stripe is the key itself; a diffusion of a zero block is the hash of the
    /// big-endian index followed by zeros (the LUKS definition, with a partial block).
    @Test func twoStripesFollowTheDefinition() throws {
        let hash = try HashFunction(named: "sha256")
        let splitter = try AntiForensicSplitter(hash: hash, stripes: 2)
        // Stored stripes: s0 = zeros, s1 = diffuse(zeros) xor key; key = 40 bytes (a partial block).
        let key = (0..<40).map { UInt8($0) }
        let zeros = [UInt8](repeating: 0, count: 32)
        let index0: [UInt8] = [0, 0, 0, 0]
        let index1: [UInt8] = [0, 0, 0, 1]
        let block0 = index0.withUnsafeBytes { i in zeros.withUnsafeBytes { hash.digest(i, $0) } }
        let block1 = index1.withUnsafeBytes { i in zeros[0..<8].withUnsafeBytes { hash.digest(i, $0) } }
        let diffused = block0 + Array(block1[0..<8])
        let stored = [UInt8](repeating: 0, count: 40) + zip(diffused, key).map { $0 ^ $1 }
        let merged = try stored.withUnsafeBytes { try splitter.merge($0, keySize: 40) }
        #expect(merged.withBytes { Array($0) } == key)
    }

    @Test func refusesHostileStripes() throws {
        let hash = try HashFunction(named: "sha256")
        #expect(throws: StrataError.self) { try AntiForensicSplitter(hash: hash, stripes: 0) }
        #expect(throws: StrataError.self) { try AntiForensicSplitter(hash: hash, stripes: Int(UInt32.max)) }
    }
}
