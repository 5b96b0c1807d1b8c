#if canImport(Glibc)
import Glibc
#endif
import Strata
import StrataDisks
import Testing

/// The async API (`BlockDevice`) over a memory disk.
@Suite struct BlockDeviceTests {
    struct Fixture {
        let topology = Topology()
        let disk: MemoryDisk

        init(size: Int64 = 4 << 20, sectorSize: Int = 512, name: String = "md0") throws {
            disk = try MemoryDisk.create(in: topology, name: name, size: size, sectorSize: sectorSize)
        }

        func open(writable: Bool = true, exclusive: Bool = false) throws -> BlockDevice {
            try BlockDevice(opening: disk.provider, in: topology, writable: writable, exclusive: exclusive)
        }
    }

    @Test func writtenBytesReadBack() async throws {
        let fixture = try Fixture()
        let device = try fixture.open()
        defer { device.close() }
        let bytes = pattern(count: 12288, at: 4096 + 512, seed: 1)
        try await device.write(bytes, at: 4096 + 512)
        #expect(try await device.read(at: 4096 + 512, count: 12288) == bytes)
        // Neighbours are untouched.
        #expect(try await device.read(at: 0, count: 4096 + 512) == zeros(4096 + 512))
        #expect(try await device.read(at: 4096 + 512 + 12288, count: 4096) == zeros(4096))
        // A FUA write is read back the same way.
        try await device.write(pattern(count: 512, at: 0, seed: 2), at: 0, fua: true)
        #expect(try await device.read(at: 0, count: 512) == pattern(count: 512, at: 0, seed: 2))
    }

