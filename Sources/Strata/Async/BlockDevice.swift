import Synchronization

/// A provider opened for a library user: async read, write, flush, delete and
/// write-zeroes at byte offsets, built on the callback path.
///
/// Opening makes a small geom of class USER with one consumer attached to the
/// provider and opens it with the access asked for, so GEOM's access rules apply to
/// library users as to any class. Requests come from the shared bio set; each call
/// awaits its completion.
public final class BlockDevice: @unchecked Sendable {
    public let provider: Provider
    private let topology: Topology
    private let geom: UserGeom
    /// The consumer the device opened, for requests the methods here do not make
    /// (scattered data, flags).
    public let consumer: Consumer
    private let access: (read: Int, write: Int, exclusive: Int)
    private let closed = Atomic<Bool>(false)

    private static let serial = Atomic<Int>(0)

    /// Opens `provider` for reading, and for writing if `writable`.
    /// - Throws: `StrataError` when access is refused (EPERM) or the provider is gone.
    public init(opening provider: Provider, in topology: Topology, writable: Bool, exclusive: Bool = false) throws {
        self.provider = provider
        self.topology = topology
        let number = BlockDevice.serial.wrappingAdd(1, ordering: .relaxed).newValue
        geom = UserGeom(name: "user-\(number)")
        try topology.add(geom)
        consumer = topology.createConsumer(for: geom)
        access = (1, writable ? 1 : 0, exclusive ? 1 : 0)
        do {
            try topology.attach(consumer, to: provider)
            try topology.access(consumer, read: access.read, write: access.write, exclusive: access.exclusive)
        } catch {
            // Nothing was opened: there is nothing for close() to give back.
            closed.store(true, ordering: .relaxed)
            topology.wither(geom)
            throw error
        }
    }

    /// Opens the provider named `name`.
    public convenience init(opening name: String, in topology: Topology, writable: Bool, exclusive: Bool = false) throws {
        guard let provider = topology.provider(named: name) else {
            throw StrataError(.noDevice, "open \(name): no such provider")
        }
        try self.init(opening: provider, in: topology, writable: writable, exclusive: exclusive)
    }

    deinit { close() }

    /// The consumer behind the device, for a load generator that issues bio requests
    /// itself (`strata bench`) within the device's access.
    public var consumerForBenchmark: Consumer { consumer }

