import CStrataSystem
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Strata
import StrataNBDProtocol
import Synchronization

/// An NBD server: exports providers of a topology to NBD clients (qemu, libnbd, fio,
/// the kernel's nbd-client) over TCP and Unix sockets.
public final class NBDServer: Sendable {
    /// What the server takes in before it stops reading (backpressure): per connection,
    /// and payload over all connections.
    public struct Limits: Sendable, Equatable {
        /// Requests in flight on one connection before the server stops reading it.
        public var requests: Int
        /// Payload bytes (read or written) in flight on one connection before it stops.
        public var bytes: Int
        /// Payload bytes in flight over all connections before every connection stops
        /// being read: what bounds the server's memory when many clients flood it at
        /// once, each within its own limits.
        public var serverBytes: Int
        /// The longest READ or WRITE, advertised as the maximum payload; within
        /// `NBDLimits.maximumRequestRange`. Longer ones are refused with EOVERFLOW.
        public var maximumRequest: Int
        /// Connections open at once; one more is closed as soon as it is accepted, so
        /// that idle or hostile clients cannot take every descriptor (the control socket
        /// and the disks need some).
        public var connections: Int
        /// How long a client has from connecting to starting transmission (NBD_OPT_GO or
        /// EXPORT_NAME) before its connection is closed.
        public var handshakeTimeout: Duration

        public init(requests: Int = 256, bytes: Int = 128 << 20, serverBytes: Int = 512 << 20,
                    maximumRequest: Int = NBDLimits.defaultMaximumRequest, connections: Int = 1000,
                    handshakeTimeout: Duration = .seconds(10)) {
            self.requests = requests
            self.bytes = bytes
            self.serverBytes = serverBytes
            self.maximumRequest = maximumRequest
            self.connections = connections
            self.handshakeTimeout = handshakeTimeout
        }
    }

    let core: NBDServerCore
    private let group: MultiThreadedEventLoopGroup
    private let listeners = NIOLockedValueBox<[NBDListener]>([])
    /// Each event loop's poller (`BusyPoller`), by the loop's identity.
    private let pollers: [ObjectIdentifier: BusyPoller]

