import CCrypto
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

    /// Key sizes in bytes that AES-XTS takes.
    public static let keySizes = [32, 64]

    public init(key secret: SecretBytes) throws {
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
            throw StrataError(.invalid, "AES-XTS refused the key: \(opensslError())")
        }
    }

    deinit {
        // Frees the key schedule after wiping it.
        EVP_CIPHER_CTX_free(encryptor)
        EVP_CIPHER_CTX_free(decryptor)
    }

    /// Encrypts `count` bytes (whole sectors of `sectorSize`) from `input` to `output`,
    /// the first sector numbered `firstSector`. `input` may be `output`.
    @inline(__always)
    public func encrypt(_ input: UnsafeRawPointer, to output: UnsafeMutableRawPointer, count: Int, sectorSize: Int,
                        firstSector: UInt64) {
        run(encryptor, input, output, count, sectorSize, firstSector)
    }

    /// Decrypts `count` bytes (whole sectors) from `input` to `output`, which may be the same.
    @inline(__always)
    public func decrypt(_ input: UnsafeRawPointer, to output: UnsafeMutableRawPointer, count: Int, sectorSize: Int,
                        firstSector: UInt64) {
        run(decryptor, input, output, count, sectorSize, firstSector)
    }

    private func run(_ context: OpaquePointer, _ input: UnsafeRawPointer, _ output: UnsafeMutableRawPointer,
                     _ count: Int, _ sectorSize: Int, _ firstSector: UInt64) {
        // The tweak: the sector number, little endian, zero-padded to 16 bytes.
        var tweak: (UInt64, UInt64) = (0, 0)
        var sector = firstSector
        var at = 0
        while at < count {
            tweak.0 = sector.littleEndian
            let done = withUnsafeBytes(of: &tweak) { iv -> Bool in
                var written: Int32 = 0
                return EVP_CipherInit_ex(context, nil, nil, nil, iv.baseAddress!.assumingMemoryBound(to: UInt8.self), -1) == 1
                    && EVP_CipherUpdate(context, (output + at).assumingMemoryBound(to: UInt8.self), &written,
                                        (input + at).assumingMemoryBound(to: UInt8.self), Int32(sectorSize)) == 1
            }
            // Only a length outside 16 bytes to 16 MiB fails, which callers never pass.
            precondition(done, "AES-XTS failed on a \(sectorSize)-byte sector: \(opensslError())")
            at += sectorSize
            sector &+= 1
        }
    }
}
