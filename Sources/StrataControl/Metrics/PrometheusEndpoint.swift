import Prometheus
import Strata
import Synchronization

/// `GET /metrics`: the topology's counters published through swift-metrics into a
/// swift-prometheus registry of this endpoint's own (so two servers in one process
/// don't share series), followed by the latency histograms.
final class PrometheusEndpoint: Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let publisher: StatisticsPublisher
    /// One scrape at a time: a scrape publishes, then writes what it published.
    private let scraping = Mutex(())

    init() {
        publisher = StatisticsPublisher(factory: PrometheusMetricsFactory(registry: registry))
    }

    /// The text format, version 0.0.4.
    func scrape(_ stats: StatsReport, geoms: [GeomStatus], server: StatisticsPublisher.ServerGauges?) -> [UInt8] {
        scraping.withLock { _ in
            publisher.publish(stats, geoms: geoms, server: server)
            var text: [UInt8] = []
            registry.emit(into: &text)
            text.append(contentsOf: PrometheusText.latencyHistograms(stats).utf8)
            return text
        }
    }
}
