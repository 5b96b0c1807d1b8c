import CoreMetrics
import Strata
import StrataNBD
import Synchronization

/// Publishes a running topology's counters through swift-metrics, so that they reach
/// whatever backend the factory stands for: `/metrics` hands it a swift-prometheus
/// factory, and a program embedding Strata can hand it `MetricsSystem.factory`.
///
/// The I/O path never calls swift-metrics. It adds to the core's atomics
/// (`ProviderStatistics`), and `publish` carries those totals over when asked, usually
/// once per scrape: counters grow by the difference since the last call, gauges take
/// the current value. Series appear with their provider or export and are destroyed when
/// it goes. A provider replaced under the same name starts from zero again, which a
/// counter shows as a reset, the way Prometheus expects after a restart.
///
/// Latency histograms are not published here: swift-metrics' `Timer` takes one value at
/// a time, and the core already holds the counts per bucket (see `PrometheusText`).
public final class StatisticsPublisher: Sendable {
    /// What the NBD server adds: its open connections, per export the connections in
    /// transmission and their requests in flight, and its busy polls and naps so far.
    public struct ServerGauges: Sendable, Equatable {
        public var connections: Int
        public var exports: [NBDServer.ExportStatistics]
        /// Busy polls that found the client's next request, and those that timed out.
        public var busyPollsFound: Int
        public var busyPollsTimedOut: Int
        /// Naps after a read of several requests (input coalescing).
        public var coalescingNaps: Int

        public init(connections: Int, exports: [NBDServer.ExportStatistics], busyPollsFound: Int = 0,
                    busyPollsTimedOut: Int = 0, coalescingNaps: Int = 0) {
            self.connections = connections
            self.exports = exports
            self.busyPollsFound = busyPollsFound
            self.busyPollsTimedOut = busyPollsTimedOut
            self.coalescingNaps = coalescingNaps
        }

        /// What `server` has open now.
        public init(_ server: NBDServer) {
            let polls = server.busyPolls
            self.init(connections: server.connectionCount, exports: server.exportStatistics,
                      busyPollsFound: polls.found, busyPollsTimedOut: polls.timedOut, coalescingNaps: server.coalescingNaps)
        }
    }

    /// One series: a metric name and its labels.
    struct SeriesKey: Hashable {
        var label: String
        var dimensions: [String]

        init(_ label: String, _ dimensions: [(String, String)]) {
            self.label = label
            self.dimensions = dimensions.flatMap { [$0.0, $0.1] }
        }

        var dimensionPairs: [(String, String)] {
            stride(from: 0, to: dimensions.count, by: 2).map { (dimensions[$0], dimensions[$0 + 1]) }
        }
    }

    /// A value to carry over: a counter's total (whole or in seconds) or a gauge's level.
    enum Reading {
        case total(Int)
        case seconds(Double)
        case level(Double)
    }

    /// A published series and the last total it was given.
    enum Series {
        case counter(Counter, last: Int)
        case seconds(FloatingPointCounter, last: Double)
        case gauge(Gauge)

        func destroy() {
            switch self {
            case .counter(let counter, _): counter.destroy()
            case .seconds(let counter, _): counter.destroy()
            case .gauge(let gauge): gauge.destroy()
            }
        }
    }

    private let factory: any MetricsFactory
    private let series = Mutex<[SeriesKey: Series]>([:])

    public init(factory: any MetricsFactory) {
        self.factory = factory
    }

    /// Brings every series up to date with `stats` and `server`.
    public func publish(_ stats: StatsReport, geoms: [GeomStatus] = [], server: ServerGauges? = nil) {
        let readings = Self.readings(stats, geoms: geoms, server: server)
        series.withLock { published in
            for (key, reading) in readings {
                published[key] = update(published[key], key: key, to: reading)
            }
            for (key, gone) in published where readings[key] == nil {
                gone.destroy()
                published[key] = nil
            }
        }
    }