    /// Closes the device: access is released and its geom leaves the topology.
    /// Wait for outstanding calls first.
    public func close() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        if consumer.provider != nil {
            try? topology.access(consumer, read: -access.read, write: -access.write, exclusive: -access.exclusive)
        }
        topology.wither(geom)
    }

    // MARK: I/O

    /// Reads `count` bytes at `offset`.
    public func read(at offset: Int64, count: Int) async throws -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
        defer { buffer.deallocate() }
        try await perform(.read, offset: offset, length: Int64(count), buffer: buffer)
        return Array(buffer.bindMemory(to: UInt8.self))
    }

    /// Reads into `buffer` at `offset`. Returns the bytes read (fewer at the end of the media).
    @discardableResult
    public func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) async throws -> Int {
        Int(try await perform(.read, offset: offset, length: Int64(buffer.count), buffer: buffer))
    }

    /// Writes `bytes` at `offset`; with `fua`, durable when it returns.
    public func write(_ bytes: [UInt8], at offset: Int64, fua: Bool = false) async throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 64)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        try await perform(.write, offset: offset, length: Int64(bytes.count), buffer: buffer, flags: fua ? .fua : [])
    }

    /// Makes every completed write durable.
    public func flush() async throws {
        try await perform(.flush, offset: 0, length: 0)
    }

    /// Tells the provider the range is no longer used.
    public func delete(at offset: Int64, length: Int64) async throws {
        try await perform(.delete, offset: offset, length: length)
    }

    /// Makes the range read as zeros; with `noHole` it stays allocated.
    public func writeZeroes(at offset: Int64, length: Int64, noHole: Bool = false) async throws {
        try await perform(.writeZeroes, offset: offset, length: length, flags: noHole ? .noHole : [])
    }

    /// Whether DELETE frees space on the provider ("GEOM::candelete").
    public func canDelete() async throws -> Bool {
        try await getattr(.canDelete, capacity: 4) { $0.attributeInt32 ?? 0 } != 0
    }

    /// The provider's identification ("GEOM::ident").
    public func ident() async throws -> String {
        try await getattr(.ident, capacity: 256) { $0.attributeString ?? "" }
    }

    /// The data, hole and zero extents of `offset ..< offset+length` (at most `limit`).
    /// Extent records of `offset ..< offset+length`: the data, hole and zero ranges
    /// (`.extents`), or what another attribute of the kind reports (a dirty bitmap).
    public func extents(attribute: BioAttribute = .extents, at offset: Int64, length: Int64, limit: Int = 1024) async throws -> [BioExtent] {
        try await getattr(attribute, capacity: limit * BioExtent.encodedSize, offset: offset, length: length) { $0.attributeExtents }
    }

    /// Asks for `attribute` with an answer buffer of `capacity` bytes and reads the
    /// answer with `decode` (one of `Bio`'s attribute readers) before the request goes.
    /// A string attribute (`.ident`, `.dirtyBitmaps`).
    public func attributeString(_ attribute: BioAttribute, capacity: Int = 4096) async throws -> String {
        try await getattr(attribute, capacity: capacity) { $0.attributeString ?? "" }
    }

    private func getattr<Answer: Sendable>(_ attribute: BioAttribute, capacity: Int, offset: Int64 = 0, length: Int64 = 0,
                                           decode: @escaping @Sendable (borrowing Bio) -> Answer) async throws -> Answer {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 8)
        defer { buffer.deallocate() }
        return try await submit(.getattr, offset: offset, length: length, buffer: buffer, attribute: attribute, answer: decode)
    }

    /// Sends one request and resumes when it completes. Returns the bytes completed.
    @discardableResult
    private func perform(_ command: BioCommand, offset: Int64, length: Int64, buffer: UnsafeMutableRawBufferPointer? = nil,
                         flags: BioFlags = []) async throws -> Int64 {
        try await submit(command, offset: offset, length: length, buffer: buffer, flags: flags) { $0.completed }
    }

    /// Sends one request and resumes with `answer` of the completed request.
    private func submit<Answer: Sendable>(_ command: BioCommand, offset: Int64, length: Int64,
                                          buffer: UnsafeMutableRawBufferPointer?, flags: BioFlags = [],
                                          attribute: BioAttribute? = nil,
                                          answer: @escaping @Sendable (borrowing Bio) -> Answer) async throws -> Answer {
        let consumer = self.consumer
        let providerName = provider.name
        let bufferAddress = buffer.map { UnsafeMutableRawBufferPointerBox($0) }
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Answer, any Error>) in
            let bio = Bio.make(command, offset: offset, length: length, buffer: bufferAddress?.buffer, flags: flags,
                               attribute: attribute, from: .shared)
            bio.done = .closure { done in
                // The message is made only for a failure: a success costs no string.
                let result: Result<Answer, any Error> = done.error.map {
                    .failure(StrataError($0, "\(command) at \(offset)+\(length) on \(providerName)"))
                } ?? .success(answer(done))
                done.destroy()
                continuation.resume(with: result)
            }
            consumer.request(bio)
        }
    }
}

/// Carries a caller's buffer into the continuation; the caller keeps it alive
/// until the call returns.
private struct UnsafeMutableRawBufferPointerBox: @unchecked Sendable {
    let buffer: UnsafeMutableRawBufferPointer
    init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }
}

/// The geom behind a `BlockDevice`: it has a consumer and no providers. When the
/// provider below goes away its requests fail with ENXIO until the device is closed.
final class UserGeom: Geom, @unchecked Sendable {
    init(name: String) {
        super.init(name: name, className: "USER")
    }

    override func orphan(_ consumer: Consumer) {}
}
