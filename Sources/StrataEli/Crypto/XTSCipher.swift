import CCrypto
#if canImport(Glibc)
import Glibc
#endif
import Strata

/// AES-XTS over whole sectors with the `plain64` tweak (the sector's number, little
/// endian, in a 16-byte block), as dm-crypt, LUKS and qemu use it. AES-128-XTS takes a
/// 32-byte key, AES-256-XTS a 64-byte one.
///
/// It holds OpenSSL contexts, which one thread may use at a time: a geom keeps one per
/// thread (`PerThread`). OpenSSL picks AES-NI where the processor has it.
public final class XTSCipher {
    private let encryptor: OpaquePointer
    private let decryptor: OpaquePointer
    /// Where each context keeps its IV, written with each sector's tweak; nil where
    /// OpenSSL does not use a tweak written there, and the context is initialised with it
    /// for each sector instead (at about half the speed for 512-byte sectors).
    private let encryptorTweak: UnsafeMutableRawPointer?
    private let decryptorTweak: UnsafeMutableRawPointer?

    /// Key sizes in bytes that AES-XTS takes.
    public static let keySizes = [32, 64]

    /// `tweaksInPlace: false` initialises the contexts with each sector's tweak even where
    /// OpenSSL would take it written in place: the tests check that both agree.
    init(key secret: SecretBytes, tweaksInPlace: Bool) throws {
        let cipher: OpaquePointer?
        switch secret.count {
        case 32: cipher = EVP_aes_128_xts()
        case 64: cipher = EVP_aes_256_xts()
        default: throw StrataError(.invalid, "AES-XTS takes a 256- or 512-bit key, not \(secret.count * 8) bits")
        }
        guard let encryptor = EVP_CIPHER_CTX_new(), let decryptor = EVP_CIPHER_CTX_new() else {
            throw StrataError(.noMemory, "no OpenSSL cipher context")
        }
        self.encryptor = encryptor
        self.decryptor = decryptor
        let accepted = secret.withBytes { key in
            let bytes = key.baseAddress!.assumingMemoryBound(to: UInt8.self)
            return EVP_EncryptInit_ex(encryptor, cipher, nil, bytes, nil) == 1
                && EVP_DecryptInit_ex(decryptor, cipher, nil, bytes, nil) == 1
        }
        guard accepted else {
            // Both contexts are stored, so deinit runs and frees them (freeing them here
            // too was a double free). OpenSSL refuses a key whose two halves are equal.
            encryptorTweak = nil
            decryptorTweak = nil
            throw StrataError(.invalid, "AES-XTS refused the key: \(opensslError())")
        }
        encryptorTweak = tweaksInPlace ? Self.tweakInPlace(encryptor) : nil
        decryptorTweak = tweaksInPlace ? Self.tweakInPlace(decryptor) : nil
    }

    public convenience init(key secret: SecretBytes) throws {
        try self.init(key: secret, tweaksInPlace: true)
    }

    deinit {
        // Frees the key schedule after wiping it.
        EVP_CIPHER_CTX_free(encryptor)
        EVP_CIPHER_CTX_free(decryptor)
    }