    /// Prepares the exports: every provider must exist in `topology`.
    /// - Parameter busyPoll: how long an event loop serving one connection polls for the
    ///   client's next request before it sleeps (`BusyPoller`); zero, the default, never
    ///   polls. `strata serve` polls for 50 µs unless told otherwise.
    /// - Parameter coalescing: how long an event loop serving one connection naps after a
    ///   read of several requests, when that client keeps coming as fast with the naps
    ///   (`InputCoalescer`); zero, the default, never naps.
    /// - Throws: `StrataError` naming an export whose provider does not exist, two
    ///   exports with one name, or a maximum request outside `NBDLimits.maximumRequestRange`.
    /// - Parameter tls: the credentials clients may start TLS with, and whether they
    ///   must (`NBDTLSCredentials.load`); nil serves no TLS.
    public init(topology: Topology, exports: [NBDExport], logger: Logger = Logger(label: "strata.nbd"),
                limits: Limits = Limits(), threads: Int = System.coreCount, busyPoll: Duration = .zero,
                coalescing: Duration = .zero, tls: NBDTLSCredentials? = nil) throws {
        guard NBDLimits.maximumRequestRange.contains(limits.maximumRequest) else {
            throw StrataError(.invalid, "maximum request of \(limits.maximumRequest) bytes: must be from "
                + "\(NBDLimits.maximumRequestRange.lowerBound) to \(NBDLimits.maximumRequestRange.upperBound)")
        }
        var served: [ServedExport] = []
        for export in exports {
            served.append(try NBDServer.prepare(export, in: topology, besides: served, maximumPayload: limits.maximumRequest))
        }
        if let tls, tls.mode == .off {
            throw StrataError(.invalid, "TLS credentials were given with TLS off")
        }
        core = NBDServerCore(topology: topology, exports: served, logger: logger, limits: limits, tls: tls)
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(threads, 1))
        var pollers: [ObjectIdentifier: BusyPoller] = [:]
        for loop in group.makeIterator() { pollers[ObjectIdentifier(loop)] = BusyPoller(limit: busyPoll, coalescing: coalescing) }
        self.pollers = pollers
    }

    /// An export ready to serve: its provider found, its name free, its geom added.
    private static func prepare(_ export: NBDExport, in topology: Topology, besides served: [ServedExport],
                                maximumPayload: Int) throws -> ServedExport {
        guard let provider = topology.provider(named: export.provider) else {
            throw StrataError(.noDevice, "export \(export.name): no provider named \(export.provider)")
        }
        if served.contains(where: { $0.export.name == export.name }) {
            throw StrataError(.exists, "two exports are named \(export.name)")
        }
        let geom = NBDExportGeom(exportName: export.name)
        try topology.add(geom)
        // Exports of one provider share its locks: their clients write the same sectors.
        let locks = served.first { $0.provider === provider }?.sectorLocks ?? SectorLocks()
        return ServedExport(export: export, provider: provider, geom: geom,
                            canDelete: NBDServer.canDelete(provider, through: geom, in: topology),
                            maximumPayload: maximumPayload, sectorLocks: locks)
    }

    /// The TLS mode the server was started with.
    public var tlsMode: NBDTLSMode { core.tlsMode }

    /// Reads the TLS credential files again (`strata tls reload`): connections that start
    /// TLS from now on use them; those already up keep theirs.
    /// - Throws: `NBDTLSError` naming the file that would not do, and changes nothing;
    ///   `StrataError` when the server serves no TLS.
    public func reloadTLS(_ settings: NBDTLSSettings) throws -> String {
        guard core.tlsMode != .off else { throw StrataError(.invalid, "the server was started with TLS off") }
        var settings = settings
        settings.mode = core.tlsMode
        let credentials = try NBDTLSCredentials.load(settings)
        core.replaceTLS(credentials)
        core.logger.notice("TLS credentials reloaded", metadata: ["credentials": "\(credentials.summary)"])
        for exposed in credentials.exposedSecrets { core.logger.warning("\(exposed)") }
        return ([credentials.summary] + credentials.exposedSecrets.map { "warning: \($0)" }).joined(separator: "; ")
    }

    /// Serves one more export, from now on (`strata export add`).
    /// - Throws: `StrataError` when its provider does not exist or its name is taken.
    public func add(_ export: NBDExport) throws {
        try core.changeExports { exports in
            exports.append(try NBDServer.prepare(export, in: core.topology, besides: exports,
                                                 maximumPayload: core.limits.maximumRequest))
        }
    }

    /// Stops serving an export (`strata export remove`): refused (EBUSY) while clients
    /// have it open, unless `force`, which closes their connections first.
    /// - Throws: `StrataError` naming the export.
    public func remove(exportNamed name: String, force: Bool = false) throws {
        guard let served = core.exports.first(where: { $0.export.name == name }) else {
            throw StrataError(.noDevice, "no export named \(name)")
        }
        let open = served.statistics.connections
        guard open == 0 || force else {
            throw StrataError(.busy, "export \(name) has \(open) client\(open == 1 ? "" : "s") connected; --force closes them")
        }
        // Out of the table first: no new client finds it.
        try core.changeExports { exports in exports.removeAll { $0 === served } }
        for connection in core.connections {
            connection.eventLoop.execute { if connection.served === served { connection.close(.now) } }
        }
        // Closing takes a turn of each connection's event loop.
        let deadline = ContinuousClock.now + .seconds(10)
        while served.statistics.connections > 0 && ContinuousClock.now < deadline { usleep(2000) }
        core.topology.wither(served.geom)
        core.topology.waitUntilGone(served.geom, seconds: 2)
    }

    /// The exports served now.
    public var exports: [NBDExport] { core.exports.map(\.export) }

    /// Asks the provider whether DELETE frees space, so TRIM is advertised truthfully.
    private static func canDelete(_ provider: Provider, through geom: Geom, in topology: Topology) -> Bool {
        let consumer = topology.createConsumer(for: geom)
        defer { topology.destroy(consumer) }
        do {
            try topology.attach(consumer, to: provider)
            try topology.access(consumer, read: 1, write: 0, exclusive: 0)
            defer { try? topology.access(consumer, read: -1, write: 0, exclusive: 0) }
            var answer: Int32 = 0
            let completed = try withUnsafeMutableBytes(of: &answer) { buffer in
                try consumer.performSync(.getattr, offset: 0, length: 0, buffer: buffer, attribute: .canDelete).completed
            }
            return completed >= 4 && answer != 0
        } catch {
            return false
        }
    }

    /// Starts listening and, unless `accepting` is false, accepting (else connections
    /// wait in the kernel's queue until `accept()`). Returns the addresses bound, with
    /// the port a TCP port of 0 got, then those of the `inherited` sockets.
    /// - Parameter inherited: listening sockets a service manager handed over
    ///   (systemd's `LISTEN_FDS`), accepted on as they are; the server owns them from now
    ///   on, and closes them when it stops.
    /// - Throws: `StrataError` naming the address that could not be bound, or the
    ///   descriptor that is not a listening socket; nothing is left listening then.
    @discardableResult
    public func start(listeningOn addresses: [NBDListenAddress], inherited: [Int32] = [],
                      accepting: Bool = true) async throws -> [NBDListenAddress] {
        var started: [NBDListener] = []
        do {
            for address in addresses {
                let tcp = if case .tcp = address { true } else { false }
                started.append(try NBDListener(address, accepted: adopter(tcp: tcp)))
            }
            for descriptor in inherited {
                // A descriptor that is no listening socket at all is refused by the listener.
                let tcp = strata_listening_family(descriptor) != AF_UNIX
                started.append(try NBDListener(inherited: descriptor, accepted: adopter(tcp: tcp)))
            }
        } catch {
            for listener in started { listener.close() }
            throw error
        }
        listeners.withLockedValue { $0.append(contentsOf: started) }
        for listener in started { core.logger.info("listening", metadata: ["address": "\(listener.address)"]) }
        if accepting { accept() }
        return started.map(\.address)
    }

    /// What a listener does with a connection it accepts. Weak: the server holds its
    /// listeners until it stops.
    private func adopter(tcp: Bool) -> @Sendable (Int32) -> Void {
        { [weak self] descriptor in
            guard let self else {
                Glibc.close(descriptor)
                return
            }
            adopt(descriptor, tcp: tcp)
        }
    }

    /// Starts accepting connections on every address `start` bound.
    public func accept() {
        for listener in listeners.withLockedValue({ $0 }) { listener.accept() }
    }

    /// The send buffer asked for on Unix-socket connections; the kernel caps it at
    /// `net.core.wmem_max`.
    static let unixSendBuffer: SocketOptionValue = 4 << 20

    /// Hands an accepted connection to an event loop, with the handler in its pipeline;
    /// one past `Limits.connections` is closed at once.
    private func adopt(_ descriptor: Int32, tcp: Bool) {
        let core = self.core
        guard core.admit() else {
            Glibc.close(descriptor)
            return
        }
        let pollers = self.pollers
        var bootstrap = ClientBootstrap(group: group)
            .channelOption(ChannelOptions.writeBufferWaterMark, value: .init(low: 1 << 20, high: 8 << 20))
            .channelOption(ChannelOptions.recvAllocator, value: AdaptiveRecvByteBufferAllocator(
                minimum: 4096, initial: 65536, maximum: 1 << 20))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NBDConnectionHandler(
                        core: core, eventLoop: channel.eventLoop, largeReadQueue: .global(),
                        descriptor: descriptor, poller: pollers[ObjectIdentifier(channel.eventLoop)]))
                }
            }
        if !tcp {
            // A Unix socket's send buffer (208 KiB by default) holds a fifth of a 1 MiB
            // read's reply: the event loop wrote it in pieces, each after a wait for
            // room. TCP sizes its own buffers, and setting one would stop that. (The
            // bootstrap turns Nagle's algorithm off on TCP connections itself.)
            bootstrap = bootstrap.channelOption(ChannelOptions.socketOption(.so_sndbuf), value: Self.unixSendBuffer)
        }
        bootstrap.withConnectedSocket(descriptor).whenFailure { error in
            core.release()
            core.logger.warning("accepted connection not served", metadata: ["error": "\(error)"])
        }
    }

    /// A handler for one more connection, the one `start` puts in each accepted
    /// channel's pipeline but that it sends every request from the event loop, large
    /// reads too: an `EmbeddedEventLoop` runs only on the thread that drives it. For
    /// driving the real thing over an `EmbeddedChannel`: the fuzz targets (`StrataFuzz`)
    /// serve hostile bytes through it, and the benchmarks count what a request costs.
    @_spi(Embedding) public func connectionHandler(on eventLoop: any EventLoop) -> any ChannelHandler {
        NBDConnectionHandler(core: core, eventLoop: eventLoop)
    }

    /// Stops: no new connections; every connection finishes and answers the requests it
    /// has in flight, then closes. Waits up to `seconds` for them, then cuts them off;
    /// one that still has not closed two seconds later (its event loop held by a backend)
    /// is left, and so are the event loops.
    public func stop(seconds: Double = 10) async {
        core.beginStopping()
        let listening = listeners.withLockedValue { listeners in
            defer { listeners.removeAll() }
            return listeners
        }
        for listener in listening { listener.close() }
        for connection in core.connections {
            connection.eventLoop.execute { connection.stopGracefully() }
        }
        let deadline = ContinuousClock.now + .seconds(seconds)
        while !core.connections.isEmpty && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        // Clients that kept sending past the deadline are cut off.
        for connection in core.connections {
            connection.eventLoop.execute { connection.close(.now) }
        }
        // A connection whose event loop a backend holds (a close that must write through a
        // hung disk) may not get there: past a little more time, the stop gives up on it.
        let cutOff = ContinuousClock.now + .seconds(2)
        while !core.connections.isEmpty && ContinuousClock.now < cutOff { try? await Task.sleep(for: .milliseconds(5)) }
        guard core.connections.isEmpty else {
            core.logger.warning("connections still closing after the stop's deadline; left as they are",
                                metadata: ["connections": "\(core.connections.count)"])
            return
        }
        for served in core.exports { core.topology.wither(served.geom) }
        // A server started again on this topology reuses the export geoms' names.
        for served in core.exports { core.topology.waitUntilGone(served.geom, seconds: 2) }
        try? await group.shutdownGracefully()
    }

    /// Connections open now.
    public var connectionCount: Int { core.connections.count }

    /// Busy polls (`BusyPoller`) over all event loops so far: those that found the
    /// client's next request, and those that timed out and let the loop sleep.
    public var busyPolls: (found: Int, timedOut: Int) {
        pollers.values.reduce((0, 0)) { total, poller in
            (total.0 + poller.hits.load(ordering: .relaxed), total.1 + poller.misses.load(ordering: .relaxed))
        }
    }

    /// Naps after a read of several requests (`InputCoalescer`) over all event loops so far.
    public var coalescingNaps: Int {
        pollers.values.reduce(0) { $0 + $1.naps.load(ordering: .relaxed) }
    }

    /// Payload bytes of requests taken in and not yet answered, over all connections
    /// (held against `Limits.serverBytes`).
    public var payloadBytesInFlight: Int { core.payloadBytesInFlight }

    /// One export's load at one moment.
    public struct ExportStatistics: Sendable, Equatable {
        public var name: String
        /// Connections that chose this export and are in transmission.
        public var connections: Int
        /// Requests those connections have submitted and not yet seen complete.
        public var requestsInFlight: Int

        public init(name: String, connections: Int, requestsInFlight: Int) {
            self.name = name
            self.connections = connections
            self.requestsInFlight = requestsInFlight
        }
    }

    /// Every export's load, in the order the exports were given.
    public var exportStatistics: [ExportStatistics] { core.exports.map(\.statistics) }
}

