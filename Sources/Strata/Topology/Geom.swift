/// How requests reach a geom's `start` and its done routines.
public enum DispatchMode: Sendable {
    /// By plain function call on the submitting (or completing) thread. The default.
    case direct
    /// Through the down and up worker threads, for a class that must not run in its
    /// caller's context.
    case queued
}

/// One instance of a transform class: it offers providers upward and attaches
/// consumers below (`struct g_geom`).
///
/// Subclasses override only what they change. The defaults pass everything through to
/// the first consumer: `start` clones the request with `g_std_done`, `access` opens the
/// consumers below with the same counts (writers also exclusive, so nobody writes
/// underneath a geom in use), `orphan` and `spoiled` wither the geom.
open class Geom: BioDoneHandler, @unchecked Sendable, CustomStringConvertible {
    public let name: String
    public let className: String
    public let dispatchMode: DispatchMode
    /// The class's `start` only passes requests on (maps, clones, splits or refuses them)
    /// and does no work of its own that takes time. A clock reading taken as a request
    /// entered it then serves the requests it passes on as well (`IOPath.entryClock`);
    /// any other `start` may do the disk's work, so the reading is taken anew after it.
    public let startOnlyPassesOn: Bool
    /// The topology this geom belongs to (set by `Topology.add`).
    public internal(set) weak var topology: Topology?
    /// The geom's providers and consumers. They change under the topology lock, and
    /// `start` may read them without it: a geom gains consumers before its providers are
    /// created and loses them only after its providers are gone. A class that changes its
    /// consumers while serving (a mirror inserting a component) keeps its own table.
    public internal(set) var providers: [Provider] = []
    public internal(set) var consumers: [Consumer] = [] {
        didSet { firstConsumer = consumers.first.map { Unmanaged.passUnretained($0) } }
    }
    /// `consumers.first` held without a reference count, so that passing a request down
    /// (`requestOnFirstConsumer`) costs no retain and release; it lives as long as the
    /// array holds it.
    private var firstConsumer: Unmanaged<Consumer>?
    /// One more than the highest rank of the geoms below; bottom geoms have rank 1.
    public internal(set) var rank = 1
    /// Set when the geom has begun to go away.
    public internal(set) var isWithering = false
    /// Made for this run only (`strata eli attach`): no start makes it again, so what
    /// stands on it is not kept across restarts either.
    public let madeForThisRunOnly: Bool

    public init(name: String, className: String, dispatch: DispatchMode = .direct, startOnlyPassesOn: Bool = false,
                madeForThisRunOnly: Bool = false) {
        self.name = name
        self.className = className
        self.dispatchMode = dispatch
        self.startOnlyPassesOn = startOnlyPassesOn
        self.madeForThisRunOnly = madeForThisRunOnly
    }

    /// The geom made for this run only that this geom stands on, itself or any below it.
    /// Call with the topology's lock held.
    public var standsOnGeomForThisRunOnly: Geom? {
        if madeForThisRunOnly { return self }
        for consumer in consumers {
            if let below = consumer.provider?.geom.standsOnGeomForThisRunOnly { return below }
        }
        return nil
    }

    public var description: String { "\(className)/\(name)" }

    /// Handles one request sent to one of this geom's providers. Every request that
    /// arrives here has passed `Consumer.request`'s checks: access, orphaning, alignment
    /// and range. The default passes it to the first consumer.
    open func start(_ bio: consuming ProviderBio) {
        guard !consumers.isEmpty else {
            bio.deliver(.noDevice)
            return
        }
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        passOnToFirstConsumer(bio, clone)
    }

    /// Sends `bio` to the first consumer (`g_io_request(bp, LIST_FIRST(&gp->consumer))`),
    /// the way a class with one consumer below passes each request on. Only from
    /// `start` or a done routine: the geom has its consumer while it serves.
    public final func requestOnFirstConsumer(_ bio: consuming Bio) {
        guard let firstConsumer else { preconditionFailure("\(self) has no consumer to pass a request to") }
        let header = bio.release()
        firstConsumer._withUnsafeGuaranteedRef { IOPath.request(header, on: $0) }
    }

    /// `ProviderBio.passOn` to the first consumer: gives `bio` to its only clone and sends
    /// the clone down, as a class with one consumer below passes a request on whole.
    public final func passOnToFirstConsumer(_ bio: consuming ProviderBio, _ clone: consuming Bio) {
        guard let firstConsumer else { preconditionFailure("\(self) has no consumer to pass a request to") }
        passOn(bio, clone, to: firstConsumer)
    }

    /// `ProviderBio.passOn` to a consumer the class holds unretained (one of its own,
    /// kept alive by `consumers`), without reference counting it per request.
    public final func passOn(_ bio: consuming ProviderBio, _ clone: consuming Bio, to consumer: Unmanaged<Consumer>) {
        let parent = bio.unmanaged().header
        let child = clone.release()
        consumer._withUnsafeGuaranteedRef { IOPath.passOn(child, of: parent, on: $0) }
    }

    /// Does the work of a request this geom put off with `ProviderBio.deferToPlug`, when
    /// the thread's plug ends (`BioPlug`). Only a geom that puts requests off overrides
    /// it; reaching this one is a class's bug.
    open func resume(_ bio: consuming ProviderBio) {
        preconditionFailure("\(self) put off \(bio.summary) but does not resume it")
    }

    /// Completion of a request this geom issued with `.handler(self)` as its done.
    /// The default is `g_std_done`.
    open func bioDone(_ bio: consuming Bio) {
        bio.finishClone()
    }

    /// A consumer above opens or closes `provider` by the given deltas. Throw to refuse.
    /// The default applies the deltas to every consumer of this geom, exclusive for
    /// writers, and undoes them if one refuses.
    open func access(_ provider: Provider, read: Int, write: Int, exclusive: Int) throws {
        guard let topology else { return }
        var opened: [Consumer] = []
        do {
            for consumer in consumers {
                try topology.access(consumer, read: read, write: write, exclusive: exclusive + write)
                opened.append(consumer)
            }
        } catch {
            for consumer in opened {
                try? topology.access(consumer, read: -read, write: -write, exclusive: -(exclusive + write))
            }
            throw error
        }
    }

    /// A provider below went away. The default withers this geom, passing the loss up.
    open func orphan(_ consumer: Consumer) {
        topology?.wither(self, error: .noDevice)
    }

    /// A provider this geom tasted without opening got its first writer: what was read
    /// from it may be stale. The default withers the geom; the provider is tasted again
    /// when the writer closes.
    open func spoiled(_ consumer: Consumer) {
        topology?.wither(self, error: .noDevice)
    }

    /// Called (topology locked) when the geom begins to wither: errors from here on may
    /// be the teardown's own.
    open func withering() {}

    /// Called once the geom has withered and left the topology: release resources.
    open func destroyed() {}
}

/// A transform class (`struct g_class`): makes geoms, and may recognize providers
/// carrying its metadata when they appear.
public protocol GeomClass: AnyObject, Sendable {
    var name: String { get }
    /// Offered every new provider (tasting). Return the geom made from it, if any.
    /// Runs on the topology's event thread with the topology locked.
    func taste(_ provider: Provider, in topology: Topology) -> Geom?
}

extension GeomClass {
    public func taste(_ provider: Provider, in topology: Topology) -> Geom? { nil }
}
