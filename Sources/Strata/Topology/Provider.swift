import Synchronization

/// What a geom offers upward (`struct g_provider`): a named range of bytes with a
/// sector size, read and written through the geom's `start`.
public final class Provider: @unchecked Sendable, CustomStringConvertible {
    public let name: String
    /// The geom that serves this provider. Held unowned: the geom owns its providers.
    public var geom: Geom { geomReference.takeUnretainedValue() }
    let geomReference: Unmanaged<Geom>

    /// Runs `body` with the geom, without reference counting (for the I/O path).
    @inline(__always)
    func withGeom<Result>(_ body: (Geom) -> Result) -> Result {
        geomReference._withUnsafeGuaranteedRef(body)
    }
    public let sectorSize: Int
    /// The class's own number for this provider (`pp->index`), given when the provider is
    /// made: a partition's slot in its geom's table, say. A class finds its per-provider
    /// state from a request with `ProviderBio.providerIndex` without a lookup.
    public let index: Int
    /// Bytes per stripe below, or 0 (a hint for aligning I/O).
    public internal(set) var stripeSize: Int64
    /// Offset of the first stripe boundary.
    public internal(set) var stripeOffset: Int64
    /// The memory alignment at which the medium takes a request's data as it is
    /// (Linux's `dma_alignment`): 1 when any address will do. A provider with a larger
    /// one (a file disk with `cache: none`) copies the data of other requests through
    /// an aligned buffer of its own, so an issuer that can place the data at such an
    /// address saves that copy.
    public let memoryAlignment: Int
    /// The medium refuses writes (a read-only disk): no consumer may open the provider
    /// for writing, so every write, DELETE and WRITE_ZEROES fails the entry check with
    /// EPERM. A geom over it is read-only too (`Topology.isReadOnly`).
    public let isReadOnly: Bool

    private let mediaSizeStorage: Atomic<Int64>
    private let errorStorage = Atomic<Int32>(0)
    let readTotal = Atomic<Int>(0)
    let writeTotal = Atomic<Int>(0)
    let exclusiveTotal = Atomic<Int>(0)

    /// What this provider has done (operations, bytes, errors, latency, busy time).
    public let statistics = ProviderStatistics()

    /// Consumers attached to this provider. Guarded by the topology lock.
    public internal(set) var consumers: [Consumer] = []
    /// The provider was orphaned: it is going away.
    public internal(set) var isOrphaned = false
    /// A consumer was spoiled: taste again when the last writer closes.
    var needsRetaste = false

    init(name: String, geom: Geom, mediaSize: Int64, sectorSize: Int, stripeSize: Int64, stripeOffset: Int64, index: Int,
         isReadOnly: Bool = false, memoryAlignment: Int = 1) {
        self.name = name
        self.memoryAlignment = memoryAlignment
        self.isReadOnly = isReadOnly
        self.index = index
        self.geomReference = Unmanaged.passUnretained(geom)
        self.mediaSizeStorage = Atomic(mediaSize)
        self.sectorSize = sectorSize
        self.stripeSize = stripeSize
        self.stripeOffset = stripeOffset
    }

    /// Bytes of media.
    public var mediaSize: Int64 { mediaSizeStorage.load(ordering: .relaxed) }

    func setMediaSize(_ size: Int64) { mediaSizeStorage.store(size, ordering: .relaxed) }

    /// The error every request gets while it is set (`g_error_provider`), or nil.
    public var error: BioError? {
        let code = errorCode
        return code == 0 ? nil : BioError(errno: code)
    }

    var errorCode: Int32 { errorStorage.load(ordering: .acquiring) }

    func setError(_ error: BioError?) {
        errorStorage.store(error?.errno ?? 0, ordering: .releasing)
    }

    /// Access counts summed over the consumers: read, write, exclusive.
    public var accessCounts: (read: Int, write: Int, exclusive: Int) {
        (readTotal.load(ordering: .relaxed), writeTotal.load(ordering: .relaxed),
         exclusiveTotal.load(ordering: .relaxed))
    }

    /// GEOM's mode string, e.g. "r1w1e1".
    public var mode: String {
        let counts = accessCounts
        return "r\(counts.read)w\(counts.write)e\(counts.exclusive)"
    }

    public var description: String {
        "\(name) (\(mediaSize) bytes, \(sectorSize)-byte sectors, \(mode))"
    }
}
