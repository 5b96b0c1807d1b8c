import CCrypto
import Strata

/// A hash function by the name LUKS headers give it (`sha256`, `sha1`, `sha512`,
/// `ripemd160`...), as OpenSSL knows it. OpenSSL's digest descriptions are static and
/// never change, so the handle may be shared.
public struct HashFunction: @unchecked Sendable {
    public let name: String
    let md: OpaquePointer
    /// Bytes of a digest.
    public let size: Int

    public init(named name: String) throws {
        guard let md = EVP_get_digestbyname(name) else {
            throw StrataError(.notSupported, "hash '\(name)' is not one OpenSSL knows")
        }
        self.name = name
        self.md = md
        size = Int(EVP_MD_get_size(md))
    }

    /// The digest of the pieces, hashed in order.
    public func digest(_ pieces: UnsafeRawBufferPointer...) -> [UInt8] {
        let context = EVP_MD_CTX_new()!
        defer { EVP_MD_CTX_free(context) }
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard EVP_DigestInit_ex(context, md, nil) == 1 else { fatalError("EVP_DigestInit_ex(\(name)): \(opensslError())") }
        for piece in pieces where piece.count > 0 {
            EVP_DigestUpdate(context, piece.baseAddress, piece.count)
        }
        EVP_DigestFinal_ex(context, &out, &length)
        return Array(out.prefix(Int(length)))
    }

    /// PBKDF2 with HMAC of this hash: `count` bytes of key from `password`.
    public func pbkdf2(password: UnsafeRawBufferPointer, salt: [UInt8], iterations: Int, count: Int) throws -> SecretBytes {
        try SecretBytes(count: count) { out in
            // An empty passphrase still needs a valid pointer.
            var none: CChar = 0
            let done = withUnsafeMutablePointer(to: &none) { empty in
                PKCS5_PBKDF2_HMAC(password.baseAddress?.assumingMemoryBound(to: CChar.self) ?? UnsafePointer(empty),
                                  Int32(password.count), salt, Int32(salt.count), Int32(iterations), md,
                                  Int32(count), out.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
            guard done == 1 else { throw StrataError(.invalid, "PBKDF2-\(name) failed: \(opensslError())") }
        }
    }
}

/// The Argon2 variants LUKS2 key slots use.
public enum Argon2Variant: String, Sendable {
    case argon2i, argon2id

    /// `count` bytes of key from `password`; `memory` in KiB, `time` passes, `lanes`
    /// threads of work.
    public func derive(password: UnsafeRawBufferPointer, salt: [UInt8], time: Int, memory: Int, lanes: Int,
                       count: Int) throws -> SecretBytes {
        try SecretBytes(count: count) { out in
            let type = self == .argon2i ? Argon2_i : Argon2_id
            let result = argon2_hash(UInt32(time), UInt32(memory), UInt32(lanes), password.baseAddress, password.count,
                                     salt, salt.count, out.baseAddress, count, nil, 0, type, UInt32(ARGON2_VERSION_13.rawValue))
            guard result == ARGON2_OK.rawValue else {
                throw StrataError(.invalid, "\(rawValue) failed: \(String(cString: argon2_error_message(result)))")
            }
        }
    }
}
