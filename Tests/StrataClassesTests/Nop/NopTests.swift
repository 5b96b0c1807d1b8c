import Foundation
import Strata
import StrataClasses
import StrataDisks
import Testing

/// NOP: pass-through at an offset, failure injection, delays, statistics, settings.
@Suite struct NopTests {
    /// A 4 MiB memory disk with a nop over it.
    static func stack(offset: Int64 = 0, size: Int64? = nil, settings: NopGeom.Settings = .init())
        throws -> (Topology, MemoryDisk, NopGeom, BlockDevice) {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "nop-md", size: 4 << 20)
        let nop = try NopGeom.create(in: topology, name: "nop0", over: disk.provider, offset: offset, size: size, settings: settings)
        let device = try BlockDevice(opening: nop.providers[0], in: topology, writable: true)
        return (topology, disk, nop, device)
    }

    static func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 * 31 + Int(seed)) }
    }

    @Test func dataPassesThroughAtTheOffset() async throws {
        let (topology, disk, nop, device) = try Self.stack(offset: 1 << 20)
        defer { device.close(); topology.shutdown() }
        #expect(nop.providers[0].mediaSize == 3 << 20)
        let data = Self.pattern(8192, seed: 5)
        try await device.write(data, at: 4096)
        #expect(try await device.read(at: 4096, count: 8192) == data)
        let below = try BlockDevice(opening: disk.provider, in: topology, writable: false)
        #expect(try await below.read(at: (1 << 20) + 4096, count: 8192) == data, "it landed offset bytes further down")
        below.close()
    }

    @Test func extentsComeBackInTheNopsOwnCoordinates() async throws {
        let (topology, _, _, device) = try Self.stack(offset: 1 << 20)
        defer { device.close(); topology.shutdown() }
        try await device.write(Self.pattern(4096, seed: 1), at: 65536)
        let extents = try await device.extents(at: 0, length: 3 << 20)
        #expect(extents.first == BioExtent(offset: 0, length: 65536, kind: [.hole, .zero]))
        #expect(extents.dropFirst().first == BioExtent(offset: 65536, length: 4096, kind: []))
    }

    @Test func readFailuresHitReadsOnlyWithTheChosenErrno() async throws {
        let (topology, _, nop, device) = try Self.stack(settings: .init(readFailPercent: 100, error: BioError.noSpace.errno))
        defer { device.close(); topology.shutdown() }
        try await device.write(Self.pattern(512, seed: 2), at: 0)
        await #expect(throws: StrataError.self) { _ = try await device.read(at: 0, count: 512) }
        do {
            _ = try await device.read(at: 0, count: 512)
        } catch let error as StrataError {
            #expect(error.code == .noSpace)
        }
        #expect(nop.statistics.failures == 2 && nop.statistics.writes == 1)
    }

    @Test func writeFailuresHitWritesDeletesAndZeroes() async throws {
        let (topology, _, _, device) = try Self.stack(settings: .init(writeFailPercent: 100))
        defer { device.close(); topology.shutdown() }
        await #expect(throws: StrataError.self) { try await device.write(Self.pattern(512, seed: 3), at: 0) }
        await #expect(throws: StrataError.self) { try await device.delete(at: 0, length: 512) }
        await #expect(throws: StrataError.self) { try await device.writeZeroes(at: 0, length: 512) }
        #expect(try await device.read(at: 0, count: 512) == [UInt8](repeating: 0, count: 512))
        try await device.flush()
    }

    @Test func aFailurePercentFailsAboutThatShare() async throws {
        let (topology, _, nop, device) = try Self.stack(settings: .init(readFailPercent: 30))
        defer { device.close(); topology.shutdown() }
        var failures = 0
        for index in 0..<2000 {
            do { _ = try await device.read(at: Int64(index % 64) * 512, count: 512) } catch { failures += 1 }
        }
        #expect((400...800).contains(failures), "\(failures) of 2000 failed at 30%")
        #expect(nop.statistics.failures == failures)
    }

    @Test func countUntilFailLetsThatManyThroughThenFailsEverything() async throws {
        let (topology, _, _, device) = try Self.stack(settings: .init(countUntilFail: 5))
        defer { device.close(); topology.shutdown() }
        for index in 0..<5 { try await device.write(Self.pattern(512, seed: UInt8(index)), at: Int64(index) * 512) }
        await #expect(throws: StrataError.self) { _ = try await device.read(at: 0, count: 512) }
        await #expect(throws: StrataError.self) { try await device.write(Self.pattern(512, seed: 9), at: 0) }
    }

    @Test func aDelayHoldsEachRequest() async throws {
        let (topology, _, _, device) = try Self.stack(settings: .init(delayMilliseconds: 100))
        defer { device.close(); topology.shutdown() }
        let start = ContinuousClock.now
        try await device.write(Self.pattern(512, seed: 4), at: 0)
        #expect(ContinuousClock.now - start >= .milliseconds(100))
    }

    @Test func settingsChangeWhileItRuns() async throws {
        let (topology, _, nop, device) = try Self.stack()
        defer { device.close(); topology.shutdown() }
        try await device.write(Self.pattern(512, seed: 6), at: 0)
        try nop.configure(.init(writeFailPercent: 100, error: BioError.permission.errno))
        do {
            try await device.write(Self.pattern(512, seed: 7), at: 0)
            Issue.record("the write went through after configure")
        } catch let error as StrataError {
            #expect(error.code == .permission)
        }
        try nop.configure(.init())
        try await device.write(Self.pattern(512, seed: 8), at: 0)
        #expect(nop.settings == .init())
    }

    @Test func statisticsCountEachCommand() async throws {
        let (topology, _, nop, device) = try Self.stack()
        defer { device.close(); topology.shutdown() }
        try await device.write(Self.pattern(4096, seed: 1), at: 0)
        _ = try await device.read(at: 0, count: 4096)
        _ = try await device.read(at: 0, count: 512)
        try await device.delete(at: 0, length: 512)
        try await device.flush()
        _ = try await device.ident()
        #expect(nop.statistics == NopGeom.Statistics(reads: 2, writes: 1, deletes: 1, flushes: 1, getattrs: 1,
                                                     bytesRead: 4608, bytesWritten: 4096, failures: 0))
    }

    @Test func theCountsAreTheProvidersAndAnInjectedFailureIsARead() async throws {
        let (topology, _, nop, device) = try Self.stack()
        defer { device.close(); topology.shutdown() }
        try await device.write(Self.pattern(4096, seed: 1), at: 0)
        try nop.configure(.init(readFailPercent: 100))
        await #expect(throws: StrataError.self) { _ = try await device.read(at: 0, count: 4096) }
        // A read past the end is refused at the provider's entry: counted, never started.
        await #expect(throws: StrataError.self) { _ = try await device.read(at: 8 << 20, count: 512) }
        let provider = nop.providers[0].statistics.snapshot
        #expect(nop.statistics == NopGeom.Statistics(reads: 2, writes: 1, bytesWritten: 4096, failures: 1))
        #expect(provider.operations(.read) == 2 && provider.errors(.read) == 2 && provider.bytes(.read) == 0)
        #expect(provider.operations(.write) == 1 && provider.bytes(.write) == 4096)
    }

    @Test func statisticsFromManyThreadsAddUpExactly() async throws {
        // Each thread counts in its own copy; the totals are the sum over them.
        let (topology, _, nop, device) = try Self.stack()
        defer { device.close(); topology.shutdown() }
        let tasks = 8
        let perTask = 200
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    for index in 0..<perTask {
                        let offset = Int64((task * perTask + index) % 1024) * 4096
                        if index % 2 == 0 {
                            _ = try await device.read(at: offset, count: 4096)
                        } else {
                            try await device.write(Self.pattern(512, seed: UInt8(task)), at: offset)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let half = tasks * perTask / 2
        #expect(nop.statistics == NopGeom.Statistics(reads: half, writes: half, bytesRead: half * 4096,
                                                     bytesWritten: half * 512))
    }

    @Test(arguments: [
        (NopGeom.Settings(readFailPercent: 101), "read-fail-percent '101': must be a whole number from 0 to 100"),
        (NopGeom.Settings(writeFailPercent: -1), "write-fail-percent '-1': must be a whole number from 0 to 100"),
        (NopGeom.Settings(error: 0), "error '0': must be a whole number from 1 to 4095"),
        (NopGeom.Settings(delayMilliseconds: 70000), "delay-ms '70000': must be a whole number from 0 to 60000"),
        (NopGeom.Settings(countUntilFail: -3), "count-until-fail '-3': must be a whole number from 0 to 2147483647"),
    ])
    func settingsOutOfRangeAreRefusedByName(settings: NopGeom.Settings, message: String) {
        do {
            try NopGeom.validate(settings)
            Issue.record("accepted \(settings)")
        } catch {
            #expect("\(error)" == message)
        }
    }

    @Test func offsetAndSizeMustFitTheProviderBelow() throws {
        let topology = Topology()
        defer { topology.shutdown() }
        let disk = try MemoryDisk.create(in: topology, name: "fit-md", size: 1 << 20)
        #expect(throws: SettingError.self) { try NopGeom.create(in: topology, name: "a", over: disk.provider, offset: 100) }
        #expect(throws: SettingError.self) { try NopGeom.create(in: topology, name: "b", over: disk.provider, offset: 1 << 20) }
        #expect(throws: SettingError.self) { try NopGeom.create(in: topology, name: "c", over: disk.provider, size: 2 << 20) }
        let fits = try NopGeom.create(in: topology, name: "d", over: disk.provider, offset: 4096, size: 8192)
        #expect(fits.providers[0].mediaSize == 8192)
    }
}
