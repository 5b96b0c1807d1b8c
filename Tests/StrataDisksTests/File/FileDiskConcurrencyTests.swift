#if canImport(Glibc)
import Glibc
#endif
import Strata
import StrataDisks
import Testing

/// Threads issuing requests to one file disk at once. scripts/check runs this suite
/// again under ThreadSanitizer (suites whose name ends in "Concurrency").
@Suite struct FileDiskConcurrency {
    static let blockSize = 4096
    static let diskSize: Int64 = 16 << 20
    static let threads = 4
    static let writesPerThread = 200

    /// Sends one request with a done routine that records its completion in `ledger`
    /// under `id` and counts `latch` down. `buffer` must live until it completes.
    static func issue(_ command: BioCommand, on consumer: Consumer, offset: Int64, length: Int64,
                      buffer: UnsafeMutableRawBufferPointer? = nil, flags: BioFlags = [],
                      id: Int, ledger: CompletionLedger, latch: Countdown) {
        let bio = AnyBioSet.shared.alloc(segments: 1)
        bio.command = command
        bio.offset = offset
        bio.length = length
        bio.flags = flags
        if let buffer { bio.setData(buffer) }
        bio.done = .closure { done in
            let failed = done.error != nil
            done.destroy()
            ledger.record(id, failed: failed)
            latch.countDown()
        }
        consumer.request(bio)
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func fourThreadsWritingRandomBlocksOfTheirOwnQuartersReadBackExactly(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: Self.diskSize, engine: engine, workers: 4)
        let consumer = issuer.consumer

        let quarter = Self.diskSize / Int64(Self.threads)
        let blocksPerQuarter = Int(quarter) / Self.blockSize
        let readsPerThread = blocksPerQuarter
        let writeIds = Self.threads * Self.writesPerThread
        let ledger = CompletionLedger(capacity: writeIds + Self.threads * readsPerThread)
        let failures = FailureLog()
        let finished = Countdown(Self.threads)
        // The blocks each thread wrote, for the final check from this thread.
        let chosen = BlockChoices(threads: Self.threads)

        for thread in 0..<Self.threads {
            startWorkerThread {
                defer { finished.countDown() }
                let base = Int64(thread) * quarter
                let seed = UInt8(thread + 1)
                var generator = SeededGenerator(seed: 0x5EED_0000 + UInt64(thread))
                // 200 distinct random blocks of this quarter, so the content is known
                // whatever order the writes complete in.
                let blocks = Array((0..<blocksPerQuarter).shuffled(using: &generator).prefix(Self.writesPerThread))
                chosen.set(thread, Set(blocks))

                let source = UnsafeMutableRawBufferPointer.allocate(byteCount: blocks.count * Self.blockSize, alignment: 4096)
                defer { source.deallocate() }
                let written = Countdown(blocks.count)
                for (index, block) in blocks.enumerated() {
                    let offset = base + Int64(block * Self.blockSize)
                    let slice = UnsafeMutableRawBufferPointer(rebasing: source[(index * Self.blockSize)..<((index + 1) * Self.blockSize)])
                    fillPattern(slice, at: offset, seed: seed)
                    Self.issue(.write, on: consumer, offset: offset, length: Int64(Self.blockSize), buffer: slice,
                               id: thread * Self.writesPerThread + index, ledger: ledger, latch: written)
                }
                guard written.wait(seconds: 120) else {
                    failures.add("thread \(thread): writes did not all complete")
                    return
                }

                // Read the whole quarter back, one block per request, all in flight at once.
                let target = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(quarter), alignment: 4096)
                defer { target.deallocate() }
                target.initializeMemory(as: UInt8.self, repeating: 0xAA)
                let read = Countdown(readsPerThread)
                for block in 0..<blocksPerQuarter {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: target[(block * Self.blockSize)..<((block + 1) * Self.blockSize)])
                    Self.issue(.read, on: consumer, offset: base + Int64(block * Self.blockSize), length: Int64(Self.blockSize),
                               buffer: slice, id: writeIds + thread * readsPerThread + block, ledger: ledger, latch: read)
                }
                guard read.wait(seconds: 120) else {
                    failures.add("thread \(thread): reads did not all complete")
                    return
                }
                let wrote = Set(blocks)
                let checker = BlockChecker(blockSize: Self.blockSize)
                var bad: [Int] = []
                for block in 0..<blocksPerQuarter {
                    let offset = base + Int64(block * Self.blockSize)
                    let actual = UnsafeRawPointer(target.baseAddress! + block * Self.blockSize)
                    let good = wrote.contains(block)
                        ? checker.holdsPattern(actual, at: offset, seed: seed)
                        : checker.holdsZeros(actual)
                    if !good { bad.append(block) }
                }
                if !bad.isEmpty {
                    failures.add("thread \(thread): \(bad.count) blocks read back wrong, first \(bad.prefix(5))")
                }
            }
        }

        #expect(finished.wait(seconds: 300), "the threads did not finish")
        #expect(failures.all.isEmpty, "\(failures.all)")
        #expect(ledger.anomalies.isEmpty, "requests completed other than once: \(ledger.anomalies.prefix(10))")
        #expect(ledger.errors == 0)
        #expect(ledger.total == writeIds + Self.threads * readsPerThread)

        // Seen from this thread in one read: each quarter holds its thread's blocks and
        // nothing else.
        let everything = try issuer.bytes(at: 0, count: Int(Self.diskSize))
        let checker = BlockChecker(blockSize: Self.blockSize)
        var wrong = 0
        everything.withUnsafeBytes { all in
            for thread in 0..<Self.threads {
                let base = Int(quarter) * thread
                let wrote = chosen.get(thread)
                for block in 0..<blocksPerQuarter {
                    let start = base + block * Self.blockSize
                    let actual = all.baseAddress! + start
                    let good = wrote.contains(block)
                        ? checker.holdsPattern(actual, at: Int64(start), seed: UInt8(thread + 1))
                        : checker.holdsZeros(actual)
                    if !good { wrong += 1 }
                }
            }
        }
        for thread in 0..<Self.threads { #expect(chosen.get(thread).count == Self.writesPerThread) }
        #expect(wrong == 0, "\(wrong) blocks differ from what the threads wrote")
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func mixedCommandsFromManyThreadsEachCompleteExactlyOnce(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: Self.diskSize, engine: engine, workers: 3)
        let consumer = issuer.consumer
        let perThread = 120
        let ledger = CompletionLedger(capacity: Self.threads * perThread)
        let finished = Countdown(Self.threads)
        let quarter = Self.diskSize / Int64(Self.threads)

        for thread in 0..<Self.threads {
            startWorkerThread {
                defer { finished.countDown() }
                var generator = SeededGenerator(seed: 0xC0FFEE + UInt64(thread))
                let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: perThread * Self.blockSize, alignment: 4096)
                defer { buffers.deallocate() }
                buffers.initializeMemory(as: UInt8.self, repeating: UInt8(thread + 1))
                let done = Countdown(perThread)
                for index in 0..<perThread {
                    let block = Int64.random(in: 0..<(quarter / Int64(Self.blockSize)), using: &generator)
                    let offset = Int64(thread) * quarter + block * Int64(Self.blockSize)
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffers[(index * Self.blockSize)..<((index + 1) * Self.blockSize)])
                    let id = thread * perThread + index
                    switch index % 6 {
                    case 0: Self.issue(.write, on: consumer, offset: offset, length: 4096, buffer: slice, flags: .fua,
                                       id: id, ledger: ledger, latch: done)
                    case 1: Self.issue(.flush, on: consumer, offset: 0, length: 0, id: id, ledger: ledger, latch: done)
                    case 2: Self.issue(.delete, on: consumer, offset: offset, length: 4096, id: id, ledger: ledger, latch: done)
                    case 3: Self.issue(.writeZeroes, on: consumer, offset: offset, length: 4096, flags: .noHole,
                                       id: id, ledger: ledger, latch: done)
                    case 4: Self.issue(.read, on: consumer, offset: offset, length: 4096, buffer: slice,
                                       id: id, ledger: ledger, latch: done)
                    default: Self.issue(.write, on: consumer, offset: offset, length: 4096, buffer: slice,
                                        id: id, ledger: ledger, latch: done)
                    }
                }
                done.wait(seconds: 120)
            }
        }
        #expect(finished.wait(seconds: 300))
        #expect(ledger.anomalies.isEmpty, "requests completed other than once: \(ledger.anomalies.prefix(10))")
        #expect(ledger.errors == 0)
        #expect(ledger.total == Self.threads * perThread)
    }
}

