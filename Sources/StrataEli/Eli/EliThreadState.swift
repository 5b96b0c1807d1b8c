import Strata

#if canImport(Glibc)
import Glibc
#endif

/// What one thread keeps for one eli geom: the cipher's OpenSSL contexts, a sector of
/// scratch for a sector split between two data segments, and the buffers writes are
/// encrypted into, so that steady I/O allocates nothing.
final class EliThreadState {
    let cipher: XTSCipher
    /// One encryption sector, for a sector that straddles two segments of a request.
    let scratch: UnsafeMutableRawPointer
    private var buffers: [[UnsafeMutableRawPointer]]

    /// Buffer sizes are powers of two from 4 KiB.
    static let smallestShift = 12
    static let classCount = 40 - smallestShift
    /// Bytes of buffers of one size a thread keeps for reuse (at least two buffers).
    static let bytesKeptPerSize = 8 << 20
    static let alignment = 4096

    init(key: SecretBytes) {
        do {
            cipher = try XTSCipher(key: key)
        } catch {
            // The geom made a cipher with this key before it served a request.
            preconditionFailure("AES-XTS refused a key it accepted before: \(error)")
        }
        scratch = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: Self.alignment)
        buffers = Array(repeating: [], count: Self.classCount)
    }

    deinit {
        scratch.deallocate()
        for size in buffers {
            for buffer in size { buffer.deallocate() }
        }
    }

    /// The size class of a buffer of `count` bytes.
    @inline(__always)
    static func sizeClass(_ count: Int) -> Int {
        let shift = count <= 1 << smallestShift ? smallestShift : Int.bitWidth - (count - 1).leadingZeroBitCount
        return shift - smallestShift
    }

    /// A buffer of at least `count` bytes, aligned for direct I/O.
    @inline(__always)
    func takeBuffer(_ count: Int) -> UnsafeMutableRawPointer {
        let size = Self.sizeClass(count)
        if let buffer = buffers[size].popLast() { return buffer }
        return UnsafeMutableRawPointer.allocate(byteCount: 1 << (size + Self.smallestShift), alignment: Self.alignment)
    }

    /// Takes back a buffer `takeBuffer(count)` gave, on this thread or another's.
    @inline(__always)
    func giveBack(_ buffer: UnsafeMutableRawPointer, count: Int) {
        let size = Self.sizeClass(count)
        let limit = max(2, Self.bytesKeptPerSize >> (size + Self.smallestShift))
        if buffers[size].count < limit {
            if buffers[size].capacity == 0 { buffers[size].reserveCapacity(limit) }
            buffers[size].append(buffer)
        } else {
            buffer.deallocate()
        }
    }
}
