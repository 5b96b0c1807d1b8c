import Strata

/// A disk where writes vanish and reads return zeros without a copy (when the issuer
/// accepts `zeroHint`). For benchmarks and for testing what sits above it.
public final class NullDisk: Disk, @unchecked Sendable {
    /// Adds a null disk of `size` bytes to `topology`.
    public static func create(in topology: Topology, name: String, size: Int64, sectorSize: Int = 512) throws -> NullDisk {
        let disk = NullDisk(name: name, className: "NULL", ident: "null:\(name)", canDelete: true)
        try disk.install(in: topology, mediaSize: size, sectorSize: sectorSize)
        return disk
    }

    override public func read(_ bio: consuming ProviderBio) { bio.deliverZeros() }
    override public func write(_ bio: consuming ProviderBio) { bio.deliverAll() }
    override public func delete(_ bio: consuming ProviderBio) { bio.deliverAll() }
    override public func writeZeroes(_ bio: consuming ProviderBio) { bio.deliverAll() }

    override public var uniformExtentKind: BioExtent.Kind { [.hole, .zero] }
}
