import CStrataSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOHTTP1
import NIOPosix
import Strata
import StrataConfig
import StrataNBD

/// The control endpoint of a running server: HTTP/1.1 with JSON bodies on a Unix
/// socket, so `curl --unix-socket SOCK http://strata/v1/topology` works as well as the
/// `strata` verbs. Routes are listed in docs/CONTROL.md.
///
/// The socket is its owner's: its file is 0600 (0660 for a `control-group`) from the
/// moment it exists, and a connection from anyone but root, the server's own user or
/// that group is answered 403 whatever it asks. Paths it is given are used only
/// beneath `writableDirectories`. Its connections are bounded (`Limits`): a client that
/// connects and says nothing, or opens many, cannot take the descriptors the NBD
/// server needs.
public final class ControlServer: Sendable {
    /// What a control connection may hold: connections are one request each, so these
    /// bound what idle or oversized clients can keep open.
    public struct Limits: Sendable {
        /// Control connections open at once; one more is closed as soon as it is accepted.
        public var connections: Int
        /// How long a connection has, from connecting, to send its whole request; then it
        /// is answered 408 and closed (only closed if its head has not come whole).
        public var request: Duration
        /// The longest request body; a longer one is answered 413 and the connection closed.
        public var body: Int

        public init(connections: Int = 64, request: Duration = .seconds(10), body: Int = 64 << 10) {
            self.connections = connections
            self.request = request
            self.body = body
        }
    }

    /// The group besides root and the server's own user that may use the socket
    /// (`control-group:` in the topology file).
    public struct Group: Sendable, Equatable {
        public var name: String
        public var id: gid_t

        public init(name: String, id: gid_t) {
            self.name = name
            self.id = id
        }
    }

    let topology: Topology
    /// The NBD server's gauges for `/metrics`, when one serves this topology.
    let serverGauges: @Sendable () -> StatisticsPublisher.ServerGauges?
    let metrics = PrometheusEndpoint()
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let listener = NIOLockedBox<NBDListener?>(nil)
    /// Who may use the socket besides root and the server's own user.
    private let allowedGroup: Group?
    /// The only directories beneath which a path given to a verb may lie.
    let writableDirectories: [String]
    /// Says refusals: a refused user once, so a user who keeps trying cannot fill the
    /// log, and connections past the cap at most once a second.
    private let log: @Sendable (String) -> Void
    private let refusedUsers = NIOLockedBox<Set<uid_t>>([])
    let limits: Limits
    /// Connections open now, and when a connection past the cap was last logged and how
    /// many were refused since.
    private let connections = NIOLockedBox<(open: Int, lastLog: ContinuousClock.Instant?, refused: Int)>((0, nil, 0))

    /// What changes the topology at run time (`/v1/geoms`, `/v1/exports`, `/v1/config`),
    /// when the server has one.
    let running: RunningTopology?

    /// - Parameters:
    ///   - writableDirectories: where a path a verb is given may lie (the data
    ///     directory and `writable-directories`); a verb given a path elsewhere is
    ///     refused with 400. Run-time changes (`running`) keep to their configuration's.
    ///   - group: the group besides root and the server's own user that may connect.
    ///   - log: where a refused user is said, once per user.
    public init(topology: Topology, running: RunningTopology? = nil, writableDirectories: [String] = [], limits: Limits = Limits(),
                group: Group? = nil, log: @escaping @Sendable (String) -> Void = { _ in },
                serverGauges: @escaping @Sendable () -> StatisticsPublisher.ServerGauges? = { nil }) {
        self.topology = topology
        self.running = running
        self.writableDirectories = writableDirectories
        self.limits = limits
        self.allowedGroup = group
        self.log = log
        self.serverGauges = serverGauges
    }

    /// Listens on the Unix socket at `path`: a stale socket file there (nobody listens
    /// on it) is replaced; a socket another process serves on, or any other file, is
    /// refused and left alone.
    /// - Throws: `StrataError` naming the path.
    public func start(path: String) async throws {
        // Another user binding a socket in the control socket's place would take the
        // verbs' requests, passphrases among them.
        try ServerDirectory.prepare(URL(fileURLWithPath: path).deletingLastPathComponent().path, for: .socket)
        let access = NBDListener.FileAccess(mode: allowedGroup == nil ? 0o600 : 0o660, group: allowedGroup?.id)
        let bound = try NBDListener(.unix(path: path), access: access) { [weak self] descriptor in
            guard let self else {
                Glibc.close(descriptor)
                return
            }
            adopt(descriptor)
        }
        listener.set(bound)
        bound.accept()
    }

