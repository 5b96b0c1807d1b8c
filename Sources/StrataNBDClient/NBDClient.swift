import NIOCore
import NIOPosix
import StrataNBDProtocol

/// An NBD client: one connection to one export of an NBD server (ours, nbdkit,
/// qemu-nbd, nbd-server), over TCP or a Unix socket.
///
/// `connect` performs the fixed newstyle handshake and negotiates the best reply style
/// the server offers (extended headers, else structured replies, else simple replies)
/// and the `base:allocation` metadata context. Then any number of requests may be in
/// flight at once, from any number of tasks: each gets its own cookie, and replies are
/// matched to requests by cookie, in whatever order the server sends them.
///
/// The client checks what it must to keep the stream in step and what the export
/// advertised (FUA, TRIM, ...), but not alignment or bounds: those the server checks,
/// and it answers EINVAL, which arrives as `NBDClientError.request`. So the client can
/// also be used to see how a server treats bad requests.
///
/// A lost connection fails every request in flight with `NBDClientError`; nothing waits
/// forever. A request, once sent, cannot be called back: cancelling the task that
/// awaits it leaves it to finish. Call `disconnect()` when done; a client dropped
/// without it disconnects on its own.
public final class NBDClient: Sendable {
    /// Where the server listens: the address type the server binds.
    public typealias Address = NBDListenAddress

    /// How to connect.
    public struct Configuration: Sendable {
        /// The export to open; the empty name is the server's default export.
        public var exportName: String
        /// Ask for extended headers (64-bit lengths, 32-byte reply headers). Servers
        /// without them refuse, and the client falls back to structured replies.
        public var extendedHeaders: Bool
        /// Ask for structured replies when extended headers are off or refused. Without
        /// them READ errors have no message and block status is unavailable.
        public var structuredReplies: Bool
        /// Select the `base:allocation` context, so `blockStatus` works.
        public var blockStatus: Bool
        public var connectTimeout: TimeAmount
        /// A server that stalls in the handshake is hung up on after this long.
        public var handshakeTimeout: TimeAmount
        /// Start TLS (NBD_OPT_STARTTLS) before anything else, with these credentials; a
        /// server that refuses it is not talked to in the clear.
        public var tls: NBDClientTLS?

        public init(exportName: String = "", extendedHeaders: Bool = true, structuredReplies: Bool = true,
                    blockStatus: Bool = true, connectTimeout: TimeAmount = .seconds(10),
                    handshakeTimeout: TimeAmount = .seconds(30), tls: NBDClientTLS? = nil) {
            self.exportName = exportName
            self.extendedHeaders = extendedHeaders
            self.structuredReplies = structuredReplies
            self.blockStatus = blockStatus
            self.connectTimeout = connectTimeout
            self.handshakeTimeout = handshakeTimeout
            self.tls = tls
        }
    }

    /// The export's size constraints (NBD_INFO_BLOCK_SIZE). Offsets and lengths must be
    /// multiples of `minimum`; READ and WRITE payloads at most `maximumPayload`.
    public struct BlockSizes: Sendable, Hashable {
        public var minimum: UInt32
        public var preferred: UInt32
        public var maximumPayload: UInt32

        public init(minimum: UInt32, preferred: UInt32, maximumPayload: UInt32) {
            self.minimum = minimum
            self.preferred = preferred
            self.maximumPayload = maximumPayload
        }

        /// What the spec says holds when a server advertises nothing.
        public static let `default` = BlockSizes(minimum: 1, preferred: 4096, maximumPayload: 32 << 20)
    }

    // MARK: Negotiated facts

    /// The export's canonical name (NBD_INFO_NAME), else the name asked for.
    public let exportName: String
    /// The export's description (NBD_INFO_DESCRIPTION), if the server gave one.
    public let exportDescription: String?
    public let exportSize: UInt64
    public let transmissionFlags: NBDTransmissionFlags
    /// The advertised constraints, or `BlockSizes.default` if none were advertised.
    public let blockSizes: BlockSizes
    /// Structured replies are in use (always so with extended headers).
    public let structuredReplies: Bool
    /// Extended headers are in use.
    public let extendedHeaders: Bool
    /// The id of `base:allocation`; nil when block status is unavailable.
    public let metaContextID: UInt32?

    private let channel: any Channel
    private let handler: NBDClientHandler

    private init(channel: any Channel, handler: NBDClientHandler, export: NBDNegotiatedExport) {
        self.channel = channel
        self.handler = handler
        exportName = export.name
        exportDescription = export.description
        exportSize = export.size
        transmissionFlags = export.transmissionFlags
        blockSizes = export.blockSizes
        structuredReplies = export.settings.structuredReplies
        extendedHeaders = export.settings.extendedHeaders
        metaContextID = export.settings.metaContextID
    }

    deinit {
        // A soft disconnect (DISC after the last reply), not a reset, even when forgotten.
        // A closed channel needs nothing, and its event loop may be gone with its group.
        guard channel.isActive else { return }
        let handler = self.handler
        handler.eventLoop.execute { _ = handler.disconnect() }
    }

