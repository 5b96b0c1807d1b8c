import CRBD
import Glibc
import Strata
import Synchronization

/// One connection to a Ceph cluster (a `rados_t`), shared by every rbd disk that names
/// the same configuration file, client and keyring: each connection has its own
/// messenger threads and caches, so four disks on one cluster cost one connection.
final class RBDCluster: @unchecked Sendable {
    /// What makes two disks' connections the same one.
    struct Key: Hashable {
        var configuration: String?
        var clientID: String
        var keyring: String?
        var timeoutSeconds: Int
    }

    let key: Key
    let handle: rados_t
    /// The cluster's fsid, which tells two clusters apart whatever file names them.
    let fsid: String

    /// Connections in use; entries whose connection has been let go are dropped when met.
    private static let connections = Mutex<[Key: WeakCluster]>([:])

    private init(key: Key, handle: rados_t, fsid: String) {
        self.key = key
        self.handle = handle
        self.fsid = fsid
    }

    deinit { rados_shutdown(handle) }

    /// The connection for `key`: the one open already, or a new one.
    /// - Throws: `StrataError` naming what failed (the file, the keyring, the cluster).
    static func connection(for key: Key) throws -> RBDCluster {
        try connections.withLock { connections in
            if let cluster = connections[key]?.cluster { return cluster }
            connections = connections.filter { $0.value.cluster != nil }
            let cluster = try connect(key)
            connections[key] = WeakCluster(cluster: cluster)
            return cluster
        }
    }

    private static func connect(_ key: Key) throws -> RBDCluster {
        var handle: rados_t?
        var result = rados_create(&handle, key.clientID)
        guard result == 0, let handle else {
            throw StrataError(.invalid, "cannot make a Ceph client named client.\(key.clientID): \(RBDError.describe(result))")
        }
        // From here on, a failure shuts the half-made handle down.
        var connected = false
        defer { if !connected { rados_shutdown(handle) } }
        result = rados_conf_read_file(handle, key.configuration)
        guard result == 0 else {
            throw StrataError(.invalid, "cannot read Ceph configuration \(key.configuration ?? "from the default places"): \(RBDError.describe(result))")
        }
        var settings: [(String, String)] = []
        if let keyring = key.keyring { settings.append(("keyring", keyring)) }
        if key.timeoutSeconds > 0 {
            let seconds = String(key.timeoutSeconds)
            settings += [("rados_osd_op_timeout", seconds), ("rados_mon_op_timeout", seconds),
                         ("client_mount_timeout", seconds)]
        }
        for (name, value) in settings {
            result = rados_conf_set(handle, name, value)
            guard result == 0 else {
                throw StrataError(.invalid, "cannot set Ceph option \(name) to \(value): \(RBDError.describe(result))")
            }
        }
        result = rados_connect(handle)
        guard result == 0 else {
            throw StrataError(.io, "cannot connect to the Ceph cluster of \(key.configuration ?? "the default configuration") as client.\(key.clientID): \(RBDError.describe(result))")
        }
        var fsid = [CChar](repeating: 0, count: 64)
        result = rados_cluster_fsid(handle, &fsid, fsid.count)
        guard result >= 0 else {
            throw StrataError(.io, "cannot read the Ceph cluster's fsid: \(RBDError.describe(result))")
        }
        connected = true
        return RBDCluster(key: key, handle: handle, fsid: String(decoding: fsid.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// An I/O context on `pool` (and `namespace`, if any).
    func ioContext(pool: String, namespace: String?) throws -> rados_ioctx_t {
        var context: rados_ioctx_t?
        let result = rados_ioctx_create(handle, pool, &context)
        guard result == 0, let context else {
            throw StrataError(result == -ENOENT ? .invalid : .io, "cannot open pool \(pool): \(RBDError.describe(result))")
        }
        if let namespace { rados_ioctx_set_namespace(context, namespace) }
        return context
    }
}

private struct WeakCluster {
    weak var cluster: RBDCluster?
}