/// What the connections of one server share.
final class NBDServerCore: Sendable {
    let topology: Topology
    /// What is served; changed at run time, read only during handshakes and scrapes.
    private let exportTable: NIOLockedValueBox<[ServedExport]>
    let logger: Logger
    let limits: NBDServer.Limits
    private let state = NIOLockedValueBox<(connections: [ObjectIdentifier: NBDConnectionHandler], stopping: Bool)>(([:], false))
    /// Payload bytes in flight over all connections (`Limits.serverBytes`).
    private let bytesInFlight = Atomic<Int>(0)
    /// Connections accepted and not yet closed (`Limits.connections`), counted from the
    /// accept, before NIO has them.
    private let admitted = Atomic<Int>(0)
    /// Connections refused at the cap since it was last logged, and when that was:
    /// a flood is logged once a second, not once a connection.
    private let refusals = NIOLockedValueBox<(count: Int, lastLog: ContinuousClock.Instant?)>((0, nil))
    /// Peers whose handshake timed out, logged once each (at most 4096 remembered).
    private let slowPeers = NIOLockedValueBox<Set<String>>([])
    /// Connections that stopped reading because the server's budget was spent; woken
    /// when it falls to half, since with nothing of their own in flight no completion
    /// of theirs would.
    private let starved = NIOLockedValueBox<[ObjectIdentifier: NBDConnectionHandler]>([:])
    /// The TLS credentials a connection starting TLS gets; replaced on reload, which
    /// connections already up keep what they had.
    private let tlsCredentials: NIOLockedValueBox<NBDTLSCredentials?>
    let tlsMode: NBDTLSMode

