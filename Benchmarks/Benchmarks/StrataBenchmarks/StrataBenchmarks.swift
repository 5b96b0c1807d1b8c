import Benchmark
import NIOCore
import Strata
import StrataConfig
import StrataEli
import StrataNBD
import StrataNBDProtocol

// Each benchmark runs 1000 operations per iteration (`scalingFactor: .kilo`), so the
// figures are per operation, and the malloc count of an iteration (counted between
// startMeasurement and stopMeasurement) is that of 1000 operations in steady state.
// `scripts/check` holds every benchmark to its checked-in count (Thresholds/): zero.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .instructions, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 10_000
    )

    // Everything a benchmark uses is made here, once: each closure runs once per
    // iteration and measures only the operations it drives.
    let set = BioSet<NoPad>(name: "bench", reserve: 64)
    Benchmark("RequestAllocateFree") { benchmark in
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let bio = set.alloc()
            bio.destroy()
        }
        benchmark.stopMeasurement()
    }

    let oneLayer = try! Stack("""
        disks:
          - {name: z, null: 1GiB}
        geoms:
          - {name: n1, class: nop, consumers: [z]}
        """)
    let threeLayers = try! Stack("""
        disks:
          - {name: z, null: 1GiB}
        geoms:
          - {name: n1, class: nop, consumers: [z]}
          - {name: n2, class: nop, consumers: [n1]}
          - {name: n3, class: nop, consumers: [n2]}
        """)
    let stripeStack = try! Stack("""
        disks:
          - {name: m0, memory: 64MiB}
          - {name: m1, memory: 64MiB}
        geoms:
          - {name: s0, class: stripe, consumers: [m0, m1], stripe-size: 64KiB}
          - {name: n0, class: nop, consumers: [s0]}
        """, fill: "n0")
    let mirrorStack = try! Stack("""
        disks:
          - {name: d0, memory: 64MiB}
          - {name: d1, memory: 64MiB}
        geoms:
          - {name: mr, class: mirror, consumers: [d0, d1]}
        """, fill: "mr")
    // A thin volume, every chunk allocated, over a memory disk; and a memory disk of the
    // same size read directly, for the ratio.
    let memoryStack = try! Stack("""
        disks:
          - {name: m0, memory: 256MiB}
        """, fill: "m0")
    let thinStack = try! Stack("""
        disks:
          - {name: m1, memory: 272MiB}
        geoms:
          - {name: tp, class: thin, consumers: [m1], volumes: "vm1:256m"}
        """, allocate: "tp/vm1")
    let nopNull = Driver(oneLayer, "n1", depth: 1, blockSize: 4096)
    let nopNopNopNull = Driver(threeLayers, "n3", depth: 1, blockSize: 4096)
    let nopStripeMemory = Driver(stripeStack, "n0", depth: 32, blockSize: 4096)
    let nopStripeMemoryPlugged = Driver(stripeStack, "n0", depth: 32, blockSize: 4096, plugged: true)
    // 128 KiB over 64 KiB stripes: every request is split in two clones.
    let stripeSplit = Driver(stripeStack, "n0", depth: 8, blockSize: 128 << 10)
    let mirrorReads = Driver(mirrorStack, "mr", depth: 32, blockSize: 4096)
    let mirrorWrites = Driver(mirrorStack, "mr", depth: 32, blockSize: 4096, command: .write)

    /// A benchmark of `driver` completing as many requests as the iteration counts.
    func drive(_ name: String, _ driver: Driver) {
        Benchmark(name) { benchmark in
            benchmark.startMeasurement()
            driver.run(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        }
    }

    // One pass-through layer: nop clones the request, the null disk delivers the clone,
    // g_std_done folds it into the parent and delivers that.
    drive("CloneDeliver.Read4K.NopNull", nopNull)
    drive("Read4K.NopNopNopNull.QD1", nopNopNopNull)
    drive("RandRead4K.NopStripeMemory.QD32", nopStripeMemory)
    // The same under a plug: the memory disk puts each read off and copies at the plug's
    // end, with its source already on the way (BioPlug).
    drive("RandRead4K.NopStripeMemory.QD32.Plugged", nopStripeMemoryPlugged)
    drive("Read128K.NopStripeMemory.Split", stripeSplit)
    // A mirror of two memory disks: a read goes to one component, a write to both.
    drive("RandRead4K.Mirror.QD32", mirrorReads)
    drive("RandWrite4K.Mirror.QD32", mirrorWrites)
    // A thin volume's reads and in-place writes: mapped through the volume's tree,
    // without a lock, against the same reads of a memory disk.
    drive("RandRead4K.Memory.QD32", Driver(memoryStack, "m0", depth: 32, blockSize: 4096))
    drive("RandRead4K.Thin.QD32", Driver(thinStack, "tp/vm1", depth: 32, blockSize: 4096))
    drive("RandWrite4K.Thin.QD32", Driver(thinStack, "tp/vm1", depth: 32, blockSize: 4096, command: .write))

    // An eli geom (AES-256-XTS, 512-byte sectors) over a memory disk, its payload written
    // whole: a read is decrypted in the caller's buffer as it completes, a write is
    // encrypted into a buffer of the thread's, which comes back to the thread's cache.
    let eliStack = try! Stack("""
        disks:
          - {name: m0, memory: 80MiB}
        """, eliOver: "m0")
    drive("RandRead4K.EliMemory.QD32", Driver(eliStack, "e0", depth: 32, blockSize: 4096))
    drive("RandWrite4K.EliMemory.QD32", Driver(eliStack, "e0", depth: 32, blockSize: 4096, command: .write))

    // The cipher alone, as eli runs it and as `openssl speed -evp aes-256-xts` times
    // OpenSSL's own: 4 KiB at a time in place, in 512-byte sectors (a tweak each, the
    // tweaks numbered on from one operation to the next) or as one 4096-byte sector.
    // `scripts/eli-figures` sets these against `openssl speed` in one run.
    let xtsKey = SecretBytes(copying: (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) })
    let xts = try! XTSCipher(key: xtsKey)
    let xtsBuffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
    xtsBuffer.initializeMemory(as: UInt8.self, repeating: 0xA5, count: 4096)
    for sectorSize in [512, 4096] {
        for encrypting in [true, false] {
            Benchmark("XTS.\(encrypting ? "Encrypt" : "Decrypt")4K.Sectors\(sectorSize)") { benchmark in
                var sector: UInt64 = 0
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations {
                    if encrypting {
                        xts.encrypt(xtsBuffer, to: xtsBuffer, count: 4096, sectorSize: sectorSize, firstSector: sector,
                                    sectorStep: UInt64(sectorSize / 512))
                    } else {
                        xts.decrypt(xtsBuffer, to: xtsBuffer, count: 4096, sectorSize: sectorSize, firstSector: sector,
                                    sectorStep: UInt64(sectorSize / 512))
                    }
                    sector &+= 8
                }
                benchmark.stopMeasurement()
            }
        }
    }

    // 1000 requests as a client sends them: reads, and writes with 4 KiB payloads.
    var wire = ByteBufferAllocator().buffer(capacity: 1000 * (28 + 2048))
    for index in 0..<1000 {
        let write = index % 2 == 1
        wire.writeInteger(NBDMagic.request)
        wire.writeInteger(UInt16(0))
        wire.writeInteger(write ? NBDCommand.write.rawValue : NBDCommand.read.rawValue)
        wire.writeInteger(UInt64(index))
        wire.writeInteger(UInt64(index) * 4096)
        wire.writeInteger(UInt32(4096))
        if write { wire.writeRepeatingByte(0x5A, count: 4096) }
    }
    let requests = wire
    Benchmark("NBD.RequestDecoder") { benchmark in
        let session = NBDSessionPhase(.transmission(extendedHeaders: false))
        var decoder = NBDServerDecoder(session: session)
        benchmark.startMeasurement()
        var input = requests
        var decoded = 0
        while let message = try decoder.decode(buffer: &input) {
            blackHole(message)
            decoded += 1
        }
        benchmark.stopMeasurement()
        precondition(decoded == benchmark.scaledIterations.count, "decoded \(decoded) of 1000 requests")
    }

    Benchmark("NBD.ReplyEncoder") { benchmark in
        var out = ByteBufferAllocator().buffer(capacity: 64 * 1024)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            out.clear()
            out.writeNBDSimpleReply(error: 0, cookie: 7)
            out.writeNBDChunkHeader(extended: false, flags: 0, type: .offsetData, cookie: 8, requestOffset: 0, length: 4104)
            out.writeInteger(UInt64(4096))
            blackHole(out.readableBytes)
        }
        benchmark.stopMeasurement()
    }

    // A request through the server's connection handler, from the bytes a client sends
    // to the reply it reads: decoding, the bio request to a memory disk, the reply.
    // Each iteration serves 1000 requests after warming the connection's buffers.
    let readConnection = try! EmbeddedConnection(writes: false)
    let writeConnection = try! EmbeddedConnection(writes: true)
    for (name, connection) in [("NBD.Connection.Read4K.QD32", readConnection), ("NBD.Connection.Write4K.QD32", writeConnection)] {
        Benchmark(name) { benchmark in
            try connection.run(256)
            benchmark.startMeasurement()
            try connection.run(benchmark.scaledIterations.count)
            benchmark.stopMeasurement()
        }
    }
    // A 1 MiB WRITE arriving in four reads: its payload goes to the memory disk as the
    // reads' four slices (`GatheredPayload`), copied once. One operation is one WRITE.
    let gatheredConnection = try! EmbeddedConnection(writes: true, readsPerLargeWrite: 4)
    Benchmark("NBD.Connection.Write1M.Gathered", configuration: .init(scalingFactor: .one)) { benchmark in
        try gatheredConnection.run(16)
        benchmark.startMeasurement()
        try gatheredConnection.run(benchmark.scaledIterations.count)
        benchmark.stopMeasurement()
    }
}

