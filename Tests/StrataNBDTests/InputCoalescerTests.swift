import StrataDisks
@testable import StrataNBD
import Testing

/// The coalescer's decisions, on a clock the tests move: when it tries a client, what
/// passes a trial and what does not, and how it backs off.
@Suite struct InputCoalescerTests {
    static let nap: UInt64 = 50_000
    static let millisecond: UInt64 = 1_000_000

    /// A client that brings `perRead` requests per read, one read every `gap`
    /// nanoseconds, on a clock starting at `start`.
    struct Client {
        var coalescer: InputCoalescer
        var now: UInt64
        var naps = 0

        init(start: UInt64 = 1_000 * InputCoalescerTests.millisecond) {
            coalescer = InputCoalescer(nap: .nanoseconds(Int64(InputCoalescerTests.nap)), now: start)
            now = start
        }

        /// Runs `reads` reads; `gap` is the time between two reads without a nap, and
        /// a nap adds `napCost` to it (its length for a client that waits on the
        /// server, nothing for one that keeps sending).
        mutating func run(reads: Int, perRead: Int = 4, gap: UInt64, napCost: (UInt64) -> UInt64 = { _ in 0 },
                          mayNap: Bool = true) {
            for _ in 0..<reads {
                let nap = coalescer.readEnded(requests: perRead, mayNap: mayNap, now: now)
                if nap > 0 { naps += 1 }
                now += gap + napCost(nap)
            }
        }

        var isResting: Bool {
            if case .resting = coalescer.phase { return true }
            return false
        }

        /// Moves the clock to the end of the rest after the connection began.
        mutating func skipFirstRest() { now += InputCoalescer.firstBackoff }
    }

    @Test func aNewConnectionRestsBeforeItsFirstTrial() {
        var client = Client()
        client.run(reads: 1000, gap: 10_000)
        // 10 ms of reads, all inside the first 100 ms: no trial, no nap.
        #expect(client.naps == 0)
        #expect(client.coalescer.phase == .resting(until: 1_000 * Self.millisecond + InputCoalescer.firstBackoff))
    }

    @Test func aClientThatNapsDoNotSlowPassesItsTrialAndIsNappedAfterEachRead() {
        var client = Client()
        client.skipFirstRest()
        // Three parts of 256 requests at 4 a read: 64 reads each, and one to begin.
        client.run(reads: 1 + 3 * 64, gap: 100_000)
        #expect(client.coalescer.isNapping)
        guard case .napping = client.coalescer.phase else {
            Issue.record("expected napping, got \(client.coalescer.phase)")
            return
        }
        let napsInTrial = client.naps
        #expect(napsInTrial >= 64)
        client.run(reads: 100, gap: 100_000)
        #expect(client.naps == napsInTrial + 100)
    }

    @Test func aClientThatNapsSlowFailsItsTrialAndRestsTwiceAsLongEachTime() {
        var client = Client()
        client.skipFirstRest()
        // A client waiting on the server: each nap adds its whole length to the gap.
        let waiting: (UInt64) -> UInt64 = { $0 }
        var rests: [UInt64] = []
        for _ in 0..<7 {
            client.run(reads: 1 + 3 * 64, gap: 20_000, napCost: waiting)
            guard case .resting(let until) = client.coalescer.phase else {
                Issue.record("expected resting, got \(client.coalescer.phase)")
                return
            }
            rests.append(until - client.now + 20_000)
            // Reads during the rest do not nap and do not start a trial.
            let napsBefore = client.naps
            while client.now < until { client.run(reads: 1, gap: 1 * Self.millisecond) }
            #expect(client.naps == napsBefore)
        }
        #expect(rests.map { $0 / Self.millisecond } == [100, 200, 400, 800, 1600, 3200, 4000])
    }

    @Test func aTrialThatSeldomNappedFails() {
        var client = Client()
        client.skipFirstRest()
        // The trial begins with a read that may nap; then mostly reads of one request
        // (as a client at queue depth 2 brings as often as two), so hardly a nap.
        client.run(reads: 1, gap: 10_000)
        for read in 0..<(3 * 256) {
            let nap = client.coalescer.readEnded(requests: 1, mayNap: read % 64 == 0, now: client.now)
            if nap > 0 { client.naps += 1 }
            client.now += 10_000
        }
        #expect(client.isResting, "expected resting, got \(client.coalescer.phase)")
    }

    @Test func aSlowStartDoesNotPassForAClientThatNapsDoNotSlow() {
        var client = Client()
        client.skipFirstRest()
        // The first part without naps is slow (the client starting); the part with
        // naps and the second without come at the client's pace, and naps slow it.
        client.run(reads: 1 + 64, gap: 200_000)
        client.run(reads: 64, gap: 20_000, napCost: { $0 })
        client.run(reads: 64, gap: 20_000)
        #expect(client.isResting, "expected resting, got \(client.coalescer.phase)")
    }

