import ArgumentParser
import Foundation
import Strata
import StrataControl

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every class, geom, provider and consumer of the running server (like geom list).",
        discussion: "--dot prints the topology as a Graphviz graph: strata list --dot | dot -Tsvg > topology.svg")

    @OptionGroup var control: ControlOptions

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    @Flag(name: .long, help: "Print a Graphviz graph.")
    var dot = false

    func validate() throws {
        if json && dot { throw ValidationError("--json and --dot cannot be used together") }
    }

    func run() throws {
        let client = try control.client()
        if json {
            let body = try talkingToServer { try client.get("/v1/topology") }
            print(String(decoding: body, as: UTF8.self))
            return
        }
        let report = try talkingToServer { try client.get("/v1/topology", as: TopologyReport.self) }
        if dot {
            print(report.dot)
            return
        }
        var blocks: [String] = []
        for geom in report.geoms {
            var lines = ["Geom name: \(geom.name)", "Class: \(geom.className)", "Rank: \(geom.rank)"]
            if geom.withering { lines.append("State: withering") }
            if !geom.providers.isEmpty {
                lines.append("Providers:")
                for (index, provider) in geom.providers.enumerated() {
                    lines.append("\(index + 1). Name: \(provider.name)")
                    lines.append("   Mediasize: \(provider.mediaSize) (\(formatSize(provider.mediaSize)))")
                    lines.append("   Sectorsize: \(provider.sectorSize)")
                    lines.append("   Stripesize: \(provider.stripeSize)")
                    lines.append("   Stripeoffset: \(provider.stripeOffset)")
                    lines.append("   Mode: \(provider.mode)")
                    if let error = provider.error { lines.append("   Error: \(error)") }
                }
            }
            if !geom.consumers.isEmpty {
                lines.append("Consumers:")
                for (index, consumer) in geom.consumers.enumerated() {
                    lines.append("\(index + 1). Provider: \(consumer.provider ?? "(detached)")")
                    lines.append("   Mode: \(consumer.mode)\(consumer.orphaned ? " (orphaned)" : "")")
                }
            }
            blocks.append(lines.joined(separator: "\n"))
        }
        print(blocks.joined(separator: "\n\n"))
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the state of every geom that has one (a mirror's COMPLETE, DEGRADED or SYNCHRONIZING).")

    @OptionGroup var control: ControlOptions

    @Flag(name: .long, help: #"Print JSON: {"geoms": [{"name", "class", "state", "progress", "components": [{"name", "state"}], "figures": {NAME: NUMBER}}]}"#)
    var json = false

    func run() throws {
        let client = try control.client()
        if json {
            print(String(decoding: try talkingToServer { try client.get("/v1/status") }, as: UTF8.self))
            return
        }
        let report = try talkingToServer { try client.get("/v1/status", as: StatusReport.self) }
        guard !report.geoms.isEmpty else {
            print("No geom with a state.")
            return
        }
        let rows = report.geoms.map { geom in
            [geom.name, geom.className, geom.state, String(format: "%.1f%%", geom.progress * 100),
             (geom.components.map { "\($0.name) (\($0.state))" } + figures(of: geom)).joined(separator: ", ")]
        }
        printTable(header: ["Name", "Class", "State", "Progress", "Components"], rows: rows)
    }

    /// A geom's figures as "replication lag 3.2MiB" (sizes for names ending in _bytes).
    private func figures(of geom: GeomStatus) -> [String] {
        (geom.figures ?? [:]).sorted { $0.key < $1.key }.map { name, value in
            if name.hasSuffix("_bytes") {
                return "\(name.dropLast(6).replacingOccurrences(of: "_", with: " ")) \(formatByteSize(value))"
            }
            return "\(name.replacingOccurrences(of: "_", with: " ")) \(value)"
        }
    }
}

/// Prints rows in columns as wide as their widest cell.
func printTable(header: [String], rows: [[String]]) {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    for row in all {
        let cells = row.enumerated().map { column, cell in
            column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
        }
        print(cells.joined(separator: "  "))
    }
}