/// The blocks each thread chose, handed to the test's thread under a lock.
final class BlockChoices: @unchecked Sendable {
    private let lock = ConditionLock()
    private var choices: [Set<Int>]

    init(threads: Int) { choices = Array(repeating: [], count: threads) }

    func set(_ thread: Int, _ blocks: Set<Int>) { lock.withLock { choices[thread] = blocks } }
    func get(_ thread: Int) -> Set<Int> { lock.withLock { choices[thread] } }
}

/// Compares blocks against the expected pattern or zeros with memcmp (cheap under
/// ThreadSanitizer, which checks a memcmp as one range).
final class BlockChecker {
    let blockSize: Int
    private let expected: UnsafeMutableRawBufferPointer
    private let zeroBlock: UnsafeMutableRawBufferPointer

    init(blockSize: Int) {
        self.blockSize = blockSize
        expected = .allocate(byteCount: blockSize, alignment: 64)
        zeroBlock = .allocate(byteCount: blockSize, alignment: 64)
        zeroBlock.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit {
        expected.deallocate()
        zeroBlock.deallocate()
    }

    func holdsPattern(_ actual: UnsafeRawPointer, at offset: Int64, seed: UInt8) -> Bool {
        fillPattern(expected, at: offset, seed: seed)
        return memcmp(actual, expected.baseAddress!, blockSize) == 0
    }

    func holdsZeros(_ actual: UnsafeRawPointer) -> Bool {
        memcmp(actual, zeroBlock.baseAddress!, blockSize) == 0
    }
}