    public func stop() async {
        // Closing removes the socket's file, if it is still the one bound.
        listener.get()?.close()
        listener.set(nil)
        try? await group.shutdownGracefully()
    }

    /// Serves an accepted connection: every request answered, or, for a peer that may
    /// not use the socket, answered 403. One past `limits.connections` is closed at once.
    private func adopt(_ descriptor: Int32) {
        guard admit() else {
            Glibc.close(descriptor)
            return
        }
        let refusal = refusal(of: descriptor)
        // Whether the connection became a channel, whose close counts it out.
        let made = NIOLockedBox(false)
        ClientBootstrap(group: group)
            .channelInitializer { channel in
                made.set(true)
                channel.closeFuture.whenComplete { [self] _ in connections.update { $0.open -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(ControlHandler(server: self, refusal: refusal))
                }
            }
            .withConnectedSocket(descriptor)
            .whenFailure { [self] error in
                log("control connection not served: \(error)")
                if !made.get() { connections.update { $0.open -= 1 } }
            }
    }

    /// Counts a connection in, or refuses it at the cap, saying so at most once a second
    /// (with how many were refused since), so that a flood cannot fill the log.
    private func admit() -> Bool {
        let (admitted, refused): (Bool, Int?) = connections.update { state in
            if state.open < limits.connections {
                state.open += 1
                return (true, nil)
            }
            state.refused += 1
            let now = ContinuousClock.now
            if let last = state.lastLog, now - last < .seconds(1) { return (false, nil) }
            defer { (state.lastLog, state.refused) = (now, 0) }
            return (false, state.refused)
        }
        if let refused {
            log("control connection refused: \(limits.connections) control connections are open, the most served at once; "
                + "\(refused) refused since the last report")
        }
        return admitted
    }

    /// Why the peer of a connection may not use the socket, or nil when it may: root,
    /// the server's own user, and the members of its group may (by the credentials
    /// the kernel recorded at connect, which the peer cannot choose).
    func refusal(of descriptor: Int32) -> String? {
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        var pid: Int32 = 0
        guard strata_peer_credentials(descriptor, &uid, &gid, &pid) == 0 else {
            return "the server cannot tell who is connected (SO_PEERCRED: \(String(cString: strerror(errno))))"
        }
        let own = geteuid()
        if uid == 0 || uid == own { return nil }
        if let allowedGroup, strata_peer_in_group(descriptor, allowedGroup.id) == 1 { return nil }
        let served = ["root"] + (own == 0 ? [] : ["uid \(own) (the server's own)"])
            + (allowedGroup.map { ["the members of group \($0.name)"] } ?? [])
        let serves = served.count == 1 ? served[0] : served.dropLast().joined(separator: ", ") + " and " + served.last!
        let message = "the control socket serves \(serves); uid \(uid) is not one of them"
        let first = refusedUsers.update { users in users.count < 1024 && users.insert(uid).inserted }
        if first { log("control socket: refused uid \(uid) (pid \(pid)): \(message); later refusals of uid \(uid) are not logged") }
        return message
    }

    /// Answers one request: status, content type, body.
    func respond(method: HTTPMethod, path: String, body: Data = Data()) -> (HTTPResponseStatus, String, Data) {
        let route = path.split(separator: "?").first.map(String.init) ?? path
        let parts = route.split(separator: "/").map { String($0).removingPercentEncoding ?? String($0) }
        switch (method, route) {
        case (.GET, "/v1/topology"): return json(TopologyReport(topology))
        case (.GET, "/v1/status"): return json(StatusReport(topology))
        case (.GET, "/v1/stats"): return json(StatsReport(topology))
        case (.GET, "/v1/classes"): return json(registeredClasses.map(ClassReport.init))
        case (.GET, "/metrics"): return (.ok, "text/plain; version=0.0.4", Data(metrics.scrape(StatsReport(topology), geoms: StatusReport(topology).geoms, server: serverGauges())))
        default: break
        }
        if parts.count >= 2, parts[0] == "v1", ["geoms", "exports", "config", "tls"].contains(parts[1]) {
            return change(Array(parts.dropFirst()), method: method, body: body)
        }
        if parts.count == 3 || parts.count == 4, parts[0] == "v1", let definition = ClassRegistry.named(parts[1]) {
            return verb(of: definition, target: parts[2], verb: parts.count == 4 ? parts[3] : "show", method: method, body: body)
        }
        if ["/v1/topology", "/v1/status", "/v1/stats", "/v1/classes", "/metrics"].contains(route) {
            return failure(.methodNotAllowed, "only GET is served on \(route)")
        }
        return failure(.notFound, "no route \(route) (routes: /v1/topology, /v1/status, /v1/stats, /v1/classes, /metrics, /v1/CLASS/NAME[/VERB], /v1/geoms, /v1/exports, /v1/config, /v1/tls/reload)")
    }

    /// Run-time changes of the topology: `POST /v1/geoms`, `POST /v1/geoms/NAME/destroy`,
    /// `POST /v1/exports`, `POST /v1/exports/NAME/remove`, and `GET /v1/config`.
    func change(_ parts: [String], method: HTTPMethod, body: Data) -> (HTTPResponseStatus, String, Data) {
        guard let running else { return failure(.notFound, "this server's topology does not change at run time") }
        do {
            switch (method, parts.count, parts[0], parts.last!) {
            case (.GET, 1, "config", _):
                return (.ok, "application/yaml", Data(running.dump().utf8))
            case (.POST, 1, "geoms", _):
                let request = try JSONDecoder().decode(GeomRequest.self, from: body)
                let geom = try running.createGeom(className: request.class, name: request.name, consumers: request.consumers ?? [],
                                                  settings: (request.settings ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, $0.value.text) })
                return json(TopologyReport(topology).geoms.first { $0.name == geom.name })
            case (.POST, 3, "geoms", "destroy"):
                try running.destroyGeom(named: parts[1], force: try JSONDecoder().decode(ForceRequest.self, from: body.isEmpty ? Data("{}".utf8) : body).force ?? false)
                return json(["destroyed": parts[1]])
            case (.POST, 1, "exports", _):
                let request = try JSONDecoder().decode(ExportRequest.self, from: body)
                let forThisRun = try running.addExport(ExportSpec(name: request.name, provider: request.provider, readOnly: request.readOnly,
                                                                  description: request.description, isDefault: request.isDefault ?? false,
                                                                  tlsAllow: request.tlsAllow ?? []))
                guard let forThisRun else { return json(["added": request.name]) }
                return json(["added": request.name,
                             "kept": "for this run only: \(request.provider) stands on \(forThisRun.name), attached for this run"])
            case (.POST, 2, "tls", "reload"):
                return json(["credentials": try running.reloadTLS()])
            case (.POST, 3, "exports", "remove"):
                try running.removeExport(named: parts[1], force: try JSONDecoder().decode(ForceRequest.self, from: body.isEmpty ? Data("{}".utf8) : body).force ?? false)
                return json(["removed": parts[1]])
            case (.GET, _, _, _), (.POST, _, _, _):
                return failure(.notFound, "the routes are POST /v1/geoms, POST /v1/geoms/NAME/destroy, POST /v1/exports, POST /v1/exports/NAME/remove and GET /v1/config")
            default:
                return failure(.methodNotAllowed, "GET or POST")
            }
        } catch let error as DecodingError {
            return failure(.badRequest, "the body does not fit the route: \(Self.describe(error))")
        } catch let error as SettingError {
            return failure(.badRequest, "\(error)")
        } catch let error as StrataError {
            return failure(error.code == .noDevice ? .notFound : .conflict, "\(error)")
        } catch let error as NBDTLSError {
            return failure(.conflict, "\(error); the credentials in use stay")
        } catch {
            return failure(.internalServerError, "\(error)")
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, _): "\(key.stringValue) is missing"
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            context.codingPath.isEmpty ? "not a JSON object" : "\(context.codingPath.map(\.stringValue).joined(separator: ".")) has the wrong type"
        @unknown default: "\(error)"
        }
    }

    /// `GET|POST /v1/CLASS/TARGET/VERB`: a verb of a class (`ClassVerb`), with its
    /// arguments and options as a JSON object of names to values; a verb that only
    /// looks also answers GET, and `show` is the verb of `/v1/CLASS/TARGET`.
    func verb(of definition: any ClassDefinition.Type, target: String, verb name: String, method: HTTPMethod,
              body: Data) -> (HTTPResponseStatus, String, Data) {
        guard let verb = definition.verbs.first(where: { $0.name == name }) else {
            let verbs = definition.verbs.map(\.name)
            return failure(.notFound, "\(name) is not a verb of \(definition.name) (verbs: \(verbs.isEmpty ? "none" : verbs.joined(separator: ", ")))")
        }
        guard method == .POST || method == .GET && verb.onlyLooks else {
            return failure(.methodNotAllowed, verb.onlyLooks ? "GET or POST" : "POST")
        }
        var geom: Geom?
        var provider: Provider?
        switch verb.target {
        case .geom:
            geom = [definition.geomName(forEntry: target), target].lazy.compactMap { self.topology.geom(named: $0) }
                .first { $0.className == definition.geomClassName }
            guard geom != nil else { return failure(.notFound, "no \(definition.name) geom named \(target)") }
        case .provider:
            provider = topology.provider(named: target)
            guard provider != nil else { return failure(.notFound, "no provider named \(target)") }
        }
        let given: [String: String]
        do {
            given = try VerbBody.decode(body)
        } catch {
            return failure(.badRequest, "the body must be a JSON object of names to values")
        }
        let arguments = verb.arguments.compactMap { given[$0.name] }
        let options = given.filter { key, _ in !verb.arguments.contains { $0.name == key } }
        do {
            let values = try verb.check(arguments: arguments, options: options, writableDirectories: writableDirectories)
            let call = VerbCall(topology: topology, geom: geom, provider: provider, values: values,
                                optionTexts: options.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
            return json(try verb.run(call))
        } catch let error as SettingError {
            return failure(.badRequest, "\(error)")
        } catch let error as StrataError {
            return failure(error.code == .noDevice ? .notFound : .conflict, "\(error)")
        } catch {
            return failure(.internalServerError, "\(error)")
        }
    }

    private func json(_ value: any Encodable) -> (HTTPResponseStatus, String, Data) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (.ok, "application/json", (try? encoder.encode(value)) ?? Data())
    }

    private func failure(_ status: HTTPResponseStatus, _ message: String) -> (HTTPResponseStatus, String, Data) {
        (status, "application/json", (try? JSONEncoder().encode(["error": message])) ?? Data())
    }
}

