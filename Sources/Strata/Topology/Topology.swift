#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Levels of the topology's diagnostic messages.
public enum LogLevel: Int, Sendable, Comparable {
    case debug, info, notice, warning, error
    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The graph of classes, geoms, providers and consumers (GEOM's mesh).
///
/// Changes to the graph happen under one lock, from any thread, and the consequences
/// that call into classes (tasting, orphaning, spoiling, withering) run on the event
/// thread. The I/O path reads the graph through atomics and takes no lock.
public final class Topology: @unchecked Sendable {
    private let lock = ConditionLock(recursive: true)
    private var events: EventQueue!
    private var classList: [any GeomClass] = []
    private var geomList: [Geom] = []
    private var providersByName: [String: Provider] = [:]
    private var withering: [Geom] = []
    /// Geoms tasting has begun that wait for more components before they start
    /// (`beginGathering`), with the condition `waitWhileGathering` waits on.
    private let gathering = ConditionMutex(0)
    /// Objects classes keep per topology (`shared`), by type.
    private var sharedObjects: [ObjectIdentifier: AnyObject] = [:]
    /// Providers tasting leaves alone (`claim`).
    private var claimed: Set<String> = []
    /// Set while a class tastes a provider, so that `add` can refuse the names an
    /// assembly reserves.
    private var isTasting = false
    /// Whether the topology is being put together, and what waits for the end of it
    /// (`beginAssembly`). Its own lock: `emit` runs in done routines, which never wait
    /// for the topology's.
    let assembly = Mutex(AssemblyPhase.running)
    /// Where diagnostic messages go; nil drops them.
    public let log: (@Sendable (LogLevel, String) -> Void)?

    /// - Parameter log: receives diagnostic messages from any thread.
    public init(log: (@Sendable (LogLevel, String) -> Void)? = nil) {
        self.log = log
        events = EventQueue { [weak self] in
            self?.wash() ?? false
        }
    }

    /// The registered classes, in registration order.
    public var classes: [any GeomClass] { withLock { classList } }
    /// The geoms, in the order they were added.
    public var geoms: [Geom] { withLock { geomList } }

    deinit {
        events.stop()
        // The I/O path holds consumers unretained, and counts a request until its done
        // routine has returned. A user the routine woke may drop the last reference to
        // the topology in those last moments: wait for them to pass, as `detach` does,
        // rather than free a consumer under the thread still returning from it. One
        // still busy after that (the topology dropped inside its own done routine) is
        // kept rather than freed.
        let deadline = monotonicSeconds() + 1
        for geom in geomList {
            for consumer in geom.consumers where consumer.requestsInFlight != 0 {
                while consumer.requestsInFlight != 0 && monotonicSeconds() < deadline { sched_yield() }
                if consumer.requestsInFlight != 0 { _ = Unmanaged.passRetained(consumer) }
            }
        }
    }

    /// Runs `body` with the topology locked (`g_topology_lock`).
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        try lock.withLock(body)
    }

    func post(_ event: @escaping @Sendable () -> Void) {
        events.post { [weak self] in
            guard let self else { return }
            self.withLock(event)
        }
    }

    /// Waits until every posted event has run (`g_waitidle`).
    public func settle() {
        events.waitIdle()
    }

    /// Sends a diagnostic message to `log`; while the topology is being assembled, it
    /// waits for the end of the assembly (`beginAssembly`).
    public func emit(_ level: LogLevel, _ message: String) {
        let now: Bool = assembly.withLock { phase in
            switch phase {
            case .running: return true
            case .assembling(var state):
                state.heldLog.append((level, message))
                phase = .assembling(state)
                return false
            case .abandoned: return false
            }
        }
        if now { log?(level, message) }
    }

    // MARK: Classes and geoms

    /// Adds a class; every existing provider is offered to it, from the top of the
    /// stacks down (a provider stacked on another is seen before it).
    public func register(_ geomClass: any GeomClass) {
        withLock {
            classList.append(geomClass)
            let ordered = providersByName.values.sorted { ($0.geom.rank, $1.name) > ($1.geom.rank, $0.name) }
            for provider in ordered {
                post { [weak self] in self?.offer(provider, to: [geomClass]) }
            }
        }
    }

    /// Adds a geom. Geom names are unique in a topology, and tasting may not take a
    /// name the assembly under way reserves.
    public func add(_ geom: Geom) throws {
        try withLock {
            guard geom.topology == nil else { throw StrataError(.busy, "geom \(geom.name) is already in a topology") }
            if geomList.contains(where: { $0.name == geom.name }) {
                throw StrataError(.exists, "a geom named \(geom.name) exists already")
            }
            if isTasting, isReserved(geom.name) {
                throw StrataError(.exists, "the name \(geom.name) belongs to the topology file")
            }
            geom.topology = self
            geomList.append(geom)
        }
    }

    /// Takes out a geom that has no provider and no consumer (one whose setup failed
    /// part way) and releases it with `destroyed()`, once.
    public func remove(_ geom: Geom) {
        withLock {
            precondition(geom.providers.isEmpty && geom.consumers.isEmpty,
                         "remove of geom \(geom.name), which still has providers or consumers; wither it instead")
            guard geom.topology === self else { return }
            geomList.removeAll { $0 === geom }
            geom.topology = nil
        }
        geom.destroyed()
    }

    public func geom(named name: String) -> Geom? {
        withLock { geomList.first { $0.name == name } }
    }

    public func provider(named name: String) -> Provider? {
        withLock { providersByName[name] }
    }

    public var providers: [Provider] {
        withLock { providersByName.values.sorted { $0.name < $1.name } }
    }

    /// The providers, or nil if the topology's lock is held: for a report that must not
    /// wait (a stop whose grace is over while a class holds the lock for slow I/O).
    public var providersIfUnlocked: [Provider]? {
        guard lock.tryLock() else { return nil }
        defer { lock.unlock() }
        return providersByName.values.sorted { $0.name < $1.name }
    }

    /// Whether `provider` cannot be opened for writing: it is read-only, or its geom
    /// consumes one that cannot be (a geom opens what it consumes as it is opened, so a
    /// write open would reach the read-only provider and be refused there).
    public func isReadOnly(_ provider: Provider) -> Bool {
        withLock {
            provider.isReadOnly || provider.geom.consumers.contains { $0.provider.map(isReadOnly) ?? false }
        }
    }

    // MARK: Providers

    /// Makes a provider for `geom` and announces it: it is offered to every class.
    /// Provider names are unique in a topology.
    @discardableResult
    public func createProvider(for geom: Geom, name: String, mediaSize: Int64, sectorSize: Int,
                               stripeSize: Int64 = 0, stripeOffset: Int64 = 0, index: Int = 0,
                               readOnly: Bool = false, memoryAlignment: Int = 1, announce: Bool = true) throws -> Provider {
        guard sectorSize > 0, sectorSize & (sectorSize - 1) == 0 else {
            throw StrataError(.invalid, "provider \(name): sector size \(sectorSize) is not a power of two")
        }
        guard memoryAlignment > 0, memoryAlignment & (memoryAlignment - 1) == 0 else {
            throw StrataError(.invalid, "provider \(name): memory alignment \(memoryAlignment) is not a power of two")
        }
        guard mediaSize >= 0 else {
            throw StrataError(.invalid, "provider \(name): media size \(mediaSize) is negative")
        }
        return try withLock {
            precondition(geom.topology === self, "geom \(geom.name) is not in this topology")
            if providersByName[name] != nil {
                throw StrataError(.exists, "a provider named \(name) exists already")
            }
            let provider = Provider(name: name, geom: geom, mediaSize: mediaSize, sectorSize: sectorSize,
                                    stripeSize: stripeSize, stripeOffset: stripeOffset, index: index, isReadOnly: readOnly,
                                    memoryAlignment: memoryAlignment)
            geom.providers.append(provider)
            providersByName[name] = provider
            if announce { self.announce(provider) }
            return provider
        }
    }

    /// Gives `provider` a new size (`g_resize_provider`): requests are checked against
    /// it from now on, and an NBD client sees it when it next connects.
    public func resize(_ provider: Provider, to mediaSize: Int64) {
        withLock {
            provider.setMediaSize(mediaSize)
            emit(.info, "provider \(provider.name) resized to \(mediaSize) bytes")
        }
    }

    /// Offers `provider` to every class (tasting).
    public func announce(_ provider: Provider) {
        post { [weak self] in
            guard let self else { return }
            self.offer(provider, to: self.classList)
        }
    }

    private func offer(_ provider: Provider, to classes: [any GeomClass]) {
        isTasting = true
        defer { isTasting = false }
        for geomClass in classes {
            guard providersByName[provider.name] === provider, !provider.isOrphaned, !claimed.contains(provider.name) else {
                return
            }
            if let geom = geomClass.taste(provider, in: self) {
                emit(.info, "\(geomClass.name) tasted \(provider.name): made \(geom.name)")
            }
        }
    }

    /// The one object of `type` this topology keeps for a class, made by `make` the first
    /// time: all the power-cut disks of a topology record into one log, say.
    public func shared<Object: AnyObject & Sendable>(_ type: Object.Type, make: () -> Object) -> Object {
        withLock {
            if let object = sharedObjects[ObjectIdentifier(type)] as? Object { return object }
            let object = make()
            sharedObjects[ObjectIdentifier(type)] = object
            return object
        }
    }

    /// A class has begun a geom from tasting that waits a while for the rest of its
    /// components (a mirror): assembly waits for it too (`waitWhileGathering`). Each call
    /// is matched by one `endGathering`.
    public func beginGathering() {
        gathering.withLock { $0 += 1 }
    }

    public func endGathering() {
        gathering.withLock { $0 -= 1 }
        gathering.wakeWaiters()
    }

    /// Waits until no geom is gathering components, or `seconds` pass.
    public func waitWhileGathering(seconds: Double) {
        gathering.wait(until: { $0 == 0 }, seconds: seconds)
        settle()
    }

    // MARK: Claims: what tasting leaves alone

    /// Gives providers, by name, to their users: tasting never reads them, so that what
    /// a client or a class without metadata writes there (a label, a partition table,
    /// a mirror's metadata) never changes how the topology is built. A name may be
    /// claimed before its provider exists.
    public func claim(_ names: some Sequence<String>) {
        withLock { claimed.formUnion(names) }
    }

    /// Takes claims back: the providers may be tasted again, from their next announcement.
    public func unclaim(_ names: some Sequence<String>) {
        withLock { claimed.subtract(names) }
    }

    /// Whether tasting leaves `name` alone.
    public func isClaimed(_ name: String) -> Bool {
        withLock { claimed.contains(name) }
    }

    /// The geom stacked on `provider` that would be left on nothing if it went: one
    /// attached to it, not tasting it and not on its way out (a closed device's). Verbs
    /// that remove a provider (`geom destroy`, `thin delete`) refuse while there is one.
    public func userStacked(on provider: Provider) -> Geom? {
        withLock { provider.consumers.first { !$0.geom.className.hasPrefix("TASTE") && !$0.geom.isWithering }?.geom }
    }

    /// Sets or clears the error every request to `provider` gets (`g_error_provider`).
    public func setError(_ error: BioError?, on provider: Provider) {
        provider.setError(error)
    }

    // MARK: Consumers

    /// Makes a consumer for `geom`, not yet attached.
    public func createConsumer(for geom: Geom) -> Consumer {
        withLock {
            precondition(geom.topology === self, "geom \(geom.name) is not in this topology")
            let consumer = Consumer(geom: geom)
            geom.consumers.append(consumer)
            return consumer
        }
    }

    /// Attaches `consumer` to `provider` (`g_attach`). Refuses (ELOOP) an attachment
    /// that would make the graph cyclic, and (ENXIO) one to an orphaned provider.
    public func attach(_ consumer: Consumer, to provider: Provider) throws {
        try withLock {
            precondition(consumer.provider == nil, "consumer \(consumer.name) is attached already")
            guard !provider.isOrphaned else {
                throw StrataError(.noDevice, "attach \(consumer.geom.name) to \(provider.name): provider is going away")
            }
            if provider.geom === consumer.geom || depends(provider.geom, on: consumer.geom) {
                throw StrataError(.loop, "attach \(consumer.geom.name) to \(provider.name): that would make a cycle")
            }
            consumer.provider = provider
            provider.consumers.append(consumer)
            raiseRank(of: consumer.geom, above: provider.geom.rank)
        }
    }

    /// Whether `geom` reads, directly or not, from a provider of `other`.
    private func depends(_ geom: Geom, on other: Geom) -> Bool {
        for consumer in geom.consumers {
            guard let below = consumer.provider?.geom else { continue }
            if below === other || depends(below, on: other) { return true }
        }
        return false
    }

    private func raiseRank(of geom: Geom, above rank: Int) {
        guard geom.rank <= rank else { return }
        geom.rank = rank + 1
        for provider in geom.providers {
            for consumer in provider.consumers { raiseRank(of: consumer.geom, above: geom.rank) }
        }
    }

    /// Detaches a consumer that holds no access and has no request in flight (`g_detach`).
    public func detach(_ consumer: Consumer) {
        withLock {
            precondition(!consumer.holdsAccess, "detach of \(consumer.name), which still holds access")
            // A request stays counted until its done routine has returned, which keeps
            // the issuing geom alive while that routine runs; a caller the routine woke
            // may get here first. Give those last few moments to pass.
            // The check uses the value the wait saw: reading the count again could catch a
            // request a misbehaving user sent just after, and trap on a detach that was
            // legal when it was decided.
            let deadline = monotonicSeconds() + 5
            var inFlight = consumer.requestsInFlight
            while inFlight != 0 && monotonicSeconds() < deadline {
                sched_yield()
                inFlight = consumer.requestsInFlight
            }
            precondition(inFlight == 0, "detach of \(consumer.name) with requests in flight")
            guard let provider = consumer.provider else { return }
            provider.consumers.removeAll { $0 === consumer }
            consumer.provider = nil
            if provider.isOrphaned || provider.geom.isWithering { scheduleWash(provider.geom) }
        }
    }

    /// Detaches (if attached) and removes a consumer from its geom.
    public func destroy(_ consumer: Consumer) {
        withLock {
            detach(consumer)
            consumer.geom.consumers.removeAll { $0 === consumer }
        }
    }

    // MARK: Access

    /// Changes `consumer`'s access counts by the deltas (`g_access`).
    ///
    /// GEOM's rules: no count goes below zero; exclusive access is refused while
    /// another consumer writes, and writing is refused while another holds exclusive
    /// access (EPERM); writing a read-only provider is refused (EROFS); opening a
    /// provider that has an error fails with it; the provider's geom may refuse. The
    /// first writer spoils consumers that tasted the provider without opening it; the
    /// last writer closing has it tasted again.
    public func access(_ consumer: Consumer, read: Int, write: Int, exclusive: Int) throws {
        try withLock {
            guard let provider = consumer.provider else {
                throw StrataError(.noDevice, "access on \(consumer.name): not attached")
            }
            precondition(consumer.readCount + read >= 0 && consumer.writeCount + write >= 0
                         && consumer.exclusiveCount + exclusive >= 0,
                         "access on \(consumer.name) would go below zero")
            let counts = provider.accessCounts
            let otherWriters = counts.write - consumer.writeCount
            let otherExclusive = counts.exclusive - consumer.exclusiveCount
            if exclusive > 0 && otherWriters > 0 {
                throw StrataError(.permission, "exclusive open of \(provider.name): it has another writer")
            }
            if write > 0 && otherExclusive > 0 {
                throw StrataError(.permission, "write open of \(provider.name): it is open exclusively")
            }
            if write > 0 && provider.isReadOnly {
                throw StrataError(.readOnly, "write open of \(provider.name): it is read-only")
            }
            let opening = read > 0 || write > 0 || exclusive > 0
            if opening, let error = provider.error {
                throw StrataError(error, "open of \(provider.name)")
            }
            try provider.geom.access(provider, read: read, write: write, exclusive: exclusive)

            if otherWriters == 0 && consumer.writeCount == 0 && write > 0 { spoil(provider, except: consumer) }
            consumer.readStorage.wrappingAdd(read, ordering: .relaxed)
            consumer.writeStorage.wrappingAdd(write, ordering: .relaxed)
            consumer.exclusiveStorage.wrappingAdd(exclusive, ordering: .relaxed)
            provider.readTotal.wrappingAdd(read, ordering: .relaxed)
            provider.writeTotal.wrappingAdd(write, ordering: .relaxed)
            provider.exclusiveTotal.wrappingAdd(exclusive, ordering: .relaxed)

            if write < 0 && provider.accessCounts.write == 0 && provider.needsRetaste {
                provider.needsRetaste = false
                announce(provider)
            }
            if !consumer.holdsAccess && (consumer.isOrphaned || consumer.geom.isWithering) {
                scheduleWash(consumer.geom)
            }
        }
    }

    private func spoil(_ provider: Provider, except writer: Consumer) {
        for consumer in provider.consumers where consumer !== writer && !consumer.holdsAccess && !consumer.isSpoiled {
            consumer.isSpoiled = true
            provider.needsRetaste = true
            // The washer may take the consumer, and its geom, away before the notice runs
            // (a closed user's consumer waits for it without access): only a consumer
            // still attached is told.
            post { if consumer.provider === provider { consumer.geom.spoiled(consumer) } }
        }
    }

    // MARK: Orphaning and withering

    /// The provider is going away (`g_orphan_provider`): every request to it fails with
    /// `error` from now on, its consumers are told, and the loss propagates up. Once
    /// nothing is attached to it, it is removed.
    public func orphan(_ provider: Provider, error: BioError = .noDevice) {
        withLock {
            guard !provider.isOrphaned else { return }
            provider.isOrphaned = true
            provider.setError(error)
            emit(.notice, "provider \(provider.name) orphaned: \(error)")
            let consumers = provider.consumers
            post {
                for consumer in consumers where consumer.provider === provider {
                    consumer.markOrphaned()
                    consumer.geom.orphan(consumer)
                }
            }
            scheduleWash(provider.geom)
        }
    }

    /// Begins taking `geom` away (`g_wither_geom`): its providers are orphaned with
    /// `error`, and once nothing is attached above and nothing is in flight below, its
    /// consumers are closed and detached and the geom leaves the topology.
    public func wither(_ geom: Geom, error: BioError = .noDevice) {
        withLock {
            guard geom.topology === self, !geom.isWithering else { return }
            geom.isWithering = true
            geom.withering()
            emit(.info, "geom \(geom.name) withering")
            for provider in geom.providers { orphan(provider, error: error) }
            scheduleWash(geom)
        }
    }

    private func scheduleWash(_ geom: Geom) {
        if !withering.contains(where: { $0 === geom }) { withering.append(geom) }
        post {}
    }

    /// Removes what withering and orphaning left unused. Returns true while some of it
    /// still waits for requests in flight or consumers above to close.
    private func wash() -> Bool {
        withLock {
            var unfinished: [Geom] = []
            for geom in withering where geom.topology === self {
                for provider in geom.providers where provider.isOrphaned && provider.consumers.isEmpty {
                    geom.providers.removeAll { $0 === provider }
                    providersByName[provider.name] = nil
                }
                for consumer in geom.consumers where consumer.requestsInFlight == 0 {
                    let unused = geom.isWithering && geom.providers.isEmpty
                    if unused && consumer.holdsAccess {
                        // Nothing above can use this geom any more: close what it held.
                        try? access(consumer, read: -consumer.readCount, write: -consumer.writeCount,
                                    exclusive: -consumer.exclusiveCount)
                    }
                    if (unused || consumer.isOrphaned) && !consumer.holdsAccess {
                        detach(consumer)
                        geom.consumers.removeAll { $0 === consumer }
                    }
                }
                if geom.isWithering && geom.providers.isEmpty && geom.consumers.isEmpty {
                    geomList.removeAll { $0 === geom }
                    geom.topology = nil
                    emit(.info, "geom \(geom.name) destroyed")
                    geom.destroyed()
                } else if geom.isWithering || geom.consumers.contains(where: \.isOrphaned)
                            || geom.providers.contains(where: \.isOrphaned) {
                    unfinished.append(geom)
                }
            }
            withering = unfinished
            return !unfinished.isEmpty
        }
    }

    /// Withers every geom, from the top of the stacks down, and waits until all are
    /// gone or `seconds` pass: an orderly stop that releases what disks hold (mappings,
    /// files, worker threads). Requests in flight finish first. Returns whether
    /// everything went.
    @discardableResult
    public func shutdown(seconds: Double = 30) -> Bool {
        let all = withLock { geomList.sorted { $0.rank > $1.rank } }
        for geom in all { wither(geom, error: .shutdown) }
        let deadline = monotonicSeconds() + seconds
        while monotonicSeconds() < deadline {
            settle()
            if withLock({ geomList.isEmpty }) { return true }
            sleepSeconds(0.002)
        }
        return false
    }

    /// Waits until `geom` has left the topology, or `seconds` pass. Returns whether it left.
    @discardableResult
    public func waitUntilGone(_ geom: Geom, seconds: Double = 10) -> Bool {
        let deadline = monotonicSeconds() + seconds
        while monotonicSeconds() < deadline {
            settle()
            if withLock({ geom.topology == nil }) { return true }
            sleepSeconds(0.002)
        }
        return false
    }
}
