import ArgumentParser
import Foundation
import Strata
import StrataConfig
import StrataControl

/// `strata CLASS VERB TARGET [ARGUMENTS] [--OPTION VALUE ...]`, for every class with verbs,
/// derived from the class's declarations (`ClassVerb`): the verb is done by the running
/// server, through its control socket.
struct ClassCommand<Definition: ClassDefinition>: ParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: Definition.name, abstract: Definition.summary,
                             usage: "strata \(Definition.name) VERB TARGET [ARGUMENTS] [--OPTION VALUE ...] [--json] [--control SOCKET]",
                             discussion: verbsHelp)
    }

    @OptionGroup var control: ControlOptions

    @Argument(parsing: .allUnrecognized, help: "The verb, its target, its arguments and options; --json prints the answer as JSON.")
    var words: [String] = []

    /// Every verb with its arguments and options, for --help.
    static var verbsHelp: String {
        var lines = ["Every verb prints its answer as text; with --json, as the control socket's JSON.", "", "Verbs:"]
        for verb in Definition.verbs {
            let target = verb.target == .geom ? Definition.name.uppercased() : "PROVIDER"
            let arguments = ([target] + verb.arguments.map { $0.name.uppercased() }).joined(separator: " ")
            lines.append("  \(verb.name) \(arguments)")
            lines.append("      \(verb.summary)")
            for argument in verb.arguments { lines.append("      \(argument.name.uppercased()): \(argument.help)") }
            for option in verb.options {
                let value = option.kind == .boolean || option.kind == .secret ? "" : " \(option.kind.placeholder)"
                let source = option.kind == .secret ? " Read from standard input (asked for on a terminal), never given on the command line." : ""
                lines.append("      --\(option.name)\(value): \(option.help)\(source)")
            }
        }
        return lines.joined(separator: "\n")
    }

    func run() throws {
        let (verb, target, arguments, options, json) = try parse()
        var body = options
        for (parameter, value) in zip(verb.arguments, arguments) { body[parameter.name] = value }
        let route = "/v1/\(Definition.name)/\(percentEncoded(target))/\(verb.name)"
        let client = try control.client()
        let answer = try talkingToServer {
            verb.onlyLooks && body.isEmpty ? try client.get(route) : try client.post(route, json: try JSONEncoder().encode(body))
        }
        print(json ? String(decoding: answer, as: UTF8.self) : VerbAnswer.text(of: answer))
    }

    /// The verb, its target, its arguments and its options from the words given, each
    /// option checked against its declaration (a path made absolute here, where it was
    /// typed), and whether `--json` was given.
    func parse() throws -> (ClassVerb, String, [String], [String: String], Bool) {
        let verbs = Definition.verbs.map(\.name).joined(separator: ", ")
        guard let name = words.first else { throw ValidationError("give a verb: \(verbs)") }
        guard let verb = Definition.verbs.first(where: { $0.name == name }) else {
            throw ValidationError("'\(name)' is not a verb of \(Definition.name) (verbs: \(verbs))")
        }
        var positional: [String] = []
        var options: [String: String] = [:]
        var rest = words.dropFirst()[...]
        var json = false
        while let word = rest.popFirst() {
            if word == "--json" {
                json = true
                continue
            }
            guard word.hasPrefix("--") else {
                positional.append(word)
                continue
            }
            var key = String(word.dropFirst(2))
            var value: String?
            if let equals = key.firstIndex(of: "=") {
                value = String(key[key.index(after: equals)...])
                key = String(key[..<equals])
            }
            guard let option = verb.options.first(where: { $0.name == key }) else {
                let known = verb.options.map { "--\($0.name)" }.joined(separator: ", ")
                throw ValidationError("--\(key) is not an option of \(Definition.name) \(verb.name) (options: \(known.isEmpty ? "none" : known))")
            }
            if option.kind == .secret {
                guard value == nil else {
                    throw ValidationError("--\(key) takes no value: it is read from standard input, where ps cannot see it")
                }
                value = try readSecretLine(prompt: "\(option.help.prefix { $0 != "." }): ") { String(decoding: $0, as: UTF8.self) }
            } else if value == nil {
                if option.kind == .boolean {
                    value = "true"
                } else if let next = rest.popFirst() {
                    value = next
                } else {
                    throw ValidationError("--\(key) needs a value (\(option.kind.placeholder))")
                }
            }
            if option.kind == .path { value = absolutePath(value!, relativeTo: FileManager.default.currentDirectoryPath) }
            options[key] = value!
        }
        let expected = ["target"] + verb.arguments.map(\.name)
        guard positional.count == expected.count else {
            throw ValidationError("\(Definition.name) \(verb.name) takes \(expected.map { $0.uppercased() }.joined(separator: " ")), not \(positional.count) argument\(positional.count == 1 ? "" : "s")")
        }
        do {
            _ = try verb.check(arguments: Array(positional.dropFirst()), options: options)
        } catch {
            throw FailureExit(message: "\(error)")
        }
        return (verb, positional[0], Array(positional.dropFirst()), options, json)
    }
}

/// A name as one segment of a route (`label/home` has a slash).
func percentEncoded(_ segment: String) -> String {
    segment.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? segment
}

extension ClassDefinition {
    /// `strata NAME ...`.
    static var command: any ParsableCommand.Type { ClassCommand<Self>.self }
}