/// `POST /v1/geoms`: `{"class", "name", "consumers": [...], "settings": {KEY: VALUE}}`.
struct GeomRequest: Decodable {
    var `class`: String
    var name: String
    var consumers: [String]?
    var settings: [String: VerbBody.Scalar]?
}

/// `POST /v1/exports`: `{"name", "provider", "read-only", "description", "default", "tls-allow"}`.
struct ExportRequest: Decodable {
    var name: String
    var provider: String
    var readOnly: Bool?
    var description: String?
    var isDefault: Bool?
    var tlsAllow: [String]?
    enum CodingKeys: String, CodingKey {
        case name, provider, readOnly = "read-only", description, isDefault = "default", tlsAllow = "tls-allow"
    }
}

/// The body of a destroy or remove: `{"force": true}`, or nothing.
struct ForceRequest: Decodable {
    var force: Bool?
}

/// A verb's body: a JSON object whose values are strings, numbers or booleans, each
/// taken as the text a command line would give.
enum VerbBody {
    struct Scalar: Decodable {
        let text: String
        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let text = try? container.decode(String.self) { self.text = text }
            else if let flag = try? container.decode(Bool.self) { text = flag ? "true" : "false" }
            else if let number = try? container.decode(Int.self) { text = "\(number)" }
            else { text = "\(try container.decode(Double.self))" }
        }
    }

    static func decode(_ body: Data) throws -> [String: String] {
        if body.isEmpty { return [:] }
        return try JSONDecoder().decode([String: Scalar].self, from: body).mapValues(\.text)
    }
}

