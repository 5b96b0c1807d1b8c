import ArgumentParser
import Foundation
import Strata
import StrataConfig
import StrataControl

/// `strata geom create|destroy`: geoms made and taken away on a running server, as
/// `geom(8)` and `dmsetup` do; kept across restarts in the server's state file.
struct GeomCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "geom", abstract: "Make or destroy a geom (or a disk) on a running server; the change survives a restart.",
        subcommands: [Create.self, Destroy.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a geom of CLASS named NAME over the providers given, with the class's settings as KEY=VALUE.",
            discussion: "Example: strata geom create nop n9 --consumers d0 delay-ms=5   (strata CLASS --help and GET /v1/classes list each class's keys)")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The class (nop, mirror, stripe, …; file, memory, … for a disk).") var className: String
        @Argument(help: "The new geom's entry name.") var name: String
        @Option(name: .long, help: "The providers it consumes, comma-separated, in order.") var consumers: String?
        @Argument(help: "The class's settings, KEY=VALUE.") var settings: [String] = []

        func run() throws {
            var values: [String: String] = [:]
            let kinds = ClassRegistry.named(className).map { Dictionary(uniqueKeysWithValues: $0.settingKeys.map { ($0.name, $0.kind) }) } ?? [:]
            for setting in settings {
                guard let equals = setting.firstIndex(of: "="), equals != setting.startIndex else {
                    throw ValidationError("'\(setting)' is not KEY=VALUE")
                }
                let key = String(setting[..<equals])
                var value = String(setting[setting.index(after: equals)...])
                // A path is taken from where the command runs, not from the server's folder;
                // "-" (standard input) goes as it is, for the server to refuse.
                if kinds[key] == .path, value != "-" {
                    value = absolutePath(value, relativeTo: FileManager.default.currentDirectoryPath)
                }
                values[key] = value
            }
            let body: [String: Any] = ["class": className, "name": name, "settings": values,
                                       "consumers": consumers.map { $0.split(separator: ",").map(String.init) } ?? []]
            let client = try control.client()
            let answer = try talkingToServer { try client.post("/v1/geoms", json: try JSONSerialization.data(withJSONObject: body)) }
            print(String(decoding: answer, as: UTF8.self))
        }
    }

    struct Destroy: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy a geom or disk: refused while it is open, stacked on or exported, unless --force.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The geom's entry name.") var name: String
        @Flag(name: .long, help: "Destroy it even in use: what is above fails with ENXIO.") var force = false

        func run() throws {
            let client = try control.client()
            let body = try JSONSerialization.data(withJSONObject: ["force": force])
            print(String(decoding: try talkingToServer { try client.post("/v1/geoms/\(percentEncoded(name))/destroy", json: body) },
                         as: UTF8.self))
        }
    }
}

/// `strata export add|remove`: exports of a running server, kept across restarts.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Add or remove an NBD export on a running server; the change survives a restart.",
        subcommands: [Add.self, Remove.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Serve PROVIDER as export NAME.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The export's name.") var name: String
        @Argument(help: "The provider to serve.") var provider: String
        @Flag(name: .long, help: "Refuse writes (the default for a read-only provider).") var readOnly = false
        @Option(name: .long, help: "What nbdinfo --list shows.") var description: String?
        @Flag(name: .long, help: "Answer the empty export name.") var `default` = false
        @Option(name: .long, help: "A client name TLS must prove to open it (a PSK identity or a certificate's distinguished name); repeatable.")
        var tlsAllow: [String] = []

        func run() throws {
            var body: [String: Any] = ["name": name, "provider": provider, "default": `default`]
            // Left out, the server decides: read-only for a read-only provider.
            if readOnly { body["read-only"] = true }
            if let description { body["description"] = description }
            if !tlsAllow.isEmpty { body["tls-allow"] = tlsAllow }
            let client = try control.client()
            print(String(decoding: try talkingToServer { try client.post("/v1/exports", json: try JSONSerialization.data(withJSONObject: body)) },
                         as: UTF8.self))
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop serving an export: refused while clients are connected, unless --force.")
        @OptionGroup var control: ControlOptions
        @Argument(help: "The export's name.") var name: String
        @Flag(name: .long, help: "Close the connections of its clients.") var force = false

        func run() throws {
            let client = try control.client()
            let body = try JSONSerialization.data(withJSONObject: ["force": force])
            print(String(decoding: try talkingToServer { try client.post("/v1/exports/\(percentEncoded(name))/remove", json: body) },
                         as: UTF8.self))
        }
    }
}

/// `strata tls reload`.
struct TLSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tls", abstract: "The running server's TLS credentials.", subcommands: [Reload.self])

    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read the certificates or the PSK file again: connections that start TLS from now on use them. A file that does not do is reported and the old credentials stay.")
        @OptionGroup var control: ControlOptions

        func run() throws {
            let client = try control.client()
            print(String(decoding: try talkingToServer { try client.post("/v1/tls/reload", json: Data("{}".utf8)) }, as: UTF8.self))
        }
    }
}

/// `strata config dump`.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "The running topology as a topology file.", subcommands: [Dump.self])

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the running topology as a topology file that reproduces it (disks, geoms with their settings, exports).")
        @OptionGroup var control: ControlOptions

        func run() throws {
            let client = try control.client()
            FileHandle.standardOutput.write(try talkingToServer { try client.get("/v1/config") })
        }
    }
}
