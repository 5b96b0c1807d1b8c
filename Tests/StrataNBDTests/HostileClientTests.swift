import Foundation
import Glibc
import Strata
import StrataClasses
import StrataDisks
@testable import StrataNBD
import StrataNBDProtocol
import Testing

/// A client on a Unix socket that sends whatever a test says, raw.
final class RawClient: Sendable {
    let descriptor: Int32

    init(path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes.prefix(raw.count - 1))
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else { throw StrataError(BioError(errno: errno), "connect \(path)") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(descriptor) }

    /// Sends all of `bytes`; returns false if the server stopped taking them for
    /// `seconds` (it is not reading) or hung up.
    @discardableResult
    func send(_ bytes: [UInt8], seconds: Double = 5) -> Bool {
        var sent = 0
        let deadline = Date().addingTimeInterval(seconds)
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if count > 0 {
                sent += count
            } else if errno == EAGAIN && Date() < deadline {
                usleep(1000)
            } else {
                return false
            }
        }
        return true
    }

    /// Reads up to `count` bytes (fewer at end of stream or time-out).
    func receive(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = bytes[got...].withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            got += n
        }
        return Array(bytes.prefix(got))
    }

    /// Reads option replies (20-byte header, then its payload) until the ACK that ends
    /// a successful GO; false if the server answered otherwise or hung up.
    func receiveOptionRepliesUntilAck() -> Bool {
        while true {
            let header = receive(20)
            guard header.count == 20 else { return false }
            let type = header[12..<16].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let length = Int(header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            guard receive(length).count == length else { return false }
            if type == NBDOptionReply.ack.rawValue { return true }
            if type & 0x8000_0000 != 0 { return false }
        }
    }

    /// Whether the server has closed this connection (reads end of stream).
    func serverClosed() -> Bool {
        var byte: UInt8 = 0
        while true {
            let n = recv(descriptor, &byte, 1, 0)
            if n == 0 { return true }
            if n < 0 { return errno != EAGAIN && errno != EWOULDBLOCK }
        }
    }
}

func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// Bytes that negotiate structured replies and GO on `export`, after the greeting.
func handshake(export: String) -> [UInt8] {
    var bytes = bigEndian(UInt32(3))
    bytes += bigEndian(NBDMagic.ihaveopt) + bigEndian(NBDOption.go.rawValue)
    let name = Array(export.utf8)
    bytes += bigEndian(UInt32(4 + name.count + 2)) + bigEndian(UInt32(name.count)) + name + bigEndian(UInt16(0))
    return bytes
}

func requestBytes(_ command: NBDCommand, cookie: UInt64, offset: UInt64, length: UInt32) -> [UInt8] {
    bigEndian(NBDMagic.request) + bigEndian(UInt16(0)) + bigEndian(command.rawValue) + bigEndian(cookie)
        + bigEndian(offset) + bigEndian(length)
}

/// Resident memory of this process (the server runs in it), in bytes.
func residentBytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
    return (Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
}

