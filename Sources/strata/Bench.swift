import ArgumentParser
import Foundation
import Strata
import StrataConfig
import Synchronization

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drive a provider in-process through the bio path and report IOPS, MiB/s and latency (like bdevperf).",
        discussion: """
        The topology is built from the file (default ./strata.yaml, else the built-in
        default) but not served. Example:
          strata bench --config t.yaml --provider m0 --rw randread --bs 4K --iodepth 32 --seconds 10
        """)

    @Option(name: .long, help: "The topology file.")
    var config: String?

    @Option(name: .long, help: "The provider to drive.")
    var provider: String

    @Option(name: .long, help: "read, write, randread, randwrite or randrw (half reads).")
    var rw: String = "randread"

    @Option(name: .long, help: "Block size, e.g. 4K or 1M.")
    var bs: String = "4K"

    @Option(name: .long, help: "Requests in flight per thread.")
    var iodepth: Int = 32

    @Option(name: .long, help: "How long to run.")
    var seconds: Double = 10

    @Option(name: .long, help: "Threads issuing requests.")
    var threads: Int = 1

    @Flag(name: .long, help: ArgumentHelp(
        "Write the whole provider first (destroys its contents).",
        discussion: "Sparse disks answer reads of never-written ranges without copying; filling makes reads move data."))
    var fill = false

    @Flag(name: .long, help: #"Print only {"iops", "mibps", "latency_us": {"p50", "p99", "p999", "max"}}."#)
    var json = false

    func validate() throws {
        guard BenchPattern(rawValue: rw) != nil else {
            throw ValidationError("--rw '\(rw)' is not read, write, randread, randwrite or randrw")
        }
        guard let size = parseByteSize(bs), size <= 32 << 20 else { throw ValidationError("--bs '\(bs)' is not a size up to 32M") }
        _ = size
        guard (1...4096).contains(iodepth) else { throw ValidationError("--iodepth \(iodepth) must be from 1 to 4096") }
        guard seconds > 0 && seconds <= 86400 else { throw ValidationError("--seconds \(seconds) must be from 0 to 86400") }
        guard (1...256).contains(threads) else { throw ValidationError("--threads \(threads) must be from 1 to 256") }
    }

    func run() throws {
        let configuration: Configuration
        do {
            if let config {
                configuration = try ConfigurationLoader.load(path: config)
            } else if FileManager.default.fileExists(atPath: "strata.yaml") {
                configuration = try ConfigurationLoader.load(path: "strata.yaml")
            } else {
                throw FailureExit(message: "no topology: give --config FILE (or put a strata.yaml here)")
            }
        } catch let error as ConfigError {
            throw FailureExit(message: "\(error)")
        }
        let topology = Topology()
        defer { topology.shutdown() }
        do {
            _ = try TopologyBuilder.build(configuration, topology: topology)
        } catch let error as ConfigError {
            throw FailureExit(message: "\(error)")
        }
        guard let target = topology.provider(named: provider) else {
            let known = topology.providers.map(\.name).joined(separator: ", ")
            throw FailureExit(message: "--provider '\(provider)' is not a provider of this topology (providers: \(known))")
        }
        let blockSize = Int(parseByteSize(bs)!)
        guard blockSize % target.sectorSize == 0, Int64(blockSize) <= target.mediaSize else {
            throw FailureExit(message: "--bs \(bs) must be a multiple of \(target.name)'s \(target.sectorSize)-byte sectors and fit in it")
        }
        let pattern = BenchPattern(rawValue: rw)!
        let writes = pattern != .read && pattern != .randomRead
        let device = try BlockDevice(opening: target, in: topology, writable: writes || fill)
        defer { device.close() }
        if fill { try Self.fill(device.consumerForBenchmark, size: target.mediaSize) }

        let deadline = ProcessInfo.processInfo.systemUptime + seconds
        let drivers = (0..<threads).map { index in
            BenchDriver(consumer: device.consumerForBenchmark, pattern: pattern, blockSize: blockSize, depth: iodepth,
                        mediaSize: target.mediaSize, seed: UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15, deadline: deadline,
                        start: Int64(index) * (target.mediaSize / Int64(threads)) / Int64(blockSize) * Int64(blockSize))
        }
        let progress = !json && isatty(STDOUT_FILENO) == 1
        let started = ProcessInfo.processInfo.systemUptime
        let finished = DispatchGroup()
        for driver in drivers {
            finished.enter()
            Thread.detachNewThread {
                driver.run()
                finished.leave()
            }
        }
        while finished.wait(timeout: .now() + 1) == .timedOut {
            if progress {
                let elapsed = ProcessInfo.processInfo.systemUptime - started
                let done = drivers.map(\.completedCount).reduce(0, +)
                let line = String(format: "\r[%4.0fs] %.0f IOPS, %.1f MiB/s", elapsed, Double(done) / elapsed,
                                  Double(done) * Double(blockSize) / elapsed / 1048576)
                FileHandle.standardOutput.write(Data(line.utf8))
            }
        }
        if progress { print("") }
        let elapsed = ProcessInfo.processInfo.systemUptime - started
        let histogram = LatencyHistogram.merged(drivers.flatMap(\.latencies))
        let total = drivers.map(\.completedCount).reduce(0, +)
        let failures = drivers.map(\.failureCount).reduce(0, +)
        let iops = Double(total) / elapsed
        let mibps = iops * Double(blockSize) / 1048576
        let latency = ["p50": histogram.percentile(50), "p99": histogram.percentile(99), "p999": histogram.percentile(99.9),
                       "max": histogram.maximum].mapValues { Double($0) / 1000 }
        if json {
            let object: [String: Any] = ["iops": iops.rounded(), "mibps": (mibps * 100).rounded() / 100,
                                         "latency_us": latency.mapValues { ($0 * 100).rounded() / 100 }]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("\(rw) bs=\(bs) iodepth=\(iodepth) threads=\(threads) on \(provider): \(total) requests in \(String(format: "%.2f", elapsed)) s")
            print(String(format: "  %.0f IOPS, %.1f MiB/s", iops, mibps))
            print(String(format: "  latency (µs): p50 %.1f, p99 %.1f, p99.9 %.1f, max %.1f",
                         latency["p50"]!, latency["p99"]!, latency["p999"]!, latency["max"]!))
            if failures > 0 { print("  \(failures) requests failed") }
        }
        if failures > 0 { throw ExitCode(2) }
    }
}