    @Test func aNappedClientIsTriedAgainAfterTheIntervalAndStopsBeingNappedOnceNapsSlowIt() {
        var client = Client()
        client.skipFirstRest()
        client.run(reads: 1 + 3 * 64, gap: 100_000)
        #expect(client.coalescer.isNapping)
        // Napped for a second, then the client starts waiting on the server.
        client.run(reads: Int(InputCoalescer.trialInterval / 100_000), gap: 100_000)
        client.run(reads: 3 * 64 + 2, gap: 20_000, napCost: { $0 })
        #expect(client.isResting, "expected resting, got \(client.coalescer.phase)")
        let napsThen = client.naps
        client.run(reads: 100, gap: 20_000, napCost: { $0 })
        #expect(client.naps == napsThen)
    }

    @Test func readsThatMayNotNapNeverNapNorBeginATrial() {
        var client = Client()
        client.skipFirstRest()
        client.run(reads: 10_000, gap: 10_000, mayNap: false)
        #expect(client.naps == 0)
        #expect(client.isResting, "expected resting, got \(client.coalescer.phase)")
    }
}

/// Input coalescing in a running server, with a client of its own process that sends
/// its requests four to a write, as a pipelining client does, paced so that naps
/// cannot slow it, and checks every answer.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ServerCoalescingTests {
    func fixture(coalescing: Duration) async throws -> ServerFixture {
        try await ServerFixture(threads: 1, coalescing: coalescing) { topology, _ in
            _ = try MemoryDisk.create(in: topology, name: "md", size: 1 << 20)
            return [NBDExport(name: "md", provider: "md")]
        }
    }

    /// Over `connections` connections in turn, for `seconds`: writes four 4 KiB blocks
    /// in one send, reads their four replies, sends the four reads back in one send and
    /// checks the data, then sleeps 2 ms. With `perSend` 1, one request at a time.
    /// Prints "ok" and the requests made.
    func pacedClient(_ fixture: ServerFixture, connections: Int = 1, perSend: Int = 4,
                     seconds: Double = 2.5) throws -> ProgramResult {
        try run("/usr/bin/python3", ["-c", """
        import socket, struct, time
        def recv_all(s, n):
            data = b""
            while len(data) < n:
                chunk = s.recv(n - len(data))
                assert chunk, "server hung up"
                data += chunk
            return data
        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect("\(fixture.socket)")
            recv_all(s, 18)
            s.sendall(struct.pack(">I", 3))
            name = b"md"
            s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 4 + len(name) + 2) + struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
            while True:
                _, _, kind, length = struct.unpack(">QIII", recv_all(s, 20))
                recv_all(s, length)
                if kind == 1: return s
                assert kind == 3, kind
        def request(kind, cookie, offset, length):
            return struct.pack(">IHHQQI", 0x25609513, 0, kind, cookie, offset, length)
        def replies(s, count, length):
            got = {}
            for _ in range(count):
                magic, error, cookie = struct.unpack(">IIQ", recv_all(s, 16))
                assert magic == 0x67446698 and error == 0, (magic, error)
                got[cookie] = recv_all(s, length) if length else b""
            return got
        sockets = [connect() for _ in range(\(connections))]
        deadline = time.monotonic() + \(seconds)
        requests = 0
        round = 0
        while time.monotonic() < deadline:
            s = sockets[round % len(sockets)]
            blocks = {c: bytes([(round * 4 + c) % 251]) * 4096 for c in range(4)}
            for first in range(0, 4, \(perSend)):
                cookies = range(first, first + \(perSend))
                s.sendall(b"".join(request(1, c, ((round * 4 + c) % 256) * 4096, 4096) + blocks[c] for c in cookies))
                replies(s, \(perSend), 0)
            for first in range(0, 4, \(perSend)):
                cookies = range(first, first + \(perSend))
                s.sendall(b"".join(request(0, c, ((round * 4 + c) % 256) * 4096, 4096) for c in cookies))
                for cookie, data in replies(s, \(perSend), 4096).items():
                    assert data == blocks[cookie], (round, cookie)
            requests += 8
            round += 1
            time.sleep(0.002)
        for s in sockets:
            s.sendall(request(2, 0, 0, 0))
            s.close()
        print("ok", requests)
        """])
    }

    @Test func aPacedPipeliningClientIsNappedAndEveryAnswerIsRight() async throws {
        let fixture = try await fixture(coalescing: .microseconds(50))
        let result = try pacedClient(fixture)
        #expect(result.output.hasPrefix("ok"), "\(result)")
        // 100 ms of rest, then a trial of 768 requests: about 300 ms of this client.
        #expect(fixture.server.coalescingNaps > 0, "\(result.output)")
        await fixture.stop()
    }

    @Test func aClientAtQueueDepthOneIsNeverNapped() async throws {
        let fixture = try await fixture(coalescing: .microseconds(50))
        let result = try pacedClient(fixture, perSend: 1, seconds: 1)
        #expect(result.output.hasPrefix("ok"), "\(result)")
        #expect(fixture.server.coalescingNaps == 0)
        await fixture.stop()
    }

    @Test func aLoopServingTwoConnectionsNeverNaps() async throws {
        let fixture = try await fixture(coalescing: .microseconds(50))
        let result = try pacedClient(fixture, connections: 2)
        #expect(result.output.hasPrefix("ok"), "\(result)")
        #expect(fixture.server.coalescingNaps == 0)
        await fixture.stop()
    }
}
