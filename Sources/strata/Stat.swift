import ArgumentParser
import Foundation
import StrataControl

struct Stat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Per-provider operations per second, throughput, latency and % busy, refreshed each second (like gstat).")

    @OptionGroup var control: ControlOptions

    @Flag(name: .long, help: "Print one sample (over one second) and exit.")
    var once = false

    @Flag(name: .long, help: "Print JSON (implies --once).")
    var json = false

    @Option(name: .long, help: "Seconds between samples.")
    var interval: Double = 1

    func validate() throws {
        guard interval >= 0.1 && interval <= 3600 else { throw ValidationError("--interval \(interval) must be from 0.1 to 3600 seconds") }
    }

    func run() throws {
        let client = try control.client()
        var previous = try talkingToServer { try client.get("/v1/stats", as: StatsReport.self) }
        while true {
            Thread.sleep(forTimeInterval: interval)
            let current = try talkingToServer { try client.get("/v1/stats", as: StatsReport.self) }
            let rates = ProviderRates.between(previous, current)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(rates), as: UTF8.self))
                return
            }
            if !once && isatty(STDOUT_FILENO) == 1 { print("\u{1B}[H\u{1B}[2J", terminator: "") }
            printTable(
                header: ["L(q)", "r/s", "kBps", "ms/r", "w/s", "kBps", "ms/w", "d/s", "ms/d", "f/s", "%busy", "Name"],
                rows: rates.map { rate in
                    ["\(rate.inFlight)", format(rate.read.operationsPerSecond), format(rate.read.kibibytesPerSecond),
                     format(rate.read.millisecondsPerOperation), format(rate.write.operationsPerSecond),
                     format(rate.write.kibibytesPerSecond), format(rate.write.millisecondsPerOperation),
                     format(rate.delete.operationsPerSecond), format(rate.delete.millisecondsPerOperation),
                     format(rate.flush.operationsPerSecond), format(rate.busyPercent), rate.name]
                })
            if once { return }
            previous = current
        }
    }

    private func format(_ value: Double) -> String { String(format: value >= 100 ? "%.0f" : "%.1f", value) }
}

/// One provider's rates between two samples.
struct ProviderRates: Encodable {
    struct Rate: Encodable {
        var operationsPerSecond: Double
        var kibibytesPerSecond: Double
        var millisecondsPerOperation: Double
    }

    var name: String
    var read: Rate
    var write: Rate
    var delete: Rate
    var flush: Rate
    var inFlight: Int
    var busyPercent: Double

    static func between(_ before: StatsReport, _ after: StatsReport) -> [ProviderRates] {
        let seconds = max(Double(after.time &- before.time) / 1e9, 1e-9)
        return after.providers.map { now in
            let then = before.providers.first { $0.name == now.name }
            func rate(_ path: KeyPath<StatsReport.ProviderEntry, StatsReport.Counters>) -> Rate {
                let operations = now[keyPath: path].operations - (then?[keyPath: path].operations ?? 0)
                let bytes = now[keyPath: path].bytes - (then?[keyPath: path].bytes ?? 0)
                let nanoseconds = now[keyPath: path].nanoseconds - (then?[keyPath: path].nanoseconds ?? 0)
                return Rate(operationsPerSecond: Double(operations) / seconds,
                            kibibytesPerSecond: Double(bytes) / 1024 / seconds,
                            millisecondsPerOperation: operations == 0 ? 0 : Double(nanoseconds) / Double(operations) / 1e6)
            }
            let busy = Double(now.busyNanoseconds - (then?.busyNanoseconds ?? 0)) / 1e9 / seconds * 100
            return ProviderRates(name: now.name, read: rate(\.read), write: rate(\.write), delete: rate(\.delete),
                                 flush: rate(\.flush), inFlight: now.inFlight, busyPercent: min(100, max(0, busy)))
        }
    }
}