    /// The names and labels `publish` gives each reading.
    static func readings(_ stats: StatsReport, geoms: [GeomStatus], server: ServerGauges?) -> [SeriesKey: Reading] {
        var readings: [SeriesKey: Reading] = [:]
        for geom in geoms {
            for (figure, value) in geom.figures ?? [:] {
                readings[SeriesKey("strata_\(geom.className)_\(figure)", [("geom", geom.name)])] = .level(Double(value))
            }
        }
        for provider in stats.providers {
            for (kind, counters) in provider.countersByKind {
                let labels = [("provider", provider.name), ("kind", kind)]
                readings[SeriesKey("strata_provider_operations_total", labels)] = .total(counters.operations)
                readings[SeriesKey("strata_provider_bytes_total", labels)] = .total(counters.bytes)
                readings[SeriesKey("strata_provider_errors_total", labels)] = .total(counters.errors)
            }
            let labels = [("provider", provider.name)]
            readings[SeriesKey("strata_provider_in_flight", labels)] = .level(Double(provider.inFlight))
            readings[SeriesKey("strata_provider_busy_seconds_total", labels)] =
                .seconds(Double(provider.busyNanoseconds) / 1e9)
        }
        if let server {
            readings[SeriesKey("strata_nbd_connections", [])] = .level(Double(server.connections))
            readings[SeriesKey("strata_nbd_busy_polls_total", [("result", "found")])] = .total(server.busyPollsFound)
            readings[SeriesKey("strata_nbd_busy_polls_total", [("result", "timed_out")])] = .total(server.busyPollsTimedOut)
            readings[SeriesKey("strata_nbd_coalescing_naps_total", [])] = .total(server.coalescingNaps)
            for export in server.exports {
                let labels = [("export", export.name)]
                readings[SeriesKey("strata_nbd_export_connections", labels)] = .level(Double(export.connections))
                readings[SeriesKey("strata_nbd_export_in_flight", labels)] = .level(Double(export.requestsInFlight))
            }
        }
        return readings
    }

    private func update(_ existing: Series?, key: SeriesKey, to reading: Reading) -> Series {
        switch (existing, reading) {
        case (.counter(let counter, let last)?, .total(let total)):
            return .counter(counter, last: Self.advance(counter, from: last, to: total))
        case (.seconds(let counter, let last)?, .seconds(let total)):
            return .seconds(counter, last: Self.advance(counter, from: last, to: total))
        case (.gauge(let gauge)?, .level(let level)):
            gauge.record(level)
            return .gauge(gauge)
        default:
            // A new series. (A name never changes its kind, so `existing` is nil here.)
            existing?.destroy()
            let labels = key.dimensionPairs
            switch reading {
            case .total(let total):
                let counter = Counter(label: key.label, dimensions: labels, factory: factory)
                return .counter(counter, last: Self.advance(counter, from: 0, to: total))
            case .seconds(let total):
                let counter = FloatingPointCounter(label: key.label, dimensions: labels, factory: factory)
                return .seconds(counter, last: Self.advance(counter, from: 0, to: total))
            case .level(let level):
                let gauge = Gauge(label: key.label, dimensions: labels, factory: factory)
                gauge.record(level)
                return .gauge(gauge)
            }
        }
    }

    /// Adds what `total` gained since `last`; a smaller total means the counter started
    /// again (its provider was replaced), so it is reset and given the new total.
    private static func advance(_ counter: Counter, from last: Int, to total: Int) -> Int {
        if total < last {
            counter.reset()
            counter.increment(by: Int64(total))
        } else {
            counter.increment(by: Int64(total - last))
        }
        return total
    }

    private static func advance(_ counter: FloatingPointCounter, from last: Double, to total: Double) -> Double {
        if total < last {
            counter.reset()
            counter.increment(by: total)
        } else {
            counter.increment(by: total - last)
        }
        return total
    }
}
