import Foundation
import Prometheus
import Strata
import StrataControl
import StrataNBD
import Testing

/// The publisher carries the core's totals into swift-metrics: each series holds the
/// provider's own total however often it is published, starts again when its provider
/// is replaced, and leaves with it.
struct StatisticsPublisherTests {
    let registry = PrometheusCollectorRegistry()
    var publisher: StatisticsPublisher { StatisticsPublisher(factory: PrometheusMetricsFactory(registry: registry)) }

    /// A sample with the given reads and busy time per provider (other kinds zero).
    func sample(_ providers: [(name: String, reads: Int, busyNanoseconds: Int)]) throws -> StatsReport {
        func counters(_ operations: Int) -> [String: Any] {
            ["operations": operations, "bytes": operations * 4096, "errors": 0, "nanoseconds": 0,
             "latencyBuckets": Array(repeating: 0, count: 22)]
        }
        let entries: [[String: Any]] = providers.map {
            ["name": $0.name, "read": counters($0.reads), "write": counters(0), "delete": counters(0),
             "flush": counters(0), "inFlight": 2, "busyNanoseconds": $0.busyNanoseconds]
        }
        let json = try JSONSerialization.data(withJSONObject: ["time": 1, "providers": entries])
        return try JSONDecoder().decode(StatsReport.self, from: json)
    }

    /// The emitted value of the series `name{labels}`, or nil when it is not there.
    func value(_ series: String) -> Double? {
        for line in registry.emitToString().split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func countersHoldTheTotalsNotTheirSum() throws {
        let publisher = self.publisher
        publisher.publish(try sample([("d0", 10, 500_000_000)]))
        publisher.publish(try sample([("d0", 10, 500_000_000)]))
        #expect(value(#"strata_provider_operations_total{provider="d0",kind="read"}"#) == 10)
        publisher.publish(try sample([("d0", 25, 1_500_000_000)]))
        #expect(value(#"strata_provider_operations_total{provider="d0",kind="read"}"#) == 25)
        #expect(value(#"strata_provider_bytes_total{provider="d0",kind="read"}"#) == 102_400)
        #expect(value(#"strata_provider_operations_total{provider="d0",kind="write"}"#) == 0)
        #expect(value(#"strata_provider_busy_seconds_total{provider="d0"}"#) == 1.5)
        #expect(value(#"strata_provider_in_flight{provider="d0"}"#) == 2)
    }

    @Test func aReplacedProviderStartsAgainFromItsOwnTotal() throws {
        let publisher = self.publisher
        publisher.publish(try sample([("d0", 100, 2_000_000_000)]))
        publisher.publish(try sample([("d0", 3, 250_000_000)]))
        #expect(value(#"strata_provider_operations_total{provider="d0",kind="read"}"#) == 3)
        #expect(value(#"strata_provider_busy_seconds_total{provider="d0"}"#) == 0.25)
    }

    @Test func seriesLeaveWithTheirProviderAndExport() throws {
        let publisher = self.publisher
        let server = StatisticsPublisher.ServerGauges(
            connections: 3, exports: [.init(name: "vol", connections: 2, requestsInFlight: 7)],
            busyPollsFound: 40, busyPollsTimedOut: 2, coalescingNaps: 9)
        publisher.publish(try sample([("d0", 1, 0), ("d1", 1, 0)]), server: server)
        #expect(value("strata_nbd_connections") == 3)
        #expect(value(#"strata_nbd_busy_polls_total{result="found"}"#) == 40)
        #expect(value(#"strata_nbd_busy_polls_total{result="timed_out"}"#) == 2)
        #expect(value(#"strata_nbd_coalescing_naps_total"#) == 9)
        #expect(value(#"strata_nbd_export_connections{export="vol"}"#) == 2)
        #expect(value(#"strata_nbd_export_in_flight{export="vol"}"#) == 7)
        #expect(value(#"strata_provider_operations_total{provider="d1",kind="read"}"#) == 1)

        publisher.publish(try sample([("d0", 1, 0)]), server: nil)
        #expect(value(#"strata_provider_operations_total{provider="d1",kind="read"}"#) == nil)
        #expect(value(#"strata_provider_in_flight{provider="d1"}"#) == nil)
        #expect(value("strata_nbd_connections") == nil)
        #expect(value(#"strata_nbd_busy_polls_total{result="found"}"#) == nil)
        #expect(value(#"strata_nbd_export_connections{export="vol"}"#) == nil)
        #expect(value(#"strata_provider_operations_total{provider="d0",kind="read"}"#) == 1)
    }

    @Test func geomFiguresArePublishedByClassAndGeom() throws {
        let publisher = self.publisher
        let mirror = GeomStatus(name: "m0", className: "mirror", state: "COMPLETE", progress: 0, components: [],
                                figures: ["replication_lag_bytes": 65536])
        publisher.publish(try sample([("d0", 1, 0)]), geoms: [mirror])
        #expect(value(#"strata_mirror_replication_lag_bytes{geom="m0"}"#) == 65536)
        publisher.publish(try sample([("d0", 1, 0)]), geoms: [])
        #expect(value(#"strata_mirror_replication_lag_bytes{geom="m0"}"#) == nil)
    }

    /// Names come from configuration files; swift-prometheus escapes them as label values.
    @Test func labelValuesAreEscaped() throws {
        publisher.publish(try sample([(#"we"ird\name"#, 4, 0)]))
        #expect(value(#"strata_provider_operations_total{provider="we\"ird\\name",kind="read"}"#) == 4)
    }
}
