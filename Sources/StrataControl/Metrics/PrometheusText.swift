import Strata

/// The latency histograms of `/metrics`, written in the text format directly.
///
/// swift-prometheus builds a histogram one observation at a time, under a lock, and
/// offers no way to load counts already made. The core counts every request into
/// power-of-two buckets with one relaxed add (`ProviderStatistics`), so the
/// histogram is rendered from those counts here, after the families that swift-prometheus
/// writes; the text format allows families in any order.
public enum PrometheusText {
    static let latencyFamily = "strata_provider_latency_seconds"

    /// `strata_provider_latency_seconds` by provider and kind: cumulative buckets from
    /// `ProviderStatistics.latencyBucketBounds`, then +Inf, the sum in seconds and the count.
    /// It counts timed requests only: a request refused at the provider's entry is an
    /// operation and an error but never took any time there.
    static func latencyHistograms(_ stats: StatsReport) -> String {
        var lines = ["# HELP \(latencyFamily) Time from a request reaching the provider to its completion.",
                     "# TYPE \(latencyFamily) histogram"]
        let bounds = ProviderStatistics.latencyBucketBounds.map { String(Double($0) / 1e9) } + ["+Inf"]
        for provider in stats.providers {
            for (kind, counters) in provider.countersByKind {
                let labels = "provider=\"\(label(provider.name))\",kind=\"\(kind)\""
                var cumulative = 0
                for (bound, count) in zip(bounds, counters.latencyBuckets) {
                    cumulative += count
                    lines.append("\(latencyFamily)_bucket{\(labels),le=\"\(bound)\"} \(cumulative)")
                }
                lines.append("\(latencyFamily)_sum{\(labels)} \(Double(counters.nanoseconds) / 1e9)")
                lines.append("\(latencyFamily)_count{\(labels)} \(cumulative)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A label value as the text format wants it: backslash, double quote and newline escaped.
    public static func label(_ value: String) -> String {
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
