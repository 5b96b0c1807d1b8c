import Foundation
import Strata
import StrataDisks
@testable import StrataNBD
import Testing

/// The poller's window, on a socket pair: what a poll returns and how the window moves.
@Suite struct BusyPollerTests {
    /// A connected pair of Unix sockets, closed at the end of `body`.
    func withSocketPair(_ body: (_ polled: Int32, _ peer: Int32) throws -> Void) throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        try body(pair[0], pair[1])
    }

    @Test func aPollThatFindsInputCountsItAndKeepsTheWindow() throws {
        try withSocketPair { polled, peer in
            let poller = BusyPoller(limit: .milliseconds(1))
            var byte: UInt8 = 7
            #expect(write(peer, &byte, 1) == 1)
            #expect(poller.awaitInput(on: polled))
            #expect(poller.hits.load(ordering: .relaxed) == 1)
            #expect(poller.misses.load(ordering: .relaxed) == 0)
            // The request it found is read: the wait ended with the poll, nothing to judge.
            poller.inputArrived()
            #expect(poller.window == 1_000_000)
        }
    }

    @Test func inputLongAfterATimedOutPollHalvesTheWindowUntilItCloses() throws {
        try withSocketPair { polled, _ in
            let poller = BusyPoller(limit: .microseconds(200))
            var windows: [UInt64] = []
            for _ in 0..<5 {
                #expect(!poller.awaitInput(on: polled))
                // A timed-out poll alone changes nothing: the input may yet come soon.
                let polledWith = poller.window
                // Input later than the limit: no poll would have found it.
                Thread.sleep(forTimeInterval: 0.002)
                poller.inputArrived()
                #expect(poller.window < polledWith)
                windows.append(poller.window)
            }
            // Below a sixteenth of the limit (12.5 µs) the window closes.
            #expect(windows == [100_000, 50_000, 25_000, 12_500, 0])
            #expect(poller.misses.load(ordering: .relaxed) == 5)
            // A closed window does not poll: nothing more is counted, and late input
            // leaves it closed.
            #expect(!poller.awaitInput(on: polled))
            #expect(poller.misses.load(ordering: .relaxed) == 5)
            Thread.sleep(forTimeInterval: 0.002)
            poller.inputArrived()
            #expect(poller.window == 0)
        }
    }

    @Test func inputSoonAfterTheWaitBeganOpensAndWidensTheWindow() throws {
        try withSocketPair { polled, _ in
            // A limit long enough that no pause of this thread on a busy machine makes
            // "soon" late; closing the window first takes late input five times.
            let poller = BusyPoller(limit: .milliseconds(100))
            while poller.window > 0 {
                _ = poller.awaitInput(on: polled)
                Thread.sleep(forTimeInterval: 0.11)
                poller.inputArrived()
            }
            // Input at once after a closed window's wait began: a poll would have caught it.
            #expect(!poller.awaitInput(on: polled))
            poller.inputArrived()
            #expect(poller.window == 25_000_000)
            // Input at once after polls that timed out (a client slower than the window
            // but within the limit): the window doubles up to the limit, not halves.
            var windows: [UInt64] = []
            for _ in 0..<2 {
                #expect(!poller.awaitInput(on: polled))
                poller.inputArrived()
                windows.append(poller.window)
            }
            #expect(windows == [50_000_000, 100_000_000])
            // After a poll of the whole limit, any input is later than the limit.
            #expect(!poller.awaitInput(on: polled))
            poller.inputArrived()
            #expect(poller.window == 50_000_000)
            // Input with no wait before it (the loop was busy) changes nothing.
            poller.inputArrived()
            #expect(poller.window == 50_000_000)
        }
    }

    @Test func pollsThatFindInputAtOnceAreSkippedForAWhile() throws {
        try withSocketPair { polled, peer in
            let poller = BusyPoller(limit: .milliseconds(5))
            let prompt = BusyPoller.promptHitsBeforeSkipping
            var byte: UInt8 = 7
            #expect(write(peer, &byte, 1) == 1)
            // Input is there at every first check, as from a client with several requests
            // in flight: after a run of such polls, the next are skipped, uncounted.
            for _ in 0..<prompt { #expect(poller.awaitInput(on: polled)) }
            for _ in 0..<BusyPoller.pollsSkipped { #expect(!poller.awaitInput(on: polled)) }
            #expect(poller.hits.load(ordering: .relaxed) == prompt)
            #expect(poller.misses.load(ordering: .relaxed) == 0)
            #expect(poller.window == 5_000_000)
            // Then it polls again. A poll that times out ends a run short of the count.
            for _ in 0..<(prompt - 1) { #expect(poller.awaitInput(on: polled)) }
            #expect(read(polled, &byte, 1) == 1)
            #expect(!poller.awaitInput(on: polled))
            #expect(write(peer, &byte, 1) == 1)
            for _ in 0..<prompt { #expect(poller.awaitInput(on: polled)) }
            #expect(!poller.awaitInput(on: polled))
            #expect(poller.hits.load(ordering: .relaxed) == 3 * prompt - 1)
            #expect(poller.misses.load(ordering: .relaxed) == 1)
        }
    }

    @Test func aReadOfSeveralRequestsSkipsThePollsAfterIt() throws {
        try withSocketPair { polled, _ in
            let poller = BusyPoller(limit: .milliseconds(1))
            // The client keeps several requests in flight: no poll until 56 have been
            // skipped, though nothing is there to find and each would wait.
            poller.clientPipelines()
            for _ in 0..<BusyPoller.pollsSkipped { #expect(!poller.awaitInput(on: polled)) }
            #expect(poller.hits.load(ordering: .relaxed) == 0)
            #expect(poller.misses.load(ordering: .relaxed) == 0)
            // Then polls are made again, and this one times out.
            #expect(!poller.awaitInput(on: polled))
            #expect(poller.misses.load(ordering: .relaxed) == 1)
        }
    }

    @Test func onlyALoopServingOneConnectionPolls() {
        let off = BusyPoller(limit: .zero)
        off.connections = 1
        #expect(!off.mayPoll)
        let on = BusyPoller(limit: .microseconds(50))
        #expect(!on.mayPoll)
        on.connections = 1
        #expect(on.mayPoll)
        on.connections = 2
        #expect(!on.mayPoll)
    }
}

/// Busy polling in a running server, with libnbd clients at queue depth 1 (in their
/// own processes, so that the rest of the suite running beside them cannot hold them
/// up as it can a client on Swift's shared threads).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ServerBusyPollTests {
    /// A server on one event loop exporting a 1 MiB memory disk ("md") and a disk whose
    /// requests complete 2 ms later on another thread ("slow").
    func fixture(busyPoll: Duration) async throws -> ServerFixture {
        try await ServerFixture(threads: 1, busyPoll: busyPoll) { topology, _ in
            _ = try MemoryDisk.create(in: topology, name: "md", size: 1 << 20)
            _ = try SlowDisk.install(in: topology, name: "slow", delay: .milliseconds(2))
            return [NBDExport(name: "md", provider: "md"), NBDExport(name: "slow", provider: "slow")]
        }
    }

    /// Connects `connections` handles to `export`, then writes and reads back 100 blocks
    /// one at a time, taking the handles in turn, checking every byte; prints "ok".
    func queueDepthOne(_ fixture: ServerFixture, export: String = "md", connections: Int = 1,
                       write: Bool = true) throws -> ProgramResult {
        try run("/usr/bin/python3", ["-c", """
        import nbd
        handles = [nbd.NBD() for _ in range(\(connections))]
        for h in handles:
            h.connect_uri("nbd+unix:///\(export)?socket=\(fixture.socket)")
        for i in range(100):
            h = handles[i % len(handles)]
            block = bytes((j * 31 + i) % 256 for j in range(4096))
            if \(write ? "True" : "False"):
                h.pwrite(block, i * 4096)
                assert h.pread(4096, i * 4096) == block, i
            else:
                h.pread(4096, i * 4096)
        for h in handles:
            h.shutdown()
        print("ok")
        """])
    }

    @Test func aClientAtQueueDepthOneIsAnsweredAndItsRequestsFoundByPolling() async throws {
        // A window far longer than the client's turn, even with the rest of the suite
        // holding up its process.
        let fixture = try await fixture(busyPoll: .milliseconds(20))
        let result = try queueDepthOne(fixture)
        #expect(result.output.contains("ok"), "\(result)")
        #expect(fixture.server.busyPolls.found > 0, "\(fixture.server.busyPolls)")
        await fixture.stop()
    }

    @Test func aServerWithPollingOffNeverPolls() async throws {
        let fixture = try await fixture(busyPoll: .zero)
        let result = try queueDepthOne(fixture)
        #expect(result.output.contains("ok"), "\(result)")
        #expect(fixture.server.busyPolls == (0, 0))
        await fixture.stop()
    }

    @Test func aLoopServingTwoConnectionsDoesNotPoll() async throws {
        let fixture = try await fixture(busyPoll: .milliseconds(5))
        let result = try queueDepthOne(fixture, connections: 2)
        #expect(result.output.contains("ok"), "\(result)")
        #expect(fixture.server.busyPolls == (0, 0))
        await fixture.stop()
    }

    /// A request in flight completes on another thread, which a socket poll would not
    /// see: the loop must sleep in epoll, where the completion's task wakes it.
    @Test func aConnectionWithARequestInFlightDoesNotPoll() async throws {
        let fixture = try await fixture(busyPoll: .milliseconds(5))
        let result = try queueDepthOne(fixture, export: "slow", write: false)
        #expect(result.output.contains("ok"), "\(result)")
        #expect(fixture.server.busyPolls == (0, 0))
        await fixture.stop()
    }
}
