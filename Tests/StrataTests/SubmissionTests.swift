import Strata
import StrataDisks
import Synchronization
import Testing

/// Submission turns recursion into iteration (generic_make_request): stack depth does
/// not grow with the height of the stack, lower layers run first, and queued dispatch
/// serves classes that ask for it.
@Suite struct SubmissionTests {
    /// Address of a local in the caller's frame: a reading of the stack pointer.
    @inline(never) static func stackAddress() -> UInt {
        var marker = 0
        return withUnsafeMutablePointer(to: &marker) { UInt(bitPattern: $0) }
    }

    /// Builds `height` pass-through geoms over a probe that records the stack depth of
    /// its start relative to the issuer, then sends one request down and back.
    static func stackDepth(height: Int, onThreadWithStack stackSize: Int) throws -> (startDepth: Int, doneDepth: Int, error: BioError?) {
        let topology = Topology()
        let base = Atomic<UInt>(0)
        let startDepth = Atomic<Int>(-1)
        let probe = try ProbeGeom.install(in: topology, name: "depth-probe") { bio in
            startDepth.store(Int(bitPattern: base.load(ordering: .relaxed) &- SubmissionTests.stackAddress()), ordering: .relaxed)
            bio.deliverAll()
        }
        var top = probe.providers[0]
        for level in 0..<height {
            top = try PassThroughGeom.stack(on: top, in: topology, name: "pass-\(level)").providers[0]
        }
        let issuer = try TestIssuer(on: top, in: topology)
        let doneDepth = Atomic<Int>(-1)
        let failure = ProbeRecord()
        let finished = Gate()
        startWorkerThread(stackSize: stackSize) {
            base.store(SubmissionTests.stackAddress(), ordering: .relaxed)
            let bio = AnyBioSet.shared.alloc()
            bio.command = .flush
            bio.done = .closure { done in
                doneDepth.store(Int(bitPattern: base.load(ordering: .relaxed) &- SubmissionTests.stackAddress()), ordering: .relaxed)
                failure.text = done.error?.name ?? ""
                done.destroy()
                finished.open()
            }
            issuer.consumer.request(bio)
        }
        #expect(finished.wait())
        let error: BioError? = failure.text.isEmpty ? nil : .io
        return (startDepth.load(ordering: .relaxed), doneDepth.load(ordering: .relaxed), error)
    }

    @Test func aThousandLayersDoNotGrowTheCallStack() throws {
        let shallow = try Self.stackDepth(height: 1, onThreadWithStack: 1 << 20)
        // 256 KiB of stack: recursion through a thousand layers down and up would need
        // several times that.
        let deep = try Self.stackDepth(height: 1000, onThreadWithStack: 256 << 10)
        #expect(shallow.error == nil && deep.error == nil)
        #expect(deep.startDepth > 0 && deep.doneDepth > 0)
        #expect(deep.startDepth == shallow.startDepth, "start runs at the same depth whatever the height")
        #expect(deep.doneDepth == shallow.doneDepth, "done runs at the same depth whatever the height")
    }

    @Test func lowerLayersRunBeforeRequestsWaitingAtTheSameLevel() throws {
        let topology = Topology()
        let order = ProbeRecord()
        let log = Mutex<[String]>([])
        let bottom = try ProbeGeom.install(in: topology, name: "order-bottom", size: 1 << 20) { bio in
            log.withLock { $0.append("bottom \(bio.offset)") }
            bio.deliverAll()
        }
        let middle = try FanOutGeom.stack(on: bottom.providers[0], in: topology, name: "order-middle", pieces: 2)
        middle.onStart = { offset in log.withLock { $0.append("middle \(offset)") } }
        let top = try FanOutGeom.stack(on: middle.providers[0], in: topology, name: "order-top", pieces: 2)
        try topology.access(top.consumers[0], read: 1, write: 1, exclusive: 0)
        let issuer = try TestIssuer(on: top.providers[0], in: topology)
        #expect(issuer.consumer.outcome(.delete, offset: 0, length: 4096).error == nil)
        order.text = log.withLock { $0.joined(separator: ", ") }
        // Depth first: both pieces of the first half reach the bottom before the second
        // half is split (breadth first would start the middle twice in a row).
        #expect(order.text == "middle 0, bottom 0, bottom 1024, middle 2048, bottom 2048, bottom 3072")
    }

    @Test func queuedDispatchRunsStartAndDoneOnTheWorkerThreads() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "queued-md", size: 1 << 20)
        let queued = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "queued", dispatch: .queued)
        let issuer = try TestIssuer(on: queued.providers[0], in: topology)
        let buffer = PatternBuffer(count: 4096, seed: 6)
        #expect(issuer.consumer.outcome(.write, offset: 4096, length: 4096, buffer: buffer.bytes).error == nil)
        #expect(try issuer.consumer.readSync(at: 4096, count: 4096) == Array(buffer.bytes))
    }

    @Test func directDispatchRunsStartOnTheSubmittingThread() throws {
        let topology = Topology()
        let submitter = Atomic<UInt>(0)
        let startedOn = Atomic<UInt>(1)
        let probe = try ProbeGeom.install(in: topology, name: "direct-probe") { bio in
            startedOn.store(threadIdentity(), ordering: .relaxed)
            bio.deliverAll()
        }
        let issuer = try TestIssuer(on: probe.providers[0], in: topology)
        submitter.store(threadIdentity(), ordering: .relaxed)
        #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
        let same = submitter.load(ordering: .relaxed) == startedOn.load(ordering: .relaxed)
        #expect(same)
    }
}
