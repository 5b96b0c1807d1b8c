import NIOConcurrencyHelpers
import Strata
import StrataNBDProtocol

/// A provider served under a name.
public struct NBDExport: Sendable {
    /// The name clients ask for; the default export also answers the empty name.
    public var name: String
    /// The provider's name in the topology.
    public var provider: String
    public var readOnly: Bool
    public var description: String?
    /// Answers the empty name. When no export says so, the first one does.
    public var isDefault: Bool
    /// The clients that may open it, by the name TLS proved (a PSK identity, or the
    /// distinguished name of a certificate the CA signed); empty lets any client in,
    /// over TLS or not as the server's mode allows. An export with names is served
    /// over TLS only.
    public var tlsAllow: [String]

    public init(name: String, provider: String, readOnly: Bool = false, description: String? = nil,
                isDefault: Bool = false, tlsAllow: [String] = []) {
        self.name = name
        self.provider = provider
        self.readOnly = readOnly
        self.description = description
        self.isDefault = isDefault
        self.tlsAllow = tlsAllow
    }
}

/// An export ready to serve: its provider found, its flags and block sizes worked out,
/// and the geom its connections' consumers belong to.
final class ServedExport: @unchecked Sendable {
    let export: NBDExport
    let provider: Provider
    let geom: NBDExportGeom
    let flags: NBDTransmissionFlags
    /// The provider's sector: what it reads and writes at least, and aligned to.
    let sectorSize: Int
    /// `sectorSize - 1`: a sector size is a power of two (the topology refuses any
    /// other), so alignment is a mask rather than two divisions per request.
    let sectorMask: UInt64
    /// Advertised: any byte range is served, a range the sectors do not fit through a
    /// read-modify-write (`issueUnaligned`).
    let minimumBlockSize = 1
    let preferredBlockSize: Int
    /// The longest READ or WRITE (`NBDServer.Limits.maximumRequest`).
    let maximumPayload: Int
    /// Orders the read-modify-writes of unaligned writes against the other writes of the
    /// provider; shared by every export of it.
    let sectorLocks: SectorLocks
    /// The consumers of the connections in transmission on this export. Changed when a
    /// connection opens or closes the export, read when metrics are scraped; never touched
    /// per request.
    private let openConsumers = NIOLockedValueBox<[ObjectIdentifier: Consumer]>([:])

    var size: UInt64 { UInt64(provider.mediaSize) }

    init(export: NBDExport, provider: Provider, geom: NBDExportGeom, canDelete: Bool, maximumPayload: Int,
         sectorLocks: SectorLocks) {
        self.export = export
        self.provider = provider
        self.geom = geom
        sectorSize = provider.sectorSize
        sectorMask = UInt64(provider.sectorSize - 1)
        preferredBlockSize = max(4096, provider.sectorSize)
        self.maximumPayload = maximumPayload
        self.sectorLocks = sectorLocks
        // Advertise what is true of this export. A flush on any connection reaches the
        // provider, which flushes every write completed before it from any connection:
        // that is what CAN_MULTI_CONN promises.
        var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendDF, .canMultiConn, .sendCache]
        if export.readOnly {
            flags.insert(.readOnly)
        } else {
            flags.formUnion([.sendWriteZeroes, .sendFastZero])
            if canDelete { flags.insert(.sendTrim) }
        }
        self.flags = flags
    }

    func opened(_ consumer: Consumer) {
        openConsumers.withLockedValue { $0[ObjectIdentifier(consumer)] = consumer }
    }

    func closed(_ consumer: Consumer) {
        _ = openConsumers.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(consumer)) }
    }

    /// Connections in transmission and the requests they have in flight below the export.
    var statistics: NBDServer.ExportStatistics {
        openConsumers.withLockedValue { consumers in
            NBDServer.ExportStatistics(name: export.name, connections: consumers.count,
                                       requestsInFlight: consumers.values.reduce(0) { $0 + $1.requestsInFlight })
        }
    }
}

/// The geom an export's connections attach their consumers to (class NBD). It has no
/// providers; when the exported provider goes away its consumers stay, orphaned, and
/// every request fails with ENXIO until the server stops.
final class NBDExportGeom: Geom, @unchecked Sendable {
    init(exportName: String) {
        super.init(name: "nbd/\(exportName.isEmpty ? "(default)" : exportName)", className: "NBD")
    }

    override func orphan(_ consumer: Consumer) {}
}
