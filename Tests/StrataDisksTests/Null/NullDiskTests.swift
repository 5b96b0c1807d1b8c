import Strata
import StrataDisks
import Testing

@Suite struct NullDiskTests {
    struct Fixture {
        let topology = Topology()
        let disk: NullDisk
        let issuer: Issuer

        init(size: Int64 = 16 << 20, sectorSize: Int = 512, name: String = "null0") throws {
            disk = try NullDisk.create(in: topology, name: name, size: size, sectorSize: sectorSize)
            issuer = try Issuer(on: disk.provider, in: topology)
        }
    }

    @Test func writesSucceedAndVanish() throws {
        let fixture = try Fixture()
        let issuer = fixture.issuer
        #expect(try issuer.write(pattern(count: 65536, at: 4096), at: 4096) == 65536)
        #expect(try issuer.write(pattern(count: 512, at: 0), at: 0, flags: .fua) == 512)
        #expect(try issuer.bytes(at: 4096, count: 65536) == zeros(65536))
        #expect(try issuer.bytes(at: 0, count: 512) == zeros(512))
        #expect(try issuer.extents(at: 0, length: 1 << 20) == [BioExtent(offset: 0, length: 1 << 20, kind: [.hole, .zero])])
    }

    @Test func deleteWriteZeroesAndFlushSucceed() throws {
        let fixture = try Fixture()
        let issuer = fixture.issuer
        #expect(try issuer.send(.delete, at: 8192, length: 8192).completed == 8192)
        #expect(try issuer.send(.writeZeroes, at: 0, length: 4096).completed == 4096)
        #expect(try issuer.send(.writeZeroes, at: 0, length: 4096, flags: .noHole).completed == 4096)
        try issuer.flush()
    }

    @Test func readWithZeroHintCompletesAsZerosWithoutTouchingTheBuffer() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 8192, at: 0), at: 0)
        let read = try fixture.issuer.read(at: 0, count: 8192, fill: 0xAA, flags: .zeroHint)
        #expect(read.flags.contains(.readAsZeros))
        #expect(read.completed == 8192)
        #expect(read.bytes == [UInt8](repeating: 0xAA, count: 8192))
    }

    @Test func readWithoutZeroHintReturnsZeros() throws {
        let fixture = try Fixture()
        let read = try fixture.issuer.read(at: 1 << 20, count: 8192, fill: 0xAA)
        #expect(!read.flags.contains(.readAsZeros))
        #expect(read.completed == 8192)
        #expect(read.bytes == zeros(8192))
    }

    @Test func extentsAreOneHoleThatReadsAsZeros() throws {
        let fixture = try Fixture(size: 16 << 20)
        #expect(try fixture.issuer.extents(at: 0, length: 16 << 20)
                == [BioExtent(offset: 0, length: 16 << 20, kind: [.hole, .zero])])
        #expect(try fixture.issuer.extents(at: 4096, length: 8192) == [BioExtent(offset: 4096, length: 8192, kind: [.hole, .zero])])
        // Cut at the end of the media.
        #expect(try fixture.issuer.extents(at: (16 << 20) - 512, length: 1 << 30)
                == [BioExtent(offset: (16 << 20) - 512, length: 512, kind: [.hole, .zero])])
    }

    @Test func attributesNameTheNullDisk() throws {
        let fixture = try Fixture(name: "bitbucket")
        #expect(try fixture.issuer.attributeString(.ident) == "null:bitbucket")
        #expect(try fixture.issuer.attributeInt32(.canDelete) == 1)
        #expect(fixture.disk.provider.mediaSize == 16 << 20)
    }

    @Test func misalignedRequestsGetEINVALAndRequestsPastTheEndGetEIO() throws {
        let fixture = try Fixture(size: 1 << 20, sectorSize: 4096)
        #expect(errorCode { try fixture.issuer.write(zeros(512), at: 0) } == .invalid)
        #expect(errorCode { _ = try fixture.issuer.read(at: 512, count: 4096) } == .invalid)
        #expect(errorCode { _ = try fixture.issuer.read(at: 2 << 20, count: 4096) } == .io)
    }

    @Test
    func extentsIntoABufferTooSmallForOneRecordDoNotTrap() async {
        // In a child process, since the bug stops the process with a precondition failure.
        await #expect(processExitsWith: .success) {
            let topology = Topology()
            let disk = try NullDisk.create(in: topology, name: "null-small", size: 1 << 20)
            let issuer = try Issuer(on: disk.provider, in: topology)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
            defer { buffer.deallocate() }
            // An empty answer or an error are both fine; trapping is not.
            _ = try? issuer.consumer.performSync(.getattr, offset: 0, length: 1 << 20, buffer: buffer,
                                                 attribute: .extents)
        }
    }
}
