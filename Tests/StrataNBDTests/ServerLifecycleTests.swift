import Foundation
import Logging
import NIOConcurrencyHelpers
import Strata
import StrataDisks
import StrataNBD
import Synchronization
import Testing

/// A disk whose requests complete after a delay, or whose reads wait until a test lets
/// them go (`gate`), on a thread of their own: requests in flight for as long as a test
/// needs.
final class SlowDisk: Geom, @unchecked Sendable {
    let delay: Duration
    let gate: DispatchSemaphore?
    let started = Atomic<Int>(0)

    init(name: String, delay: Duration, gate: DispatchSemaphore? = nil) {
        self.delay = delay
        self.gate = gate
        super.init(name: name, className: "SLOW")
    }

    override func start(_ bio: consuming ProviderBio) {
        started.wrappingAdd(1, ordering: .relaxed)
        // With a gate only reads wait, at it: the server's own questions (GETATTR) pass.
        let gate = bio.command == .read ? self.gate : nil
        let sleeps = self.gate == nil
        let request = bio.unmanaged()
        let delay = self.delay
        Thread.detachNewThread {
            if let gate {
                gate.wait()
            } else if sleeps {
                Thread.sleep(forTimeInterval: Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18)
            }
            let bio = request.takeProviderBio()
            if bio.command == .read { bio.data.zero() }
            bio.deliverAll()
        }
    }

    static func install(in topology: Topology, name: String, delay: Duration, gate: DispatchSemaphore? = nil) throws -> SlowDisk {
        let disk = SlowDisk(name: name, delay: delay, gate: gate)
        try topology.add(disk)
        try topology.createProvider(for: disk, name: name, mediaSize: 1 << 20, sectorSize: 512)
        return disk
    }
}

