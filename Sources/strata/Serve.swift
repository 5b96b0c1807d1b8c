import ArgumentParser
import CStrataSystem
import Dispatch
import Foundation
import Logging
import Strata
import StrataDisks
import StrataConfig
import StrataControl
import StrataNBD
import Synchronization
import StrataNBDProtocol

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a topology over NBD until SIGINT, SIGTERM, SIGHUP or SIGQUIT.",
        discussion: """
        The topology comes from --config, else ./strata.yaml if it exists, else the
        built-in default: a 1 GiB sparse file ./strata-data/disk0.img (created on first
        run, kept across runs) exported as disk0 and as the default export, listening on
        tcp://127.0.0.1:10809. A bad topology file is reported with its file, line, key
        and value, and nothing is served.

        On SIGINT, SIGTERM, SIGHUP or SIGQUIT the server stops accepting, answers the
        requests in flight, flushes and closes every geom, and exits 0; what is still in
        flight after the shutdown grace (10 s; `shutdown-grace`) is logged and left, and
        it exits 1.

        Under systemd: sockets passed by socket activation (LISTEN_FDS) are served
        instead of the listen addresses, and readiness is said on NOTIFY_SOCKET
        (Type=notify); see contrib/strata.service and contrib/strata.socket.
        """)

    @Option(name: .long, help: "The topology file (YAML).")
    var config: String?

    @Option(name: .long, help: "Where to listen: tcp://HOST:PORT or unix:///absolute/path. Repeatable; replaces the file's list.")
    var listen: [String] = []

    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "off, allow or require: TLS for NBD clients (replaces the file's `tls`; the credentials come from the file).")
    var tls: String?

    /// The TLS credentials the file names, read now, with `mode` (from --tls) in place of
    /// the file's; nil with TLS off.
    static func tlsCredentials(_ configuration: Configuration, mode: NBDTLSMode?) throws -> NBDTLSCredentials? {
        var settings = configuration.tls
        if let mode { settings.mode = mode }
        guard settings.mode != .off else { return nil }
        guard settings.certificates != nil || settings.pskFile != nil else {
            throw FailureExit(message: "\(configuration.file): --tls \(settings.mode.rawValue) needs tls-certificates or tls-psk-file in the topology file")
        }
        do {
            return try NBDTLSCredentials.load(settings)
        } catch let error as NBDTLSError {
            let key = settings.pskFile != nil ? "tls-psk-file" : "tls-certificates"
            let value = settings.pskFile ?? settings.certificates!
            throw FailureExit(message: "\(configuration.file): \(key): '\(value)': \(error)")
        }
    }

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        if let tls, NBDTLSMode(rawValue: tls) == nil {
            throw ValidationError("--tls '\(tls)' is not one of off, allow, require")
        }
        for url in listen where ListenURL(url) == nil {
            throw ValidationError("--listen '\(url)' is not tcp://HOST:PORT or unix:///absolute/path")
        }
    }

    func run() async throws {
        Self.keepLargeBuffersInTheHeap()
        let descriptors = Self.raiseDescriptorLimit()
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = EscapingLogHandler(StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "strata")
        let manager = try ServiceManager.take()

        // The file, with the changes made at run time before (the state file).
        var configuration: Configuration
        let changes: TopologyChanges
        do {
            let file = try loadConfiguration()
            // Before the state file in it is read: a directory another user may write
            // could hold a state file of theirs.
            do {
                try ServerDirectory.prepare(file.dataDirectory, for: .state)
            } catch let error as StrataError {
                throw ConfigError(file: file.file, line: nil, key: "data-directory", value: file.dataDirectory,
                                  problem: "\(error)")
            }
            changes = try TopologyChanges.load(for: file)
            configuration = try changes.applied(to: file)
        } catch let error as ConfigError {
            throw FailureExit(message: "\(error)")
        }
        if !listen.isEmpty { configuration.listen = listen.compactMap(ListenURL.init) }
        let credentials = try Self.tlsCredentials(configuration, mode: tls.flatMap(NBDTLSMode.init))
        // Every connection is a descriptor; the disks, listeners and the control socket
        // need theirs even when NBD clients fill the cap.
        let reserve = 128
        if configuration.limits.connections > descriptors - reserve {
            let lowered = max(descriptors - reserve, 1)
            logger.notice("limits.connections lowered to what the descriptor limit leaves",
                          metadata: ["asked": "\(configuration.limits.connections)", "lowered": "\(lowered)",
                                     "descriptors": "\(descriptors)"])
            configuration.limits.connections = lowered
        }

        let topology = Topology(log: { level, message in
            Logger(label: "strata.topology").log(level: level.swiftLog, "\(message)")
        })
        // Nothing is written to a disk, nor logged, until the whole start has gone well:
        // a start that fails leaves the disks as it found them and says one thing.
        let built: BuiltTopology
        do {
            built = try TopologyBuilder.assemble(configuration, topology: topology)
        } catch let error as ConfigError {
            throw FailureExit(message: "\(error)")
        }

        let server = try NBDServer(topology: topology, exports: built.exports, logger: Logger(label: "strata.nbd"),
                                  limits: configuration.limits, busyPoll: configuration.busyPoll,
                                  coalescing: configuration.coalescing, tls: credentials)
        let running = RunningTopology(topology: topology, server: server, configuration: configuration, changes: changes)
        let controlLogger = Logger(label: "strata.control")
        let control = ControlServer(topology: topology, running: running,
                                    writableDirectories: configuration.controlWritableDirectories,
                                    group: configuration.controlGroup.map { ControlServer.Group(name: $0.name, id: $0.id) },
                                    log: { controlLogger.warning("\($0)") }) { StatisticsPublisher.ServerGauges(server) }
        do {
            try await control.start(path: configuration.control)
        } catch {
            built.abandon()
            throw FailureExit(message: "cannot open the control socket \(configuration.control): \(error)")
        }
        let stop = SignalWaiter(signals: [SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        let bound: [NBDListenAddress]
        do {
            // Sockets a service manager passed replace the listen addresses: it bound
            // them, and they are what its clients connect to.
            bound = manager.descriptors.isEmpty
                ? try await server.start(listeningOn: configuration.listen.map(\.nbd), accepting: false)
                : try await server.start(listeningOn: [], inherited: manager.descriptors, accepting: false)
        } catch {
            await control.stop()
            built.abandon()
            throw FailureExit(message: "cannot listen: \(error)")
        }
        do {
            try built.finish()
        } catch {
            await server.stop()
            await control.stop()
            topology.shutdown()
            throw FailureExit(message: "cannot start: \(error)")
        }
        if let credentials {
            logger.info("TLS \(credentials.mode.rawValue): \(credentials.summary)")
            for exposed in credentials.exposedSecrets { logger.warning("\(exposed)") }
        }
        for url in configuration.listen where !url.isLoopback && manager.descriptors.isEmpty && server.tlsMode != .require {
            logger.warning("listening on \(url), which is not loopback, without tls: require: NBD has no authentication without TLS")
        }
        server.accept()
        // For the report of a stop that outlives its grace, should the topology's lock be
        // held then.
        let startingProviders = topology.providers
        printStartup(configuration: configuration, built: built, bound: bound, passed: !manager.descriptors.isEmpty)
        let exports = built.exports.count
        if let problem = manager.notify(["READY=1", "STATUS=serving \(exports) export\(exports == 1 ? "" : "s")"]) {
            logger.warning("\(problem)")
        }

        let signal = await stop.wait()
        let grace = configuration.shutdownGrace
        logger.info("signal \(signal): stopping", metadata: ["grace": "\(grace)"])
        _ = manager.notify(["STOPPING=1", "STATUS=stopping on \(signal)"])
        let seconds = Double(grace.wholeNanoseconds) / 1e9
        // The watchdog is a thread of its own: a hung backend can hold the threads the stop
        // below runs on, the cooperative pool's and Dispatch's with them.
        let stopped = Atomic<Bool>(false)
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: seconds + 2)
            guard !stopped.load(ordering: .acquiring) else { return }
            // Requests a backend holds (a hung device, a nop's delay) are left: a mirror
            // above them is still open for writing, so its metadata stays dirty and the
            // next start resynchronizes it. A backend that hangs can hold the topology's
            // lock (a mirror writing its metadata through it): the report does not wait
            // for it. The control socket's file stays; nothing answers on it, so the next
            // start replaces it.
            let providers = topology.providersIfUnlocked ?? startingProviders
            let list = providers.map { ($0.name, $0.statistics.snapshot.inFlight) }.filter { $0.1 > 0 }
                .map { "\($0.0): \($0.1)" }.joined(separator: ", ")
            logger.error("stopped after the grace with requests still in flight, left unfinished; a mirror above them stays marked dirty and is resynchronized at the next start",
                         metadata: ["grace": "\(grace)", "in-flight": "\(list.isEmpty ? "none counted" : list)"])
            Foundation.exit(1)
        }
        let deadline = ContinuousClock.now + grace
        await server.stop(seconds: seconds)
        // Closing removes the control socket's file, if it is still the one it bound.
        await control.stop()
        let clean = topology.shutdown(seconds: max(Double((deadline - ContinuousClock.now).wholeNanoseconds) / 1e9, 1))
        stopped.store(true, ordering: .releasing)
        guard clean else { throw FailureExit(message: "stopped with geoms that did not close") }
        logger.info("stopped")
    }

    private func loadConfiguration() throws -> Configuration {
        if let config { return try ConfigurationLoader.load(path: config) }
        if FileManager.default.fileExists(atPath: "strata.yaml") { return try ConfigurationLoader.load(path: "strata.yaml") }
        let directory = FileManager.default.currentDirectoryPath
        try ServerDirectory.prepare(directory + "/strata-data", for: .state)
        let disk = directory + "/strata-data/disk0.img"
        let exists = FileManager.default.fileExists(atPath: disk)
        return try ConfigurationLoader.parse("""
        disks:
          - name: disk0
            file: strata-data/disk0.img
            \(exists ? "" : "size: 1GiB")
        exports:
          - name: disk0
            provider: disk0
            default: true
        """, file: "<default>", baseDirectory: directory)
    }

    private func printStartup(configuration: Configuration, built: BuiltTopology, bound: [NBDListenAddress], passed: Bool) {
        var lines = ["strata serving \(built.exports.count) export\(built.exports.count == 1 ? "" : "s")"]
        for export in built.exports {
            let provider = built.topology.provider(named: export.provider)
            var attributes = [formatSize(provider?.mediaSize ?? 0), "provider \(export.provider)"]
            attributes.append(export.readOnly ? "read-only" : "read-write")
            if export.isDefault || (export.name == built.exports.first?.name && !built.exports.contains(where: \.isDefault)) {
                attributes.append("default")
            }
            lines.append("  export \(export.name): \(attributes.joined(separator: ", "))")
        }
        // How each file disk does its I/O: chosen at open (Sources/StrataDisks/File/file.md).
        for case let disk as FileDisk in built.disks {
            let cache = disk.directAlignment.map { ", cache none (O_DIRECT, memory aligned to \($0.memory), offsets to \($0.offset))" } ?? ""
            lines.append("  file disk \(disk.name): \(disk.path), io \(disk.engine.rawValue)\(cache)")
        }
        for address in bound { lines.append("  listening on \(address)" + (passed ? " (passed by the service manager)" : "")) }
        // Said at start because it keeps a core busy while a client at queue depth 1 works.
        let microseconds = configuration.busyPoll.wholeNanoseconds / 1000
        lines.append(microseconds == 0 ? "  busy polling off"
                                       : "  busy polling up to \(microseconds) µs before an idle connection's loop sleeps")
        let nap = configuration.coalescing.wholeNanoseconds / 1000
        if nap > 0 { lines.append("  input coalescing: naps of \(nap) µs after a read of several requests, for clients as fast with them") }
        lines.append("  control socket \(configuration.control)")
        // Written in one piece and unbuffered, so a script reading it sees it at once.
        FileHandle.standardOutput.write(Data((lines.joined(separator: "\n") + "\n").utf8))
    }
}