    // MARK: Connecting

    /// Connects and performs the handshake.
    /// - Parameter group: the event loops to run on; by default NIO's shared
    ///   `MultiThreadedEventLoopGroup.singleton`, which lives as long as the process,
    ///   so no client has to own and shut down a group of its own.
    /// - Throws: `NBDClientError.optionRefused` when the server refuses the export (with
    ///   its reply code and message), other `NBDClientError`s or NIO's connection errors.
    public static func connect(to address: Address, configuration: Configuration = Configuration(),
                               group: (any EventLoopGroup)? = nil) async throws -> NBDClient {
        let (channel, handler) = try await openChannel(to: address, group: group,
                                                       connectTimeout: configuration.connectTimeout)
        let handshake = NBDClientHandshake(handler: handler)
        var configuration = configuration
        if var tls = configuration.tls, tls.hostname == nil, case .tcp(let host, _) = address, !Self.isAddressLiteral(host) {
            // The name connected to is the name the certificate must carry (and SNI's).
            tls.hostname = host
            configuration.tls = tls
        }
        do {
            try await handler.eventLoop.submit { handler.armHandshakeTimeout(configuration.handshakeTimeout) }.get()
            let export = try await handshake.negotiate(configuration)
            try await handler.eventLoop.submit { handler.acceptReads(upTo: export.blockSizes.maximumPayload) }.get()
            return NBDClient(channel: channel, handler: handler, export: export)
        } catch {
            await handshake.abort()
            throw error
        }
    }

    /// The names of the exports a server lists (NBD_OPT_LIST); the connection ends with
    /// NBD_OPT_ABORT.
    public static func list(at address: Address, group: (any EventLoopGroup)? = nil,
                            connectTimeout: TimeAmount = .seconds(10)) async throws -> [String] {
        let (_, handler) = try await openChannel(to: address, group: group, connectTimeout: connectTimeout)
        let handshake = NBDClientHandshake(handler: handler)
        do {
            try await handler.eventLoop.submit { handler.armHandshakeTimeout(connectTimeout) }.get()
            let names = try await handshake.listExports()
            await handshake.abort()
            return names
        } catch {
            await handshake.abort()
            throw error
        }
    }

    /// Whether `host` is an IPv4 or IPv6 address rather than a name (TLS's server name
    /// indication takes names only).
    static func isAddressLiteral(_ host: String) -> Bool {
        host.contains(":") || host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
    }

