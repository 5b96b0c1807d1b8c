import Glibc
import Strata
import StrataDisks

/// `rbd: POOL/IMAGE` under `disks:`: an RBD image of a Ceph cluster (docs: `rbd.md`).
public enum RBDDiskDefinition: ClassDefinition {
    public static let name = "rbd"
    public static let summary = "An RBD image of a Ceph cluster, through librbd; created with the size given when missing."
    public static let geomClassName = "RBD"
    public static let shape = ClassShape.disk

    public struct Settings: ClassSettings {
        public var image = ""
        public var configuration: String?
        public var clientID = "admin"
        public var keyring: String?
        public var size: Int64?
        public var timeout = 30
        public var readOnly = false
        public var sectorSize = 512

        public init() {}

        public static let keys: [SettingKey<Settings>] = [
            SettingKey("rbd", \.image, .text, help: "POOL/IMAGE or POOL/NAMESPACE/IMAGE, with @SNAPSHOT for a snapshot (read-only)."),
            SettingKey("ceph-conf", \.configuration, .path,
                       help: "The cluster's ceph.conf (relative to the topology file's folder); else librados' default places."),
            SettingKey("client-id", \.clientID, .text, help: "The Ceph client to connect as, without client. (default admin)."),
            SettingKey("keyring", \.keyring, .path, help: "The client's keyring, if ceph-conf names none or another."),
            SettingKey("size", \.size, .anySize, help: "The size to create a missing image with; an existing image must have it."),
            SettingKey("timeout", \.timeout, .integer(0...3600),
                       help: "Seconds an operation may take before it fails with ETIMEDOUT, and the longest the connection at start may take (default 30; 0 waits for ever)."),
            SettingKey("read-only", \.readOnly, .boolean,
                       help: "Open the image read-only, without its exclusive lock: writes are refused with EPERM."),
            SettingKey("sector-size", \.sectorSize, names: sectorSizeNames, help: "512 (the default) or 4096."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        let settings = entry.settings
        guard let spec = RBDImageSpec(settings.image) else {
            throw SettingError(key: "rbd", value: settings.image, problem: "is not POOL/IMAGE, POOL/NAMESPACE/IMAGE or either with @SNAPSHOT")
        }
        if spec.snapshot != nil, let size = settings.size {
            throw SettingError(key: "size", value: String(size), problem: "cannot be given for a snapshot, which is read-only")
        }
        var options = RBDDisk.Options()
        options.configuration = settings.configuration
        options.clientID = settings.clientID
        options.keyring = settings.keyring
        options.size = settings.size
        options.timeoutSeconds = settings.timeout
        options.readOnly = settings.readOnly
        options.sectorSize = settings.sectorSize
        do {
            return try RBDDisk.create(in: topology, name: entry.name, spec: spec, options: options)
        } catch let error as StrataError {
            throw SettingError(key: "rbd", value: settings.image, problem: "cannot be opened: \(error.message)")
        }
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let disk = geom as? RBDDisk else { return nil }
        var settings = Settings()
        settings.image = disk.spec.description
        settings.configuration = disk.options.configuration
        settings.clientID = disk.options.clientID
        settings.keyring = disk.options.keyring
        settings.size = disk.options.size
        settings.timeout = disk.options.timeoutSeconds
        settings.readOnly = disk.options.readOnly
        settings.sectorSize = disk.provider.sectorSize
        return settings
    }

    public static func status(of geom: Geom) -> GeomStatus? {
        guard let disk = geom as? RBDDisk else { return nil }
        let status = disk.status
        return GeomStatus(name: disk.name, className: name, state: status.state, progress: 0,
                          components: [GeomStatus.Component(name: disk.spec.description, state: status.detail)],
                          figures: ["failed_requests": Int64(status.failures)])
    }

    /// Two entries naming one image through one configuration file are refused before
    /// either is opened; the exclusive lock keeps out the rest.
    public static func media(of settings: Settings) -> [Medium] {
        guard let spec = RBDImageSpec(settings.image) else { return [] }
        var configuration = settings.configuration ?? "default"
        var status = stat()
        if let path = settings.configuration, stat(path, &status) == 0 {
            configuration = "\(status.st_dev):\(status.st_ino)"
        }
        return [Medium(key: "rbd", identity: "rbd:\(configuration):\(spec)", name: spec.description, noun: "image")]
    }
}
