import Foundation
import Strata
@testable import StrataClasses
import StrataDisks
import Testing

/// A thin pool under power cuts: a scripted workload (create, write, snapshot, overwrite,
/// clone, FUA, TRIM, delete, flush) on a pool over a power-cut disk, then at every write
/// boundary, with several subsets of the unflushed writes lost, the pool is reopened and
/// checked: its metadata sound, the volumes of the last acknowledged verb there, every
/// flushed write on every volume, a snapshot exactly its point in time.
@Suite struct ThinCrashTests {
    static let poolSize: Int64 = 8 << 20
    static let volumeSize = 2 << 20

    /// What a volume's workload did, and what a snapshot must hold.
    final class Run: @unchecked Sendable {
        let log = PowerCutLog()
        let topology = Topology()
        private(set) var pool: ThinPoolGeom!
        /// Each volume's writes (TRIM as zeros) and the pool's commits.
        var records: [String: WorkloadRecord] = [:]
        /// The exact contents of snapshots, by name.
        var snapshots: [String: [UInt8]] = [:]
        /// Log positions at which a verb was acknowledged, and the volumes after it.
        var verbs: [(acknowledged: Int, volumes: Set<String>)] = []
        private var consumers: [String: Consumer] = [:]
        private var contents: [String: [UInt8]] = [:]
        private var seed = 0

