import Strata

/// LUKS's anti-forensic splitter. A key slot does not store the master key encrypted
/// as is, but spread over `stripes` blocks of the key's size: every block is needed to
/// get the key back, so destroying any part of the slot's area (as removing a key does)
/// destroys the key for good, even on a disk that remaps worn sectors and keeps old
/// copies of a few of them.
///
/// Splitting: blocks 0..<stripes-1 are random; a running value `d` starts at zero and
/// becomes `diffuse(d xor block)` for each; the last block is `d xor key`. Merging runs
/// the same chain over the stored blocks and xors the last one. `diffuse` hashes the
/// block in pieces of the hash's size, each with its big-endian 32-bit index in front
/// (the last partial piece too, truncated), which is what makes every bit of every
/// block matter.
public struct AntiForensicSplitter {
    public let hash: HashFunction
    public let stripes: Int

    /// The stripes LUKS1 and cryptsetup's LUKS2 key slots use.
    public static let defaultStripes = 4000
    /// Sixteen times the stripes every LUKS tool writes, and a bound on the memory a
    /// hostile header can make us allocate (with a 64-byte key: 4 MiB a slot).
    public static let maximumStripes = 65_536

    public init(hash: HashFunction, stripes: Int = defaultStripes) throws {
        guard stripes >= 1, stripes <= Self.maximumStripes else {
            throw StrataError(.invalid, "anti-forensic stripes \(stripes) out of range 1...\(Self.maximumStripes)")
        }
        self.hash = hash
        self.stripes = stripes
    }

    /// Bytes the split form of a `keySize`-byte key takes.
    public func splitSize(keySize: Int) -> Int { keySize * stripes }

    /// The split form of `key`: `stripes` blocks of `key.count` bytes.
    public func split(_ key: SecretBytes) throws -> SecretBytes {
        let size = key.count
        let running = SecretBytes(count: size) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
        return try SecretBytes(count: size * stripes) { out in
            try fillRandom(UnsafeMutableRawBufferPointer(rebasing: out[0..<size * (stripes - 1)]))
            running.withBytes { runningBytes in
                let d = UnsafeMutableRawBufferPointer(mutating: runningBytes)
                for stripe in 0..<stripes - 1 {
                    let block = out[stripe * size..<(stripe + 1) * size]
                    for index in 0..<size { d[index] ^= block[block.startIndex + index] }
                    diffuse(d)
                }
                key.withBytes { keyBytes in
                    let last = (stripes - 1) * size
                    for index in 0..<size { out[last + index] = d[index] ^ keyBytes[index] }
                }
            }
        }
    }

    /// The key that the split form `material` (`stripes` blocks of `keySize` bytes) holds.
    public func merge(_ material: UnsafeRawBufferPointer, keySize: Int) throws -> SecretBytes {
        guard keySize > 0, material.count >= keySize * stripes else {
            throw StrataError(.invalid, "anti-forensic material of \(material.count) bytes is short of \(stripes) stripes of \(keySize) bytes")
        }
        let running = SecretBytes(count: keySize) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
        return running.withBytes { runningBytes in
            let d = UnsafeMutableRawBufferPointer(mutating: runningBytes)
            for stripe in 0..<stripes - 1 {
                for index in 0..<keySize { d[index] ^= material[stripe * keySize + index] }
                diffuse(d)
            }
            let last = (stripes - 1) * keySize
            return SecretBytes(count: keySize) { out in
                for index in 0..<keySize { out[index] = d[index] ^ material[last + index] }
            }
        }
    }

    /// Replaces `block` by its diffusion, in place.
    func diffuse(_ block: UnsafeMutableRawBufferPointer) {
        let digestSize = hash.size
        var index: UInt32 = 0
        var start = 0
        while start < block.count {
            let length = min(digestSize, block.count - start)
            var bigEndianIndex = index.bigEndian
            let digest = withUnsafeBytes(of: &bigEndianIndex) { prefix in
                hash.digest(prefix, UnsafeRawBufferPointer(rebasing: block[start..<start + length]))
            }
            for offset in 0..<length { block[start + offset] = digest[offset] }
            start += length
            index += 1
        }
    }
}
