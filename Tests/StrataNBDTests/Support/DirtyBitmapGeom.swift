import Dispatch
import Strata

/// A class over a disk that keeps dirty bitmaps of fixed patterns, for the server's
/// `qemu:dirty-bitmap:` contexts: it answers `STRATA::dirty-bitmaps` with its bitmaps'
/// names and `STRATA::dirty-bitmap:NAME` with each one's dirty ranges, and passes every
/// other request down.
final class DirtyBitmapGeom: Geom, @unchecked Sendable {
    /// A bitmap: its name and the ranges it has dirty, in bytes, in order and apart.
    struct Bitmap: Sendable {
        var name: String
        var dirty: [Range<Int64>]
        /// Every question about it fails with EIO, as a provider's error would.
        var fails = false
    }

    let bitmaps: [Bitmap]
    /// The list of bitmaps is answered from another thread, a moment later: a provider
    /// that does not answer inside `request`.
    let listsLater: Bool

    private init(name: String, bitmaps: [Bitmap], listsLater: Bool) {
        self.bitmaps = bitmaps
        self.listsLater = listsLater
        super.init(name: name, className: "BITMAP")
    }

    /// Stacks the class on `below`, with a provider named `name` of the same size.
    @discardableResult
    static func stack(on below: Provider, in topology: Topology, name: String, bitmaps: [Bitmap],
                      listsLater: Bool = false) throws -> DirtyBitmapGeom {
        let geom = DirtyBitmapGeom(name: name, bitmaps: bitmaps, listsLater: listsLater)
        try topology.add(geom)
        let consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: below)
        try topology.createProvider(for: geom, name: name, mediaSize: below.mediaSize, sectorSize: below.sectorSize,
                                    announce: false)
        return geom
    }

    override func start(_ bio: consuming ProviderBio) {
        if bio.command == .getattr, let attribute = bio.attribute {
            if attribute == .dirtyBitmaps { return list(bio) }
            if let name = attribute.dirtyBitmapName { return report(bio, bitmap: name) }
        }
        super.start(bio)
    }

    private func list(_ bio: consuming ProviderBio) {
        let names = bitmaps.map { $0.name + "\n" }.joined()
        guard listsLater else { return bio.deliverAttribute(string: names) }
        let request = bio.unmanaged()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) {
            request.takeProviderBio().deliverAttribute(string: names)
        }
    }

    /// The bitmap's extents over the range asked about, dirty and clean in turn, as many
    /// as the answer holds.
    private func report(_ bio: consuming ProviderBio, bitmap name: String) {
        guard let bitmap = bitmaps.first(where: { $0.name == name }) else { return bio.deliver(.invalid) }
        guard !bitmap.fails else { return bio.deliver(.io) }
        let mediaSize = providers.first!.mediaSize
        let end = min(bio.offset + bio.length, mediaSize)
        var extents: [BioExtent] = []
        var at = bio.offset
        for dirty in bitmap.dirty where dirty.upperBound > at && dirty.lowerBound < end {
            if dirty.lowerBound > at { extents.append(BioExtent(offset: at, length: dirty.lowerBound - at, kind: [])) }
            let start = max(dirty.lowerBound, at)
            let stop = min(dirty.upperBound, end)
            extents.append(BioExtent(offset: start, length: stop - start, kind: .dirty))
            at = stop
        }
        if at < end { extents.append(BioExtent(offset: at, length: end - at, kind: [])) }
        bio.deliverAttribute(extents: extents)
    }
}
