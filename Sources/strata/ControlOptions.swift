import ArgumentParser
import Foundation
import StrataConfig
import StrataControl

/// How a verb finds the running server's control socket.
struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: "The control socket (default: the topology file's `control`, else ./strata-data/control.sock).")
    var control: String?

    @Option(name: .long, help: "The topology file whose `control` to use (default: ./strata.yaml if it exists).")
    var config: String?

    /// The socket path: --control, else the file's `control`, else the default.
    func socketPath() throws -> String {
        if let control { return control }
        let file = config ?? (FileManager.default.fileExists(atPath: "strata.yaml") ? "strata.yaml" : nil)
        if let file {
            do {
                return try ConfigurationLoader.load(path: file).control
            } catch let error as ConfigError {
                throw FailureExit(message: "\(error)")
            }
        }
        return FileManager.default.currentDirectoryPath + "/strata-data/control.sock"
    }

    func client() throws -> ControlClient { ControlClient(path: try socketPath()) }
}

/// Runs `body`, turning a control-socket failure into a one-line message and exit 1.
func talkingToServer<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let failure as ControlClient.Failure {
        throw FailureExit(message: failure.description)
    }
}