    private static func openChannel(to address: Address, group: (any EventLoopGroup)?,
                                     connectTimeout: TimeAmount) async throws -> (any Channel, NBDClientHandler) {
        var bootstrap = ClientBootstrap(group: group ?? MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NBDClientHandler(eventLoop: channel.eventLoop))
                }
            }
        let channel: any Channel
        switch address {
        case .tcp(let host, let port):
            // Requests are small and latency-bound: never hold them back for Nagle.
            bootstrap = bootstrap.channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            channel = try await bootstrap.connect(host: host, port: port).get()
        case .unix(let path):
            channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
        }
        let handler = try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: NBDClientHandler.self)
        }.get()
        return (channel, handler)
    }

    // MARK: Requests

    /// Reads `length` bytes at `offset`. Holes the server reports come back as zeros.
    public func read(offset: UInt64, length: Int) async throws -> ByteBuffer {
        guard length >= 0, UInt64(length) <= UInt64(blockSizes.maximumPayload) else {
            throw NBDClientError.invalidRequest("READ of \(length) bytes; the maximum payload is \(blockSizes.maximumPayload)")
        }
        guard case .data(let data) = try await send(.read, offset: offset, length: UInt64(length)) else {
            throw NBDClientError.protocolViolation("READ answered without data")
        }
        return data
    }

    /// Writes `data` at `offset`; with `fua`, the reply means the data is durable.
    public func write(_ data: ByteBuffer, offset: UInt64, fua: Bool = false) async throws {
        guard data.readableBytes <= Int(blockSizes.maximumPayload) else {
            throw NBDClientError.invalidRequest("WRITE of \(data.readableBytes) bytes; the maximum payload is \(blockSizes.maximumPayload)")
        }
        _ = try await send(.write, flags: try fuaFlag(fua), offset: offset, length: UInt64(data.readableBytes), payload: data)
    }

    /// Writes `bytes` at `offset`.
    public func write(_ bytes: [UInt8], offset: UInt64, fua: Bool = false) async throws {
        try await write(ByteBuffer(bytes: bytes), offset: offset, fua: fua)
    }

    /// Makes every write completed so far durable.
    public func flush() async throws {
        try require(.sendFlush, "FLUSH")
        _ = try await send(.flush, offset: 0, length: 0)
    }

    /// Tells the server the range is no longer needed; it may read back as anything
    /// until written again (our servers and nbdkit's `memory` read zeros).
    public func trim(offset: UInt64, length: UInt64, fua: Bool = false) async throws {
        try require(.sendTrim, "TRIM")
        _ = try await send(.trim, flags: try fuaFlag(fua), offset: offset, length: length)
    }

    /// Writes zeros over the range without sending them.
    /// - Parameters:
    ///   - noHole: the range must stay allocated (not become a hole).
    ///   - fastZero: fail with ENOTSUP at once if zeroing would be slower than writing.
    public func writeZeroes(offset: UInt64, length: UInt64, noHole: Bool = false, fastZero: Bool = false,
                            fua: Bool = false) async throws {
        try require(.sendWriteZeroes, "WRITE_ZEROES")
        var flags = try fuaFlag(fua)
        if noHole { flags.insert(.noHole) }
        if fastZero {
            try require(.sendFastZero, "FAST_ZERO")
            flags.insert(.fastZero)
        }
        _ = try await send(.writeZeroes, flags: flags, offset: offset, length: length)
    }

    /// The allocation status (`base:allocation`) of the range starting at `offset`, as
    /// consecutive extents: `flags` holds `NBDAllocationFlags.hole` and `.zero`. The
    /// server may describe less than asked (ask again from where it stopped) and the
    /// last extent may run past the range; with `requestOne`, exactly one extent, no
    /// longer than `length`.
    public func blockStatus(offset: UInt64, length: UInt64, requestOne: Bool = false) async throws
        -> [(length: UInt64, flags: UInt32)] {
        guard metaContextID != nil else {
            throw NBDClientError.unsupported("BLOCK_STATUS: the server selected no base:allocation context")
        }
        var length = length
        if !extendedHeaders {
            // Compact headers carry 32 bits; asking for less is always allowed.
            let minimum = UInt64(max(blockSizes.minimum, 1))
            length = min(length, UInt64(UInt32.max) / minimum * minimum)
        }
        guard case .extents(let extents) = try await send(.blockStatus, flags: requestOne ? .requestOne : [],
                                                          offset: offset, length: length) else {
            throw NBDClientError.protocolViolation("BLOCK_STATUS answered without extents")
        }
        return extents.map { (length: $0.length, flags: UInt32(truncatingIfNeeded: $0.status)) }
    }

    /// Sends a request from any thread and calls `done` with its outcome on the
    /// connection's event loop: for callers that cannot await, such as a disk's `start`.
    /// Errors are `NBDClientError`s: `.request` for the server's answer, `.connectionClosed`
    /// when the connection went before the answer.
    package func submit(_ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt64,
                       payload: ByteBuffer? = nil, done: @escaping @Sendable (Result<NBDReplyOutcome, any Error>) -> Void) {
        let handler = self.handler
        handler.eventLoop.execute {
            handler.submit(command, flags: flags, offset: offset, length: length, payload: payload).whenComplete(done)
        }
    }

    /// Whether the connection is still open.
    public var isConnected: Bool { channel.isActive }

    /// Completes when the connection has closed, for whatever reason.
    package var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    /// Asks the server to bring the range into its cache. Sent even when the export does
    /// not advertise CACHE, as other clients do; such servers answer EINVAL.
    public func cache(offset: UInt64, length: UInt64) async throws {
        _ = try await send(.cache, offset: offset, length: length)
    }

    /// The soft disconnect: waits for the replies to requests in flight, sends
    /// NBD_CMD_DISC and closes. Requests made meanwhile fail.
    public func disconnect() async {
        let handler = self.handler
        try? await handler.eventLoop.flatSubmit { handler.disconnect() }.get()
    }

    /// Closes the connection at once, without waiting for replies: for a server that
    /// stopped answering. Requests in flight fail as on a lost connection. The socket is
    /// reset rather than closed: what it still holds to send is dropped, never delivered
    /// by the kernel's retransmissions once the link is back, after newer writes have
    /// gone to the same blocks on another connection.
    package func abort() {
        let channel = self.channel
        let reset = (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
            ?? channel.eventLoop.makeSucceededVoidFuture()
        reset.whenComplete { _ in channel.close(promise: nil) }
    }

    /// Requests sent and not yet answered (for tests and diagnostics).
    public var requestsInFlight: Int {
        get async {
            let handler = self.handler
            return (try? await handler.eventLoop.submit { handler.requestsInFlight }.get()) ?? 0
        }
    }

    // MARK: Helpers

    private func send(_ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt64,
                      payload: ByteBuffer? = nil) async throws -> NBDReplyOutcome {
        if !extendedHeaders && length > UInt64(UInt32.max) {
            throw NBDClientError.invalidRequest("\(command) of \(length) bytes needs extended headers")
        }
        let handler = self.handler
        return try await handler.eventLoop.flatSubmit {
            handler.submit(command, flags: flags, offset: offset, length: length, payload: payload)
        }.get()
    }

    private func require(_ flag: NBDTransmissionFlags, _ what: String) throws {
        guard transmissionFlags.contains(flag) else {
            throw NBDClientError.unsupported("\(what) is not advertised by the export")
        }
    }

    private func fuaFlag(_ fua: Bool) throws -> NBDCommandFlags {
        guard fua else { return [] }
        try require(.sendFUA, "FUA")
        return .fua
    }
}
