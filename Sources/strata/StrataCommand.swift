import ArgumentParser

@main
struct StrataCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "A userspace block-storage stack: stacked transform classes over disks, served over NBD.",
        discussion: """
        Start with `strata serve`: with no topology file it serves a 1 GiB sparse file disk
        as export disk0 on nbd://127.0.0.1:10809. Then: nbdinfo nbd://127.0.0.1:10809
        """,
        subcommands: [Serve.self, List.self, Status.self, Stat.self, Bench.self, Nop.self, Mirror.self, PowerCut.self],
        defaultSubcommand: nil)
}