extension Bench {
    /// Writes every byte of the provider (1 MiB at a time, a nonzero pattern) and waits.
    static func fill(_ consumer: Consumer, size: Int64) throws {
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xA5)
        var offset: Int64 = 0
        while offset < size {
            let length = min(Int64(chunk), size - offset)
            try consumer.performSync(.write, offset: offset, length: length,
                                     buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(length)]))
            offset += length
        }
    }
}

/// What a driver issues.
enum BenchPattern: String {
    case read, write
    case randomRead = "randread", randomWrite = "randwrite", randomMix = "randrw"
}

/// One thread's load: `depth` requests kept in flight until the deadline, each
/// re-issued from its own completion. Per request it allocates nothing and takes no
/// lock: each slot has its own random state (a slot has one request in flight at a
/// time), and the deadline is looked at every 64 completions.
///
/// The driver measures the stack, so it keeps out of its way: a completion on the
/// driver's own thread (every completion of a stack that completes in the caller, such
/// as memory and null disks) is counted with plain loads and stores in counters only
/// that thread writes, and its clock reading serves as the end of one request and the
/// start of the next. Completions on other threads (workers, io_uring) count atomically
/// in a second set of counters.
final class BenchDriver: BioDoneHandler, @unchecked Sendable {
    let consumer: Consumer
    let pattern: BenchPattern
    let blockSize: Int
    let depth: Int
    let blocks: Int64
    let deadline: Double
    private let slots: UnsafeMutablePointer<UInt64>
    private let sequential: Atomic<Int64>
    private let buffers: UnsafeMutableRawBufferPointer
    private let inFlight = Atomic<Int>(0)
    /// The thread running `run`, set before the first request goes out.
    private let owner = Atomic<UInt>(0)
    /// Completions on the owner's thread: written only by it (relaxed load and store, no
    /// locked instruction), read by the progress line.
    private let ownCompleted = Atomic<Int>(0)
    private let ownFailed = Atomic<Int>(0)
    private let ownLatencies = LatencyHistogram()
    /// Completions on any other thread.
    private let otherCompleted = Atomic<Int>(0)
    private let otherFailed = Atomic<Int>(0)
    private let otherLatencies = LatencyHistogram()
    private let expired = Atomic<Bool>(false)
    private let drained = DispatchSemaphore(value: 0)

