import Dispatch
import Strata
import Synchronization

/// NOP (gnop): passes requests through to one provider, at an offset, and injects
/// failures and delays on demand. Every other class's failure tests stand on it.
///
/// The settings can change while I/O runs (`configure`); each is an atomic the `start`
/// routine reads once per request.
public final class NopGeom: Geom, @unchecked Sendable {
    /// What the nop does to requests. All values are checked by `NopGeom.validate`.
    public struct Settings: Sendable, Equatable {
        /// Percent of reads failed with `error` (0 to 100).
        public var readFailPercent = 0
        /// Percent of writes, deletes and write-zeroes failed with `error` (0 to 100).
        public var writeFailPercent = 0
        /// The errno an injected failure is delivered with (default EIO).
        public var error: Int32 = BioError.io.errno
        /// Milliseconds each request waits before it goes down (0 to 60000).
        public var delayMilliseconds = 0
        /// Requests let through before every request fails (0: never).
        public var countUntilFail = 0

        public init(readFailPercent: Int = 0, writeFailPercent: Int = 0, error: Int32 = BioError.io.errno,
                    delayMilliseconds: Int = 0, countUntilFail: Int = 0) {
            self.readFailPercent = readFailPercent
            self.writeFailPercent = writeFailPercent
            self.error = error
            self.delayMilliseconds = delayMilliseconds
            self.countUntilFail = countUntilFail
        }
    }

    /// What passed through, per command (like gnop's statistics): the counts of the
    /// nop's provider (`ProviderStatistics`), which every request to it already updates,
    /// and the failures the nop injected.
    public struct Statistics: Sendable, Equatable, Codable {
        public var reads = 0
        public var writes = 0
        public var deletes = 0
        public var flushes = 0
        public var getattrs = 0
        public var bytesRead = 0
        public var bytesWritten = 0
        public var failures = 0

        public init(reads: Int = 0, writes: Int = 0, deletes: Int = 0, flushes: Int = 0, getattrs: Int = 0,
                    bytesRead: Int = 0, bytesWritten: Int = 0, failures: Int = 0) {
            (self.reads, self.writes, self.deletes, self.flushes, self.getattrs) = (reads, writes, deletes, flushes, getattrs)
            (self.bytesRead, self.bytesWritten, self.failures) = (bytesRead, bytesWritten, failures)
        }
    }

    /// Bytes of the provider below that the nop's provider starts at.
    public let offset: Int64
    private let readFailPercent: Atomic<Int>
    private let writeFailPercent: Atomic<Int>
    private let errorCode: Atomic<Int32>
    private let delayMilliseconds: Atomic<Int>
    /// Requests still let through before all fail; -1 when count-until-fail is off.
    private let remainingBeforeFailing: Atomic<Int>
    /// The statistics of the nop's provider, once it exists: the nop counts nothing of
    /// its own per request.
    private let providerStatistics = Mutex<ProviderStatistics?>(nil)
    private let injectedFailures = Atomic<Int>(0)
    private let random = Atomic<UInt64>(0x2545_F491_4F6C_DD1D)

    init(name: String, offset: Int64, settings: Settings) {
        self.offset = offset
        readFailPercent = Atomic(settings.readFailPercent)
        writeFailPercent = Atomic(settings.writeFailPercent)
        errorCode = Atomic(settings.error)
        delayMilliseconds = Atomic(settings.delayMilliseconds)
        remainingBeforeFailing = Atomic(settings.countUntilFail > 0 ? settings.countUntilFail : -1)
        super.init(name: name, className: "NOP", startOnlyPassesOn: true)
    }

    /// Makes a nop over `below`: its provider, named `name`, covers `size` bytes (default:
    /// all of `below` past `offset`).
    /// - Throws: `SettingError` naming the parameter and value when one is out of range.
    @discardableResult
    public static func create(in topology: Topology, name: String, over below: Provider, offset: Int64 = 0,
                              size: Int64? = nil, settings: Settings = Settings()) throws -> NopGeom {
        try validate(settings)
        let sector = Int64(below.sectorSize)
        guard offset >= 0, offset % sector == 0, offset < below.mediaSize else {
            throw SettingError(key: "offset", value: formatByteSize(offset),
                               problem: "must be a multiple of \(sector) inside \(below.name) (\(below.mediaSize) bytes)")
        }
        let available = below.mediaSize - offset
        let mediaSize = size ?? available
        guard mediaSize > 0, mediaSize % sector == 0, mediaSize <= available else {
            throw SettingError(key: "size", value: formatByteSize(mediaSize),
                               problem: "must be a multiple of \(sector) and at most \(available) (what \(below.name) has past offset \(offset))")
        }
        let geom = NopGeom(name: name, offset: offset, settings: settings)
        try topology.add(geom)
        let consumer = topology.createConsumer(for: geom)
        do {
            try topology.attach(consumer, to: below)
            let provider = try topology.createProvider(for: geom, name: name, mediaSize: mediaSize,
                                                       sectorSize: below.sectorSize, stripeSize: below.stripeSize,
                                                       stripeOffset: below.stripeOffset)
            geom.providerStatistics.withLock { $0 = provider.statistics }
        } catch {
            topology.wither(geom)
            throw error
        }
        return geom
    }