/// Exits with status 1 after printing a message on standard error (no usage text:
/// the command line was fine, what it named was not).
struct FailureExit: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

extension FailureExit: LocalizedError {
    var errorDescription: String? { message }
}

/// Turns the stopping signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT) into something to
/// await: each stops the server cleanly. SIGHUP's default would kill it with mirrors
/// open, so the next start resynchronizes them in full; SIGQUIT's would also dump core.
final class SignalWaiter: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []
    private let received = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var which: Int32 = 0

    init(signals: [Int32]) {
        for number in signals {
            Foundation.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in
                lock.withLock { which = number }
                received.signal()
            }
            source.resume()
            sources.append(source)
        }
    }

    /// Waits for the first signal and returns its name.
    func wait() async -> String {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { [self] in
                received.wait()
                let number = lock.withLock { which }
                let names = [SIGINT: "SIGINT", SIGTERM: "SIGTERM", SIGHUP: "SIGHUP", SIGQUIT: "SIGQUIT"]
                continuation.resume(returning: names[number] ?? "signal \(number)")
            }
        }
    }
}

/// Human sizes: 1.0 GiB, 256 MiB, 4096 B.
func formatSize(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : (value == value.rounded() ? "\(Int(value)) \(units[unit])" : String(format: "%.1f %@", value, units[unit]))
}

