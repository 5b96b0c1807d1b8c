import Strata
import Testing

/// BioChain: clones held before they are sent, in order, without allocating.
@Suite struct BioChainTests {
    @Test func aChainGivesItsRequestsBackInTheOrderTheyCameIn() {
        var chain = BioChain()
        #expect(chain.isEmpty && chain.count == 0)
        for index in 1...5 {
            let bio = AnyBioSet.shared.alloc(segments: 0)
            bio.caller1 = UnsafeMutableRawPointer(bitPattern: index)
            chain.append(bio)
        }
        #expect(chain.count == 5 && !chain.isEmpty)
        var order: [Int] = []
        while let bio = chain.popFirst() {
            order.append(Int(bitPattern: bio.caller1))
            bio.destroy()
        }
        #expect(order == [1, 2, 3, 4, 5])
        #expect(chain.isEmpty && chain.count == 0)
        var emptyPopGaveNothing = true
        if let stray = chain.popFirst() {
            emptyPopGaveNothing = false
            stray.destroy()
        }
        #expect(emptyPopGaveNothing)
    }

    @Test func destroyAllGivesTheClonesBackAndTakesThemOffTheirParent() throws {
        let topology = Topology()
        // Three requests in all: the clones must come back for three more to be made.
        let set = BioSet(name: "chain-destroy", reserve: 1, capacity: 3)
        let seen = ProbeRecord()
        let probe = try ProbeGeom.install(in: topology, name: "chain-probe") { bio in
            var chain = BioChain()
            for _ in 0..<3 { chain.append(bio.clone(using: set)!) }
            seen.set("three-children", bio.children == 3 && chain.count == 3)
            chain.destroyAll()
            seen.set("none-left", bio.children == 0 && chain.isEmpty)
            var again = BioChain()
            for _ in 0..<3 {
                guard let clone = bio.clone(using: set) else { break }
                again.append(clone)
            }
            seen.set("made-again", again.count == 3)
            again.destroyAll()
            bio.deliverAll()
        }
        let issuer = try TestIssuer(on: probe.providers[0], in: topology)
        #expect(issuer.consumer.outcome(.flush, offset: 0, length: 0).error == nil)
        #expect(seen.all == ["made-again", "none-left", "three-children"])
    }

    @Test func aChainGoingAwayWithARequestInItStopsTheProcess() async {
        await #expect(processExitsWith: .failure) {
            var chain = BioChain()
            chain.append(AnyBioSet.shared.alloc(segments: 0))
            _ = consume chain
        }
    }
}
