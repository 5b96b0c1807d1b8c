import Strata

/// `class: mirror`: the providers in `consumers` (2 to 16) as copies of each other
/// (docs: `mirror.md`). The first time, metadata is written to every component;
/// afterwards the mirror is reassembled from it (`MirrorGeom.assemble`).
public enum MirrorDefinition: ClassDefinition {
    public static let name = "mirror"
    public static let summary = "Copies of each other: writes to all, reads from one, components rebuilt online."
    public static let geomClassName = "MIRROR"
    public static let shape = ClassShape.transform(consumers: 2...MirrorGeom.maximumComponents)

    public struct Settings: ClassSettings {
        public var balance = MirrorBalance.load
        public var slice: Int64 = 1 << 20
        /// Bytes per second a rebuild may copy; 0: no limit.
        public var rebuildRate: Int64 = 0
        public var replication = MirrorReplication.Mode.sync
        public var asyncLag = MirrorReplication.defaultLag
        public init() {}
        public static let keys: [SettingKey<Settings>] = [
            SettingKey("balance", \.balance, names: MirrorBalance.allCases.map { ($0.name, $0) },
                       help: "Which component a read goes to: the least busy (load), the highest priority (prefer), each in turn (round-robin), large reads split in slices across them (split), or local components before remote ones (prefer-local)."),
            SettingKey("slice", \.slice, .size(4096...(1 << 30), powerOfTwo: true),
                       help: "For split: reads of two slices or more are split (default 1MiB)."),
            SettingKey("rebuild-rate", \.rebuildRate, .size(0...Int64.max, powerOfTwo: false), changesAtRunTime: true,
                       help: "Bytes per second a rebuild may copy: 0 for no limit, else at least 1MiB."),
            SettingKey("replication", \.replication, names: MirrorReplication.Mode.allCases.map { ($0.rawValue, $0) },
                       help: "When a write is acknowledged: once every component has it (sync), or once the local components have it, remote ones getting it in the background (async)."),
            SettingKey("async-lag", \.asyncLag, .size((1 << 20)...(1 << 40), powerOfTwo: false),
                       help: "For async: how far, in bytes, remote components may fall behind before writes wait (default 64MiB)."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        let rate = entry.settings.rebuildRate
        guard rate == 0 || rate >= 1 << 20 else {
            throw SettingError(key: "rebuild-rate", value: formatByteSize(rate), problem: "must be at least 1MiB (per second), or 0 for no limit")
        }
        // Components inserted at run time: providers tasting may read that nothing uses.
        let others = topology.providers.filter { provider in
            !topology.isClaimed(provider.name) && provider.consumers.isEmpty && !provider.isOrphaned
        }.sorted { ($0.geom.rank, $1.name) > ($1.geom.rank, $0.name) }
        let mirror = try MirrorGeom.assemble(in: topology, name: entry.name, over: entry.consumers, others: others,
                                             balance: entry.settings.balance, slice: Int(entry.settings.slice),
                                             replication: entry.settings.replication == .async ? .async(lag: entry.settings.asyncLag) : .sync)
        mirror.rebuildRate.store(Int(rate), ordering: .relaxed)
        return mirror
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let mirror = geom as? MirrorGeom else { return nil }
        var settings = Settings()
        settings.balance = mirror.balance
        settings.slice = Int64(mirror.slice)
        settings.rebuildRate = Int64(mirror.rebuildRate.load(ordering: .relaxed))
        settings.replication = mirror.replication.mode
        if case .async(let lag) = mirror.replication { settings.asyncLag = lag }
        return settings
    }

    public static func consumers(of geom: Geom) -> [String] {
        guard let mirror = geom as? MirrorGeom else { return [] }
        return mirror.status.components.map(\.name).filter { $0 != "-" }
    }

    public static func status(of geom: Geom) -> GeomStatus? {
        guard let mirror = geom as? MirrorGeom, !mirror.providers.isEmpty else { return nil }
        let status = mirror.status
        return GeomStatus(name: mirror.name, className: name, state: status.state, progress: status.progress,
                          components: status.components.map { GeomStatus.Component(name: $0.name, state: $0.state) },
                          figures: mirror.replication == .sync ? nil : ["replication_lag_bytes": mirror.replicationLag])
    }

    public static var taster: (any GeomClass)? { MirrorClass(wait: 0.5) }

    static let component = VerbParameter("component", .text, help: "The component's provider.")

    public static let verbs = [
        ClassVerb("insert", "Add a component and rebuild it while I/O goes on.", arguments: [component]) { call in
            let mirror = try call.geom(as: MirrorGeom.self)
            let name = call.text("component")!
            guard let provider = call.topology.provider(named: name) else {
                throw StrataError(.noDevice, "no provider named \(name)")
            }
            try mirror.insert(provider, in: call.topology)
            return status(of: mirror)
        },
        ClassVerb("remove", "Take a component out and clear its metadata.", arguments: [component]) { call in
            let mirror = try call.geom(as: MirrorGeom.self)
            try mirror.remove(call.text("component")!, in: call.topology)
            return status(of: mirror)
        },
        ClassVerb("rebuild", "Copy everything to a component again, online.", arguments: [component]) { call in
            let mirror = try call.geom(as: MirrorGeom.self)
            try mirror.rebuild(call.text("component")!, in: call.topology)
            return status(of: mirror)
        },
        ClassVerb("rejoin", "Take a broken component back, copying only what was written while it was out.",
                  arguments: [component]) { call in
            let mirror = try call.geom(as: MirrorGeom.self)
            try mirror.rejoin(call.text("component")!, in: call.topology)
            return status(of: mirror)
        },
        ClassVerb("forget", "Forget components that are broken or gone.") { call in
            let mirror = try call.geom(as: MirrorGeom.self)
            mirror.forget(in: call.topology)
            return status(of: mirror)
        },
    ]
}
