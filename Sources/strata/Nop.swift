import ArgumentParser
import Foundation
import StrataControl

struct Nop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at or change a running nop geom (failure injection).",
        subcommands: [Configure.self, Show.self])

    struct Configure: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a nop's failure injection while it runs.",
            discussion: "Example: strata nop configure n0 --write-fail-percent 100 --error 5")

        @OptionGroup var control: ControlOptions
        @Argument(help: "The nop geom.") var name: String
        @Option(name: .long, help: "Percent of reads to fail (0-100).") var readFailPercent: Int?
        @Option(name: .long, help: "Percent of writes, deletes and write-zeroes to fail (0-100).") var writeFailPercent: Int?
        @Option(name: .long, help: "The errno injected failures carry (default 5, EIO).") var error: Int?
        @Option(name: .long, help: "Milliseconds to hold each request (0-60000).") var delayMs: Int?
        @Option(name: .long, help: "Requests to let through before failing all (0 = never).") var countUntilFail: Int?

        func validate() throws {
            if [readFailPercent, writeFailPercent, error, delayMs, countUntilFail].allSatisfy({ $0 == nil }) {
                throw ValidationError("give at least one setting to change (see --help)")
            }
        }

        func run() throws {
            var changes: [String: Int] = [:]
            changes["read-fail-percent"] = readFailPercent
            changes["write-fail-percent"] = writeFailPercent
            changes["error"] = error
            changes["delay-ms"] = delayMs
            changes["count-until-fail"] = countUntilFail
            let client = try control.client()
            let body = try JSONSerialization.data(withJSONObject: changes)
            let answer = try talkingToServer { try client.post("/v1/nop/\(name)", json: body) }
            print(String(decoding: answer, as: UTF8.self))
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a nop's settings and statistics as JSON.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The nop geom.") var name: String

        func run() throws {
            let client = try control.client()
            print(String(decoding: try talkingToServer { try client.get("/v1/nop/\(name)") }, as: UTF8.self))
        }
    }
}
