import Dispatch
import Foundation
import NIOCore
import Strata
import StrataNBDClient
import StrataNBDProtocol
import Synchronization

/// A disk whose provider is an NBD export elsewhere (nbdkit, qemu-nbd, another strata),
/// through Strata's NBD client: reads, writes, FUA and FLUSH, TRIM, WRITE_ZEROES and
/// block status pass through; a lost connection is made again with backoff, and the
/// requests it held are sent again on the new one if it comes within the reconnect
/// timeout, and fail with EIO after (docs: `remote.md`).
public final class RemoteDisk: Disk, @unchecked Sendable {
    public struct Options: Sendable, Equatable {
        /// Connections to open when the server allows several (`NBD_FLAG_CAN_MULTI_CONN`).
        public var connections = 1
        /// How long requests wait for a lost connection to come back before they fail.
        public var reconnectTimeout: Duration = .seconds(10)
        /// How long requests may go unanswered on a connection before it is taken for
        /// lost (a cut cable sends no reset): it is closed and made again. Also the
        /// longest a connection attempt may take.
        public var requestTimeout: Duration = .seconds(30)
        public var tls: NBDClientTLS.Credentials?
        public var verifyPeer = true

        public init() {}
    }

    /// Where the link stands, as `strata status` shows it.
    enum Phase: String {
        case connected = "CONNECTED"
        /// Lost; requests wait for it to come back.
        case reconnecting = "RECONNECTING"
        /// Lost for longer than the reconnect timeout: requests fail with EIO at once,
        /// and reconnecting goes on.
        case failed = "FAILED"
    }

    /// One request as sent to the server: enough to send it again on a new connection.
    struct Request: @unchecked Sendable {
        let bio: UnmanagedBio
        let command: BioCommand
        let flags: BioFlags
        let offset: Int64
        let length: Int64
        /// Where a read's bytes go: the request's own buffer, which lives until it is
        /// delivered.
        let data: BioData
        /// A write's bytes, copied once from the request.
        let payload: ByteBuffer?
        let started: ContinuousClock.Instant
    }

    struct Link {
        var phase = Phase.connected
        var clients: [NBDClient] = []
        var next = 0
        /// Requests held while the link is down, in the order they came.
        var waiting: [Request] = []
        var lostAt: ContinuousClock.Instant?
        var lastError: String?
        var stopping = false
        /// How many times a connection was made: a consumer that saw the link lost can
        /// tell from it that the link came back meanwhile.
        var established = 0
    }

    public let remote: RemoteURI
    public let options: Options
    let transmissionFlags: NBDTransmissionFlags
    let maximumPayload: Int
    let hasBlockStatus: Bool
    private let link = Mutex(Link())
    /// Request latency, an exponentially weighted mean in nanoseconds (0: none yet).
    private let latency = Atomic<Int64>(0)
    /// Commands sent and answers (or failures) received: the watchdog finds a stalled
    /// link from them without a clock on the request path.
    private let sent = Atomic<Int>(0)
    private let answered = Atomic<Int>(0)

    private init(name: String, remote: RemoteURI, options: Options, first: NBDClient) {
        self.remote = remote
        self.options = options
        transmissionFlags = first.transmissionFlags
        maximumPayload = Int(first.blockSizes.maximumPayload)
        hasBlockStatus = first.metaContextID != nil
        super.init(name: name, className: "REMOTE", ident: "remote:\(remote.text)",
                   canDelete: first.transmissionFlags.contains(.sendTrim))
    }

