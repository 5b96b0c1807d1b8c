import Foundation
import NIOHTTP1
import Strata
import StrataDisks

extension ControlServer {
    /// `GET /v1/powercut/DISK`: the log the power-cut disk DISK records into.
    /// `POST /v1/powercut/DISK/images`: writes the images crash states of that log leave
    /// (`PowerCutImagesRequest`), for checking a file system or database on them.
    func powerCut(route: String, method: HTTPMethod, body: Data, encoder: JSONEncoder) -> (HTTPResponseStatus, String, Data) {
        func failure(_ status: HTTPResponseStatus, _ message: String) -> (HTTPResponseStatus, String, Data) {
            (status, "application/json", (try? encoder.encode(["error": message])) ?? Data())
        }
        func json<T: Encodable>(_ value: T) -> (HTTPResponseStatus, String, Data) {
            (.ok, "application/json", (try? encoder.encode(value)) ?? Data())
        }
        let parts = route.split(separator: "/").map(String.init)
        guard parts.count == 1 || parts.count == 2 && parts[1] == "images" else {
            return failure(.notFound, "power-cut routes are /v1/powercut/DISK and /v1/powercut/DISK/images")
        }
        guard let disk = topology.geom(named: parts[0]) as? PowerCutDisk else {
            return failure(.notFound, "no power-cut disk named \(parts[0])")
        }
        let log = disk.log
        if parts.count == 1 {
            guard method == .GET else { return failure(.methodNotAllowed, "GET") }
            let entries = log.count
            return json(PowerCutReport(disks: log.disks, entries: entries, unflushed: (try? log.unflushed(at: entries).count) ?? 0,
                                       dataBytes: log.dataBytes))
        }
        guard method == .POST else { return failure(.methodNotAllowed, "POST") }
        let request: PowerCutImagesRequest
        do {
            request = try PowerCutImagesRequest.decode(body, entries: log.count)
        } catch let error as PowerCutImagesRequest.Invalid {
            return failure(.badRequest, error.message)
        } catch {
            return failure(.badRequest, "\(error)")
        }
        do {
            let points = log.crashPoints(sampling: request.points ?? Int.max, seed: request.seed,
                                         within: [request.from..<(request.to + 1)])
            let states = try log.crashStates(at: points, subsetsPerPoint: request.subsets, seed: request.seed,
                                             tearing: request.tearing)
            try log.writeCrashImages(states, to: request.directory)
            return json(PowerCutImagesReport(directory: request.directory, points: points.count, states: states.count))
        } catch {
            return failure(.internalServerError, "\(error)")
        }
    }
}

/// What `GET /v1/powercut/DISK` answers.
public struct PowerCutReport: Codable, Sendable {
    /// Every disk recording into the log, in the order they joined.
    public var disks: [String]
    /// Entries so far: crash points run from 0 to this.
    public var entries: Int
    /// Changes that a power cut now could lose.
    public var unflushed: Int
    /// Bytes of written data the log holds.
    public var dataBytes: Int
}

/// What `POST /v1/powercut/DISK/images` answers.
public struct PowerCutImagesReport: Codable, Sendable {
    public var directory: String
    public var points: Int
    public var states: Int
}

/// The body of `POST /v1/powercut/DISK/images`: `{"directory": ABSOLUTE PATH}` and,
/// optionally, `from`, `to` (crash points, default the whole log), `points` (how many to
/// draw from that range, default all), `subsets` (states per point, default 4), `seed`
/// (default 1), `tearing` (default true).
struct PowerCutImagesRequest {
    struct Invalid: Error { let message: String }

    static let keys = ["directory", "from", "to", "points", "subsets", "seed", "tearing"]

    var directory: String
    var from: Int
    var to: Int
    var points: Int?
    var subsets: Int
    var seed: UInt64
    var tearing: Bool

    /// The fields as sent; JSONDecoder tells a number from a boolean.
    private struct Body: Decodable {
        var directory: String?
        var from: Int?
        var to: Int?
        var points: Int?
        var subsets: Int?
        var seed: Int?
        var tearing: Bool?
    }

    /// Checks every field once, against a log of `entries` entries.
    static func decode(_ data: Data, entries: Int) throws -> PowerCutImagesRequest {
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw Invalid(message: "the body must be a JSON object with at least \"directory\"")
        }
        if let unknown = object.keys.sorted().first(where: { !keys.contains($0) }) {
            throw Invalid(message: "\(unknown) is not a field (fields: \(keys.joined(separator: ", ")))")
        }
        let body: Body
        do {
            body = try JSONDecoder().decode(Body.self, from: data)
        } catch DecodingError.typeMismatch(_, let context) {
            let key = context.codingPath.first?.stringValue ?? "a field"
            throw Invalid(message: key == "directory" ? "directory must be an absolute path"
                          : key == "tearing" ? "tearing must be true or false" : "\(key) must be a whole number")
        }
        func checked(_ value: Int?, _ key: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let value else { return nil }
            guard range.contains(value) else {
                throw Invalid(message: "\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return value
        }
        guard let directory = body.directory, directory.hasPrefix("/") else {
            throw Invalid(message: "directory must be an absolute path")
        }
        let from = try checked(body.from, "from", 0...entries) ?? 0
        return PowerCutImagesRequest(directory: directory, from: from, to: try checked(body.to, "to", from...entries) ?? entries,
                                     points: try checked(body.points, "points", 1...1_000_000),
                                     subsets: try checked(body.subsets, "subsets", 1...64) ?? 4,
                                     seed: UInt64(try checked(body.seed, "seed", 0...Int.max) ?? 1), tearing: body.tearing ?? true)
    }
}
