import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Strata
import StrataConfig

/// The control endpoint of a running server: HTTP/1.1 with JSON bodies on a Unix
/// socket, so `curl --unix-socket SOCK http://strata/v1/topology` works as well as the
/// `strata` verbs. Routes are listed in docs/CONTROL.md.
public final class ControlServer: Sendable {
    let topology: Topology
    /// The NBD server's gauges for `/metrics`, when one serves this topology.
    let serverGauges: @Sendable () -> StatisticsPublisher.ServerGauges?
    let metrics = PrometheusEndpoint()
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let channel = NIOLockedBox<(any Channel)?>(nil)

    /// What changes the topology at run time (`/v1/geoms`, `/v1/exports`, `/v1/config`),
    /// when the server has one.
    let running: RunningTopology?

    public init(topology: Topology, running: RunningTopology? = nil,
                serverGauges: @escaping @Sendable () -> StatisticsPublisher.ServerGauges? = { nil }) {
        self.topology = topology
        self.running = running
        self.serverGauges = serverGauges
    }

    /// Listens on the Unix socket at `path` (replacing a stale socket file).
    public func start(path: String) async throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let bound = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(ControlHandler(server: self))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
            .get()
        channel.set(bound)
    }

    public func stop() async {
        if let channel = channel.get() { try? await channel.close() }
        try? await group.shutdownGracefully()
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
        case (.GET, "/metrics"): return (.ok, "text/plain; version=0.0.4", Data(metrics.scrape(StatsReport(topology), server: serverGauges())))
        default: break
        }
        if parts.count >= 2, parts[0] == "v1", ["geoms", "exports", "config"].contains(parts[1]) {
            return change(Array(parts.dropFirst()), method: method, body: body)
        }
        if parts.count == 3 || parts.count == 4, parts[0] == "v1", let definition = ClassRegistry.named(parts[1]) {
            return verb(of: definition, target: parts[2], verb: parts.count == 4 ? parts[3] : "show", method: method, body: body)
        }
        if ["/v1/topology", "/v1/status", "/v1/stats", "/v1/classes", "/metrics"].contains(route) {
            return failure(.methodNotAllowed, "only GET is served on \(route)")
        }
        return failure(.notFound, "no route \(route) (routes: /v1/topology, /v1/status, /v1/stats, /v1/classes, /metrics, /v1/CLASS/NAME[/VERB], /v1/geoms, /v1/exports, /v1/config)")
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
                try running.addExport(ExportSpec(name: request.name, provider: request.provider, readOnly: request.readOnly,
                                                 description: request.description, isDefault: request.isDefault ?? false))
                return json(["added": request.name])
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
            let values = try verb.check(arguments: arguments, options: options)
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

/// `POST /v1/exports`: `{"name", "provider", "read-only", "description", "default"}`.
struct ExportRequest: Decodable {
    var name: String
    var provider: String
    var readOnly: Bool?
    var description: String?
    var isDefault: Bool?
    enum CodingKeys: String, CodingKey { case name, provider, readOnly = "read-only", description, isDefault = "default" }
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

/// A value behind a lock (the listening channel, set once).
final class NIOLockedBox<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func get() -> Value { lock.withLock { value } }
    func set(_ newValue: Value) { lock.withLock { value = newValue } }
}

/// One control connection: a request in, a response out, then close.
final class ControlHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: ControlServer
    private var head: HTTPRequestHead?
    private var body = Data()

    init(server: ControlServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
            body = Data()
        case .body(let part):
            // Control requests are small; anything past 64 KiB is not one.
            if body.count < 65536 { body.append(contentsOf: part.readableBytesView) }
        case .end:
            guard let head else { return }
            let (status, type, body) = server.respond(method: head.method, path: head.uri, body: self.body)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "Content-Length", value: "\(body.count)")
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
            self.head = nil
        }
    }
}