/// A topology built from YAML, its top provider written once so that reads find data
/// (through the stack: writing the disks themselves would overwrite the classes' labels).
final class Stack: @unchecked Sendable {
    let built: BuiltTopology
    private var devices: [String: BlockDevice] = [:]

    init(_ yaml: String, fill top: String? = nil) throws {
        built = try TopologyBuilder.build(ConfigurationLoader.parse(yaml, file: "bench.yaml", baseDirectory: "/tmp"))
        if let top { Driver(self, top, depth: 32, blockSize: 65536).fill() }
    }

    /// Like `init(_:fill:)` for a provider whose first writes complete on another thread
    /// (a thin volume allocates on its pool's metadata thread): it is written with
    /// synchronous requests, 1 MiB at a time.
    init(_ yaml: String, allocate top: String) throws {
        built = try TopologyBuilder.build(ConfigurationLoader.parse(yaml, file: "bench.yaml", baseDirectory: "/tmp"))
        let consumer = open(top)
        let size = built.topology.provider(named: top)!.mediaSize
        let block = [UInt8](repeating: 0x5A, count: 1 << 20)
        for offset in stride(from: Int64(0), to: size, by: block.count) { try consumer.writeSync(block, at: offset) }
    }

    /// Like `init(_:fill:)` with an eli geom `e0` over provider `below`: `below` is
    /// formatted LUKS2 (AES-256-XTS, 512-byte sectors, PBKDF2 at 1000 iterations so that
    /// setting up takes no time), unlocked, and `e0` written whole.
    init(_ yaml: String, eliOver below: String) throws {
        built = try TopologyBuilder.build(ConfigurationLoader.parse(yaml, file: "bench.yaml", baseDirectory: "/tmp"))
        let topology = built.topology
        let provider = topology.provider(named: below)!
        let passphrase = SecretBytes(copying: Array("strata benchmark".utf8))
        let tool = Geom(name: "luks-format", className: "BENCHTOOL")
        try topology.add(tool)
        let consumer = topology.createConsumer(for: tool)
        try topology.attach(consumer, to: provider)
        try topology.access(consumer, read: 1, write: 1, exclusive: 1)
        _ = try LUKSFormatter.format(ConsumerMedium(consumer: consumer, provider: provider), version: .luks2,
                                     passphrase: passphrase, keySize: 64, sectorSize: 512,
                                     kdf: .pbkdf2(hash: "sha256", iterations: 1000))
        try topology.access(consumer, read: -1, write: -1, exclusive: -1)
        topology.destroy(consumer)
        topology.remove(tool)
        try EliGeom.create(in: topology, name: "e0", over: provider, passphrase: passphrase)
        Driver(self, "e0", depth: 32, blockSize: 65536).fill()
    }

