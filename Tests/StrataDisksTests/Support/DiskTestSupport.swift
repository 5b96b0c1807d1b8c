#if canImport(Glibc)
import Glibc
#endif
import Strata
import StrataDisks
import Synchronization

// Helpers for the disk tests. Test macros cannot take noncopyable values (Bio,
// ProviderBio, Atomic), so everything here hands back plain copies.

// MARK: - Issuing requests

/// A consumer a test drives by hand: a plain geom with one consumer attached to the
/// disk's provider and opened with the access asked for.
struct Issuer {
    let topology: Topology
    let geom: Geom
    let consumer: Consumer
    let access: (read: Int, write: Int, exclusive: Int)

    init(on provider: Provider, in topology: Topology, read: Int = 1, write: Int = 1, exclusive: Int = 0,
         name: String = "t-issuer") throws {
        self.topology = topology
        geom = Geom(name: name, className: "TEST")
        try topology.add(geom)
        consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: provider)
        access = (read, write, exclusive)
        try topology.access(consumer, read: read, write: write, exclusive: exclusive)
    }

    /// Gives back the access this issuer holds.
    func close() throws {
        try topology.access(consumer, read: -access.read, write: -access.write, exclusive: -access.exclusive)
    }

    /// Reads `count` bytes at `offset` into a buffer first filled with `fill`; returns
    /// the buffer as it is afterwards, the bytes completed and the completion flags.
    func read(at offset: Int64, count: Int, fill: UInt8 = 0xAA, flags: BioFlags = [])
        throws -> (bytes: [UInt8], completed: Int64, flags: BioFlags) {
        var bytes = [UInt8](repeating: fill, count: count)
        let result = try bytes.withUnsafeMutableBytes { buffer in
            try consumer.performSync(.read, offset: offset, length: Int64(count), buffer: buffer, flags: flags)
        }
        return (bytes, result.completed, result.flags)
    }

    /// Reads `count` bytes at `offset` (no hint: the buffer is always filled).
    func bytes(at offset: Int64, count: Int) throws -> [UInt8] {
        try read(at: offset, count: count).bytes
    }

    /// Writes `bytes` at `offset` and waits; returns the bytes completed.
    @discardableResult
    func write(_ bytes: [UInt8], at offset: Int64, flags: BioFlags = []) throws -> Int64 {
        var copy = bytes
        return try copy.withUnsafeMutableBytes { buffer in
            try consumer.performSync(.write, offset: offset, length: Int64(buffer.count), buffer: buffer, flags: flags)
        }.completed
    }

    /// Sends a request without data (DELETE, WRITE_ZEROES, FLUSH) and waits.
    @discardableResult
    func send(_ command: BioCommand, at offset: Int64 = 0, length: Int64 = 0, flags: BioFlags = [])
        throws -> (completed: Int64, flags: BioFlags) {
        try consumer.performSync(command, offset: offset, length: length, flags: flags)
    }

    func flush() throws { try send(.flush) }

    /// The extents of `offset ..< offset+length`, at most `limit` of them.
    func extents(at offset: Int64, length: Int64, limit: Int = 256) throws -> [BioExtent] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: limit * BioExtent.encodedSize, alignment: 8)
        defer { buffer.deallocate() }
        let completed = try consumer.performSync(.getattr, offset: offset, length: length, buffer: buffer,
                                                 attribute: .extents).completed
        return decodeExtents(buffer, completed: completed)
    }

    /// The Int32 answer of a GETATTR.
    func attributeInt32(_ attribute: BioAttribute) throws -> Int32 {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 4)
        defer { buffer.deallocate() }
        buffer.storeBytes(of: Int32(-1), as: Int32.self)
        try consumer.performSync(.getattr, offset: 0, length: 0, buffer: buffer, attribute: attribute)
        return buffer.load(as: Int32.self)
    }

    /// The string answer of a GETATTR.
    func attributeString(_ attribute: BioAttribute) throws -> String {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
        defer { buffer.deallocate() }
        let completed = try consumer.performSync(.getattr, offset: 0, length: 0, buffer: buffer, attribute: attribute).completed
        return String(decoding: buffer.prefix(Int(completed)).prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// Decodes the extent records of an extents GETATTR's answer buffer.
func decodeExtents(_ buffer: UnsafeMutableRawBufferPointer, completed: Int64) -> [BioExtent] {
    (0..<Int(completed) / BioExtent.encodedSize).map { index in
        let base = index * BioExtent.encodedSize
        return BioExtent(offset: buffer.load(fromByteOffset: base, as: Int64.self),
                         length: buffer.load(fromByteOffset: base + 8, as: Int64.self),
                         kind: .init(rawValue: buffer.load(fromByteOffset: base + 16, as: UInt32.self)))
    }
}

/// The errno a throwing call failed with, or nil when it succeeded.
func errorCode(_ body: () throws -> Void) -> BioError? {
    do {
        try body()
        return nil
    } catch let error as StrataError {
        return error.code
    } catch {
        return .io
    }
}

// MARK: - Data patterns

/// A byte for each media offset: a block written at the wrong place, or a stale one,
/// does not match. `seed` tells apart writes of the same range.
func patternByte(at offset: Int64, seed: UInt8) -> UInt8 {
    let mixed = (offset &* 31) ^ (offset >> 9) ^ (offset >> 17)
    return UInt8(truncatingIfNeeded: mixed &+ Int64(seed) &* 7 &+ 1)
}

func pattern(count: Int, at offset: Int64, seed: UInt8 = 0) -> [UInt8] {
    (0..<count).map { patternByte(at: offset + Int64($0), seed: seed) }
}

/// Writes the pattern for `offset ..< offset+buffer.count` into `buffer`.
func fillPattern(_ buffer: UnsafeMutableRawBufferPointer, at offset: Int64, seed: UInt8) {
    for index in 0..<buffer.count { buffer[index] = patternByte(at: offset + Int64(index), seed: seed) }
}

func zeros(_ count: Int) -> [UInt8] { [UInt8](repeating: 0, count: count) }

/// The first index where `bytes` differs from `expected`, for short failure messages.
func firstMismatch(_ bytes: [UInt8], _ expected: [UInt8]) -> Int? {
    if bytes.count != expected.count { return min(bytes.count, expected.count) }
    return zip(bytes, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
}

// MARK: - Extents

extension BioExtent {
    var end: Int64 { offset + length }
    var isHole: Bool { kind == [.hole, .zero] }
    var isData: Bool { kind == [] }
}

/// Whether `extents` cover `range` exactly, in order, with no gap or overlap.
func extentsTile(_ extents: [BioExtent], _ range: Range<Int64>) -> Bool {
    guard let first = extents.first, let last = extents.last else { return range.isEmpty }
    guard first.offset == range.lowerBound, last.end == range.upperBound else { return false }
    for (left, right) in zip(extents, extents.dropFirst()) where left.end != right.offset || left.length <= 0 {
        return false
    }
    return last.length > 0
}

/// The kind the extents give the byte at `offset`, or nil when none covers it.
func extentKind(at offset: Int64, in extents: [BioExtent]) -> BioExtent.Kind? {
    extents.first { $0.offset <= offset && offset < $0.end }?.kind
}

// MARK: - Files

/// A directory of its own under /tmp, removed with everything in it by `remove()`.
final class TemporaryDirectory: @unchecked Sendable {
    let path: String

    init(_ label: String = "strata-disks") throws {
        var template = Array("/tmp/\(label)-\(getpid())-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw StrataError(BioError(errno: errno), "mkdtemp under /tmp") }
        path = String(cString: template)
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    func remove() { removeTree(path) }
}

/// Removes a file or a directory tree (no symlinks are followed).
func removeTree(_ path: String) {
    var status = stat()
    guard lstat(path, &status) == 0 else { return }
    if status.st_mode & S_IFMT == S_IFDIR {
        if let directory = opendir(path) {
            var names: [String] = []
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(directory)
            for name in names { removeTree("\(path)/\(name)") }
        }
        rmdir(path)
    } else {
        unlink(path)
    }
}

/// stat(2) of `path`, or nil when it fails.
func fileStatus(_ path: String) -> stat? {
    var status = stat()
    return stat(path, &status) == 0 ? status : nil
}

/// The size of the file at `path`, or nil.
func fileSize(_ path: String) -> Int64? {
    fileStatus(path).map { Int64($0.st_size) }
}

/// Writes `bytes` to a new file at `path` (for preparing existing backing files).
func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard descriptor >= 0 else { throw StrataError(BioError(errno: errno), "create \(path)") }
    defer { close(descriptor) }
    let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    guard written == bytes.count else { throw StrataError(.io, "write \(path)") }
}

/// Reads the whole file at `path` with plain POSIX calls (to check what reached it).
func readFile(_ path: String) -> [UInt8]? {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
        if count < 0 { return nil }
        if count == 0 { return result }
        result.append(contentsOf: chunk[0..<count])
    }
}

// MARK: - Tearing down

/// Withers `disk` and waits until it has left the topology (its `destroyed` has run:
/// a file disk's threads are stopped and its descriptor closed). Close every consumer
/// on it first.
@discardableResult
func witherAndWait(_ disk: Disk, in topology: Topology) -> Bool {
    topology.wither(disk)
    return topology.waitUntilGone(disk)
}

// MARK: - Threads

/// A counter a thread counts down and another waits on (a latch), on a pthread mutex
/// so ThreadSanitizer sees the ordering.
final class Countdown: @unchecked Sendable {
    private let lock = ConditionLock()
    private var remaining: Int

    init(_ count: Int) { remaining = count }

    func countDown() {
        lock.withLock {
            remaining -= 1
            if remaining <= 0 { lock.broadcast() }
        }
    }

    /// Waits until the count reaches zero; false after `seconds`.
    @discardableResult
    func wait(seconds: Double = 60) -> Bool {
        lock.withLock {
            let deadline = ContinuousClock.now + .seconds(seconds)
            while remaining > 0 && ContinuousClock.now < deadline { lock.wait(seconds: 0.05) }
            return remaining <= 0
        }
    }
}

/// Counts completions per request id, to prove each request completes exactly once.
final class CompletionLedger: @unchecked Sendable {
    private let counts: UnsafeMutablePointer<Atomic<Int>>
    let capacity: Int
    private let errorStorage = Atomic<Int>(0)

    init(capacity: Int) {
        self.capacity = capacity
        counts = .allocate(capacity: capacity)
        for index in 0..<capacity { (counts + index).initialize(to: Atomic(0)) }
    }

    deinit {
        counts.deinitialize(count: capacity)
        counts.deallocate()
    }

    func record(_ id: Int, failed: Bool) {
        counts[id].wrappingAdd(1, ordering: .sequentiallyConsistent)
        if failed { errorStorage.wrappingAdd(1, ordering: .sequentiallyConsistent) }
    }

    func count(_ id: Int) -> Int { counts[id].load(ordering: .sequentiallyConsistent) }
    var errors: Int { errorStorage.load(ordering: .sequentiallyConsistent) }
    var total: Int { (0..<capacity).reduce(0) { $0 + count($1) } }

    /// Ids that completed other than exactly once.
    var anomalies: [Int] { (0..<capacity).filter { count($0) != 1 } }
}

/// Messages from threads other than the test's, gathered under a lock.
final class FailureLog: @unchecked Sendable {
    private let lock = ConditionLock()
    private var messages: [String] = []

    func add(_ message: String) { lock.withLock { messages.append(message) } }
    var all: [String] { lock.withLock { messages } }
}

/// A small seeded generator (SplitMix64) so a failing run can be repeated.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension FileDisk.Engine {
    /// The engines this kernel runs: inline and threads always, io_uring where it can
    /// be set up.
    static let runnable: [FileDisk.Engine] = (FileDisk.isUringAvailable ? [.uring] : []) + [.threads, .inline]
}
