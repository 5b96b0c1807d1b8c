import Strata
import StrataDisks
import Synchronization
import Testing

/// `Consumer.request` checks a request once, before any class code: access, orphaning,
/// provider error, alignment, range; it truncates at the end of the media.
@Suite struct RequestCheckTests {
    /// A 1 MiB, 512-byte-sector probe that records every request reaching its start.
    final class Fixture: @unchecked Sendable {
        let topology = Topology()
        let seen = EventLog()
        let probe: ProbeGeom

        init(sectorSize: Int = 512) throws {
            let seen = self.seen
            probe = try ProbeGeom.install(in: topology, name: "check-probe", size: 1 << 20, sectorSize: sectorSize) { bio in
                seen.append("\(bio.command) \(bio.offset)+\(bio.length)")
                bio.deliverAll()
            }
        }

        func issuer(read: Int = 1, write: Int = 1) throws -> TestIssuer {
            try TestIssuer(on: probe.providers[0], in: topology, read: read, write: write, name: "issuer-r\(read)w\(write)")
        }

        var reached: [String] { seen.entries }
    }

    @Test func aReadWithoutReadAccessGetsEPERM() throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer(read: 0, write: 1)
        let buffer = PatternBuffer(count: 512)
        #expect(issuer.consumer.outcome(.read, offset: 0, length: 512, buffer: buffer.bytes).error == .permission)
        #expect(issuer.consumer.outcome(.getattr, offset: 0, length: 0, attribute: .ident).error == .permission)
        #expect(fixture.reached.isEmpty)
    }

    @Test(arguments: [BioCommand.write, .delete, .writeZeroes, .flush])
    func changingCommandsWithoutWriteAccessGetEPERM(command: BioCommand) throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer(read: 1, write: 0)
        let buffer = PatternBuffer(count: 512)
        let outcome = issuer.consumer.outcome(command, offset: 0, length: command == .flush ? 0 : 512,
                                              buffer: command == .write ? buffer.bytes : nil)
        #expect(outcome.error == .permission)
        #expect(fixture.reached.isEmpty)
    }

    @Test func aRequestOnAnOrphanedConsumerGetsENXIO() throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        fixture.topology.orphan(fixture.probe.providers[0])
        fixture.topology.settle()
        #expect(issuer.consumer.isOrphaned)
        #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == .noDevice)
        #expect(fixture.reached.isEmpty)
    }

    @Test func aProviderErrorFailsEveryRequestWithIt() throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        fixture.topology.setError(.io, on: fixture.probe.providers[0])
        #expect(issuer.consumer.outcome(.delete, offset: 0, length: 512).error == .io)
        fixture.topology.setError(nil, on: fixture.probe.providers[0])
        #expect(issuer.consumer.outcome(.delete, offset: 0, length: 512).error == nil)
        #expect(fixture.reached == ["DELETE 0+512"])
    }

    @Test(arguments: [(Int64(100), Int64(512)), (512, 100), (4096, 4097), (1, 1)])
    func misalignedRequestsGetEINVAL(offset: Int64, length: Int64) throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        #expect(issuer.consumer.outcome(.delete, offset: offset, length: length).error == .invalid)
        #expect(fixture.reached.isEmpty)
    }

    @Test func alignmentFollowsTheProviderSectorSize() throws {
        let fixture = try Fixture(sectorSize: 4096)
        let issuer = try fixture.issuer()
        #expect(issuer.consumer.outcome(.delete, offset: 512, length: 4096).error == .invalid)
        #expect(issuer.consumer.outcome(.delete, offset: 4096, length: 4096).error == nil)
    }

    @Test(arguments: [Int64(-512), Int64(1 << 20) + 512, Int64.max - 511] as [Int64])
    func aRequestStartingOutsideTheMediaGetsEIO(offset: Int64) throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        #expect(issuer.consumer.outcome(.delete, offset: offset, length: 512).error == .io)
        #expect(fixture.reached.isEmpty)
    }

    @Test func aRequestRunningPastTheEndIsTruncated() throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        let buffer = PatternBuffer(count: 8192)
        let outcome = issuer.consumer.outcome(.read, offset: (1 << 20) - 4096, length: 8192, buffer: buffer.bytes)
        #expect(outcome.error == nil)
        #expect(outcome.completed == 4096)
        #expect(fixture.reached == ["READ 1044480+4096"])
    }

    @Test func aHugeLengthCannotOverflowPastTheEndCheck() throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        let outcome = issuer.consumer.outcome(.delete, offset: 512, length: Int64.max - 511)
        #expect(outcome.error == nil)
        #expect(fixture.reached == ["DELETE 512+1048064"])
    }

    @Test(arguments: [(Int64(1 << 20), Int64(4096)), (Int64(0), Int64(0))])
    func aRequestOfNoBytesCompletesWithoutReachingTheClass(offset: Int64, length: Int64) throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        let outcome = issuer.consumer.outcome(.delete, offset: offset, length: length)
        #expect(outcome.error == nil && outcome.completed == 0)
        #expect(fixture.reached.isEmpty)
    }

    @Test func attributesAndFlushesSkipTheRangeChecks() throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        let answer = PatternBuffer(count: 64)
        #expect(issuer.consumer.outcome(.getattr, offset: 3, length: 7, buffer: answer.bytes, attribute: .ident).error == nil)
        #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
        #expect(fixture.reached == ["GETATTR 3+7", "FLUSH 0+0"])
    }

    @Test func classesNeverSeeABadRequest() throws {
        let fixture = try Fixture()
        let issuer = try fixture.issuer()
        var generator = SystemRandomNumberGenerator()
        var outcomes: [String: Int] = [:]
        for _ in 0..<2000 {
            let offset = Int64.random(in: -4096...(1 << 20) + 8192, using: &generator)
            let length = Int64.random(in: 0...65536, using: &generator)
            let outcome = issuer.consumer.outcome(.delete, offset: offset, length: length)
            outcomes[outcome.error?.name ?? "ok", default: 0] += 1
        }
        for request in fixture.reached {
            let range = request.split(separator: " ")[1].split(separator: "+").map { Int64($0)! }
            #expect(range[0] % 512 == 0 && range[1] % 512 == 0 && range[1] > 0 && range[0] + range[1] <= 1 << 20,
                    "\(request) reached the class")
        }
        #expect(Set(outcomes.keys).isSubset(of: ["ok", "EINVAL", "EIO"]))
    }
}
