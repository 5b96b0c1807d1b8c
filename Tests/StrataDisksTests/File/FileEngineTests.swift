#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Strata
@testable import StrataDisks
import Synchronization
import Testing

/// What every way of doing a file disk's I/O (io_uring, threads, inline) must get right,
/// and how the choice between them is made.
@Suite struct FileEngineTests {
    @Test func automaticTakesUringWhereTheKernelAllowsItAndSaysSoWhenItFallsBack() throws {
        let notices = FailureLog()
        let fixture = try FileDiskFixture(log: { _, message in notices.add(message) })
        defer { fixture.tearDown() }
        let directory = open(fixture.directory.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        let inMemory = FileDisk.isInMemory(directory)
        close(directory)
        let (chosen, _) = try fixture.open(size: 1 << 20, engine: .automatic)
        if inMemory {
            // A temporary directory on tmpfs: served inline, whatever the kernel allows.
            #expect(chosen.engine == .inline)
        } else if FileDisk.isUringAvailable {
            #expect(chosen.engine == .uring)
            #expect(notices.all.isEmpty)
        } else {
            #expect(chosen.engine == .threads)
            #expect(notices.all.contains { $0.contains("fd0: io_uring unavailable") })
            let refusal = #expect(throws: StrataError.self) {
                _ = try FileDisk.create(in: fixture.topology, name: "fd1", path: fixture.directory.file("u.img"),
                                        size: 1 << 20, engine: .uring)
            }
            #expect(refusal?.description.contains("io_uring for file disk") == true)
        }
        fixture.closeDisk()
        let (threaded, _) = try fixture.open(engine: .threads)
        #expect(threaded.engine == .threads)
    }

