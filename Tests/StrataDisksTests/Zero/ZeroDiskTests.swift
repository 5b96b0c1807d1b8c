import Strata
import StrataDisks
import Testing

@Suite struct ZeroDiskTests {
    struct Fixture {
        let topology = Topology()
        let disk: ZeroDisk
        let issuer: Issuer

        init(size: Int64 = 16 << 20, sectorSize: Int = 512, name: String = "zero0") throws {
            disk = try ZeroDisk.create(in: topology, name: name, size: size, sectorSize: sectorSize)
            issuer = try Issuer(on: disk.provider, in: topology)
        }
    }

    @Test func readsFillZerosEvenWithZeroHint() throws {
        let fixture = try Fixture()
        let hinted = try fixture.issuer.read(at: 4096, count: 8192, fill: 0xAA, flags: .zeroHint)
        #expect(!hinted.flags.contains(.readAsZeros))
        #expect(hinted.completed == 8192)
        #expect(hinted.bytes == zeros(8192))

        let plain = try fixture.issuer.read(at: 0, count: 4096, fill: 0xAA)
        #expect(!plain.flags.contains(.readAsZeros))
        #expect(plain.bytes == zeros(4096))
    }

    @Test func writesSucceedAndVanish() throws {
        let fixture = try Fixture()
        #expect(try fixture.issuer.write(pattern(count: 16384, at: 8192), at: 8192) == 16384)
        #expect(try fixture.issuer.bytes(at: 8192, count: 16384) == zeros(16384))
        #expect(try fixture.issuer.send(.delete, at: 0, length: 4096).completed == 4096)
        #expect(try fixture.issuer.send(.writeZeroes, at: 0, length: 4096, flags: .noHole).completed == 4096)
        try fixture.issuer.flush()
    }

    @Test func extentsAreOneZeroExtentThatIsNotAHole() throws {
        let fixture = try Fixture()
        try fixture.issuer.write(pattern(count: 4096, at: 0), at: 0)
        #expect(try fixture.issuer.extents(at: 0, length: 16 << 20) == [BioExtent(offset: 0, length: 16 << 20, kind: [.zero])])
        #expect(try fixture.issuer.extents(at: 1024, length: 2048) == [BioExtent(offset: 1024, length: 2048, kind: [.zero])])
    }

    @Test func attributesNameTheZeroDisk() throws {
        let fixture = try Fixture(name: "gzero")
        #expect(try fixture.issuer.attributeString(.ident) == "zero:gzero")
        #expect(try fixture.issuer.attributeInt32(.canDelete) == 1)
    }

    @Test func fourKilobyteSectorsRoundTheSizeDownAndRefuseMisalignedRequests() throws {
        let fixture = try Fixture(size: (1 << 20) + 512, sectorSize: 4096)
        #expect(fixture.disk.provider.mediaSize == 1 << 20)
        #expect(errorCode { _ = try fixture.issuer.read(at: 512, count: 512) } == .invalid)
        #expect(try fixture.issuer.bytes(at: 4096, count: 4096) == zeros(4096))
    }
}
