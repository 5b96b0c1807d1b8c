import Strata
import StrataConfig

/// `GET /v1/topology`: every class, geom, provider and consumer (like `geom list`).
public struct TopologyReport: Codable, Sendable, Equatable {
    public struct ProviderEntry: Codable, Sendable, Equatable {
        public var name: String
        public var mediaSize: Int64
        public var sectorSize: Int
        public var stripeSize: Int64
        public var stripeOffset: Int64
        public var mode: String
        public var error: String?
    }

    public struct ConsumerEntry: Codable, Sendable, Equatable {
        public var provider: String?
        public var mode: String
        public var orphaned: Bool
    }

    public struct GeomEntry: Codable, Sendable, Equatable {
        public var name: String
        public var className: String
        public var rank: Int
        public var withering: Bool
        public var providers: [ProviderEntry]
        public var consumers: [ConsumerEntry]
        /// True when it stands on a geom made for this run only (`strata eli attach`, or
        /// itself one): the next start does not make it again.
        public var thisRunOnly: Bool?

        enum CodingKeys: String, CodingKey {
            case name, className = "class", rank, withering, providers, consumers, thisRunOnly = "this-run-only"
        }
    }

    public var classes: [String]
    public var geoms: [GeomEntry]

    public init(_ topology: Topology) {
        classes = topology.classes.map(\.name)
        geoms = topology.withLock {
            topology.geoms.map { geom in
                GeomEntry(
                    name: geom.name, className: geom.className, rank: geom.rank, withering: geom.isWithering,
                    providers: geom.providers.map { provider in
                        ProviderEntry(name: provider.name, mediaSize: provider.mediaSize, sectorSize: provider.sectorSize,
                                      stripeSize: provider.stripeSize, stripeOffset: provider.stripeOffset,
                                      mode: provider.mode, error: provider.error?.name)
                    },
                    consumers: geom.consumers.map { consumer in
                        ConsumerEntry(provider: consumer.provider?.name,
                                      mode: "r\(consumer.readCount)w\(consumer.writeCount)e\(consumer.exclusiveCount)",
                                      orphaned: consumer.isOrphaned)
                    },
                    thisRunOnly: geom.standsOnGeomForThisRunOnly == nil ? nil : true)
            }
        }
    }

    /// The topology as Graphviz (like GEOM's confdot), for `dot -Tsvg`: geoms as boxes,
    /// providers as ellipses, an edge from each geom to its providers and from each
    /// consumer's geom to the provider it reads.
    public var dot: String {
        var lines = ["digraph strata {", "  rankdir=BT;", "  node [fontname=\"Helvetica\"];"]
        for geom in geoms {
            lines.append("  \"g:\(geom.name)\" [shape=box, label=\"\(geom.className)\\n\(geom.name)\"];")
            for provider in geom.providers {
                lines.append("  \"p:\(provider.name)\" [shape=ellipse, label=\"\(provider.name)\\n\(provider.mode)\"];")
                lines.append("  \"g:\(geom.name)\" -> \"p:\(provider.name)\";")
            }
            for consumer in geom.consumers {
                if let provider = consumer.provider {
                    lines.append("  \"p:\(provider)\" -> \"g:\(geom.name)\" [label=\"\(consumer.mode)\"];")
                }
            }
        }
        lines.append("}")
        return lines.joined(separator: "\n")
    }
}

/// `GET /v1/stats`: every provider's counters at one moment.
public struct StatsReport: Codable, Sendable, Equatable {
    public struct Counters: Codable, Sendable, Equatable {
        public var operations: Int
        public var bytes: Int
        public var errors: Int
        public var nanoseconds: Int
        /// Requests per latency bucket (`ProviderStatistics.latencyBucketBounds`), not cumulative.
        public var latencyBuckets: [Int]
    }

    public struct ProviderEntry: Codable, Sendable, Equatable {
        public var name: String
        public var read: Counters
        public var write: Counters
        public var delete: Counters
        public var flush: Counters
        public var inFlight: Int
        public var busyNanoseconds: Int

        /// The counters with the name of their kind, in a fixed order.
        public var countersByKind: [(kind: String, counters: Counters)] {
            [("read", read), ("write", write), ("delete", delete), ("flush", flush)]
        }
    }

    /// Monotonic nanoseconds when the counters were read.
    public var time: UInt64
    public var providers: [ProviderEntry]

    public init(_ topology: Topology) {
        var latest: UInt64 = 0
        providers = topology.providers.map { provider in
            let snapshot = provider.statistics.snapshot
            latest = max(latest, snapshot.time)
            func counters(_ kind: ProviderStatistics.Kind) -> Counters {
                Counters(operations: snapshot.operations(kind), bytes: snapshot.bytes(kind), errors: snapshot.errors(kind),
                         nanoseconds: snapshot.nanoseconds(kind), latencyBuckets: snapshot.latencyBuckets(kind))
            }
            return ProviderEntry(name: provider.name, read: counters(.read), write: counters(.write),
                                 delete: counters(.delete), flush: counters(.flush), inFlight: snapshot.inFlight,
                                 busyNanoseconds: snapshot.busyNanoseconds)
        }
        time = latest
    }
}

/// `GET /v1/status`: one entry per geom whose class reports a state (`ClassDefinition.status`).
public struct StatusReport: Codable, Sendable, Equatable {
    public var geoms: [GeomStatus]

    public init(_ topology: Topology) {
        // Under the topology lock: verbs change components under it.
        geoms = topology.withLock { topology.geoms.compactMap { geom in ClassRegistry.of(geom)?.status(of: geom) } }
    }
}
