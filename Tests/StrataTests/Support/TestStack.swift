import Strata
import StrataDisks
import Synchronization

/// A pass-through class with no code of its own: every default of `Geom` at work.
final class PassThroughGeom: Geom, @unchecked Sendable {
    init(name: String, dispatch: DispatchMode = .direct) {
        super.init(name: name, className: "PASS", dispatch: dispatch)
    }

    /// Stacks a pass-through geom on `below` and gives it a provider of the same size.
    @discardableResult
    static func stack(on below: Provider, in topology: Topology, name: String, dispatch: DispatchMode = .direct) throws -> PassThroughGeom {
        let geom = PassThroughGeom(name: name, dispatch: dispatch)
        try topology.add(geom)
        let consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: below)
        try topology.createProvider(for: geom, name: name, mediaSize: below.mediaSize, sectorSize: below.sectorSize,
                                    announce: false)
        return geom
    }
}

/// A consumer a test drives by hand: a plain geom with one consumer and no providers.
struct TestIssuer {
    let geom: Geom
    let consumer: Consumer

    init(on provider: Provider, in topology: Topology, read: Int = 1, write: Int = 1, exclusive: Int = 0,
         name: String = "issuer") throws {
        geom = Geom(name: name, className: "TEST")
        try topology.add(geom)
        consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: provider)
        if read != 0 || write != 0 || exclusive != 0 {
            try topology.access(consumer, read: read, write: write, exclusive: exclusive)
        }
    }
}

/// A page-aligned buffer filled with a pattern that encodes each byte's offset, so a
/// misplaced block is caught.
final class PatternBuffer: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer

    init(count: Int, seed: UInt8 = 0) {
        bytes = .allocate(byteCount: count, alignment: 4096)
        fill(seed: seed, at: 0)
    }

    deinit { bytes.deallocate() }

    func fill(seed: UInt8, at offset: Int64) {
        for index in 0..<bytes.count { bytes[index] = PatternBuffer.byte(at: offset + Int64(index), seed: seed) }
    }

    static func byte(at offset: Int64, seed: UInt8) -> UInt8 {
        UInt8(truncatingIfNeeded: (offset &* 31) ^ (offset >> 9) &+ Int64(seed) &* 7)
    }

    static func pattern(count: Int, at offset: Int64, seed: UInt8) -> [UInt8] {
        (0..<count).map { byte(at: offset + Int64($0), seed: seed) }
    }
}

/// Counts completions per request id, to prove each request completes exactly once.
final class CompletionLedger: @unchecked Sendable {
    private let counts: UnsafeMutablePointer<Atomic<Int>>
    let capacity: Int
    let errors = Atomic<Int>(0)
    let successes = Atomic<Int>(0)

    init(capacity: Int) {
        self.capacity = capacity
        counts = .allocate(capacity: capacity)
        for index in 0..<capacity { (counts + index).initialize(to: Atomic(0)) }
    }

    deinit {
        counts.deinitialize(count: capacity)
        counts.deallocate()
    }

    func record(_ id: Int, error: BioError?) {
        counts[id].wrappingAdd(1, ordering: .relaxed)
        if error == nil { successes.wrappingAdd(1, ordering: .relaxed) } else { errors.wrappingAdd(1, ordering: .relaxed) }
    }

    func count(_ id: Int) -> Int { counts[id].load(ordering: .relaxed) }

    /// Ids that completed other than exactly once, among the first `issued`.
    func anomalies(issued: Int) -> [Int] {
        (0..<issued).filter { count($0) != 1 }
    }
}

/// A bottom geom whose `start` runs a closure: tests look at exactly what reaches a class.
final class ProbeGeom: Geom, @unchecked Sendable {
    let onStart: @Sendable (consuming ProviderBio) -> Void

    init(name: String, dispatch: DispatchMode = .direct, onStart: @escaping @Sendable (consuming ProviderBio) -> Void) {
        self.onStart = onStart
        super.init(name: name, className: "PROBE", dispatch: dispatch)
    }

    override func start(_ bio: consuming ProviderBio) { onStart(bio) }

    @discardableResult
    static func install(in topology: Topology, name: String, size: Int64 = 1 << 20, sectorSize: Int = 512,
                        onStart: @escaping @Sendable (consuming ProviderBio) -> Void) throws -> ProbeGeom {
        let geom = ProbeGeom(name: name, onStart: onStart)
        try topology.add(geom)
        try topology.createProvider(for: geom, name: name, mediaSize: size, sectorSize: sectorSize, announce: false)
        return geom
    }
}

/// Splits every request into `pieces` equal clones sent to its one consumer, with the
/// combine rule it is given (a stripe-like or mirror-like fan-out).
final class FanOutGeom: Geom, @unchecked Sendable {
    let pieces: Int
    let combine: BioCombine
    let sameRange: Bool
    /// Called at the top of each start, for tests that record the order of events.
    var onStart: (@Sendable (Int64) -> Void)?

    /// - Parameter sameRange: every clone covers the whole request (a mirror's write)
    ///   instead of one piece of it.
    init(name: String, pieces: Int, combine: BioCombine = .firstError, sameRange: Bool = false) {
        self.pieces = pieces
        self.combine = combine
        self.sameRange = sameRange
        super.init(name: name, className: "FANOUT")
    }

