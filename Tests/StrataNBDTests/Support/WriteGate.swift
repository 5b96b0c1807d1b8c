import NIOConcurrencyHelpers
import Strata

/// A pass-through geom that holds every WRITE until the test lets it go: a write that
/// stays in flight for as long as a test needs. Reads and everything else pass at once.
final class WriteGate: Geom, @unchecked Sendable {
    /// A pthread lock: ThreadSanitizer sees it (not Synchronization's `Mutex`).
    private let held = NIOLockedValueBox<[UnmanagedBio]>([])

    private init(name: String) {
        super.init(name: name, className: "GATE", startOnlyPassesOn: true)
    }

    /// A gate over `below`, its provider named `name`.
    static func create(in topology: Topology, name: String, over below: Provider) throws -> WriteGate {
        let geom = WriteGate(name: name)
        try topology.add(geom)
        let consumer = topology.createConsumer(for: geom)
        try topology.attach(consumer, to: below)
        _ = try topology.createProvider(for: geom, name: name, mediaSize: below.mediaSize, sectorSize: below.sectorSize)
        return geom
    }

    /// Writes held now.
    var heldCount: Int { held.withLockedValue { $0.count } }

    /// Lets the held writes go, the newest first: a write sent while an older one of the
    /// same sectors is held lands before it.
    func releaseAll() {
        let writes = held.withLockedValue { held in
            defer { held.removeAll() }
            return held
        }
        for write in writes.reversed() { pass(write.takeProviderBio()) }
    }

    override func start(_ bio: consuming ProviderBio) {
        if bio.command == .write {
            let request = bio.unmanaged()
            held.withLockedValue { $0.append(request) }
            return
        }
        pass(bio)
    }

    private func pass(_ bio: consuming ProviderBio) {
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        passOnToFirstConsumer(bio, clone)
    }
}