    init(consumer: Consumer, pattern: BenchPattern, blockSize: Int, depth: Int, mediaSize: Int64, seed: UInt64, deadline: Double,
         start: Int64) {
        self.consumer = consumer
        self.pattern = pattern
        self.blockSize = blockSize
        self.depth = depth
        self.blocks = mediaSize / Int64(blockSize)
        self.deadline = deadline
        slots = .allocate(capacity: depth)
        for slot in 0..<depth { (slots + slot).initialize(to: seed &+ UInt64(slot) &* 0x2545_F491_4F6C_DD1D | 1) }
        sequential = Atomic(start / Int64(blockSize))
        buffers = .allocate(byteCount: blockSize * depth, alignment: 4096)
        buffers.initializeMemory(as: UInt8.self, repeating: 0xA5)
    }

    deinit {
        slots.deallocate()
        buffers.deallocate()
    }

    var completedCount: Int { ownCompleted.load(ordering: .relaxed) + otherCompleted.load(ordering: .relaxed) }
    var failureCount: Int { ownFailed.load(ordering: .relaxed) + otherFailed.load(ordering: .relaxed) }
    var latencies: [LatencyHistogram] { [ownLatencies, otherLatencies] }

    func run() {
        owner.store(Self.currentThread, ordering: .relaxed)
        inFlight.store(depth, ordering: .relaxed)
        // Plugged: a provider that puts work off (a memory disk's copies) gets the whole
        // queue depth at once, and the completions the plug's end runs issue the next
        // requests under it.
        BioPlug.withPlug {
            for slot in 0..<depth { issue(slot: slot, bio: AnyBioSet.shared.alloc(segments: 1), at: IOClock.nanoseconds()) }
        }
        drained.wait()
    }

    private func issue(slot: Int, bio: consuming Bio, at now: UInt64) {
        let block: Int64
        var read: Bool
        switch pattern {
        case .read, .write:
            block = sequential.wrappingAdd(1, ordering: .relaxed).oldValue % blocks
            read = pattern == .read
        case .randomRead, .randomWrite, .randomMix:
            var random = slots[slot]
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            slots[slot] = random
            // A block in 0..<blocks by multiplying rather than dividing (Lemire's
            // reduction): a 64-bit division costs more than a pass-through layer's check.
            block = Int64(random.multipliedFullWidth(by: UInt64(blocks)).high)
            read = pattern == .randomRead || (pattern == .randomMix && random & 1 == 0)
        }
        bio.reset()
        bio.command = read ? .read : .write
        bio.offset = block * Int64(blockSize)
        bio.length = Int64(blockSize)
        bio.flags = read ? .zeroHint : []
        bio.setData(UnsafeMutableRawBufferPointer(rebasing: buffers[(slot * blockSize)..<((slot + 1) * blockSize)]))
        bio.caller1 = UnsafeMutableRawPointer(bitPattern: slot + 1)
        bio.caller2 = UnsafeMutableRawPointer(bitPattern: UInt(now))
        bio.done = .handler(self)
        consumer.request(bio)
    }

    /// The calling thread's `pthread_self`, as a number to compare.
    private static var currentThread: UInt {
        #if canImport(Darwin)
        UInt(bitPattern: pthread_self())
        #else
        UInt(pthread_self())
        #endif
    }

