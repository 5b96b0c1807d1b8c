import Foundation
import Strata
import StrataClasses
import StrataDisks
import Testing

/// GPT updates under power cuts: a table made, partitions added and deleted through a
/// power-cut disk; at every crash point the disk must read as the table before the
/// update in progress or after it, never as damaged.
@Suite struct GPTCrashTests {
    /// What a table says, whichever copy it was read from.
    struct Contents: Equatable {
        let diskGUID: GUID?
        let partitions: [Partition]

        init?(_ table: PartitionTable?) {
            guard let table else { return nil }
            (diskGUID, partitions) = (table.diskGUID, table.partitions)
        }
    }

    /// One update: where it began and was acknowledged in the log, and the table after.
    struct Update {
        let name: String
        let start: Int
        let acknowledged: Int
        let after: Contents?
    }

    /// Makes a table on a power-cut disk and changes it; returns the log and each update.
    static func recordUpdates(sectorSize: Int = 512) throws -> (PowerCutLog, [Update]) {
        let topology = Topology()
        defer { topology.shutdown() }
        let log = PowerCutLog()
        let disk = try PowerCutDisk.create(in: topology, name: "g0", size: 8 << 20, sectorSize: sectorSize, log: log)
        let writer = Geom(name: "gpt-writer", className: "TEST")
        try topology.add(writer)
        let consumer = topology.createConsumer(for: writer)
        try topology.attach(consumer, to: disk.provider)
        try topology.access(consumer, read: 1, write: 1, exclusive: 0)
        defer { try? topology.access(consumer, read: -1, write: -1, exclusive: 0) }
        let sector = Int64(sectorSize)
        let sectors = disk.provider.mediaSize / sector
        let read: (Int64, Int) throws -> [UInt8] = { try consumer.readSync(at: $0 * sector, count: $1 * sectorSize) }
        let write: (Int64, [UInt8]) throws -> Void = { try consumer.writeSync($1, at: $0 * sector) }
        let flush: () throws -> Void = { try consumer.performSync(.flush, offset: 0, length: 0) }
        var updates = [Update(name: "blank", start: 0, acknowledged: 0, after: nil)]
        func update(_ name: String, _ body: () throws -> Void) throws {
            let start = log.count
            try body()
            let table = try PartitionTable.read(sectorSize: sectorSize, sectors: sectors, read: read)
            updates.append(Update(name: name, start: start, acknowledged: log.count, after: Contents(table)))
        }
        try update("create") { try GPTWriter.create(sectorSize: sectorSize, sectors: sectors, write: write, flush: flush) }
        try update("add root") {
            _ = try GPTWriter.add(type: .linuxData, name: "root", size: 2 << 20, sectorSize: sectorSize, sectors: sectors,
                                  read: read, write: write, flush: flush)
        }
        try update("add esp") {
            _ = try GPTWriter.add(type: .efiSystem, name: "esp", size: 1 << 20, sectorSize: sectorSize, sectors: sectors,
                                  read: read, write: write, flush: flush)
        }
        try update("delete root") {
            try GPTWriter.delete(number: 1, sectorSize: sectorSize, sectors: sectors, read: read, write: write, flush: flush)
        }
        try update("add data") {
            _ = try GPTWriter.add(type: .linuxData, name: "data", size: 3 << 20, sectorSize: sectorSize, sectors: sectors,
                                  read: read, write: write, flush: flush)
        }
        return (log, updates)
    }

    /// What is wrong with the table a fresh machine tastes after the power cut `state`.
    static func problem(after state: CrashState, of log: PowerCutLog, updates: [Update]) throws -> String? {
        let done = updates.lastIndex { $0.acknowledged <= state.point }!
        var allowed = [updates[done]]
        if done + 1 < updates.count && updates[done + 1].start < state.point { allowed.append(updates[done + 1]) }
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try log.restore(state, in: topology)[0]
        let table: PartitionTable?
        do {
            table = try PartGeom.readTable(of: disk.provider, in: topology)
        } catch {
            return "\(state): the table is damaged (\(error)); it should read as \(allowed.map(\.name).joined(separator: " or "))"
        }
        guard allowed.contains(where: { $0.after == Contents(table) }) else {
            let found = table.map { "partitions \($0.partitions.map(\.name))" } ?? "no table"
            return "\(state): the table reads as none of \(allowed.map(\.name).joined(separator: ", ")): \(found)"
        }
        return nil
    }

    /// A change to the table is written as entry arrays, then headers. The state a
    /// volatile cache leaves most often after a cut in the middle of it: the big entry
    /// arrays written, the header sectors not.
    @Test func entryArraysWrittenWithoutTheirHeadersLeaveTheOldTable() throws {
        let (log, updates) = try Self.recordUpdates()
        let entryArrayLength = Int64(128 * 128)
        var failures: [String] = []
        for point in 0...log.count {
            let unflushed = try log.unflushed(at: point)
            let entries = log.entries
            let arrays = unflushed.filter { entries[$0].length == entryArrayLength }
            let state = CrashState(point: point, subset: CrashSubset(whole: Set(arrays)))
            if let problem = try Self.problem(after: state, of: log, updates: updates) { failures.append(problem) }
        }
        #expect(failures.isEmpty, "\(failures.prefix(5).joined(separator: "\n"))")
    }

    @Test(arguments: [512, 4096])
    func everyCrashPointOfATableUpdateReadsAsTheOldTableOrTheNew(sectorSize: Int) throws {
        let (log, updates) = try Self.recordUpdates(sectorSize: sectorSize)
        #expect(updates.map(\.after?.partitions.count) == [nil, 0, 1, 2, 1, 2])
        let states = try log.crashStates(at: 0...log.count, subsetsPerPoint: 12, seed: 7_2026)
        var failures: [String] = []
        for state in states {
            if let problem = try Self.problem(after: state, of: log, updates: updates), failures.count < 5 {
                failures.append(problem)
            }
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        // Few changes are ever unflushed at once (the writer flushes between copies), so
        // fewer distinct subsets exist than were asked for.
        #expect(states.count >= 100, "\(states.count) crash states at \(log.count + 1) points")
    }
}