/// What `GET /v1/classes` says of a class: its settings and verbs.
public struct ClassReport: Codable, Sendable {
    public struct Setting: Codable, Sendable {
        public var name: String
        public var value: String
        public var help: String
        public var changesAtRunTime: Bool
    }

    public struct Verb: Codable, Sendable {
        public var name: String
        public var summary: String
        public var target: String
        public var arguments: [String]
        public var options: [Setting]
        public var onlyLooks: Bool
    }

    public var name: String
    public var summary: String
    public var kind: String
    public var settings: [Setting]
    public var verbs: [Verb]

    init(_ definition: any ClassDefinition.Type) {
        name = definition.name
        summary = definition.summary
        kind = definition.shape == .disk ? "disk" : "transform"
        settings = definition.settingKeys.map {
            Setting(name: $0.name, value: $0.kind.placeholder, help: $0.help, changesAtRunTime: $0.changesAtRunTime)
        }
        verbs = definition.verbs.map { verb in
            Verb(name: verb.name, summary: verb.summary, target: verb.target == .geom ? "geom" : "provider",
                 arguments: verb.arguments.map(\.name),
                 options: verb.options.map { Setting(name: $0.name, value: $0.kind.placeholder, help: $0.help, changesAtRunTime: false) },
                 onlyLooks: verb.onlyLooks)
        }
    }
}