extension ListenURL {
    var nbd: NBDListenAddress {
        switch self {
        case .tcp(let host, let port): .tcp(host: host, port: port)
        case .unix(let path): .unix(path: path)
        }
    }
}

extension LogLevel {
    var swiftLog: Logger.Level {
        switch self {
        case .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        }
    }
}

extension Serve {
    /// Raises the soft limit on open descriptors to the hard limit, as nginx and qemu do
    /// (systemd starts services at 1024), and returns the limit now in force.
    static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        var ceiling = limit.rlim_max
        if ceiling == rlim_t.max, let text = try? String(contentsOfFile: "/proc/sys/fs/nr_open", encoding: .utf8),
           let open = rlim_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            ceiling = open
        }
        if limit.rlim_cur < ceiling {
            var raised = limit
            raised.rlim_cur = ceiling
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// A large NBD read's reply buffer (1 MiB rounds up to 2 MiB) is above glibc's mmap
    /// threshold, and freeing a batch of them trims the heap: either way the next one
    /// is fresh memory, and the disk's copy into it spent a fifth of its time in page
    /// faults. Fixed thresholds keep such buffers in the heap, reused without a fault.
    static func keepLargeBuffersInTheHeap() {
        _ = strata_malloc_thresholds(32 << 20, 256 << 20)
    }
}