    init(topology: Topology, exports: [ServedExport], logger: Logger, limits: NBDServer.Limits, tls: NBDTLSCredentials?) {
        self.topology = topology
        exportTable = NIOLockedValueBox(exports)
        self.logger = logger
        self.limits = limits
        tlsCredentials = NIOLockedValueBox(tls)
        tlsMode = tls?.mode ?? .off
    }

    var tls: NBDTLSCredentials? { tlsCredentials.withLockedValue { $0 } }

    func replaceTLS(_ credentials: NBDTLSCredentials) {
        tlsCredentials.withLockedValue { $0 = credentials }
    }

    var exports: [ServedExport] { exportTable.withLockedValue { $0 } }

    func changeExports(_ change: (inout [ServedExport]) throws -> Void) rethrows {
        try exportTable.withLockedValue(change)
    }

    /// The export a client asks for by name; the empty name is the default export.
    func export(named name: String) -> ServedExport? {
        let exports = self.exports
        if name.isEmpty {
            return exports.first { $0.export.isDefault } ?? exports.first
        }
        return exports.first { $0.export.name == name }
    }

    /// Peers whose TLS handshake failed, logged once each (at most 4096 remembered).
    private let failedTLSPeers = NIOLockedValueBox<Set<String>>([])

    /// A client that failed its TLS handshake (a wrong key, an untrusted certificate,
    /// no suite in common): logged as a warning once per address, then at debug level.
    func tlsHandshakeFailed(peer: String, error: any Error, logger: Logger) {
        let host = peer.split(separator: ":").dropLast().joined(separator: ":")
        let first = failedTLSPeers.withLockedValue { peers in
            if peers.count >= 4096 { peers.removeAll() }
            return peers.insert(host.isEmpty ? peer : host).inserted
        }
        logger.log(level: first ? .warning : .debug, "TLS handshake failed; closing", metadata: ["error": "\(error)"])
    }

