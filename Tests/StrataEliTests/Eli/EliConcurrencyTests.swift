import Dispatch
import Foundation
import Strata
import StrataDisks
import StrataEli
import Synchronization
import Testing

/// Many threads through one eli at once: more threads than there are per-thread slots,
/// so that some share the locked slot, each writing and reading back regions of its own
/// while buffers given back on one thread are taken on another. ThreadSanitizer runs it
/// (scripts/check, suites *Concurrency).
@Suite struct EliIOConcurrency {
    @Test func fortyThreadsWritingAndReadingThroughOneEliEachReadTheirOwnData() throws {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "eli-cc", size: 40 << 20)
        try EliGeomTests.format(disk.provider, in: topology, version: .luks2)
        let eli = try EliGeom.create(in: topology, name: "e0", over: disk.provider, passphrase: EliGeomTests.passphrase)
        let device = try BlockDevice(opening: eli.providers[0], in: topology, writable: true)
        defer { device.close() }
        let consumer = device.consumer
        let threads = 40
        let region = 512 << 10
        let failures = Mutex<[String]>([])
        let finished = DispatchGroup()
        for index in 0..<threads {
            finished.enter()
            let thread = Thread {
                defer { finished.leave() }
                do {
                    for round in 0..<4 {
                        let size = [4096, 65536, 512, 131072][round % 4]
                        let offset = Int64(index * region + (round * 4096) % (region - size))
                        let data = EliGeomTests.pattern(size, seed: index * 31 + round)
                        try consumer.writeSync(data, at: offset)
                        let back = try consumer.readSync(at: offset, count: size)
                        if back != data { failures.withLock { $0.append("thread \(index) round \(round)") } }
                    }
                } catch {
                    failures.withLock { $0.append("thread \(index): \(error)") }
                }
            }
            thread.start()
        }
        #expect(finished.wait(timeout: .now() + 120) == .success)
        let found = failures.withLock { $0 }
        #expect(found.isEmpty, "\(found.prefix(5))")
    }
}
