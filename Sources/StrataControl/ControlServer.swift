import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Strata
import StrataClasses

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

    public init(topology: Topology,
                serverGauges: @escaping @Sendable () -> StatisticsPublisher.ServerGauges? = { nil }) {
        self.topology = topology
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
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        func json<T: Encodable>(_ value: T) -> (HTTPResponseStatus, String, Data) {
            (.ok, "application/json", (try? encoder.encode(value)) ?? Data())
        }
        if route.hasPrefix("/v1/mirror/") {
            return mirror(route: String(route.dropFirst("/v1/mirror/".count)), method: method, body: body, encoder: encoder)
        }
        if route.hasPrefix("/v1/powercut/") {
            return powerCut(route: String(route.dropFirst("/v1/powercut/".count)), method: method, body: body, encoder: encoder)
        }
        if route.hasPrefix("/v1/nop/") {
            return nop(named: String(route.dropFirst("/v1/nop/".count)), method: method, body: body, encoder: encoder)
        }
        guard method == .GET else {
            return (.methodNotAllowed, "application/json", Data(#"{"error": "only GET is served on \#(route)"}"#.utf8))
        }
        switch route {
        case "/v1/topology": return json(TopologyReport(topology))
        case "/v1/status": return json(StatusReport(topology))
        case "/v1/stats": return json(StatsReport(topology))
        case "/metrics": return (.ok, "text/plain; version=0.0.4", Data(metrics.scrape(StatsReport(topology), server: serverGauges())))
        default:
            return (.notFound, "application/json", Data(#"{"error": "no route \#(route)"}"#.utf8))
        }
    }
}

extension ControlServer {
    /// `GET /v1/nop/NAME`: settings and statistics. `POST /v1/nop/NAME` with any of
    /// `read-fail-percent`, `write-fail-percent`, `error`, `delay-ms`, `count-until-fail`:
    /// changes them and answers like GET.
    func nop(named name: String, method: HTTPMethod, body: Data, encoder: JSONEncoder) -> (HTTPResponseStatus, String, Data) {
        func failure(_ status: HTTPResponseStatus, _ message: String) -> (HTTPResponseStatus, String, Data) {
            (status, "application/json", (try? encoder.encode(["error": message])) ?? Data())
        }
        guard let nop = topology.geom(named: name) as? NopGeom else { return failure(.notFound, "no nop geom named \(name)") }
        if method == .POST {
            guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
                return failure(.badRequest, "the body must be a JSON object")
            }
            var settings = nop.settings
            let keys = ["read-fail-percent", "write-fail-percent", "error", "delay-ms", "count-until-fail"]
            for (key, value) in object {
                guard keys.contains(key) else { return failure(.badRequest, "\(key) is not a nop setting (settings: \(keys.joined(separator: ", ")))") }
                guard let number = value as? Int else { return failure(.badRequest, "\(key) must be a whole number") }
                switch key {
                case "read-fail-percent": settings.readFailPercent = number
                case "write-fail-percent": settings.writeFailPercent = number
                case "error": settings.error = Int32(clamping: number)
                case "delay-ms": settings.delayMilliseconds = number
                default: settings.countUntilFail = number
                }
            }
            do {
                try nop.configure(settings)
            } catch let error as StrataError {
                return failure(.badRequest, error.message)
            } catch {
                return failure(.badRequest, "\(error)")
            }
        } else if method != .GET {
            return failure(.methodNotAllowed, "GET or POST")
        }
        let report = NopReport(name: nop.name, settings: nop.settings, statistics: nop.statistics)
        return (.ok, "application/json", (try? encoder.encode(report)) ?? Data())
    }
}

extension ControlServer {
    /// `POST /v1/mirror/NAME/insert|remove|rebuild` with `{"component": PROVIDER}`, and
    /// `POST /v1/mirror/NAME/forget`: change a running mirror; answers its status.
    func mirror(route: String, method: HTTPMethod, body: Data, encoder: JSONEncoder) -> (HTTPResponseStatus, String, Data) {
        func failure(_ status: HTTPResponseStatus, _ message: String) -> (HTTPResponseStatus, String, Data) {
            (status, "application/json", (try? encoder.encode(["error": message])) ?? Data())
        }
        let parts = route.split(separator: "/").map(String.init)
        guard parts.count == 2, ["insert", "remove", "rebuild", "forget"].contains(parts[1]) else {
            return failure(.notFound, "mirror routes are /v1/mirror/NAME/insert, remove, rebuild and forget")
        }
        guard method == .POST else { return failure(.methodNotAllowed, "POST") }
        guard let mirror = topology.geom(named: parts[0]) as? MirrorGeom else {
            return failure(.notFound, "no mirror named \(parts[0])")
        }
        let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:]
        let component = object["component"] as? String
        do {
            switch parts[1] {
            case "forget":
                mirror.forget(in: topology)
            default:
                guard let component else { return failure(.badRequest, "the body must be {\"component\": NAME}") }
                if parts[1] == "insert" {
                    guard let provider = topology.provider(named: component) else {
                        return failure(.notFound, "no provider named \(component)")
                    }
                    try mirror.insert(provider, in: topology)
                } else if parts[1] == "remove" {
                    try mirror.remove(component, in: topology)
                } else {
                    try mirror.rebuild(component, in: topology)
                }
            }
        } catch let error as StrataError {
            return failure(.conflict, "\(error)")
        } catch {
            return failure(.internalServerError, "\(error)")
        }
        let report = StatusReport(topology).geoms.first { $0.name == mirror.name }
        return (.ok, "application/json", (try? encoder.encode(report)) ?? Data())
    }
}

/// What `GET /v1/nop/NAME` answers.
public struct NopReport: Codable, Sendable {
    public var name: String
    public var readFailPercent: Int
    public var writeFailPercent: Int
    public var error: Int32
    public var delayMilliseconds: Int
    public var countUntilFail: Int
    public var statistics: NopGeom.Statistics

    enum CodingKeys: String, CodingKey {
        case name, readFailPercent = "read-fail-percent", writeFailPercent = "write-fail-percent", error
        case delayMilliseconds = "delay-ms", countUntilFail = "count-until-fail", statistics
    }

    init(name: String, settings: NopGeom.Settings, statistics: NopGeom.Statistics) {
        self.name = name
        readFailPercent = settings.readFailPercent
        writeFailPercent = settings.writeFailPercent
        error = settings.error
        delayMilliseconds = settings.delayMilliseconds
        countUntilFail = settings.countUntilFail
        self.statistics = statistics
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
