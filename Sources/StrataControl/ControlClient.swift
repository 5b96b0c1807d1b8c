import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Talks to a running server's control socket: one request per connection.
public struct ControlClient: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// GETs `route` and returns the body; throws with the server's message on an error
    /// status, and a clear message when nothing answers on the socket.
    public func get(_ route: String) throws -> Data {
        try exchange("GET", route, body: nil)
    }

    /// POSTs a JSON body to `route` and returns the answer's body.
    public func post(_ route: String, json: Data) throws -> Data {
        try exchange("POST", route, body: json)
    }

    private func exchange(_ method: String, _ route: String, body requestBody: Data?) throws -> Data {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw Failure(description: "control socket path \(path) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            if errno == EACCES {
                throw Failure(description: "the control socket \(path) is not open to this user (\(String(cString: strerror(errno)))): "
                              + "it serves root, the server's own user and the topology file's control-group")
            }
            throw Failure(description: "no strata server answers on \(path): \(String(cString: strerror(errno))) (is `strata serve` running? use --control)")
        }
        var request = Array("\(method) \(route) HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n".utf8)
        if let requestBody {
            request += Array("Content-Type: application/json\r\nContent-Length: \(requestBody.count)\r\n\r\n".utf8) + Array(requestBody)
        } else {
            request += Array("\r\n".utf8)
        }
        _ = request.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var response = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            response.append(contentsOf: chunk[0..<count])
        }
        guard let split = response.range(of: Data("\r\n\r\n".utf8)) else {
            let limits = ControlServer.Limits()
            throw Failure(description: response.isEmpty
                ? "the control socket \(path) closed the connection without answering: a server with its most control "
                    + "connections open (\(limits.connections)) refuses more until some end, at most \(limits.request) later, "
                    + "or the server stopped"
                : "the control socket \(path) gave no HTTP response")
        }
        let head = String(decoding: response[..<split.lowerBound], as: UTF8.self)
        let body = response[split.upperBound...]
        let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        guard status == 200 else {
            // The server's message as words, not as the JSON that carried it.
            let message = (try? JSONDecoder().decode([String: String].self, from: body))?["error"]
            throw Failure(description: "\(route): \(status): \(message ?? String(decoding: body, as: UTF8.self))")
        }
        return Data(body)
    }

    /// GETs `route` and decodes its JSON body.
    public func get<T: Decodable>(_ route: String, as type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: get(route))
    }
}