        func setUp() throws {
            let disk = try PowerCutDisk.create(in: topology, name: "pc", size: ThinCrashTests.poolSize, log: log)
            pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider],
                                           settings: [("chunk-size", "4k"), ("metadata-size", "1m")], relativeTo: "/",
                                           in: topology) as? ThinPoolGeom
        }

        private func consumer(_ volume: String) throws -> Consumer {
            if let consumer = consumers[volume] { return consumer }
            let geom = Geom(name: "crash-writer-\(volume)", className: "TEST")
            try topology.add(geom)
            let consumer = topology.createConsumer(for: geom)
            try topology.attach(consumer, to: topology.provider(named: "tp/\(volume)")!)
            try topology.access(consumer, read: 1, write: 1, exclusive: 0)
            consumers[volume] = consumer
            return consumer
        }

        private func verb(_ body: () throws -> Void) throws {
            let start = log.count
            try body()
            // A verb commits: every write acknowledged before it is durable.
            for record in records.values { record.record(.init(start: start, acknowledged: log.count)) }
            verbs.append((log.count, Set(try pool.list().volumes.map(\.name))))
        }

        func create(_ name: String) throws {
            try verb { _ = try pool.create(name, size: Int64(ThinCrashTests.volumeSize), in: topology) }
            records[name] = WorkloadRecord(sectorSize: 512)
            contents[name] = [UInt8](repeating: 0, count: ThinCrashTests.volumeSize)
        }

        func snapshot(_ volume: String, _ name: String) throws {
            try verb { _ = try pool.share(volume, as: name, snapshot: true, in: topology) }
            snapshots[name] = contents[volume]
        }

        func clone(_ snapshot: String, _ name: String) throws {
            try verb { _ = try pool.share(snapshot, as: name, snapshot: false, in: topology) }
            // The clone's record starts from the snapshot's contents: written as one
            // durable write at the start.
            let record = WorkloadRecord(sectorSize: 512)
            record.record(.init(offset: 0, data: snapshots[snapshot]!, fua: true, start: 0, acknowledged: 0))
            records[name] = record
            contents[name] = snapshots[snapshot]
        }

        func delete(_ name: String) throws {
            if let consumer = consumers.removeValue(forKey: name) {
                try? topology.access(consumer, read: -1, write: -1, exclusive: 0)
                topology.wither(consumer.geom)
                topology.settle()
            }
            try verb { _ = try pool.delete(name, force: false, in: topology) }
            records[name] = nil
            snapshots[name] = nil
        }

        func write(_ volume: String, _ offset: Int, _ count: Int, fua: Bool = false) throws {
            seed += 1
            let data = placedPattern(count, at: Int64(offset), seed: seed)
            let start = log.count
            try consumer(volume).writeSync(data, at: Int64(offset), flags: fua ? .fua : [])
            records[volume]!.record(.init(offset: Int64(offset), data: data, fua: fua, start: start, acknowledged: log.count))
            contents[volume]!.replaceSubrange(offset..<(offset + count), with: data)
        }

        func trim(_ volume: String, _ offset: Int, _ count: Int) throws {
            let start = log.count
            try consumer(volume).performSync(.delete, offset: Int64(offset), length: Int64(count))
            let zeros = [UInt8](repeating: 0, count: count)
            records[volume]!.record(.init(offset: Int64(offset), data: zeros, fua: false, start: start, acknowledged: log.count))
            contents[volume]!.replaceSubrange(offset..<(offset + count), with: zeros)
        }

        func flush(_ volume: String) throws {
            let start = log.count
            try consumer(volume).performSync(.flush, offset: 0, length: 0)
            // A flush commits the whole pool.
            for record in records.values { record.record(.init(start: start, acknowledged: log.count)) }
        }

        func finish() {
            for consumer in consumers.values { try? topology.access(consumer, read: -1, write: -1, exclusive: 0) }
            topology.shutdown()
        }
    }

    static func workload() throws -> Run {
        let run = Run()
        try run.setUp()
        let k = 4096
        try run.create("vm1")
        try run.write("vm1", 0, 3 * k)
        try run.write("vm1", 40 * k + 512, 9 * k)
        try run.write("vm1", 200 * k, k)
        try run.flush("vm1")
        try run.write("vm1", 100 * k, 2 * k)
        try run.snapshot("vm1", "s1")
        try run.write("vm1", k + 1024, 2048)
        try run.write("vm1", 41 * k, 4 * k)
        try run.write("vm1", 210 * k, 8 * k, fua: true)
        try run.clone("s1", "c1")
        try run.write("c1", 0, 6 * k)
        try run.write("c1", 100 * k, k, fua: true)
        try run.create("vm2")
        try run.write("vm2", 50 * k, 16 * k)
        try run.flush("vm2")
        try run.trim("vm1", 40 * k, 6 * k)
        try run.write("vm1", 250 * k, 3 * k)
        try run.snapshot("c1", "c1s")
        try run.write("c1", 2 * k, 2 * k)
        try run.flush("c1")
        try run.delete("s1")
        try run.write("vm2", 52 * k, k)
        try run.trim("vm2", 48 * k, 20 * k)
        try run.write("vm1", 0, k)
        try run.flush("vm1")
        try run.write("vm1", 255 * k, 2 * k)
        // Rounds of scattered writes, flushes, and snapshots taken and dropped.
        var generator = SplitMix(seed: 2026_1204)
        for round in 0..<60 {
            let volume = ["vm1", "vm2", "c1"][round % 3]
            let offset = Int(generator.next() % UInt64(volumeSize / 512 - 16)) * 512
            try run.write(volume, offset, Int(1 + generator.next() % 16) * 512, fua: round % 11 == 0)
            if round % 7 == 6 { try run.flush(volume) }
            if round % 13 == 12 {
                try run.snapshot(volume, "r\(round)")
                if round >= 25 { try run.delete("r\(round - 13)") }
            }
            if round % 17 == 16 { try run.trim(volume, offset / 4096 * 4096, 8 * k) }
        }
        run.finish()
        return run
    }

    /// Reproducible pseudo-random numbers for the workload's offsets.
    struct SplitMix {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var value = state
            value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
            value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
            return value ^ (value >> 31)
        }
    }

    /// What is wrong with the pool a restart finds after the power cut `state`.
    static func problems(after state: CrashState, of run: Run) throws -> [String] {
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try run.log.restore(state, in: topology)[0]
        let pool: ThinPoolGeom
        do {
            pool = try ThinDefinition.make(name: "tp", consumers: [disk.provider], settings: [], relativeTo: "/", in: topology) as! ThinPoolGeom
        } catch {
            return ["\(state): the pool does not open: \(error)"]
        }
        var problems: [String] = []
        let check = try pool.check()
        problems += check.problems.map { "\(state): check: \($0)" }
        let names = Set(try pool.list().volumes.map(\.name))
        // The volumes are those of a verb at or after the last one acknowledged.
        let done = run.verbs.lastIndex { $0.acknowledged <= state.point }
        let allowed = run.verbs[(done ?? 0)...].map(\.volumes) + (done == nil ? [[]] : [])
        if !allowed.contains(names) { problems.append("\(state): the pool has \(names.sorted()), none of \(allowed.map { $0.sorted() })") }
        for name in names {
            let reader = try Reader(topology.provider(named: "tp/\(name)")!, in: topology)
            defer { reader.close() }
            var bytes = [UInt8](repeating: 0, count: volumeSize)
            try reader.read(into: &bytes, 0..<volumeSize)
            if let snapshot = run.snapshots[name] {
                if bytes != snapshot { problems.append("\(state): snapshot \(name) is not its point in time") }
            } else if let record = run.records[name], done.map({ run.verbs[$0].volumes.contains(name) }) ?? false {
                problems += record.problems(in: bytes, at: state.point).map { "\(state): \(name): \($0)" }
            }
        }
        return problems
    }

    /// Runs `body` on a thread of its own, so that a minute of synchronous work does not
    /// hold one of the few cooperative threads the asynchronous suites beside it need.
    static func onItsOwnThread<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    @Test func everyCrashPointLeavesASoundPoolWithEveryFlushedWrite() async throws {
        let run = try await Self.onItsOwnThread { try Self.workload() }
        #expect(run.log.count > 300, "the workload wrote \(run.log.count) times")
        let states = try run.log.crashStates(at: 0...run.log.count, subsetsPerPoint: 3, seed: 2026_1204)
        let failures = try await Self.onItsOwnThread {
            var failures: [String] = []
            for state in states {
                failures += try Self.problems(after: state, of: run)
                if failures.count >= 5 { break }
            }
            return failures
        }
        #expect(failures.isEmpty, "\(failures.prefix(5).joined(separator: "\n"))")
        #expect(states.count >= 600, "\(states.count) crash states at \(run.log.count + 1) points")
    }
}
