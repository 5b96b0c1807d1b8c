import ArgumentParser
import Foundation
import StrataControl

struct Mirror: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change a running mirror: insert, remove or rebuild a component, forget broken ones.",
        subcommands: [Insert.self, Remove.self, Rebuild.self, Forget.self])

    struct Insert: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a component and rebuild it while I/O goes on.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The mirror.") var mirror: String
        @Argument(help: "The provider to add.") var component: String
        func run() throws { try post(control, mirror, "insert", component) }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a component out and clear its metadata.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The mirror.") var mirror: String
        @Argument(help: "The component's provider.") var component: String
        func run() throws { try post(control, mirror, "remove", component) }
    }

    struct Rebuild: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Copy everything to a component again, online.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The mirror.") var mirror: String
        @Argument(help: "The component's provider.") var component: String
        func run() throws { try post(control, mirror, "rebuild", component) }
    }

    struct Forget: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Forget components that are broken or gone.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The mirror.") var mirror: String
        func run() throws { try post(control, mirror, "forget", nil) }
    }
}

private func post(_ control: ControlOptions, _ mirror: String, _ verb: String, _ component: String?) throws {
    let client = try control.client()
    let body = try JSONSerialization.data(withJSONObject: component.map { ["component": $0] } ?? [:])
    let answer = try talkingToServer { try client.post("/v1/mirror/\(mirror)/\(verb)", json: body) }
    print(String(decoding: answer, as: UTF8.self))
}