    var isStopping: Bool { state.withLockedValue { $0.stopping } }
    var connections: [NBDConnectionHandler] { state.withLockedValue { Array($0.connections.values) } }

    func beginStopping() { state.withLockedValue { $0.stopping = true } }

    func register(_ connection: NBDConnectionHandler) {
        let refused = state.withLockedValue { state in
            if state.stopping { return true }
            state.connections[ObjectIdentifier(connection)] = connection
            return false
        }
        if refused { connection.eventLoop.execute { connection.stopGracefully() } }
    }

    /// Counts an accepted connection in, or refuses it at the cap (logged at most once
    /// a second, with how many were refused).
    func admit() -> Bool {
        if admitted.wrappingAdd(1, ordering: .relaxed).newValue <= limits.connections { return true }
        admitted.wrappingSubtract(1, ordering: .relaxed)
        let refused: Int? = refusals.withLockedValue { refusals in
            refusals.count += 1
            let now = ContinuousClock.now
            if let last = refusals.lastLog, now - last < .seconds(1) { return nil }
            defer { refusals = (0, now) }
            return refusals.count
        }
        if let refused {
            logger.warning("connection refused: the server has its maximum of connections open (limits.connections)",
                           metadata: ["limit": "\(limits.connections)", "refused": "\(refused)"])
        }
        return false
    }

