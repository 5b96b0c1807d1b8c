import Foundation
import Synchronization
import Testing

/// Many clients at once against `strata serve`: its memory stays within the server's
/// byte budget (`limits.server-bytes`), every request is answered and every byte kept.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct FloodTests {
    /// 64 connections with 128 requests each in flight at once, against an export
    /// whose every request waits 20 ms, so that requests pile up in the server. Each
    /// connection owns 1 MiB and writes it with its own byte, 256 KiB at a time, four
    /// times over, with reads mixed in: 2 GiB of payload announced in all.
    @Test func sixtyFourConnectionsAtQueueDepth128StayWithinTheServerBudget() throws {
        let (server, socket, _) = try ServeProcess.serving("""
            limits:
              server-bytes: 64MiB
            disks:
              - {name: m0, memory: 64MiB}
            geoms:
              - {name: slow, class: nop, consumers: [m0], delay-ms: 20}
            exports:
              - {name: slow, provider: slow}
            """, prefix: "strata-flood")
        defer { _ = server.stop(); server.removeDirectory() }
        #expect(server.waitForOutput("serving"), "\(server.stderr)")
        let before = try #require(residentBytes(of: server.process.processIdentifier))
        let peak = ResidentPeak(of: server.process.processIdentifier)
        let script = """
        import nbd, select, sys
        uri = sys.argv[1]
        conns, depth, size = 64, 128, 256 * 1024
        handles = []
        for c in range(conns):
            h = nbd.NBD()
            h.connect_uri(uri)
            handles.append(h)
        buffers = [nbd.Buffer.from_bytearray(bytearray([c + 1]) * size) for c in range(conns)]
        reads = [nbd.Buffer(size) for c in range(conns)]
        failed = []
        def done(error):
            if error.value != 0:
                failed.append(error.value)
            return 1
        for j in range(depth):
            for c, h in enumerate(handles):
                offset = (c << 20) + (j % 4) * size
                if j % 8 == 7:
                    h.aio_pread(reads[c], offset, completion=done)
                else:
                    h.aio_pwrite(buffers[c], offset, completion=done)
        # One loop drives every connection, so all of them have requests in flight at once.
        by_fd = {h.aio_get_fd(): h for h in handles}
        while any(h.aio_in_flight() > 0 for h in handles):
            readers, writers = [], []
            for fd, h in by_fd.items():
                direction = h.aio_get_direction()
                if direction & nbd.AIO_DIRECTION_READ:
                    readers.append(fd)
                if direction & nbd.AIO_DIRECTION_WRITE:
                    writers.append(fd)
            readable, writable, _ = select.select(readers, writers, [], 1)
            for fd in readable:
                by_fd[fd].aio_notify_read()
            for fd in writable:
                if by_fd[fd].aio_get_direction() & nbd.AIO_DIRECTION_WRITE:
                    by_fd[fd].aio_notify_write()
        for c, h in enumerate(handles):
            if h.pread(1 << 20, c << 20) != bytes([c + 1]) * (1 << 20):
                print("region", c, "does not hold its byte")
                sys.exit(1)
        print("OK", conns * depth, "failed", len(failed))
        """
        let uri = "nbd+unix:///slow?socket=\(socket)"
        let (status, output, errors) = try runProgram("/usr/bin/python3", ["-c", script, uri])
        let highest = peak.stop()
        #expect(status == 0 && output.contains("OK 8192 failed 0"), "\(output)\(errors)")
        let grown = highest - before
        print("flood: 64 connections x QD128 of 256 KiB, server memory grew by \(grown >> 20) MiB")
        // Measured here: about 210 MiB (the 64 MiB disk's pages, requests in flight,
        // buffers being received and replies being sent). HostileClientTests shows the
        // budget itself holding, byte for byte, where requests pile up faster.
        #expect(grown < 400 << 20, "server memory grew by \(grown >> 20) MiB")
        let (infoStatus, info, _) = try runProgram("/usr/bin/nbdinfo", ["--size", uri])
        #expect(infoStatus == 0 && info.contains("67108864"), "the server still answers after the flood")
    }
}

/// Resident memory of a process, in bytes, from /proc.
func residentBytes(of pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kibibytes = Int(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
    return kibibytes * 1024
}

/// The highest resident memory of a process, sampled every 5 ms on a thread of its
/// own until stopped.
final class ResidentPeak: Sendable {
    private let highest = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    init(of pid: Int32) {
        let thread = Thread { [self] in
            while !stopped.load(ordering: .acquiring) {
                if let now = residentBytes(of: pid) { highest.max(now, ordering: .relaxed) }
                usleep(5000)
            }
            finished.store(true, ordering: .releasing)
        }
        thread.start()
    }

    /// Stops sampling and returns the highest reading.
    func stop() -> Int {
        stopped.store(true, ordering: .releasing)
        while !finished.load(ordering: .acquiring) { usleep(1000) }
        return highest.load(ordering: .relaxed)
    }
}