    /// A consumer of provider `name` with read and write access, opened once.
    func open(_ name: String) -> Consumer {
        if let device = devices[name] { return device.consumerForBenchmark }
        let device = try! BlockDevice(opening: built.topology.provider(named: name)!, in: built.topology, writable: true)
        devices[name] = device
        return device.consumerForBenchmark
    }
}

/// Keeps `depth` 4 KiB requests in flight, each re-issued from its own completion,
/// until a count is reached. Null and memory disks complete in the caller's thread, so
/// `run` returns with every request done.
final class Driver: BioDoneHandler, @unchecked Sendable {
    /// Keeps the topology alive as long as requests may be issued into it.
    let stack: Stack
    let consumer: Consumer
    let depth: Int
    let blockSize: Int
    let blocks: UInt64
    private let buffers: UnsafeMutableRawBufferPointer
    private var idle: [UnmanagedBio] = []
    private var random: UInt64 = 0x9E37_79B9_7F4A_7C15
    private var remaining = 0
    private var nextBlock: UInt64 = 0
    private var command = BioCommand.read
    private var sequential = false
    private let plugged: Bool

    /// Drives provider `name` of `stack` with random `command`s (reads or writes), under
    /// a plug (`BioPlug`) when `plugged`.
    init(_ stack: Stack, _ name: String, depth: Int, blockSize: Int, command: BioCommand = .read, plugged: Bool = false) {
        self.stack = stack
        self.plugged = plugged
        consumer = stack.open(name)
        self.depth = depth
        self.blockSize = blockSize
        blocks = UInt64(consumer.provider!.mediaSize) / UInt64(blockSize)
        buffers = .allocate(byteCount: depth * blockSize, alignment: 4096)
        buffers.initializeMemory(as: UInt8.self, repeating: 0xA5)
        self.command = command
        idle.reserveCapacity(depth)
        for slot in 0..<depth {
            let bio = AnyBioSet.shared.alloc(segments: 1)
            bio.caller1 = UnsafeMutableRawPointer(bitPattern: slot + 1)
            idle.append(bio.unmanaged())
        }
    }

