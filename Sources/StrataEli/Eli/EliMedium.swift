import Strata

#if canImport(Glibc)
import Glibc
#endif

/// A provider as the medium of a LUKS header, read and written through a consumer.
/// Headers are read and written in pieces of any length (LUKS1's is 592 bytes); the
/// provider takes whole sectors, so a piece is widened to them, and a write that covers
/// a sector in part writes it back with the rest of its bytes as they were.
public struct ConsumerMedium: LUKSMedium {
    public let consumer: Consumer
    public let size: Int64
    let sectorSize: Int64

    public init(consumer: Consumer, provider: Provider) {
        self.consumer = consumer
        size = provider.mediaSize
        sectorSize = Int64(provider.sectorSize)
    }

    /// The whole sectors around `count` bytes at `offset`.
    private func widened(_ offset: Int64, _ count: Int) -> (start: Int64, count: Int) {
        let start = offset / sectorSize * sectorSize
        let end = (offset + Int64(count) + sectorSize - 1) / sectorSize * sectorSize
        return (start, Int(end - start))
    }

    public func read(at offset: Int64, count: Int) throws -> [UInt8] {
        let (start, length) = widened(offset, count)
        if start == offset && length == count { return try consumer.readSync(at: offset, count: count) }
        let sectors = try consumer.readSync(at: start, count: length)
        let skip = Int(offset - start)
        return Array(sectors[skip..<(skip + count)])
    }

    public func write(_ bytes: [UInt8], at offset: Int64) throws {
        let (start, length) = widened(offset, bytes.count)
        if start == offset && length == bytes.count { return try consumer.writeSync(bytes, at: offset) }
        var sectors = try consumer.readSync(at: start, count: length)
        let skip = Int(offset - start)
        sectors.replaceSubrange(skip..<(skip + bytes.count), with: bytes)
        try consumer.writeSync(sectors, at: start)
    }

    public func flush() throws {
        do {
            try consumer.performSync(.flush, offset: 0, length: 0)
        } catch let error as StrataError where error.code == .notSupported {
            // No volatile cache below.
        }
    }
}

extension Topology {
    /// Runs `body` with `provider` as a LUKS medium, through a consumer of a short-lived
    /// geom, opened for reading (and writing, exclusively, when `writing`); the consumer
    /// goes away afterwards, whatever happens.
    /// Where an eli is attached to `provider`, its own consumer carries the I/O, with
    /// its access raised for the while: the eli may hold the provider exclusively.
    func withLUKSMedium<Result>(_ provider: Provider, writing: Bool, _ body: (ConsumerMedium) throws -> Result) throws -> Result {
        // A provider's consumers change under the topology lock (a detach on its event
        // thread may be under way).
        let attached = withLock { provider.consumers.first(where: { $0.geom is EliGeom }) }
        if let attached {
            let write = writing ? 1 : 0
            try access(attached, read: 1, write: write, exclusive: 0)
            defer { try? access(attached, read: -1, write: -write, exclusive: 0) }
            return try body(ConsumerMedium(consumer: attached, provider: provider))
        }
        let tool = Geom(name: "eli:\(provider.name):\(UInt32.random(in: 0...UInt32.max))", className: "ELITOOL")
        try add(tool)
        defer { remove(tool) }
        let consumer = createConsumer(for: tool)
        defer { destroy(consumer) }
        try attach(consumer, to: provider)
        let (write, exclusive) = writing ? (1, 1) : (0, 0)
        try access(consumer, read: 1, write: write, exclusive: exclusive)
        defer { try? access(consumer, read: -1, write: -write, exclusive: -exclusive) }
        return try body(ConsumerMedium(consumer: consumer, provider: provider))
    }
}

/// Passphrases are at most this long, as cryptsetup's key files are by default.
let maximumPassphraseSize = 8 << 20

/// The whole content of a key file, as cryptsetup's `--key-file` takes it (a final
/// newline included).
/// - Parameter key: the setting or option that names the file, for the error.
/// - Throws: `SettingError` naming the setting and the file when it cannot be read, is
///   empty or too large.
public func readPassphrase(fromFile path: String, key: String = "key-file") throws -> SecretBytes {
    func refuse(_ problem: String) -> SettingError { SettingError(key: key, value: path, problem: problem) }
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { throw refuse("cannot be read: \(String(cString: strerror(errno)))") }
    defer { close(descriptor) }
    var status = stat()
    guard fstat(descriptor, &status) == 0 else { throw refuse("cannot be read: \(String(cString: strerror(errno)))") }
    guard (status.st_mode & S_IFMT) == S_IFREG else { throw refuse("is not a regular file") }
    let size = Int(status.st_size)
    guard size > 0 else { throw refuse("is empty: a passphrase has at least one byte") }
    guard size <= maximumPassphraseSize else {
        throw refuse("holds \(size) bytes; a passphrase is at most \(maximumPassphraseSize)")
    }
    return try SecretBytes(count: size) { buffer in
        var done = 0
        while done < size {
            let got = read(descriptor, buffer.baseAddress! + done, size - done)
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { throw refuse("changed while it was read") }
            done += got
        }
    }
}

/// One line of standard input as a passphrase (`key-file: -`), asked for with `prompt`
/// on a terminal.
func readPassphraseLine(prompt: String) throws -> SecretBytes {
    try readSecretLine(prompt: prompt) { line in SecretBytes(copying: line) }
}
