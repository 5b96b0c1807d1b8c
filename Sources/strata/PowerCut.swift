import ArgumentParser
import Foundation
import StrataControl

struct PowerCut: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "powercut",
        abstract: "Crash testing on power-cut disks: the log they keep, and the images a power cut could leave.",
        subcommands: [Show.self, Images.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The log a power-cut disk records into: its disks, entries, unflushed changes and data bytes.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "A power-cut disk.") var disk: String

        func run() throws {
            let client = try control.client()
            print(String(decoding: try talkingToServer { try client.get("/v1/powercut/\(disk)") }, as: UTF8.self))
        }
    }

    struct Images: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the disk images of crash states: DIR/00001/DISK.img, ..., and DIR/states.txt.",
            discussion: """
            Each crash point gets everything-unflushed-kept, nothing-kept, then random subsets \
            (changes kept, dropped or torn by sector) drawn with the seed. The server writes \
            the files; images are sparse.
            """)
        @OptionGroup var control: ControlOptions
        @Argument(help: "A power-cut disk (every disk of its log gets an image).") var disk: String
        @Option(name: .long, help: "The directory to write to (created).") var out: String
        @Option(name: .long, help: "The first crash point (default 0: nothing acknowledged).") var from: Int?
        @Option(name: .long, help: "The last crash point (default: the end of the log).") var to: Int?
        @Option(name: .long, help: "Draw this many crash points from the range (default: every one).") var points: Int?
        @Option(name: .long, help: "Crash states per point.") var subsets = 4
        @Option(name: .long, help: "The seed of the points and subsets drawn.") var seed = 1
        @Flag(name: .long, help: "Keep or drop whole changes only: no torn writes.") var noTearing = false

        func run() throws {
            let client = try control.client()
            var request: [String: Any] = ["directory": URL(fileURLWithPath: out).standardizedFileURL.path, "subsets": subsets,
                                          "seed": seed, "tearing": !noTearing]
            if let from { request["from"] = from }
            if let to { request["to"] = to }
            if let points { request["points"] = points }
            let body = try JSONSerialization.data(withJSONObject: request)
            print(String(decoding: try talkingToServer { try client.post("/v1/powercut/\(disk)/images", json: body) },
                         as: UTF8.self))
        }
    }
}