    /// Checks settings against the ranges of the class's keys (`NopDefinition`); the
    /// error names the key and the value.
    public static func validate(_ settings: Settings) throws(SettingError) {
        var values = NopDefinition.Settings()
        values.injection = settings
        for (key, value) in values.written where ["read-fail-percent", "write-fail-percent", "error", "delay-ms", "count-until-fail"].contains(key) {
            _ = try NopDefinition.Settings.parse([(key, value)])
        }
    }

    /// The settings now.
    public var settings: Settings {
        let remaining = remainingBeforeFailing.load(ordering: .relaxed)
        return Settings(readFailPercent: readFailPercent.load(ordering: .relaxed),
                        writeFailPercent: writeFailPercent.load(ordering: .relaxed),
                        error: errorCode.load(ordering: .relaxed),
                        delayMilliseconds: delayMilliseconds.load(ordering: .relaxed),
                        countUntilFail: max(remaining, 0))
    }

    /// Changes the settings while I/O runs (`strata nop configure`).
    public func configure(_ settings: Settings) throws {
        try NopGeom.validate(settings)
        readFailPercent.store(settings.readFailPercent, ordering: .relaxed)
        writeFailPercent.store(settings.writeFailPercent, ordering: .relaxed)
        errorCode.store(settings.error, ordering: .relaxed)
        delayMilliseconds.store(settings.delayMilliseconds, ordering: .relaxed)
        remainingBeforeFailing.store(settings.countUntilFail > 0 ? settings.countUntilFail : -1, ordering: .relaxed)
    }

    /// Requests delivered by the nop's provider, by command, with the bytes they moved
    /// (requests refused at the provider's entry included, as its statistics count
    /// them), and the failures injected.
    public var statistics: Statistics {
        let failures = injectedFailures.load(ordering: .relaxed)
        guard let counts = providerStatistics.withLock({ $0 })?.snapshot else { return Statistics(failures: failures) }
        return Statistics(reads: counts.operations(.read), writes: counts.operations(.write),
                          deletes: counts.operations(.delete), flushes: counts.operations(.flush),
                          getattrs: counts.operations(.other), bytesRead: counts.bytes(.read),
                          bytesWritten: counts.bytes(.write), failures: failures)
    }

    // MARK: I/O

    override public func start(_ bio: consuming ProviderBio) {
        if shouldFail(bio.command) {
            injectedFailures.add(1, ordering: .relaxed)
            let error = BioError(errno: errorCode.load(ordering: .relaxed))
            bio.deliver(error)
            return
        }
        let delay = delayMilliseconds.load(ordering: .relaxed)
        if delay > 0 {
            let request = bio.unmanaged()
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(delay)) { [self] in
                pass(request.takeProviderBio())
            }
            return
        }
        pass(bio)
    }

    /// Sends the request on down, shifted by the offset.
    private func pass(_ bio: consuming ProviderBio) {
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        clone.offset += offset
        if bio.command == .getattr && bio.attribute == .extents && offset != 0 {
            // Extents come back in the coordinates of the provider below.
            clone.done = .handler(self)
        }
        passOnToFirstConsumer(bio, clone)
    }

    override public func bioDone(_ bio: consuming Bio) {
        bio.shiftExtents(by: -offset)
        bio.finishClone()
    }

    private func shouldFail(_ command: BioCommand) -> Bool {
        let remaining = remainingBeforeFailing.load(ordering: .relaxed)
        if remaining >= 0 {
            if remaining == 0 { return true }
            _ = remainingBeforeFailing.compareExchange(expected: remaining, desired: remaining - 1, ordering: .relaxed)
        }
        let percent: Int
        switch command {
        case .read: percent = readFailPercent.load(ordering: .relaxed)
        case .write, .delete, .writeZeroes: percent = writeFailPercent.load(ordering: .relaxed)
        case .flush, .getattr: return false
        }
        if percent == 0 { return false }
        if percent >= 100 { return true }
        return Int(nextRandom() % 100) < percent
    }

    /// A shared xorshift generator; races between threads only mix it more.
    private func nextRandom() -> UInt64 {
        var value = random.load(ordering: .relaxed)
        value ^= value << 13
        value ^= value >> 7
        value ^= value << 17
        random.store(value, ordering: .relaxed)
        return value
    }
}
