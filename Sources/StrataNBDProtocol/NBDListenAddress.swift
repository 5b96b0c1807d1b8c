/// Where an NBD server listens: what the server binds and what the client connects to.
public enum NBDListenAddress: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .unix(let path): "unix://\(path)"
        }
    }

    /// The TCP port, if this is a TCP address.
    public var port: Int? {
        if case .tcp(_, let port) = self { return port }
        return nil
    }
}