    /// Where `context` keeps its IV, if a tweak written there is the one the next update
    /// uses: two sectors with different tweaks come out as they do from a context
    /// initialised with each tweak.
    private static func tweakInPlace(_ context: OpaquePointer) -> UnsafeMutableRawPointer? {
        guard let iv = strata_cipher_iv(context), EVP_CIPHER_CTX_get_iv_length(context) == 16 else { return nil }
        let sector = 512
        let input = UnsafeMutableRawBufferPointer.allocate(byteCount: sector, alignment: 16)
        let viaInit = UnsafeMutableRawBufferPointer.allocate(byteCount: sector, alignment: 16)
        let inPlace = UnsafeMutableRawBufferPointer.allocate(byteCount: sector, alignment: 16)
        defer {
            for buffer in [input, viaInit, inPlace] { buffer.deallocate() }
        }
        for index in 0..<sector { input[index] = UInt8(truncatingIfNeeded: index &* 31 &+ 7) }
        for tweak: UInt64 in [3, 0x0123_4567_89AB] {
            var block: (UInt64, UInt64) = (tweak.littleEndian, 0)
            var written: Int32 = 0
            let initialised = withUnsafeBytes(of: &block) { bytes in
                EVP_CipherInit_ex(context, nil, nil, nil, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), -1) == 1
            }
            guard initialised,
                  EVP_CipherUpdate(context, viaInit.baseAddress!.assumingMemoryBound(to: UInt8.self), &written,
                                   input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(sector)) == 1
            else { return nil }
            // Another tweak first, so that the one written below has something to replace.
            block = ((tweak &+ 1).littleEndian, 0)
            _ = withUnsafeBytes(of: &block) { bytes in
                EVP_CipherInit_ex(context, nil, nil, nil, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), -1)
            }
            block = (tweak.littleEndian, 0)
            withUnsafeBytes(of: &block) { UnsafeMutableRawPointer(iv).copyMemory(from: $0.baseAddress!, byteCount: 16) }
            guard EVP_CipherUpdate(context, inPlace.baseAddress!.assumingMemoryBound(to: UInt8.self), &written,
                                   input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(sector)) == 1,
                  memcmp(viaInit.baseAddress!, inPlace.baseAddress!, sector) == 0
            else { return nil }
        }
        return UnsafeMutableRawPointer(iv)
    }

    /// Whether each sector's tweak is written into the contexts (the fast way) rather
    /// than each context initialised with it.
    public var writesTweaksInPlace: Bool { encryptorTweak != nil && decryptorTweak != nil }

    /// Encrypts `count` bytes (whole sectors of `sectorSize`) from `input` to `output`,
    /// the first sector's tweak `firstSector`, each next one `sectorStep` more (8 for
    /// 4096-byte sectors numbered in 512-byte units). `input` may be `output`.
    @inline(__always)
    public func encrypt(_ input: UnsafeRawPointer, to output: UnsafeMutableRawPointer, count: Int, sectorSize: Int,
                        firstSector: UInt64, sectorStep: UInt64 = 1) {
        run(encryptor, encryptorTweak, input, output, count, sectorSize, firstSector, sectorStep)
    }

    /// Decrypts `count` bytes (whole sectors) from `input` to `output`, which may be the same.
    @inline(__always)
    public func decrypt(_ input: UnsafeRawPointer, to output: UnsafeMutableRawPointer, count: Int, sectorSize: Int,
                        firstSector: UInt64, sectorStep: UInt64 = 1) {
        run(decryptor, decryptorTweak, input, output, count, sectorSize, firstSector, sectorStep)
    }

    private func run(_ context: OpaquePointer, _ tweakInPlace: UnsafeMutableRawPointer?, _ input: UnsafeRawPointer,
                     _ output: UnsafeMutableRawPointer, _ count: Int, _ sectorSize: Int, _ firstSector: UInt64,
                     _ sectorStep: UInt64) {
        // The tweak: the sector number, little endian, zero-padded to 16 bytes.
        var block: (UInt64, UInt64) = (0, 0)
        tweakInPlace?.storeBytes(of: UInt64(0), toByteOffset: 8, as: UInt64.self)
        var sector = firstSector
        var at = 0
        var written: Int32 = 0
        while at < count {
            let tweaked: Bool
            if let tweakInPlace {
                tweakInPlace.storeBytes(of: sector.littleEndian, as: UInt64.self)
                tweaked = true
            } else {
                block.0 = sector.littleEndian
                tweaked = withUnsafeBytes(of: &block) { iv in
                    EVP_CipherInit_ex(context, nil, nil, nil, iv.baseAddress!.assumingMemoryBound(to: UInt8.self), -1) == 1
                }
            }
            let done = tweaked && EVP_CipherUpdate(context, (output + at).assumingMemoryBound(to: UInt8.self), &written,
                                                   (input + at).assumingMemoryBound(to: UInt8.self), Int32(sectorSize)) == 1
            // Only a length outside 16 bytes to 16 MiB fails, which callers never pass.
            precondition(done, "AES-XTS failed on a \(sectorSize)-byte sector: \(opensslError())")
            at += sectorSize
            sector &+= sectorStep
        }
    }
}
