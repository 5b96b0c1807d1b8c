import Logging
import NIOCore
import NIOEmbedded
import Strata
import StrataDisks
@_spi(Embedding) import StrataNBD

/// The server every input talks to, built once per process: a topology with two small
/// memory disks (512-byte and 4096-byte sectors) behind three exports, one of them
/// read-only. Building a topology and a server per input would cost far more than
/// serving it. The disks are wiped before each input, so every input meets the same
/// server: libFuzzer can only tell which inputs reach new code if running one twice
/// does the same thing.
///
/// Memory disks complete requests inline, so at most one is ever in flight; the limits
/// are set so low that each request still stops and restarts reading, which puts the
/// backpressure path under the fuzzer too.
final class FuzzServer: Sendable {
    static let shared = FuzzServer()

    let topology: Topology
    let server: NBDServer
    let exports: [ExportFacts] = [
        ExportFacts(name: "disk0", description: "fuzzed", size: 1 << 20),
        ExportFacts(name: "ro", description: nil, size: 1 << 20),
        ExportFacts(name: "4k", description: nil, size: 256 << 10),
    ]
    /// One writer on each disk, to wipe it.
    private let wipers: [Consumer]

    private init() {
        var logger = Logger(label: "strata.fuzz")
        logger.logLevel = .critical
        let topology = Topology()
        self.topology = topology
        do {
            let disks = [
                try MemoryDisk.create(in: topology, name: "md0", size: 1 << 20),
                try MemoryDisk.create(in: topology, name: "md4k", size: 256 << 10, sectorSize: 4096),
            ]
            server = try NBDServer(topology: topology, exports: [
                NBDExport(name: "disk0", provider: "md0", description: "fuzzed", isDefault: true),
                NBDExport(name: "ro", provider: "md0", readOnly: true),
                NBDExport(name: "4k", provider: "md4k"),
            ], logger: logger, limits: NBDServer.Limits(requests: 1, bytes: 4096), threads: 1)
            let wiper = Geom(name: "fuzz-wiper", className: "FUZZ")
            try topology.add(wiper)
            wipers = try disks.map { disk in
                let consumer = topology.createConsumer(for: wiper)
                try topology.attach(consumer, to: disk.provider)
                try topology.access(consumer, read: 0, write: 1, exclusive: 0)
                return consumer
            }
        } catch {
            fatalError("cannot build the server the fuzz target talks to: \(error)")
        }
    }

    /// Gives back every page the last input wrote: the disks read as holes again.
    func wipe() throws(FuzzFailure) {
        for consumer in wipers {
            do {
                _ = try consumer.performSync(.delete, offset: 0, length: consumer.provider?.mediaSize ?? 0)
            } catch {
                throw FuzzFailure("cannot wipe the disks between inputs: \(error)")
            }
        }
    }
}

/// Fuzz target: one client connection to the real server.
///
/// The input is a `FuzzInput`: the stream is what a client sends, from its flags on,
/// and arrives in the pieces the shape says, each as one read. The connection runs
/// the handler the server installs on every connection (`NBDServer.connectionHandler`),
/// which decodes, haggles over options and checks and serves requests, over an
/// `EmbeddedChannel`. After the stream the client hangs up.
///
/// Properties, beyond not trapping: every write of the server is one well-formed
/// message that a client accepts (`ReplyChecker`); once the connection is closed the
/// server holds nothing for it (no registered connection, no consumer open on an
/// export, no request in flight, and the handler itself is freed).
enum ServerFuzzTarget {
    /// Serves `input` and returns everything the server wrote (the client target's seeds
    /// are made of it).
    @discardableResult
    static func run(_ input: FuzzInput) throws(FuzzFailure) -> [UInt8] {
        let fixture = FuzzServer.shared
        try fixture.wipe()
        let clientFlags = input.stream.count >= 4 ? input.stream.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) } : 0
        var checker = ReplyChecker(exports: fixture.exports, clientFlags: clientFlags)
        var written: [UInt8] = []
        let channel = EmbeddedChannel()
        weak var handler: (any ChannelHandler)?
        do {
            let connection = fixture.server.connectionHandler(on: channel.eventLoop)
            handler = connection
            try channel.pipeline.syncOperations.addHandler(connection)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 10809)).wait()
            try drain(channel, into: &checker, recording: &written)
            for piece in input.pieces where channel.isActive {
                try channel.writeInbound(ByteBuffer(bytes: piece))
                try drain(channel, into: &checker, recording: &written)
            }
            if channel.isActive {
                try channel.close().wait()
            }
            try drain(channel, into: &checker, recording: &written)
            _ = try channel.finish(acceptAlreadyClosed: true)
        } catch let failure as FuzzFailure {
            _ = try? channel.finish(acceptAlreadyClosed: true)
            throw failure
        } catch {
            _ = try? channel.finish(acceptAlreadyClosed: true)
            throw FuzzFailure("the channel reported \(error)")
        }
        try checkReleased(fixture.server)
        // `finish` ran the loop, so the pipeline has let go of the handler: nothing else may hold it.
        if handler != nil {
            throw FuzzFailure("the connection's handler outlived its channel")
        }
        return written
    }

    private static func drain(_ channel: EmbeddedChannel, into checker: inout ReplyChecker,
                              recording written: inout [UInt8]) throws {
        while let write = try channel.readOutbound(as: ByteBuffer.self) {
            try checker.check(write)
            written += write.readableBytesView
        }
    }

    private static func checkReleased(_ server: NBDServer) throws(FuzzFailure) {
        guard server.connectionCount == 0 else {
            throw FuzzFailure("\(server.connectionCount) connection(s) still registered after the channel closed")
        }
        for export in server.exportStatistics where export.connections != 0 || export.requestsInFlight != 0 {
            throw FuzzFailure("export \(export.name) still has \(export.connections) connection(s) and "
                + "\(export.requestsInFlight) request(s) after the channel closed")
        }
    }
}