    @Test(.enabled(if: Self.mountType(of: "/dev/shm") == "tmpfs", "needs /dev/shm on tmpfs"))
    func automaticServesAFileInMemoryInline() throws {
        let topology = Topology()
        let path = "/dev/shm/strata-engine-\(getpid()).img"
        defer { unlink(path) }
        let disk = try FileDisk.create(in: topology, name: "shm0", path: path, size: 1 << 20)
        defer { witherAndWait(disk, in: topology) }
        #expect(disk.engine == .inline)
        let issuer = try Issuer(on: disk.provider, in: topology)
        try issuer.write(pattern(count: 8192, at: 4096), at: 4096, flags: .fua)
        try issuer.flush()
        #expect(try issuer.bytes(at: 4096, count: 8192) == pattern(count: 8192, at: 4096))
        try issuer.close()
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func scatteredBuffersAreWrittenAndReadPieceByPiece(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: 1 << 20, engine: engine)
        let offset: Int64 = 8192
        let expected = pattern(count: 4096, at: offset, seed: 7)
        // Three uneven pieces out, two other pieces back: each piece is one operation.
        let written = try Self.transfer(.write, on: issuer.consumer, at: offset, pieces: [1536, 512, 2048], filling: expected)
        #expect(written.error == nil && written.completed == 4096)
        let read = try Self.transfer(.read, on: issuer.consumer, at: offset, pieces: [3072, 1024], filling: zeros(4096))
        #expect(read.error == nil && read.completed == 4096)
        #expect(firstMismatch(read.bytes, expected) == nil)
        #expect(try issuer.bytes(at: offset, count: 4096) == expected)
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func aReadAcrossTheEndOfAFileThatShrankReadsZerosBeyondIt(engine: FileDisk.Engine) throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: 1 << 20, engine: engine)
        let start: Int64 = (1 << 20) - 8192
        let data = pattern(count: 8192, at: start, seed: 3)
        try issuer.write(data, at: start)
        // Another program cuts the file 4 KiB short: the read comes back short from the
        // kernel, and what is past the end reads as zeros.
        #expect(truncate(fixture.directory.file("disk.img"), off_t(start + 4096)) == 0)
        let back = try Self.transfer(.read, on: issuer.consumer, at: start, pieces: [6144, 2048], filling: [UInt8](repeating: 0xEE, count: 8192))
        #expect(back.error == nil && back.completed == 8192)
        #expect(Array(back.bytes[..<4096]) == Array(data[..<4096]))
        #expect(Array(back.bytes[4096...]) == zeros(4096))
    }

    @Test(arguments: FileDisk.Engine.runnable)
    func aFailedWriteIsLoggedWithThePathAndDeliveredWithItsErrno(engine: FileDisk.Engine) throws {
        let errors = FailureLog()
        let fixture = try FileDiskFixture(log: { level, message in if level == .error { errors.add(message) } })
        defer { fixture.tearDown() }
        let (_, issuer) = try fixture.open(size: 1 << 20, engine: engine)
        let path = fixture.directory.file("disk.img")
        try issuer.write(pattern(count: 4096, at: 0), at: 0)
        // Put a read-only descriptor of the same file where the disk's own is: reads go
        // on working and every write fails in the kernel with EBADF.
        let descriptor = try #require(Self.descriptor(of: path))
        let readOnly = open(path, O_RDONLY | O_CLOEXEC)
        #expect(readOnly >= 0 && dup2(readOnly, descriptor) == descriptor)
        close(readOnly)

        let failed = try Self.transfer(.write, on: issuer.consumer, at: 4096, pieces: [4096], filling: pattern(count: 4096, at: 4096))
        #expect(failed.error == BioError(errno: EBADF))
        #expect(errors.all == ["pwrite \(path) at 4096+4096: \(BioError(errno: EBADF))"])
        #expect(try issuer.bytes(at: 0, count: 4096) == pattern(count: 4096, at: 0))
        try issuer.flush()
    }

    @Test(.enabled(if: FileDisk.isUringAvailable, "needs io_uring"))
    func requestsBeyondWhatTheRingHoldsWaitTheirTurnAndEachCompletesOnce() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 8 << 20, engine: .uring)
        let ring = try #require(disk.ring)
        // With completions held in the kernel's ring, the first 256 writes fill it and
        // the other 44 must wait their turn; then all complete, each once, in any order.
        let count = Int(FileRing.entries) + 44
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: count * 4096, alignment: 4096)
        defer { source.deallocate() }
        let ledger = CompletionLedger(capacity: count)
        let finished = Countdown(count)
        ring.holdingCompletions = true
        for index in 0..<count {
            let offset = Int64(index) * 8192
            let block = UnsafeMutableRawBufferPointer(rebasing: source[(index * 4096)..<((index + 1) * 4096)])
            fillPattern(block, at: offset, seed: 9)
            FileDiskConcurrency.issue(.write, on: issuer.consumer, offset: offset, length: 4096, buffer: block,
                                      flags: index % 2 == 0 ? .fua : [], id: index, ledger: ledger, latch: finished)
        }
        #expect(ring.mostWaiting == 44)
        #expect(ledger.total == 0, "\(ledger.total) requests completed while completions were held")
        ring.holdingCompletions = false
        #expect(finished.wait(seconds: 120), "not every write completed")
        #expect(ledger.anomalies.isEmpty, "requests completed other than once: \(ledger.anomalies.prefix(8))")
        #expect(ledger.errors == 0, "\(ledger.errors) writes failed")
        for index in stride(from: 0, to: count, by: 13) {
            let offset = Int64(index) * 8192
            #expect(try issuer.bytes(at: offset, count: 4096) == pattern(count: 4096, at: offset, seed: 9))
        }
    }

    @Test(.enabled(if: FileDisk.isUringAvailable, "needs io_uring"))
    func requestsUnderAPlugEnterTheRingOnceForEachRunOfThem() throws {
        let fixtureA = try FileDiskFixture()
        let fixtureB = try FileDiskFixture()
        defer {
            fixtureA.tearDown()
            fixtureB.tearDown()
        }
        let (diskA, issuerA) = try fixtureA.open(size: 8 << 20, engine: .uring)
        let (diskB, issuerB) = try fixtureB.open(size: 8 << 20, engine: .uring)
        let ringA = try #require(diskA.ring)
        let ringB = try #require(diskB.ring)
        // Eight writes to A, one to B, eight more to A, under one plug: none is sent
        // before the plug ends, and then A's ring is entered once for each run of its
        // requests, B's once; each write completes once, with its data.
        let count = 17
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: count * 4096, alignment: 4096)
        defer { source.deallocate() }
        let ledger = CompletionLedger(capacity: count)
        let finished = Countdown(count)
        let enteredBefore = (ringA.enterCount, ringB.enterCount)
        var completedUnderPlug = -1
        BioPlug.withPlug {
            for index in 0..<count {
                let offset = Int64(index) * 8192
                let block = UnsafeMutableRawBufferPointer(rebasing: source[(index * 4096)..<((index + 1) * 4096)])
                fillPattern(block, at: offset, seed: 5)
                FileDiskConcurrency.issue(.write, on: index == 8 ? issuerB.consumer : issuerA.consumer, offset: offset,
                                          length: 4096, buffer: block, flags: [], id: index, ledger: ledger, latch: finished)
            }
            completedUnderPlug = ledger.total
        }
        #expect(completedUnderPlug == 0)
        #expect(finished.wait(seconds: 120), "not every write completed")
        #expect(ledger.anomalies.isEmpty, "requests completed other than once: \(ledger.anomalies.prefix(8))")
        #expect(ledger.errors == 0)
        #expect(ringA.enterCount - enteredBefore.0 == 2)
        #expect(ringB.enterCount - enteredBefore.1 == 1)
        for index in 0..<count {
            let offset = Int64(index) * 8192
            let issuer = index == 8 ? issuerB : issuerA
            #expect(try issuer.bytes(at: offset, count: 4096) == pattern(count: 4096, at: offset, seed: 5), "write \(index)")
        }
    }

    // MARK: Helpers

    /// The outcome of one request: its error, bytes completed and buffer afterwards.
    struct Transfer {
        var error: BioError?
        var completed: Int64
        var bytes: [UInt8]
    }

    /// Sends one READ or WRITE whose buffer is split into `pieces` separate segments,
    /// each starting `shift` bytes past a page, first filled with `filling`, and waits
    /// for it.
    static func transfer(_ command: BioCommand, on consumer: Consumer, at offset: Int64, pieces: [Int],
                         shift: Int = 0, filling: [UInt8]) throws -> Transfer {
        precondition(pieces.reduce(0, +) == filling.count)
        let allocations = pieces.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0 + shift, alignment: 4096) }
        defer { allocations.forEach { $0.deallocate() } }
        let buffers = zip(allocations, pieces).map { UnsafeMutableRawBufferPointer(rebasing: $0[shift..<(shift + $1)]) }
        var at = 0
        for buffer in buffers {
            buffer.copyBytes(from: filling[at..<at + buffer.count])
            at += buffer.count
        }
        let bio = AnyBioSet.shared.alloc(segments: pieces.count)
        bio.command = command
        bio.offset = offset
        bio.length = Int64(filling.count)
        for buffer in buffers { bio.appendSegment(buffer) }
        let finished = DispatchSemaphore(value: 0)
        let outcome = Mutex<(BioError?, Int64)>((nil, 0))
        bio.done = .closure { done in
            let result = (done.error, done.completed)
            done.destroy()
            outcome.withLock { $0 = result }
            finished.signal()
        }
        consumer.request(bio)
        #expect(finished.wait(timeout: .now() + 60) == .success, "the request never completed")
        let (error, completed) = outcome.withLock { $0 }
        return Transfer(error: error, completed: completed, bytes: buffers.flatMap { Array($0) })
    }

    /// The file system type /proc/mounts gives for the mount point `path`.
    static func mountType(of path: String) -> String? {
        guard let mounts = readFile("/proc/mounts") else { return nil }
        for line in String(decoding: mounts, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 2 && fields[1] == path { return String(fields[2]) }
        }
        return nil
    }

    /// The number of this process's descriptor open on `path`.
    static func descriptor(of path: String) -> Int32? {
        guard let directory = opendir("/proc/self/fd") else { return nil }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let number = Int32(name) else { continue }
            var target = [CChar](repeating: 0, count: 4096)
            let length = readlink("/proc/self/fd/\(name)", &target, target.count - 1)
            guard length > 0 else { continue }
            if String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) == path { return number }
        }
        return nil
    }
}