    /// Connects to the export and adds the disk: its size and sector size are the
    /// export's, and it is read-only if the export is.
    /// - Throws: `StrataError` saying why the export could not be opened.
    public static func create(in topology: Topology, name: String, remote: RemoteURI, options: Options) throws -> RemoteDisk {
        let clients = try waitFor { try await connect(remote, options, count: options.connections) }
        let first = clients[0]
        let disk = RemoteDisk(name: name, remote: remote, options: options, first: first)
        let minimum = Int(first.blockSizes.minimum)
        let sectorSize = minimum > 512 && minimum <= 65536 && minimum & (minimum - 1) == 0 ? minimum : 512
        // In service before the topology can send it anything: a class tasting the disk
        // reads it as soon as it is added, and that read, held for want of a connection
        // while the topology's lock was held, stopped the topology for good.
        _ = disk.adopt(clients)
        do {
            try disk.install(in: topology, mediaSize: Int64(first.exportSize), sectorSize: sectorSize,
                             readOnly: first.transmissionFlags.contains(.readOnly))
        } catch {
            disk.withering()
            throw error
        }
        Task.detached { await disk.watchForStalls() }
        return disk
    }

    /// `count` connections to the export (one unless the server allows several).
    static func connect(_ remote: RemoteURI, _ options: Options, count: Int) async throws -> [NBDClient] {
        var configuration = NBDClient.Configuration(exportName: remote.export)
        let timeout = TimeAmount.nanoseconds(Int64(min(options.requestTimeout, .seconds(10)) / .nanoseconds(1)))
        configuration.connectTimeout = timeout
        configuration.handshakeTimeout = timeout
        if remote.usesTLS {
            guard let credentials = options.tls else {
                throw StrataError(.invalid, "\(remote.text) asks for TLS: give tls-certificates or tls-psk-file")
            }
            configuration.tls = NBDClientTLS(credentials: credentials, verifyPeer: options.verifyPeer)
        }
        let first = try await NBDClient.connect(to: remote.address, configuration: configuration)
        var clients = [first]
        if count > 1 && first.transmissionFlags.contains(.canMultiConn) {
            for _ in 1..<count { clients.append(try await NBDClient.connect(to: remote.address, configuration: configuration)) }
        }
        return clients
    }