    /// An admitted connection closed.
    func release() {
        admitted.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Logs a handshake that timed out, once per peer host.
    func handshakeTimedOut(peer: String, logger: Logger) {
        let host = peer.split(separator: ":").dropLast().joined(separator: ":")
        let first = slowPeers.withLockedValue { peers in
            guard peers.count < 4096 else { return false }
            return peers.insert(host.isEmpty ? peer : host).inserted
        }
        if first {
            logger.warning("handshake timed out; closing (logged once per peer)",
                           metadata: ["seconds": "\(limits.handshakeTimeout)"])
        }
    }

    func unregister(_ connection: NBDConnectionHandler) {
        // Only accepted connections were admitted (an embedded one has no descriptor).
        if connection.descriptor >= 0 { release() }
        _ = state.withLockedValue { $0.connections.removeValue(forKey: ObjectIdentifier(connection)) }
        _ = starved.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(connection)) }
    }

    // MARK: The server's byte budget

    var payloadBytesInFlight: Int { bytesInFlight.load(ordering: .relaxed) }

    /// Whether the payload bytes in flight over all connections have reached the budget.
    var budgetSpent: Bool { bytesInFlight.load(ordering: .relaxed) >= limits.serverBytes }

    /// Whether the bytes in flight are at or below half the budget, where stopped
    /// connections start again.
    var budgetRecovered: Bool { bytesInFlight.load(ordering: .relaxed) <= limits.serverBytes / 2 }

    /// A request of `count` payload bytes was taken in.
    func charge(_ count: Int) {
        bytesInFlight.wrappingAdd(count, ordering: .relaxed)
    }

    /// A request of `count` payload bytes was answered; wakes the starved connections
    /// when this brings the total down to half the budget.
    func refund(_ count: Int) {
        let left = bytesInFlight.wrappingSubtract(count, ordering: .relaxed).newValue
        guard count > 0, left <= limits.serverBytes / 2, left + count > limits.serverBytes / 2 else { return }
        let waking = starved.withLockedValue { waiting in
            defer { waiting.removeAll() }
            return Array(waiting.values)
        }
        for connection in waking {
            connection.eventLoop.execute { connection.updateReading() }
        }
    }

    /// `connection` stopped reading because the budget is spent.
    func starve(_ connection: NBDConnectionHandler) {
        starved.withLockedValue { $0[ObjectIdentifier(connection)] = connection }
        // The last completion may have come between the check and the registration.
        if budgetRecovered, starved.withLockedValue({ $0.removeValue(forKey: ObjectIdentifier(connection)) }) != nil {
            connection.eventLoop.execute { connection.updateReading() }
        }
    }
}