/// Clients that send garbage, hang up half way or stop reading cost the server that
/// connection only.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct HostileClientTests {
    func stillServes(_ fixture: ServerFixture) throws -> Bool {
        let result = try run("nbdinfo", ["--size", fixture.uri(export: "disk0")])
        return result.status == 0 && result.output.contains("67108864")
    }

    @Test func garbageIsAnsweredByHangingUpOnThatClientOnly() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        var generator = SystemRandomNumberGenerator()
        for round in 0..<20 {
            let client = try RawClient(path: fixture.socket)
            _ = client.receive(18)
            let garbage = (0..<(64 + round * 97)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            client.send(garbage)
            _ = client.serverClosed()
        }
        #expect(try stillServes(fixture))
    }

    @Test func truncatedHandshakesAndRequestsFreeTheirConnection() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        let cuts: [[UInt8]] = [
            [0, 0],                                                        // half the client flags
            bigEndian(UInt32(3)) + bigEndian(NBDMagic.ihaveopt),           // option header cut short
            bigEndian(UInt32(3)) + bigEndian(NBDMagic.ihaveopt) + bigEndian(UInt32(7)) + bigEndian(UInt32(100)) + [1, 2],
            handshake(export: "disk0") + requestBytes(.write, cookie: 1, offset: 0, length: 1 << 20) + [UInt8](repeating: 7, count: 1000),
            handshake(export: "disk0") + Array(requestBytes(.read, cookie: 2, offset: 0, length: 4096).prefix(17)),
        ]
        for bytes in cuts {
            let client = try RawClient(path: fixture.socket)
            _ = client.receive(18)
            client.send(bytes)
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(try stillServes(fixture))
        let deadline = ContinuousClock.now + .seconds(5)
        while fixture.server.connectionCount > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(fixture.server.connectionCount == 0, "every cut-off connection was let go")
    }

    /// A request's done routine names its connection's handler unowned. Once a closed
    /// connection let go of its handler (ConnectionLifetimeTests), a client that hung up
    /// with a request in flight on a disk completing on its own thread (a file disk's
    /// worker, here a slow disk) left that request to call a freed handler; found by the
    /// whole suite crashing in the done routine. The handler now stays for it.
    @Test func aRequestInFlightKeepsItsHandlerAfterTheClientHangsUp() async throws {
        // The read is held until the test lets it go, however loaded the machine.
        let gate = DispatchSemaphore(value: 0)
        let fixture = try await ServerFixture { topology, _ in
            _ = try SlowDisk.install(in: topology, name: "slow2", delay: .zero, gate: gate)
            return [NBDExport(name: "slow", provider: "slow2")]
        }
        defer {
            gate.signal()
            Task { await fixture.stop() }
        }
        weak var handler: NBDConnectionHandler?
        do {
            let client = try RawClient(path: fixture.socket)
            _ = client.receive(18)
            client.send(handshake(export: "slow"))
            _ = client.receive((20 + 12) + (20 + 14) + 20)  // INFO_EXPORT, INFO_BLOCK_SIZE, ACK
            client.send(requestBytes(.read, cookie: 1, offset: 0, length: 4096))
            handler = fixture.server.core.connections.first
            // Hang up only once the read is at the disk (a loaded machine may take a while).
            let issued = ContinuousClock.now + .seconds(5)
            while fixture.server.exportStatistics.first?.requestsInFlight != 1 && ContinuousClock.now < issued {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(fixture.server.exportStatistics.first?.requestsInFlight == 1, "the read reached the disk")
        }
        // The client has hung up; its channel closes while the read is still at the disk.
        let deadline = ContinuousClock.now + .seconds(2)
        while fixture.server.connectionCount > 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        try await Task.sleep(for: .milliseconds(100))
        #expect(fixture.server.connectionCount == 0)
        guard handler != nil else {
            Issue.record("the handler was freed with a request in flight")
            return
        }
        gate.signal()
        let released = ContinuousClock.now + .seconds(8)
        while handler != nil && ContinuousClock.now < released { try await Task.sleep(for: .milliseconds(20)) }
        #expect(handler == nil, "the last completion lets the handler go")
        #expect(fixture.server.exportStatistics.first?.connections == 0, "and gives its consumer back")
    }

    @Test func aClientThatStopsReadingIsThrottledAndMemoryStaysBounded() async throws {
        let fixture = try await RealClientTests.fixture()
        defer { Task { await fixture.stop() } }
        // Real data everywhere the reads go, so every reply buffer is filled.
        let fill = try run("qemu-io", ["-f", "raw", "-c", "write -P 0x3e 0 64M", fixture.qemuURI(export: "disk0")])
        #expect(fill.status == 0, "\(fill)")
        let client = try RawClient(path: fixture.socket)
        _ = client.receive(18)
        client.send(handshake(export: "disk0"))
        _ = client.receive(20 + 12 + 20 + 16 + 20)
        let before = residentBytes()
        // 4 GiB of 1 MiB reads, never reading a reply.
        var accepted = 0
        for cookie in 0..<4096 {
            guard client.send(requestBytes(.read, cookie: UInt64(cookie), offset: UInt64(cookie % 64) << 20, length: 1 << 20),
                              seconds: 0.5) else { break }
            accepted += 1
        }
        let grown = residentBytes() - before
        #expect(accepted < 4096, "the server stopped reading requests")
        #expect(grown < 400 << 20, "resident memory grew by \(grown >> 20) MiB")
        #expect(try stillServes(fixture), "other clients are served meanwhile")
    }

    /// Four clients each send 24 writes of 1 MiB to an export that holds every request
    /// for a second: the server takes in about its 32 MiB budget across them, not the
    /// 96 MiB announced, and serves the rest as the first ones complete.
    @Test func theServerBudgetBoundsPayloadTakenInAcrossConnections() async throws {
        let budget = 32 << 20
        let fixture = try await ServerFixture(limits: NBDServer.Limits(serverBytes: budget, handshakeTimeout: .seconds(600))) { topology, _ in
            let memory = try MemoryDisk.create(in: topology, name: "budget-md", size: 64 << 20)
            _ = try NopGeom.create(in: topology, name: "held", over: memory.provider,
                                   settings: NopGeom.Settings(delayMilliseconds: 1000))
            return [NBDExport(name: "held", provider: "held", isDefault: true)]
        }
        defer { Task { await fixture.stop() } }
        let payload = [UInt8](repeating: 0x5a, count: 1 << 20)
        let clients = try (0..<4).map { _ in try RawClient(path: fixture.socket) }
        for (index, client) in clients.enumerated() {
            _ = client.receive(18)
            client.send(handshake(export: "held"))
            #expect(client.receiveOptionRepliesUntilAck())
            let writes = (0..<24).map { write in
                requestBytes(.write, cookie: UInt64(write), offset: UInt64(index * 16 + write % 16) << 20, length: 1 << 20) + payload
            }
            // Sent from threads of their own: a stopped connection blocks its sender.
            let bytes = writes.flatMap { $0 }
            startWorkerThread { client.send(bytes, seconds: 30) }
        }
        // Sampled for 3 s, while writes are taken in and complete: on a loaded machine
        // the server may take longer than the first writes' second to reach the budget.
        var highest = 0
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline {
            highest = max(highest, fixture.server.payloadBytesInFlight)
            try await Task.sleep(for: .milliseconds(5))
        }
        // Each connection may take one request past the budget before it sees it spent.
        #expect(highest <= budget + 4 << 20, "\(highest >> 20) MiB in flight")
        #expect(highest >= budget, "the budget was reached: \(highest >> 20) MiB in flight")
        // Every write is answered in the end: 96 replies of 16 bytes each.
        for client in clients {
            #expect(client.receive(24 * 16).count == 24 * 16)
        }
        #expect(fixture.server.payloadBytesInFlight == 0)
    }
}
