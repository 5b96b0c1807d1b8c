import Strata
import Synchronization

/// A pass-through geom whose provider asks for aligned memory, as a file disk with
/// `cache: none` does, and counts the reads it passes and those whose data did not start
/// at such an address.
final class AlignedReadProbe: Geom, @unchecked Sendable {
    let alignment: Int
    let reads = Atomic<Int>(0)
    let misalignedReads = Atomic<Int>(0)

    private init(name: String, alignment: Int) {
        self.alignment = alignment
        super.init(name: name, className: "ALIGNPROBE", startOnlyPassesOn: true)
    }

    /// A probe over `below`, its provider named `name`, asking for `alignment`.
    static func create(in topology: Topology, name: String, over below: Provider, alignment: Int) throws -> AlignedReadProbe {
        let geom = AlignedReadProbe(name: name, alignment: alignment)
        try topology.add(geom)
        let consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: below)
        _ = try topology.createProvider(for: geom, name: name, mediaSize: below.mediaSize, sectorSize: below.sectorSize,
                                        memoryAlignment: alignment)
        return geom
    }

    override func start(_ bio: consuming ProviderBio) {
        if bio.command == .read {
            reads.add(1, ordering: .relaxed)
            var aligned = true
            bio.data.forEachSegment { piece in
                if Int(bitPattern: piece.baseAddress) & (alignment - 1) != 0 { aligned = false }
            }
            if !aligned { misalignedReads.add(1, ordering: .relaxed) }
        }
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        passOnToFirstConsumer(bio, clone)
    }
}