    deinit {
        for bio in idle { bio.takeBio().destroy() }
        buffers.deallocate()
    }

    /// Writes every block once, in order, so reads find data rather than holes.
    func fill() {
        let saved = command
        command = .write
        sequential = true
        run(Int(blocks))
        sequential = false
        command = saved
    }

    /// Completes `count` requests.
    func run(_ count: Int) {
        remaining = count
        let starting = min(depth, count)
        remaining -= starting
        if plugged {
            BioPlug.withPlug { issueIdle(starting) }
        } else {
            issueIdle(starting)
        }
        precondition(idle.count == depth, "a disk completed a request on another thread")
    }

    /// Sends `count` of the idle requests.
    private func issueIdle(_ count: Int) {
        for _ in 0..<count { issue(idle.removeLast().takeBio()) }
    }

    private func issue(_ bio: consuming Bio) {
        let slot = Int(bitPattern: bio.caller1) - 1
        let block: UInt64
        if sequential {
            block = nextBlock % blocks
            nextBlock += 1
        } else {
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            block = random % blocks
        }
        bio.reset()
        bio.caller1 = UnsafeMutableRawPointer(bitPattern: slot + 1)
        bio.command = command
        bio.offset = Int64(block) * Int64(blockSize)
        bio.length = Int64(blockSize)
        bio.setData(UnsafeMutableRawBufferPointer(rebasing: buffers[(slot * blockSize)..<((slot + 1) * blockSize)]))
        bio.done = .handler(self)
        consumer.request(bio)
    }

    func bioDone(_ bio: consuming Bio) {
        precondition(bio.error == nil, "\(bio.command) failed")
        if remaining > 0 {
            remaining -= 1
            issue(bio)
        } else {
            idle.append(bio.unmanaged())
        }
    }
}