    @Test func readIntoABufferReturnsTheBytesReadAndStopsAtTheMediaEnd() async throws {
        let fixture = try Fixture(size: 1 << 20)
        let device = try fixture.open()
        defer { device.close() }
        try await device.write(pattern(count: 4096, at: (1 << 20) - 4096), at: (1 << 20) - 4096)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 64)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xAA)
        let count = try await device.read(at: (1 << 20) - 4096, into: buffer)
        #expect(count == 4096)
        #expect(Array(buffer.prefix(4096)) == pattern(count: 4096, at: (1 << 20) - 4096))
    }

    @Test func flushSucceeds() async throws {
        let fixture = try Fixture()
        let device = try fixture.open()
        defer { device.close() }
        try await device.write(pattern(count: 4096, at: 0), at: 0)
        try await device.flush()
        #expect(try await device.read(at: 0, count: 4096) == pattern(count: 4096, at: 0))
    }

    @Test func deletedRangeReadsAsZeros() async throws {
        let fixture = try Fixture()
        let device = try fixture.open()
        defer { device.close() }
        try await device.write(pattern(count: 32768, at: 0), at: 0)
        try await device.delete(at: 8192, length: 8192)
        #expect(try await device.read(at: 8192, count: 8192) == zeros(8192))
        #expect(try await device.read(at: 0, count: 8192) == pattern(count: 8192, at: 0))
        #expect(try await device.read(at: 16384, count: 16384) == pattern(count: 16384, at: 16384))
        #expect(try await device.extents(at: 8192, length: 8192) == [BioExtent(offset: 8192, length: 8192, kind: [.hole, .zero])])
    }

    @Test func writeZeroesReadsAsZerosAndNoHoleKeepsTheRangeAllocated() async throws {
        let fixture = try Fixture()
        let device = try fixture.open()
        defer { device.close() }
        try await device.write(pattern(count: 16384, at: 0), at: 0)
        try await device.writeZeroes(at: 0, length: 4096)
        try await device.writeZeroes(at: 8192, length: 4096, noHole: true)
        #expect(try await device.read(at: 0, count: 16384)
                == zeros(4096) + pattern(count: 4096, at: 4096) + zeros(4096) + pattern(count: 4096, at: 12288))
        #expect(try await device.extents(at: 0, length: 16384) == [
            BioExtent(offset: 0, length: 4096, kind: [.hole, .zero]),
            BioExtent(offset: 4096, length: 12288, kind: []),
        ])
    }

    @Test func canDeleteIsTrueAndIdentNamesTheDisk() async throws {
        let fixture = try Fixture(name: "md-ident")
        let device = try fixture.open(writable: false)
        defer { device.close() }
        #expect(try await device.canDelete())
        #expect(try await device.ident() == "memory:md-ident")
    }

    @Test func extentsDescribeHolesAndData() async throws {
        let fixture = try Fixture()
        let device = try fixture.open()
        defer { device.close() }
        #expect(try await device.extents(at: 0, length: 4 << 20) == [BioExtent(offset: 0, length: 4 << 20, kind: [.hole, .zero])])
        try await device.write(pattern(count: 8192, at: 1 << 20), at: 1 << 20)
        #expect(try await device.extents(at: 0, length: 4 << 20) == [
            BioExtent(offset: 0, length: 1 << 20, kind: [.hole, .zero]),
            BioExtent(offset: 1 << 20, length: 8192, kind: []),
            BioExtent(offset: (1 << 20) + 8192, length: (3 << 20) - 8192, kind: [.hole, .zero]),
        ])
        #expect(try await device.extents(at: 0, length: 4 << 20, limit: 2) == [
            BioExtent(offset: 0, length: 1 << 20, kind: [.hole, .zero]),
            BioExtent(offset: 1 << 20, length: 8192, kind: []),
        ])
    }

    @Test func readOnlyDeviceRefusesChangesWithEPERM() async throws {
        let fixture = try Fixture()
        let device = try fixture.open(writable: false)
        defer { device.close() }
        let write = await #expect(throws: StrataError.self) { try await device.write(zeros(512), at: 0) }
        #expect(write?.code == .permission)
        let delete = await #expect(throws: StrataError.self) { try await device.delete(at: 0, length: 512) }
        #expect(delete?.code == .permission)
        let zeroes = await #expect(throws: StrataError.self) { try await device.writeZeroes(at: 0, length: 512) }
        #expect(zeroes?.code == .permission)
        let flush = await #expect(throws: StrataError.self) { try await device.flush() }
        #expect(flush?.code == .permission)
        // Reading is allowed.
        #expect(try await device.read(at: 0, count: 512) == zeros(512))
        #expect(fixture.disk.provider.accessCounts.write == 0)
    }

    @Test func unalignedRequestsAreRefusedWithEINVAL() async throws {
        let fixture = try Fixture()
        let device = try fixture.open()
        defer { device.close() }
        let offset = await #expect(throws: StrataError.self) { _ = try await device.read(at: 100, count: 512) }
        #expect(offset?.code == .invalid)
        let length = await #expect(throws: StrataError.self) { _ = try await device.read(at: 0, count: 700) }
        #expect(length?.code == .invalid)
        let write = await #expect(throws: StrataError.self) { try await device.write(zeros(512), at: 256) }
        #expect(write?.code == .invalid)
        // The message says what was being done.
        #expect(offset.map { $0.message.contains("READ") && $0.message.contains("md0") } == true)
    }

    @Test func requestsStartingPastTheEndAreRefusedWithEIO() async throws {
        let fixture = try Fixture(size: 1 << 20)
        let device = try fixture.open()
        defer { device.close() }
        let error = await #expect(throws: StrataError.self) { _ = try await device.read(at: 2 << 20, count: 512) }
        #expect(error?.code == .io)
    }

    @Test func readsAfterTheDiskWithersFailWithENXIO() async throws {
        let fixture = try Fixture()
        let device = try fixture.open()
        try await device.write(pattern(count: 4096, at: 0), at: 0)
        fixture.topology.wither(fixture.disk)
        fixture.topology.settle()
        let read = await #expect(throws: StrataError.self) { _ = try await device.read(at: 0, count: 4096) }
        #expect(read?.code == .noDevice)
        let write = await #expect(throws: StrataError.self) { try await device.write(zeros(512), at: 0) }
        #expect(write?.code == .noDevice)
        let ident = await #expect(throws: StrataError.self) { _ = try await device.ident() }
        #expect(ident?.code == .noDevice)
        // Closing the device lets the disk go.
        device.close()
        #expect(fixture.topology.waitUntilGone(fixture.disk))
        #expect(fixture.topology.provider(named: "md0") == nil)
    }

    @Test func closeReleasesAccess() async throws {
        let fixture = try Fixture()
        let provider = fixture.disk.provider
        let device = try fixture.open(writable: true, exclusive: true)
        try await device.write(pattern(count: 512, at: 0), at: 0)
        #expect(provider.accessCounts.read == 1)
        #expect(provider.accessCounts.write == 1)
        #expect(provider.accessCounts.exclusive == 1)
        device.close()
        #expect(provider.accessCounts.read == 0)
        #expect(provider.accessCounts.write == 0)
        #expect(provider.accessCounts.exclusive == 0)
        // Closing twice changes nothing, and the provider can be opened again.
        device.close()
        #expect(provider.accessCounts.read == 0)
        let again = try fixture.open()
        defer { again.close() }
        #expect(try await again.read(at: 0, count: 512) == pattern(count: 512, at: 0))
    }

    @Test func exclusiveOpenShutsOutOtherWriters() async throws {
        let fixture = try Fixture()
        let owner = try fixture.open(writable: true, exclusive: true)
        // Another writer is refused. (Through a raw consumer: a refused BlockDevice
        // traps, see refusedOpenThrowsPermissionWithoutTrapping.)
        let error = #expect(throws: StrataError.self) {
            _ = try Issuer(on: fixture.disk.provider, in: fixture.topology, read: 1, write: 1, name: "t-writer")
        }
        #expect(error?.code == .permission)
        // A reader is still let in.
        let reader = try fixture.open(writable: false)
        #expect(try await reader.read(at: 0, count: 512) == zeros(512))
        reader.close()
        owner.close()
        let writer = try fixture.open(writable: true)
        try await writer.write(pattern(count: 512, at: 0), at: 0)
        writer.close()
        #expect(fixture.disk.provider.accessCounts.write == 0)
    }

    @Test
    func refusedOpenThrowsPermissionWithoutTrapping() async {
        await #expect(processExitsWith: .success) {
            let topology = Topology()
            let disk = try MemoryDisk.create(in: topology, name: "md-excl", size: 1 << 20)
            let owner = try BlockDevice(opening: disk.provider, in: topology, writable: true, exclusive: true)
            do {
                _ = try BlockDevice(opening: disk.provider, in: topology, writable: true)
                exit(3)
            } catch let error as StrataError {
                if error.code != .permission { exit(4) }
            }
            owner.close()
        }
    }

    @Test func openingByNameFindsTheProviderAndAnUnknownNameIsENXIO() async throws {
        let fixture = try Fixture(name: "named0")
        let device = try BlockDevice(opening: "named0", in: fixture.topology, writable: true)
        defer { device.close() }
        #expect(device.provider === fixture.disk.provider)
        try await device.write(pattern(count: 512, at: 512), at: 512)
        #expect(try await device.read(at: 512, count: 512) == pattern(count: 512, at: 512))
        let error = #expect(throws: StrataError.self) {
            _ = try BlockDevice(opening: "no-such-disk", in: fixture.topology, writable: false)
        }
        #expect(error?.code == .noDevice)
    }
}
