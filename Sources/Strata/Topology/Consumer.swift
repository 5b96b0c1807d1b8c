import Synchronization

/// How a geom attaches to a provider below it (`struct g_consumer`) and sends it
/// requests.
public final class Consumer: @unchecked Sendable, CustomStringConvertible {
    /// The geom this consumer belongs to. Held unowned: the geom owns its consumers.
    public var geom: Geom { geomReference.takeUnretainedValue() }
    let geomReference: Unmanaged<Geom>

    /// Runs `body` with the geom, without reference counting (for the I/O path).
    @inline(__always)
    func withGeom<Result>(_ body: (Geom) -> Result) -> Result {
        geomReference._withUnsafeGuaranteedRef(body)
    }
    /// The provider attached to, or nil. Unowned: a provider outlives its consumers.
    /// Atomic because the I/O path reads it while the event thread may detach.
    public internal(set) var provider: Provider? {
        get { providerReference?.takeUnretainedValue() }
        set {
            providerStorage.store(newValue.map { UnsafeRawPointer(Unmanaged.passUnretained($0).toOpaque()) },
                                  ordering: .releasing)
        }
    }
    private let providerStorage = Atomic<UnsafeRawPointer?>(nil)

    /// The attached provider for the I/O path, which uses it without reference counting.
    @inline(__always)
    var providerReference: Unmanaged<Provider>? {
        providerStorage.load(ordering: .acquiring).map { Unmanaged<Provider>.fromOpaque($0) }
    }

    let readStorage = Atomic<Int>(0)
    let writeStorage = Atomic<Int>(0)
    let exclusiveStorage = Atomic<Int>(0)
    private let orphanedStorage = Atomic<Bool>(false)
    /// Requests issued on this consumer and not yet through their done routine, counted
    /// per thread.
    let inFlight = InFlightCount()
    /// The provider got a writer while this consumer held no access.
    public internal(set) var isSpoiled = false

    /// The geom's done routines run on the up worker (`DispatchMode.queued`): read on
    /// every delivery, so kept here rather than behind the geom reference.
    let completesQueued: Bool

    init(geom: Geom) {
        self.geomReference = Unmanaged.passUnretained(geom)
        self.completesQueued = geom.dispatchMode == .queued
    }

    public var name: String { "\(geom.name)→\(provider?.name ?? "-")" }
    public var description: String { "consumer \(name) r\(readCount)w\(writeCount)e\(exclusiveCount)" }

    public var readCount: Int { readStorage.load(ordering: .relaxed) }
    public var writeCount: Int { writeStorage.load(ordering: .relaxed) }
    public var exclusiveCount: Int { exclusiveStorage.load(ordering: .relaxed) }
    var holdsAccess: Bool { readCount != 0 || writeCount != 0 || exclusiveCount != 0 }

    /// The provider below went away: requests fail with ENXIO.
    public var isOrphaned: Bool { orphanedStorage.load(ordering: .sequentiallyConsistent) }
    func markOrphaned() { orphanedStorage.store(true, ordering: .sequentiallyConsistent) }

    /// Requests in flight on this consumer.
    /// Zero means every request issued on it so far has returned from its done routine.
    public var requestsInFlight: Int { inFlight.current }

    /// `g_io_request`: sends `bio` to the attached provider. The request is checked
    /// here, once: access held for its command (EPERM), consumer orphaned (ENXIO),
    /// provider error, alignment to the sector size (EINVAL), start beyond the media
    /// (EIO); a request running past the end is truncated. A failed check delivers the
    /// request with the error; it never throws or traps for bad values.
    public func request(_ bio: consuming Bio) {
        IOPath.request(bio.release(), on: self)
    }
}