    override func start(_ bio: consuming ProviderBio) {
        onStart?(bio.offset)
        bio.combine = combine
        let pieceLength = sameRange ? bio.length : bio.length / Int64(pieces)
        var clones: [UnmanagedBio] = []
        for index in 0..<pieces {
            let offset = sameRange ? 0 : Int64(index) * pieceLength
            guard let clone = bio.clone(range: offset, length: pieceLength) else {
                for made in clones { made.takeBio().destroy() }
                bio.deliver(.noMemory)
                return
            }
            clones.append(clone.unmanaged())
        }
        let consumer = consumers[0]
        bio.awaitChildren()
        for clone in clones { consumer.request(clone.takeBio()) }
    }

    @discardableResult
    static func stack(on below: Provider, in topology: Topology, name: String, pieces: Int,
                      combine: BioCombine = .firstError, sameRange: Bool = false) throws -> FanOutGeom {
        let geom = FanOutGeom(name: name, pieces: pieces, combine: combine, sameRange: sameRange)
        try topology.add(geom)
        try topology.attach(topology.createConsumer(for: geom), to: below)
        try topology.createProvider(for: geom, name: name, mediaSize: below.mediaSize, sectorSize: below.sectorSize,
                                    announce: false)
        return geom
    }
}

/// Splits each request into two halves allocated, waiting if need be, from one small
/// bio set of its own: the manual page's deadlock scenario when stacked.
final class SplitterGeom: Geom, @unchecked Sendable {
    let set: BioSet<NoPad>

    init(name: String, reserve: Int) {
        set = BioSet(name: name, reserve: reserve, capacity: reserve)
        super.init(name: name, className: "SPLIT")
    }

    override func start(_ bio: consuming ProviderBio) {
        let consumer = consumers[0]
        let sector = Int64(consumer.provider!.sectorSize)
        let half = bio.length / 2 / sector * sector
        guard half > 0 else {
            let only = bio.duplicate(using: set)
            consumer.request(only)
            bio.awaitChildren()
            return
        }
        // One at a time, as the page says: submit the first before allocating the second.
        let first = bio.duplicate(range: 0, length: half, using: set)
        consumer.request(first)
        let second = bio.duplicate(range: half, length: bio.length - half, using: set)
        consumer.request(second)
        bio.awaitChildren()
    }

    @discardableResult
    static func stack(on below: Provider, in topology: Topology, name: String, reserve: Int) throws -> SplitterGeom {
        let geom = SplitterGeom(name: name, reserve: reserve)
        try topology.add(geom)
        try topology.attach(topology.createConsumer(for: geom), to: below)
        try topology.createProvider(for: geom, name: name, mediaSize: below.mediaSize, sectorSize: below.sectorSize,
                                    announce: false)
        return geom
    }
}

extension Consumer {
    /// Sends one request and waits; returns its error (nil on success) and bytes completed.
    func outcome(_ command: BioCommand, offset: Int64, length: Int64, buffer: UnsafeMutableRawBufferPointer? = nil,
                 flags: BioFlags = [], attribute: BioAttribute? = nil) -> (error: BioError?, completed: Int64, flags: BioFlags) {
        do {
            let result = try performSync(command, offset: offset, length: length, buffer: buffer, flags: flags,
                                         attribute: attribute)
            return (nil, result.completed, result.flags)
        } catch let error as StrataError {
            return (error.code, 0, [])
        } catch {
            return (.io, 0, [])
        }
    }
}

/// What a probe saw, for assertions after the fact.
final class ProbeRecord: @unchecked Sendable {
    private let lock = ConditionLock()
    private var facts: [String: Bool] = [:]
    private var textStorage = ""
    private var consumerStorage: Consumer?

    func set(_ name: String, _ value: Bool) { lock.withLock { facts[name] = value } }
    /// The names of the facts that were true, sorted.
    var all: [String] { lock.withLock { facts.filter(\.value).map(\.key).sorted() } }
    var text: String {
        get { lock.withLock { textStorage } }
        set { lock.withLock { textStorage = newValue } }
    }
    var consumer: Consumer? {
        get { lock.withLock { consumerStorage } }
        set { lock.withLock { consumerStorage = newValue } }
    }
}

/// A one-shot gate a done routine opens and a test waits on.
final class Gate: @unchecked Sendable {
    private let lock = ConditionLock()
    private var isOpen = false

    func open() { lock.withLock { isOpen = true; lock.broadcast() } }

    /// Waits until opened; returns false after `seconds`.
    @discardableResult
    func wait(seconds: Double = 30) -> Bool {
        lock.withLock {
            let deadline = ContinuousClock.now + .seconds(seconds)
            while !isOpen && ContinuousClock.now < deadline { lock.wait(seconds: 0.05) }
            return isOpen
        }
    }
}

func sleepBriefly(milliseconds: Int = 50) {
    let gate = ConditionLock()
    gate.withLock { _ = gate.wait(seconds: Double(milliseconds) / 1000) }
}

/// An optional request as an optional unmanaged reference (test macros cannot take
/// noncopyable values).
func unmanaged(_ bio: consuming Bio?) -> UnmanagedBio? {
    switch consume bio {
    case .some(let bio): return bio.unmanaged()
    case .none: return nil
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// An identity for the calling thread.
func threadIdentity() -> UInt { UInt(pthread_self()) }

/// An ordered record of events from any thread.
final class EventLog: @unchecked Sendable {
    private let lock = ConditionLock()
    private var storage: [String] = []

    func append(_ entry: String) { lock.withLock { storage.append(entry) } }
    var entries: [String] { lock.withLock { storage } }
}

func sched_yield() { _ = Glibc.sched_yield() }