    func bioDone(_ bio: consuming Bio) {
        let now = IOClock.nanoseconds()
        let started = UInt64(UInt(bitPattern: bio.caller2))
        let slot = Int(bitPattern: bio.caller1) - 1
        let failed = bio.error != nil
        let count: Int
        if owner.load(ordering: .relaxed) == Self.currentThread {
            count = ownCompleted.load(ordering: .relaxed) &+ 1
            ownCompleted.store(count, ordering: .relaxed)
            if failed { ownFailed.store(ownFailed.load(ordering: .relaxed) &+ 1, ordering: .relaxed) }
            ownLatencies.recordOwned(now &- started)
        } else {
            count = otherCompleted.wrappingAdd(1, ordering: .relaxed).newValue
            if failed { otherFailed.wrappingAdd(1, ordering: .relaxed) }
            otherLatencies.record(now &- started)
        }
        if count % 64 == 0 && monotonicSeconds() >= deadline { expired.store(true, ordering: .relaxed) }
        if !expired.load(ordering: .relaxed) {
            issue(slot: slot, bio: bio, at: now)
        } else {
            bio.destroy()
            if inFlight.wrappingSubtract(1, ordering: .relaxed).newValue == 0 { drained.signal() }
        }
    }
}

/// Latencies in log-linear buckets: 64 per power of two (under 1.6% error). Recorded
/// with relaxed atomic adds, since completions may arrive on several threads.
final class LatencyHistogram: @unchecked Sendable {
    static let bucketCount = 64 * 64
    private let counts: UnsafeMutablePointer<Atomic<UInt64>>
    private let maximumStorage = Atomic<UInt64>(0)

    init() {
        counts = .allocate(capacity: Self.bucketCount)
        for index in 0..<Self.bucketCount { (counts + index).initialize(to: Atomic(0)) }
    }

    deinit {
        counts.deinitialize(count: Self.bucketCount)
        counts.deallocate()
    }

    /// Records from one thread at a time only, with plain loads and stores.
    func recordOwned(_ nanoseconds: UInt64) {
        let counter = counts + Self.bucket(nanoseconds)
        counter.pointee.store(counter.pointee.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        if nanoseconds > maximumStorage.load(ordering: .relaxed) { maximumStorage.store(nanoseconds, ordering: .relaxed) }
    }

    /// Records from any thread.
    func record(_ nanoseconds: UInt64) {
        counts[Self.bucket(nanoseconds)].wrappingAdd(1, ordering: .relaxed)
        var seen = maximumStorage.load(ordering: .relaxed)
        while nanoseconds > seen {
            let (exchanged, current) = maximumStorage.compareExchange(expected: seen, desired: nanoseconds, ordering: .relaxed)
            if exchanged { break }
            seen = current
        }
    }

    static func bucket(_ value: UInt64) -> Int {
        guard value >= 64 else { return Int(value) }
        let power = 63 - value.leadingZeroBitCount
        return (power - 5) * 64 + Int((value >> (power - 6)) & 63)
    }

    static func lowerBound(_ bucket: Int) -> UInt64 {
        guard bucket >= 64 else { return UInt64(bucket) }
        let power = bucket / 64 + 5
        return (UInt64(64 + bucket % 64)) << (power - 6)
    }

    /// The counts of all of `histograms`, with the largest maximum.
    struct Summary {
        var counts = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
        var maximum: UInt64 = 0
        var total: UInt64 { counts.reduce(0, +) }

        func percentile(_ percent: Double) -> UInt64 {
            let total = self.total
            guard total > 0 else { return 0 }
            let rank = UInt64((Double(total) * percent / 100).rounded(.up))
            var seen: UInt64 = 0
            for (index, count) in counts.enumerated() where count > 0 {
                seen += count
                if seen >= rank { return min(LatencyHistogram.lowerBound(index), maximum) }
            }
            return maximum
        }
    }

    static func merged(_ all: [LatencyHistogram]) -> Summary {
        var summary = Summary()
        for histogram in all {
            for index in 0..<bucketCount { summary.counts[index] += histogram.counts[index].load(ordering: .relaxed) }
            summary.maximum = max(summary.maximum, histogram.maximumStorage.load(ordering: .relaxed))
        }
        return summary
    }
}
