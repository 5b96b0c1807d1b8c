import Strata
import StrataDisks
import Testing

/// GEOM's access rules (g_access).
@Suite struct AccessTests {
    @Test func countsAddUpOnTheConsumerAndTheProvider() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "count-md", size: 1 << 20)
        let first = try TestIssuer(on: disk.provider, in: topology, read: 1, write: 1, exclusive: 0, name: "first")
        let second = try TestIssuer(on: disk.provider, in: topology, read: 2, write: 0, exclusive: 0, name: "second")
        #expect(disk.provider.mode == "r3w1e0")
        #expect(first.consumer.readCount == 1 && first.consumer.writeCount == 1)
        try topology.access(second.consumer, read: -2, write: 0, exclusive: 0)
        #expect(disk.provider.mode == "r1w1e0")
    }

    @Test func exclusiveAccessIsRefusedWhileAnotherConsumerWrites() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "excl-md", size: 1 << 20)
        _ = try TestIssuer(on: disk.provider, in: topology, read: 0, write: 1, name: "writer")
        let other = try TestIssuer(on: disk.provider, in: topology, read: 0, write: 0, name: "other")
        #expect(throws: StrataError.self) { try topology.access(other.consumer, read: 1, write: 0, exclusive: 1) }
        #expect(other.consumer.readCount == 0, "a refused open changes nothing")
    }

    @Test func writingIsRefusedWhileAnotherConsumerHoldsExclusiveAccess() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "excl2-md", size: 1 << 20)
        _ = try TestIssuer(on: disk.provider, in: topology, read: 1, write: 0, exclusive: 1, name: "holder")
        let other = try TestIssuer(on: disk.provider, in: topology, read: 0, write: 0, name: "other")
        do {
            try topology.access(other.consumer, read: 0, write: 1, exclusive: 0)
            Issue.record("write open succeeded under an exclusive holder")
        } catch let error as StrataError {
            #expect(error.code == .permission)
        }
        try topology.access(other.consumer, read: 1, write: 0, exclusive: 0)
        #expect(other.consumer.readCount == 1, "readers are not kept out by an exclusive holder")
    }

    @Test func aConsumerMayTakeExclusiveAccessOverItsOwnWrites() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "own-md", size: 1 << 20)
        let writer = try TestIssuer(on: disk.provider, in: topology, read: 1, write: 1, name: "writer")
        try topology.access(writer.consumer, read: 0, write: 0, exclusive: 1)
        #expect(disk.provider.mode == "r1w1e1")
    }

    @Test func openingAProviderWithAnErrorFailsWithIt() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "err-md", size: 1 << 20)
        topology.setError(.io, on: disk.provider)
        let issuer = try TestIssuer(on: disk.provider, in: topology, read: 0, write: 0)
        do {
            try topology.access(issuer.consumer, read: 1, write: 0, exclusive: 0)
            Issue.record("open of a provider with an error succeeded")
        } catch let error as StrataError {
            #expect(error.code == .io)
        }
    }

    @Test func accessGoingBelowZeroStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            let topology = Topology()
            let disk = try MemoryDisk.create(in: topology, name: "neg-md", size: 1 << 20)
            let geom = Geom(name: "neg", className: "TEST")
            try topology.add(geom)
            let consumer = topology.createConsumer(for: geom)
            try topology.attach(consumer, to: disk.provider)
            try topology.access(consumer, read: -1, write: 0, exclusive: 0)
        }
    }

    @Test func passThroughGeomsOpenTheProviderBelowWithWritersExclusive() throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "prop-md", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "prop-pass")
        let user = try TestIssuer(on: pass.providers[0], in: topology, read: 1, write: 1, name: "user")
        #expect(disk.provider.mode == "r1w1e1")
        let bystander = try TestIssuer(on: disk.provider, in: topology, read: 0, write: 0, name: "bystander")
        #expect(throws: StrataError.self, "nobody writes underneath a geom in use") {
            try topology.access(bystander.consumer, read: 0, write: 1, exclusive: 0)
        }
        try topology.access(user.consumer, read: -1, write: -1, exclusive: 0)
        #expect(disk.provider.mode == "r0w0e0")
        try topology.access(bystander.consumer, read: 0, write: 1, exclusive: 0)
    }

    @Test func aRefusalBelowUndoesWhatWasOpenedAlready() throws {
        let topology = Topology()
        let left = try MemoryDisk.create(in: topology, name: "undo-left", size: 1 << 20)
        let right = try MemoryDisk.create(in: topology, name: "undo-right", size: 1 << 20)
        let pair = Geom(name: "undo-pair", className: "PAIR")
        try topology.add(pair)
        try topology.attach(topology.createConsumer(for: pair), to: left.provider)
        try topology.attach(topology.createConsumer(for: pair), to: right.provider)
        let provider = try topology.createProvider(for: pair, name: "undo-pair", mediaSize: 1 << 20, sectorSize: 512)
        _ = try TestIssuer(on: right.provider, in: topology, read: 1, write: 0, exclusive: 1, name: "holder")
        let user = try TestIssuer(on: provider, in: topology, read: 0, write: 0, name: "user")
        #expect(throws: StrataError.self) { try topology.access(user.consumer, read: 1, write: 1, exclusive: 0) }
        #expect(left.provider.mode == "r0w0e0", "the left side was opened and then closed again")
        #expect(provider.mode == "r0w0e0")
    }
}
