import ArgumentParser
import StrataConfig

@main
struct StrataCommand: AsyncParsableCommand {
    static let configuration: CommandConfiguration = CommandConfiguration(
        commandName: "strata",
        abstract: "A userspace block-storage stack: stacked transform classes over disks, served over NBD.",
        discussion: """
        Start with `strata serve`: with no topology file it serves a 1 GiB sparse file disk
        as export disk0 on nbd://127.0.0.1:10809. Then: nbdinfo nbd://127.0.0.1:10809
        """,
        // Then a command for each class with verbs: strata nop configure, strata part add, …
        subcommands: [Serve.self, List.self, Status.self, Stat.self, Bench.self, GeomCommand.self, ExportCommand.self, TLSCommand.self,
                      ConfigCommand.self]
            + registeredClasses.filter { !$0.verbs.isEmpty }.map { $0.command },
        defaultSubcommand: nil)
}
