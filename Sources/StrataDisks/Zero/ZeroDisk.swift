import Strata

/// A disk that reads as zeros, filling every read buffer, and ignores writes (GEOM's
/// gzero). Unlike the null disk it always writes the zeros into the buffer.
public final class ZeroDisk: Disk, @unchecked Sendable {
    /// Adds a zero disk of `size` bytes to `topology`.
    public static func create(in topology: Topology, name: String, size: Int64, sectorSize: Int = 512) throws -> ZeroDisk {
        let disk = ZeroDisk(name: name, className: "ZERO", ident: "zero:\(name)", canDelete: true)
        try disk.install(in: topology, mediaSize: size, sectorSize: sectorSize)
        return disk
    }

    override public func read(_ bio: consuming ProviderBio) {
        bio.data.zero()
        bio.deliverAll()
    }
    override public func write(_ bio: consuming ProviderBio) { bio.deliverAll() }
    override public func delete(_ bio: consuming ProviderBio) { bio.deliverAll() }
    override public func writeZeroes(_ bio: consuming ProviderBio) { bio.deliverAll() }

    override public var uniformExtentKind: BioExtent.Kind { [.zero] }
}