/// Log messages kept for assertions.
final class CapturedLog: @unchecked Sendable {
    private let lock = NIOLock()
    private var entries: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] = []

    func append(_ level: Logger.Level, _ message: String, _ metadata: Logger.Metadata) {
        lock.withLock { entries.append((level, message, metadata)) }
    }

    var all: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] { lock.withLock { entries } }

    var logger: Logger {
        Logger(label: "captured") { _ in CapturingHandler(log: self) }
    }

    struct CapturingHandler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                 file: String, function: String, line: UInt) {
            log.append(level, "\(message)", self.metadata.merging(metadata ?? [:]) { $1 })
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct ServerLifecycleTests {
    @Test func stoppingTheServerAnswersRequestsInFlightFirst() async throws {
        let topology = Topology()
        let slow = try SlowDisk.install(in: topology, name: "slow0", delay: .milliseconds(300))
        let directory = NSTemporaryDirectory() + "strata-stop-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = directory + "/nbd.sock"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let server = try NBDServer(topology: topology, exports: [NBDExport(name: "slow", provider: "slow0")], logger: quiet,
                                   limits: .patient)
        try await server.start(listeningOn: [.unix(path: socket)])
        let script = """
        import nbd, threading
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///slow?socket=\(socket)")
        done = []
        buffers = [nbd.Buffer(4096) for i in range(8)]
        for i in range(8):
            h.aio_pread(buffers[i], i * 4096, completion=lambda *a, i=i: done.append(i) or 1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        print("answered", len(done))
        """
        let client = Locked<ProgramResult?>(nil)
        let finished = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            client.set(try? run("/usr/bin/python3", ["-c", script]))
            finished.signal()
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while slow.started.load(ordering: .relaxed) < 8 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        await server.stop()
        finished.wait()
        let result = try #require(client.get())
        #expect(result.output.contains("answered 8"), "\(result) started \(slow.started.load(ordering: .relaxed))")
        #expect(server.connectionCount == 0)
    }

    @Test func disconnectFinishesRequestsInFlightThenCloses() async throws {
        let topology = Topology()
        _ = try SlowDisk.install(in: topology, name: "slow1", delay: .milliseconds(200))
        let server = try NBDServer(topology: topology, exports: [NBDExport(name: "slow", provider: "slow1")], limits: .patient)
        let directory = NSTemporaryDirectory() + "strata-disc-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await server.start(listeningOn: [.unix(path: directory + "/nbd.sock")])
        let result = try run("/usr/bin/python3", ["-c", """
        import nbd
        h = nbd.NBD()
        h.connect_uri("nbd+unix:///slow?socket=\(directory)/nbd.sock")
        done = []
        buffers = [nbd.Buffer(512) for i in range(4)]
        for i in range(4):
            h.aio_pread(buffers[i], i * 512, completion=lambda *a, i=i: done.append(i) or 1)
        h.shutdown()
        print("answered", len(done))
        """])
        #expect(result.output.contains("answered 4"), "\(result)")
        await server.stop()
    }

    /// Sixteen 1 MiB reads, then DISC (or the server stopping), from a client that reads
    /// nothing until every read has completed: most of the 16 MiB of replies wait in the
    /// channel behind a full socket when the connection closes. NIO fails a closed
    /// channel's pending writes, so a close at once delivered about 8 MiB of them.
    @Test(arguments: [false, true])
    func answersQueuedBehindAFullSocketAreAllDeliveredBeforeAGracefulClose(serverStops: Bool) async throws {
        let fixture = try await ServerFixture { topology, _ in
            _ = try SlowDisk.install(in: topology, name: "queued\(serverStops)", delay: .milliseconds(200))
            return [NBDExport(name: "slow", provider: "queued\(serverStops)")]
        }
        let client = try RawClient(path: fixture.socket)
        _ = client.receive(18)
        client.send(handshake(export: "slow"))
        #expect(client.receiveOptionRepliesUntilAck())
        let reads = 16
        for cookie in 0..<reads {
            client.send(requestBytes(.read, cookie: UInt64(cookie), offset: 0, length: 1 << 20))
        }
        // Deadlines far past what the test takes: on a loaded machine the shared pool
        // can hold this task up for seconds between its steps, and a stop whose own
        // deadline passed before the client reads would cut the connection off.
        let deadline = ContinuousClock.now + .seconds(60)
        while fixture.server.exportStatistics.first?.requestsInFlight != reads && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let stopping = serverStops ? Task { await fixture.server.stop(seconds: 120) } : nil
        if !serverStops { client.send(requestBytes(.disconnect, cookie: 99, offset: 0, length: 0)) }
        // Every read completes and the stopping connection's quiet check passes before
        // the client reads a byte.
        while fixture.server.exportStatistics.first?.requestsInFlight != 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        try await Task.sleep(for: .milliseconds(300))
        let expected = reads * (16 + (1 << 20))
        #expect(client.receive(expected + 1).count == expected, "every simple reply and its data, then the end")
        if let stopping {
            await stopping.value
            try? FileManager.default.removeItem(atPath: fixture.directory)
        } else {
            await fixture.stop()
        }
    }

    @Test func aRejectedRequestIsLoggedOnceWithThePeerAndTheReason() async throws {
        let topology = Topology()
        _ = try MemoryDisk.create(in: topology, name: "logged", size: 1 << 20)
        let log = CapturedLog()
        let server = try NBDServer(topology: topology, exports: [NBDExport(name: "d", provider: "logged")], logger: log.logger)
        let bound = try await server.start(listeningOn: [.tcp(host: "127.0.0.1", port: 0)])
        let port = try #require(bound.first?.port)
        let result = try run("/usr/bin/python3", ["-c", """
        import nbd
        h = nbd.NBD()
        h.set_strict_mode(0)
        h.connect_uri("nbd://127.0.0.1:\(port)/d")
        try:
            h.pread(512, 1 << 20)
        except nbd.Error:
            print("refused")
        """])
        await server.stop()
        #expect(result.output.contains("refused"), "\(result)")
        let refusals = log.all.filter { $0.message == "request refused" }
        #expect(refusals.count == 1)
        #expect(refusals.first?.metadata["peer"].map { "\($0)".contains("127.0.0.1") } == true)
        #expect(refusals.first?.metadata["reason"].map { "\($0)".contains("runs past the end") } == true)
    }

    /// A connection accepted just before a stop can reach GO after the stop withered the
    /// export geoms: it is refused, where it once stopped the process on a precondition.
    @Test func aClientOpeningAnExportWhoseGeomIsGoneIsRefusedAndTheServerGoesOn() async throws {
        let topology = Topology()
        _ = try MemoryDisk.create(in: topology, name: "gone", size: 1 << 20)
        _ = try MemoryDisk.create(in: topology, name: "kept", size: 1 << 20)
        let server = try NBDServer(topology: topology, exports: [NBDExport(name: "a", provider: "gone"),
                                                                 NBDExport(name: "b", provider: "kept")])
        let bound = try await server.start(listeningOn: [.tcp(host: "127.0.0.1", port: 0)])
        let port = try #require(bound.first?.port)
        let geom = try #require(topology.geom(named: "nbd/a"))
        topology.wither(geom)
        #expect(topology.waitUntilGone(geom))
        let result = try run("/usr/bin/python3", ["-c", """
        import nbd
        for name in ["a", "b"]:
            h = nbd.NBD()
            try:
                h.connect_uri("nbd://127.0.0.1:\(port)/" + name)
                print(name, "opened", h.get_size())
            except nbd.Error:
                print(name, "refused")
        """])
        await server.stop()
        #expect(result.output.contains("a refused") && result.output.contains("b opened 1048576"), "\(result)")
    }

    @Test func anExportOfAMissingProviderIsAnErrorNamingIt() throws {
        let topology = Topology()
        do {
            _ = try NBDServer(topology: topology, exports: [NBDExport(name: "x", provider: "nowhere")])
            Issue.record("a server was made for a missing provider")
        } catch let error as StrataError {
            #expect(error.message.contains("nowhere"))
        }
    }
}