/// A value behind a lock (the listener; the users refused).
final class NIOLockedBox<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func get() -> Value { lock.withLock { value } }
    func set(_ newValue: Value) { lock.withLock { value = newValue } }
    func update<Result>(_ change: (inout Value) -> Result) -> Result { lock.withLock { change(&value) } }
}

/// One control connection: a request in, a response out, then close. A request must
/// arrive whole within `limits.request` of connecting (else it is answered 408, or, if
/// its head has not come, the connection is closed), with a body of at most
/// `limits.body` (else 413); a request NIO's parser cannot read is answered 400 (by
/// NIO's `HTTPServerProtocolErrorHandler`). Each ends the connection.
final class ControlHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: ControlServer
    /// Why this peer may not use the socket: every request is answered 403 with it.
    private let refusal: String?
    private var head: HTTPRequestHead?
    private var body = Data()
    /// Closes the connection when the request has not arrived whole in time.
    private var deadline: Scheduled<Void>?
    /// Answered (or being closed): whatever else the client sends is dropped.
    private var answered = false

    init(server: ControlServer, refusal: String?) {
        self.server = server
        self.refusal = refusal
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let limit = server.limits.request
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(limit.wholeNanoseconds))) { [self] in
            // A response needs a request under way (NIO's pipeline handler stops the
            // process on one without): a client that has not sent a whole head is only
            // closed.
            guard let head else {
                answered = true
                bound.value.close(promise: nil)
                return
            }
            answer(bound.value, .requestTimeout, version: head.version, "application/json",
                   Self.error("the request did not arrive whole within \(limit) of connecting"))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
            body = Data()
            if let length = request.headers.first(name: "Content-Length").flatMap(Int.init), length > server.limits.body {
                refuseBody(context)
            }
        case .body(let part):
            guard part.readableBytes <= server.limits.body - body.count else {
                refuseBody(context)
                return
            }
            if refusal == nil { body.append(contentsOf: part.readableBytesView) }
        case .end:
            guard let head else { return }
            let (status, type, body) = if let refusal {
                (HTTPResponseStatus.forbidden, "application/json", Self.error(refusal))
            } else {
                server.respond(method: head.method, path: head.uri, body: self.body)
            }
            answer(context, status, version: head.version, type, body)
        }
    }

    /// A request NIO's parser refused: its error handler, before this one, has answered
    /// 400; nothing more can be read from the connection.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        answered = true
        deadline?.cancel()
        context.close(promise: nil)
    }

    private func refuseBody(_ context: ChannelHandlerContext) {
        answer(context, .payloadTooLarge, version: head?.version ?? .http1_1, "application/json",
               Self.error("the request's body is longer than \(server.limits.body) bytes, the most a control request may carry"))
    }

    /// Writes the one response of this connection, then closes it.
    private func answer(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, version: HTTPVersion,
                        _ type: String, _ body: Data) {
        guard !answered else { return }
        answered = true
        deadline?.cancel()
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
        head = nil
    }

    private static func error(_ message: String) -> Data {
        (try? JSONEncoder().encode(["error": message])) ?? Data()
    }
}
