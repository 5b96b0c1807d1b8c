import Strata

/// A bottom provider: a geom with one provider and no consumers, which does the I/O
/// itself. Subclasses implement the commands; this class turns each request into one
/// of those calls and answers the attributes every disk has.
open class Disk: Geom, @unchecked Sendable {
    /// What "GEOM::ident" answers: identifies the media (a path, a name).
    public let ident: String
    /// Whether DELETE frees space ("GEOM::candelete").
    public let canDelete: Bool

    public init(name: String, className: String, ident: String, canDelete: Bool) {
        self.ident = ident
        self.canDelete = canDelete
        super.init(name: name, className: className)
    }

    /// The disk's provider (named after the disk).
    public var provider: Provider { providers[0] }

    /// Adds the disk to `topology` and makes its provider (read-only if `readOnly`: no
    /// consumer may open it for writing; `memoryAlignment` as `Provider` says). On
    /// failure the disk is released (`destroyed()`) and leaves nothing in the topology.
    package func install(in topology: Topology, mediaSize: Int64, sectorSize: Int, readOnly: Bool = false,
                         memoryAlignment: Int = 1) throws {
        do {
            try Disk.validate(sectorSize: sectorSize, for: name)
            try topology.add(self)
        } catch {
            destroyed()
            throw error
        }
        do {
            try topology.createProvider(for: self, name: name,
                                        mediaSize: mediaSize / Int64(sectorSize) * Int64(sectorSize), sectorSize: sectorSize,
                                        readOnly: readOnly, memoryAlignment: memoryAlignment)
        } catch {
            topology.remove(self)
            throw error
        }
    }

    static func validate(sectorSize: Int, for name: String) throws {
        guard sectorSize >= 512, sectorSize <= 65536, sectorSize & (sectorSize - 1) == 0 else {
            throw StrataError(.invalid, "disk \(name): sector size \(sectorSize) is not a power of two from 512 to 65536")
        }
    }

    override open func start(_ bio: consuming ProviderBio) {
        switch bio.command {
        case .read: read(bio)
        case .write: write(bio)
        case .delete: delete(bio)
        case .writeZeroes: writeZeroes(bio)
        case .flush: flush(bio)
        case .getattr: getattr(bio)
        }
    }

    open func read(_ bio: consuming ProviderBio) { bio.deliver(.notSupported) }
    open func write(_ bio: consuming ProviderBio) { bio.deliver(.notSupported) }
    open func delete(_ bio: consuming ProviderBio) { bio.deliver(.notSupported) }
    open func writeZeroes(_ bio: consuming ProviderBio) { bio.deliver(.notSupported) }
    open func flush(_ bio: consuming ProviderBio) { bio.deliver(nil) }

    /// Answers "GEOM::candelete", "GEOM::ident" and the extents attribute; any other
    /// attribute gets EOPNOTSUPP.
    open func getattr(_ bio: consuming ProviderBio) {
        switch bio.attribute {
        case BioAttribute.canDelete?: bio.deliverAttribute(int32: canDelete ? 1 : 0)
        case BioAttribute.ident?: bio.deliverAttribute(string: ident)
        case BioAttribute.extents?: extents(bio)
        default: bio.deliver(.notSupported)
        }
    }

    /// What every byte of a disk that keeps no map reads as: data unless a subclass says
    /// otherwise.
    open var uniformExtentKind: BioExtent.Kind { [] }

    /// Reports the extents of the range a GETATTR asks about. The default: the whole range
    /// in one extent of `uniformExtentKind`.
    open func extents(_ bio: consuming ProviderBio) {
        let range = bio.extentRange(mediaSize: provider.mediaSize)
        let kind = uniformExtentKind
        bio.deliverAttribute(extents: range.isEmpty ? [] : [BioExtent(offset: range.lowerBound, length: Int64(range.count), kind: kind)])
    }
}
