#if canImport(Glibc)
import Glibc
#endif
import CStrataSystem
import Strata

extension FileDisk {
    /// Whether the file's reads and writes go through the page cache (qemu's `cache=`).
    public enum Cache: String, Sendable, CaseIterable {
        /// Through the page cache, as a program that opens a file plainly: reads the
        /// cache holds cost no I/O, and writes are on the device after a FLUSH or with FUA.
        case writeback
        /// `O_DIRECT`: every read and write goes to the device, and the page cache holds
        /// none of the file (qemu's `cache=none`). FLUSH still empties the device's
        /// write cache, and FUA still writes through it. In a topology file, `cache: none`.
        case direct = "none"
    }

    /// The alignment direct I/O needs: of a buffer's address (`memory`), and of a file
    /// offset and length (`offset`), both powers of two.
    public struct DirectAlignment: Sendable, Equatable, CustomStringConvertible {
        public let memory: Int
        public let offset: Int

        public init(memory: Int, offset: Int) {
            self.memory = memory
            self.offset = offset
        }

        /// Whether `data` can go to the kernel as it is: every segment starts at an
        /// aligned address and is a whole number of aligned lengths, so each operation
        /// on it (one per segment) is aligned too. Requests' offsets and lengths are
        /// whole sectors, and the sector size is at least `offset`.
        @inline(__always)
        func admits(_ data: BioData) -> Bool {
            var aligned = true
            data.forEachSegment { piece in
                if Int(bitPattern: piece.baseAddress) & (memory - 1) != 0 || piece.count & (offset - 1) != 0 {
                    aligned = false
                }
            }
            return aligned
        }

        public var description: String { "memory \(memory), offset \(offset)" }
    }

    /// `cache: none` cannot be had for this file as asked: the key and value that asked
    /// for it, and why. The topology file reports it as a mistake in that key.
    public struct DirectIORefused: Error, Sendable, CustomStringConvertible {
        public let path: String
        /// The setting that cannot be had: `cache`, `sector-size` or `io`.
        public let key: String
        public let value: String
        public let problem: String

        public var description: String { "file disk \(path): \(key) \(value): \(problem)" }
    }

    /// Turns `O_DIRECT` on for `descriptor` and finds its alignment.
    ///
    /// A file in memory (tmpfs, ramfs) is refused: its pages are the file itself, so
    /// there is no page cache to bypass, and the kernel's O_DIRECT there copies through
    /// those same pages. So is a file system that refuses O_DIRECT or says its files
    /// have no direct I/O. And so is a sector size below the offset alignment: requests
    /// are whole sectors, and a smaller one would fail with EINVAL; the sector size is
    /// what the clients see (a guest makes its file system for it), so it is not raised
    /// behind the configuration's back.
    /// - Throws: `DirectIORefused` for all of these; `StrataError` when statx fails.
    static func enableDirectIO(_ descriptor: Int32, path: String, sectorSize: Int, isBlockDevice: Bool)
        throws -> DirectAlignment {
        if !isBlockDevice && isInMemory(descriptor) {
            throw DirectIORefused(path: path, key: "cache", value: "none",
                                  problem: "is not possible on tmpfs or ramfs: the file's pages are the file itself, with no page cache to bypass; use cache: writeback")
        }
        var memory: UInt32 = 0, offset: UInt32 = 0
        let reported = strata_direct_alignment(descriptor, &memory, &offset)
        guard reported >= 0 else { throw StrataError(BioError(errno: errno), "statx \(path)") }
        if reported == 1 && (memory == 0 || offset == 0) {
            throw DirectIORefused(path: path, key: "cache", value: "none",
                                  problem: "is not possible: its file system does not do direct I/O (O_DIRECT); use cache: writeback")
        }
        guard strata_set_direct(descriptor, 1) == 0 else {
            let failure = errno
            if failure == EINVAL {
                throw DirectIORefused(path: path, key: "cache", value: "none",
                                      problem: "is not possible: its file system refuses O_DIRECT; use cache: writeback")
            }
            throw StrataError(BioError(errno: failure), "fcntl(O_DIRECT) \(path)")
        }
        if reported == 0 {
            // The kernel does not say (before 6.1, or a file system that does not
            // report it): find out by reading.
            guard strata_probe_direct_alignment(descriptor, &memory, &offset) == 0 else {
                let failure = errno
                _ = strata_set_direct(descriptor, 0)
                throw DirectIORefused(path: path, key: "cache", value: "none",
                                      problem: "is not possible: no direct read of 512 to 65536 bytes works on it (\(BioError(errno: failure)))")
            }
        }
        let alignment = DirectAlignment(memory: Int(memory), offset: Int(offset))
        do {
            try checkSectorSize(sectorSize, against: alignment, path: path)
        } catch {
            _ = strata_set_direct(descriptor, 0)
            throw error
        }
        return alignment
    }

    /// Refuses a sector size below the offset alignment: requests are whole sectors,
    /// and one of a smaller sector would fail with EINVAL.
    static func checkSectorSize(_ sectorSize: Int, against alignment: DirectAlignment, path: String) throws {
        guard sectorSize >= alignment.offset else {
            throw DirectIORefused(path: path, key: "sector-size", value: "\(sectorSize)",
                                  problem: "is below the \(alignment.offset)-byte alignment direct I/O needs on it (cache: none); use sector-size \(alignment.offset) or cache: writeback")
        }
    }
}

/// A buffer aligned for direct I/O that grows to the largest request it has carried
/// and is kept: a worker thread owns one, so a request whose memory is not aligned is
/// copied through it without an allocation once the worker has seen its size.
struct AlignedBuffer: ~Copyable {
    let alignment: Int
    private(set) var base: UnsafeMutableRawPointer?
    private(set) var capacity = 0

    init(alignment: Int) {
        // A page at least: it costs nothing more and suits every device.
        self.alignment = max(alignment, 4096)
    }

    /// At least `count` bytes, aligned (the contents are not kept when it grows).
    mutating func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if let base, capacity >= count { return base }
        base?.deallocate()
        capacity = max(count, alignment)
        let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: alignment)
        base = grown
        return grown
    }

    deinit { base?.deallocate() }
}