    /// Runs `body` to its end from a thread that may block (a topology being built).
    static func waitFor<Value: Sendable>(_ body: @escaping @Sendable () async throws -> Value) throws -> Value {
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Result<Value, any Error>?>(nil)
        Task.detached {
            let result: Result<Value, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        switch outcome.withLock({ $0 })! {
        case .success(let value): return value
        case .failure(let error as StrataError): throw error
        case .failure(let error): throw StrataError(.io, "\(error)")
        }
    }

    /// Takes the connections into service, and watches each for its end. Returns the
    /// requests held until then, for the caller to send: taken in the step that puts
    /// the link in service, so that one held meanwhile cannot be left behind. Nil when
    /// the disk is going: the caller lets the connections go.
    private func adopt(_ clients: [NBDClient]) -> [Request]? {
        let held: [Request]? = link.withLock { link in
            if link.stopping { return nil }
            link.clients = clients
            link.phase = .connected
            link.lostAt = nil
            link.established += 1
            defer { link.waiting = [] }
            return link.waiting
        }
        guard held != nil else { return nil }
        for client in clients {
            client.closeFuture.whenComplete { [weak self] _ in self?.connectionEnded(client) }
        }
        return held
    }

    // MARK: Requests

    override public func read(_ bio: consuming ProviderBio) { send(bio) }
    override public func write(_ bio: consuming ProviderBio) { send(bio) }
    override public func flush(_ bio: consuming ProviderBio) {
        guard transmissionFlags.contains(.sendFlush) else { return bio.deliverAll() }  // no cache to write back
        send(bio)
    }
    override public func delete(_ bio: consuming ProviderBio) {
        guard transmissionFlags.contains(.sendTrim) else { return bio.deliverAll() }  // TRIM only advises
        send(bio)
    }
    override public func writeZeroes(_ bio: consuming ProviderBio) {
        guard transmissionFlags.contains(.sendWriteZeroes) else { return bio.deliver(.notSupported) }
        if bio.flags.contains(.fastZero) && !transmissionFlags.contains(.sendFastZero) { return bio.deliver(.notSupported) }
        send(bio)
    }

    /// Answers the link's state ("STRATA::link": the phase and how many times a
    /// connection was made, as "CONNECTED 2") besides what every disk answers.
    override public func getattr(_ bio: consuming ProviderBio) {
        guard bio.attribute == .link else { return super.getattr(bio) }
        bio.deliverAttribute(string: link.withLock { "\($0.phase.rawValue) \($0.established)" })
    }

    override public func extents(_ bio: consuming ProviderBio) {
        guard hasBlockStatus else { return super.extents(bio) }
        send(bio)
    }

    private func send(_ bio: consuming ProviderBio) {
        var payload: ByteBuffer?
        if bio.command == .write {
            var buffer = ByteBufferAllocator().buffer(capacity: Int(bio.length))
            bio.data.forEachSegment { buffer.writeBytes(UnsafeRawBufferPointer($0)) }
            payload = buffer
        }
        let (command, flags, offset, length, data) = (bio.command, bio.flags, bio.offset, bio.length, bio.data)
        let request = Request(bio: bio.unmanaged(), command: command, flags: flags, offset: offset,
                              length: length, data: data, payload: payload, started: .now)
        dispatch(request)
    }

    enum Route {
        case send(NBDClient)
        case held
        case fail(BioError)
    }

    /// Sends `request` on a connection, or holds it while the link is down, or fails it.
    private func dispatch(_ request: Request) {
        let route: Route = link.withLock { link in
            if link.stopping { return .fail(.shutdown) }
            switch link.phase {
            case .connected where !link.clients.isEmpty:
                link.next = (link.next + 1) % link.clients.count
                return .send(link.clients[link.next])
            case .connected, .reconnecting:
                link.waiting.append(request)
                return .held
            case .failed:
                return .fail(.io)
            }
        }
        switch route {
        case .send(let client): issue(request, on: client)
        case .held: break
        case .fail(let error): request.bio.takeProviderBio().deliver(error)
        }
    }

    /// The request's steps on one connection: a FLUSH first for `preflush`, the command
    /// in pieces of the export's maximum payload, a FLUSH after a FUA write where the
    /// export has no FUA.
    private func issue(_ request: Request, on client: NBDClient) {
        let fua = request.flags.contains(.fua)
        let fuaByFlush = fua && !transmissionFlags.contains(.sendFUA)
        var steps: [Step] = []
        if request.flags.contains(.preflush) && transmissionFlags.contains(.sendFlush) { steps.append(.flush) }
        switch request.command {
        case .read, .write:
            var done: Int64 = 0
            repeat {
                let length = min(Int64(maximumPayload), request.length - done)
                steps.append(.piece(at: done, length: length))
                done += length
            } while done < request.length
        case .flush: steps.append(.flush)
        case .delete, .writeZeroes: steps.append(.piece(at: 0, length: request.length))
        case .getattr: steps.append(.blockStatus)
        }
        if fuaByFlush { steps.append(.flush) }
        run(steps[...], of: request, on: client, fua: fua && !fuaByFlush)
    }

    enum Step {
        case flush
        case piece(at: Int64, length: Int64)
        case blockStatus
    }

    private func run(_ steps: ArraySlice<Step>, of request: Request, on client: NBDClient, fua: Bool) {
        guard let step = steps.first else { return finish(request, error: nil) }
        let rest = steps.dropFirst()
        let next: @Sendable (Result<NBDReplyOutcome, any Error>) -> Void = { [self] result in
            answered.wrappingAdd(1, ordering: .relaxed)
            switch result {
            case .failure(let error):
                finished(request, on: client, failure: error)
            case .success(.data(let data)):
                if case .piece(let at, let length) = step, data.readableBytes == Int(length) {
                    data.withUnsafeReadableBytes { request.data.slice(offset: Int(at), count: $0.count).copy(from: $0.baseAddress!) }
                } else {
                    return finish(request, error: .io)
                }
                run(rest, of: request, on: client, fua: fua)
            case .success(.extents(let extents)):
                deliverExtents(extents, of: request)
            case .success(.done):
                run(rest, of: request, on: client, fua: fua)
            }
        }
        sent.wrappingAdd(1, ordering: .relaxed)
        switch step {
        case .flush:
            client.submit(.flush, offset: 0, length: 0, done: next)
        case .blockStatus:
            client.submit(.blockStatus, offset: UInt64(request.offset), length: UInt64(request.length), done: next)
        case .piece(let at, let length):
            let offset = UInt64(request.offset + at)
            var flags: NBDCommandFlags = fua ? .fua : []
            switch request.command {
            case .read:
                client.submit(.read, offset: offset, length: UInt64(length), done: next)
            case .write:
                let payload = request.payload!.getSlice(at: Int(at), length: Int(length))
                client.submit(.write, flags: flags, offset: offset, length: UInt64(length), payload: payload, done: next)
            case .delete:
                client.submit(.trim, flags: flags, offset: offset, length: UInt64(length), done: next)
            case .writeZeroes:
                if request.flags.contains(.noHole) { flags.insert(.noHole) }
                if request.flags.contains(.fastZero) { flags.insert(.fastZero) }
                client.submit(.writeZeroes, flags: flags, offset: offset, length: UInt64(length), done: next)
            case .flush, .getattr:
                finish(request, error: .invalid)
            }
        }
    }

    private func deliverExtents(_ extents: [NBDBlockExtent], of request: Request) {
        let bio = request.bio.takeProviderBio()
        let range = bio.extentRange(mediaSize: provider.mediaSize)
        var result: [BioExtent] = []
        var position = request.offset
        for extent in extents where position < range.upperBound && result.count < bio.extentCapacity {
            let length = min(Int64(clamping: extent.length), range.upperBound - position)
            guard length > 0 else { break }
            var kind: BioExtent.Kind = []
            if extent.status & 1 != 0 { kind.insert(.hole) }
            if extent.status & 2 != 0 { kind.insert(.zero) }
            result.append(BioExtent(offset: position, length: length, kind: kind))
            position += length
        }
        noteLatency(since: request.started)
        bio.deliverAttribute(extents: result)
    }

    private func finish(_ request: Request, error: BioError?) {
        noteLatency(since: request.started)
        let bio = request.bio.takeProviderBio()
        if let error { bio.deliver(error) } else { bio.deliverAll() }
    }

    /// A step failed: the server's answer ends the request; a lost connection holds it
    /// for the next one, as does ESHUTDOWN, with which a stopping server (nbdkit on
    /// SIGTERM) answers what comes in meanwhile.
    private func finished(_ request: Request, on client: NBDClient, failure: any Error) {
        if case NBDClientError.request(let code, _)? = failure as? NBDClientError, code != UInt32(ESHUTDOWN) {
            return finish(request, error: BioError(errno: Int32(clamping: code)))
        }
        if case NBDClientError.unsupported? = failure as? NBDClientError { return finish(request, error: .notSupported) }
        if case NBDClientError.invalidRequest? = failure as? NBDClientError { return finish(request, error: .invalid) }
        linkLost(holding: request, on: client, reason: "\(failure)")
    }

    private func noteLatency(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        let nanoseconds = elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000
        let old = latency.load(ordering: .relaxed)
        latency.store(old == 0 ? nanoseconds : old + (nanoseconds - old) / 8, ordering: .relaxed)
    }

    // MARK: Losing and finding the link

    /// A connection closed: the link is down if it was one of the current ones.
    private func connectionEnded(_ client: NBDClient) {
        linkLost(holding: nil, on: client, reason: "the connection closed")
    }

    /// Holds `request` (if any) and, the first time the link is found down, starts
    /// reconnecting. A request that failed on a connection already replaced (its answer
    /// came after the link was found again) is sent again at once instead.
    private func linkLost(holding request: Request?, on client: NBDClient, reason: String) {
        enum Outcome { case reconnect, held, sendAgain }
        let outcome: Outcome = link.withLock { link in
            // Going: sent again, the request fails with ESHUTDOWN rather than wait.
            if link.stopping { return .sendAgain }
            if link.phase == .connected, !link.clients.contains(where: { $0 === client }) { return .sendAgain }
            if let request { link.waiting.append(request) }
            link.lastError = reason
            guard link.phase == .connected, !link.stopping else { return .held }
            link.phase = .reconnecting
            link.lostAt = .now
            link.clients = []
            return .reconnect
        }
        if outcome == .sendAgain, let request { return dispatch(request) }
        guard outcome == .reconnect else { return }
        topology?.emit(.warning, "remote disk \(name): lost \(remote.text) (\(reason)); reconnecting, requests wait up to \(options.reconnectTimeout)")
        Task.detached { [self] in await reconnect() }
    }

    /// Closes the connections when requests are in flight and none has been answered for
    /// the request timeout: a link cut without a reset (a cable, a firewall, a frozen
    /// host) would otherwise hold them until TCP gives up, minutes later. Closing fails
    /// them as a lost link does: they are held and sent again on the next connection.
    private func watchForStalls() async {
        let tick = min(options.requestTimeout / 4, .seconds(1))
        var lastAnswered = answered.load(ordering: .relaxed)
        var stalled = Duration.zero
        while true {
            try? await Task.sleep(for: tick)
            let (stopping, clients) = link.withLock { ($0.stopping, $0.phase == .connected ? $0.clients : []) }
            if stopping { return }
            let done = answered.load(ordering: .relaxed)
            let waiting = sent.load(ordering: .relaxed) &- done > 0
            if waiting && done == lastAnswered && !clients.isEmpty {
                stalled += tick
            } else {
                stalled = .zero
            }
            lastAnswered = done
            guard stalled >= options.requestTimeout else { continue }
            stalled = .zero
            linkLost(holding: nil, on: clients[0], reason: "no answer for \(options.requestTimeout); connection reset")
            for client in clients { client.abort() }
        }
    }

    /// Connects again with backoff until it works or the disk goes: requests held past
    /// the reconnect timeout fail with EIO, and from then on new ones fail at once.
    private func reconnect() async {
        var delay = Duration.milliseconds(100)
        while !link.withLock({ $0.stopping }) {
            do {
                let clients = try await Self.connect(remote, options, count: options.connections)
                guard clients[0].exportSize >= UInt64(provider.mediaSize) else {
                    throw StrataError(.invalid, "the export shrank to \(clients[0].exportSize) bytes")
                }
                guard let held = adopt(clients) else {
                    // Going: `withering` failed what was held.
                    for client in clients { await client.disconnect() }
                    return
                }
                topology?.emit(.notice, "remote disk \(name): reconnected to \(remote.text); \(held.count) request\(held.count == 1 ? "" : "s") sent again")
                for request in held { dispatch(request) }
                return
            } catch {
                let expired: [Request]? = link.withLock { link in
                    link.lastError = "\(error)"
                    guard link.phase == .reconnecting, let lostAt = link.lostAt,
                          ContinuousClock.now - lostAt >= options.reconnectTimeout else { return nil }
                    link.phase = .failed
                    defer { link.waiting = [] }
                    return link.waiting
                }
                if let expired {
                    topology?.emit(.error, "remote disk \(name): \(remote.text) not back within \(options.reconnectTimeout) (\(error)); \(expired.count) request\(expired.count == 1 ? "" : "s") failed with EIO, and new ones fail until it is")
                    for request in expired { request.bio.takeProviderBio().deliver(.io) }
                }
            }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(2))
        }
    }

    /// Fails what is held and lets the connections go, softly (DISC after their replies).
    override public func withering() {
        let (held, clients) = link.withLock { link in
            link.stopping = true
            defer { link.waiting = []; link.clients = [] }
            return (link.waiting, link.clients)
        }
        for request in held { request.bio.takeProviderBio().deliver(.shutdown) }
        for client in clients { Task.detached { await client.disconnect() } }
    }

    // MARK: Status

    /// The link's state, and the mean latency of its requests or the last error.
    var status: (state: String, detail: String) {
        let (phase, error) = link.withLock { ($0.phase, $0.lastError) }
        let nanoseconds = latency.load(ordering: .relaxed)
        if phase == .connected {
            return (phase.rawValue, nanoseconds == 0 ? "no request yet" : String(format: "latency %.2f ms", Double(nanoseconds) / 1e6))
        }
        return (phase.rawValue, error ?? "")
    }
}
