import CCrypto
import Strata

#if canImport(Glibc)
import Glibc
#endif

/// Key material (a volume's master key, a passphrase, a key slot's derived key) in
/// memory of its own: locked into RAM so that it is never written to swap, and wiped
/// when the last reference goes. Its bytes are set once, when it is made, and only read
/// after that, which is what makes it safe to share between threads.
public final class SecretBytes: @unchecked Sendable {
    private let base: UnsafeMutableRawPointer
    private let mappedSize: Int
    public let count: Int
    /// Whether `mlock` held the pages (it fails past RLIMIT_MEMLOCK; the bytes are
    /// still wiped).
    public let isLocked: Bool

    /// `count` bytes, filled by `fill` (which must write all of them).
    public init(count: Int, fill: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        mappedSize = max(page, (count + page - 1) / page * page)
        guard let mapped = mmap(nil, mappedSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapped != MAP_FAILED else {
            fatalError("mmap of \(mappedSize) bytes for key material failed: errno \(errno)")
        }
        base = mapped
        self.count = count
        isLocked = mlock(mapped, mappedSize) == 0
        // Never in a core dump.
        _ = madvise(mapped, mappedSize, MADV_DONTDUMP)
        do {
            try fill(UnsafeMutableRawBufferPointer(start: mapped, count: count))
        } catch {
            Self.release(base, mappedSize)
            throw error
        }
    }

    /// A copy of `bytes`.
    public convenience init(copying bytes: some Collection<UInt8>) {
        self.init(count: bytes.count) { buffer in _ = buffer.initializeMemory(as: UInt8.self, from: bytes) }
    }

    /// `count` random bytes from OpenSSL's generator.
    public static func random(count: Int) throws -> SecretBytes {
        try SecretBytes(count: count) { buffer in try fillRandom(buffer) }
    }

    deinit { Self.release(base, mappedSize) }

    private static func release(_ base: UnsafeMutableRawPointer, _ size: Int) {
        OPENSSL_cleanse(base, size)
        munlock(base, size)
        munmap(base, size)
    }

    public func withBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Whether two secrets hold the same bytes, in time that does not depend on where
    /// they differ.
    public func isEqual(to other: SecretBytes) -> Bool {
        count == other.count && CRYPTO_memcmp(base, other.base, count) == 0
    }
}

/// Fills `buffer` from OpenSSL's random generator.
public func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) throws {
    guard buffer.count > 0 else { return }
    guard RAND_bytes(buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(buffer.count)) == 1 else {
        throw StrataError(.io, "no random bytes from OpenSSL: \(opensslError())")
    }
}

/// `count` random bytes (salts, UUIDs; not key material).
public func randomBytes(_ count: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    try bytes.withUnsafeMutableBytes { try fillRandom($0) }
    return bytes
}

/// OpenSSL's last error on this thread, as text, for messages.
func opensslError() -> String {
    let code = ERR_get_error()
    guard code != 0 else { return "no detail" }
    var text = [CChar](repeating: 0, count: 256)
    ERR_error_string_n(code, &text, text.count)
    ERR_clear_error()
    return String(decoding: text.prefix(while: { $0 != 0 }).map(UInt8.init(bitPattern:)), as: UTF8.self)
}
