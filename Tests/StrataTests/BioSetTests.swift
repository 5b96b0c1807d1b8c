import Strata
import StrataDisks
import Synchronization
import Testing

/// Bio sets: the reserve, the per-thread LIFO cache, the shared pool behind it.
@Suite struct BioSetTests {
    @Test func theReserveIsPreallocatedWhenTheSetIsMade() {
        let set = BioSet(name: "prealloc", reserve: 8)
        let statistics = set.statistics
        #expect(statistics.allocated == 8)
        #expect(statistics.inReserve == 8)
    }

    @Test func aThreadGetsBackTheRequestItFreedLast() {
        let set = BioSet(name: "lifo", reserve: 0)
        let first = set.alloc().unmanaged()
        let second = set.alloc().unmanaged()
        second.takeBio().destroy()
        first.takeBio().destroy()
        let again = set.alloc().unmanaged()
        #expect(again == first, "the cache is last in, first out")
        again.takeBio().destroy()
    }

    @Test func steadyAllocateAndFreeNeverGrowsTheSet() {
        let set = BioSet(name: "steady", reserve: 4)
        for _ in 0..<64 { set.alloc().destroy() }
        let before = set.statistics
        for _ in 0..<100_000 { set.alloc().destroy() }
        #expect(set.statistics == before, "allocate + free on one thread stays in the thread's cache")
    }

    @Test func aRequestFreedOnAnotherThreadReturnsToThePool() {
        let set = BioSet(name: "cross-thread", reserve: 1, capacity: 1)
        let bio = set.alloc().unmanaged()
        let freed = Gate()
        startWorkerThread {
            bio.takeBio().destroy()
            freed.open()
        }
        #expect(freed.wait())
        let again = unmanaged(set.new())
        #expect(again != nil, "the only request came back from the other thread")
        again?.takeBio().destroy()
    }

    @Test func aShortReserveIsRefilledBeforeAnythingElse() {
        let set = BioSet(name: "refill", reserve: 2, capacity: 3)
        let held = (0..<3).map { _ in set.alloc().unmanaged() }
        #expect(set.statistics.inReserve == 0)
        #expect(set.statistics.reserveDraws == 2)
        held[0].takeBio().destroy()
        #expect(set.statistics.inReserve == 1)
        held[1].takeBio().destroy()
        held[2].takeBio().destroy()
        #expect(set.statistics.inReserve == 2)
        #expect(set.statistics.inSharedList == 1)
    }

    @Test func requestsCachedByAThreadGoBackToThePoolWhenItExits() {
        let set = BioSet(name: "thread-exit", reserve: 0)
        let exited = Gate()
        startWorkerThread {
            let held = (0..<100).map { _ in set.alloc().unmanaged() }
            for bio in held { bio.takeBio().destroy() }
            exited.open()
        }
        #expect(exited.wait())
        let deadline = ContinuousClock.now + .seconds(10)
        while set.statistics.inSharedList < 100 && ContinuousClock.now < deadline { sleepBriefly(milliseconds: 5) }
        #expect(set.statistics.inSharedList >= 100)
    }

    @Test func aSetWithACapacityRefusesWithoutWaitingAndServesAfterAFree() {
        let set = BioSet(name: "capacity", reserve: 2, capacity: 4)
        let held = (0..<4).compactMap { _ in unmanaged(set.new()) }
        #expect(held.count == 4)
        #expect(unmanaged(set.new()) == nil)
        held[0].takeBio().destroy()
        let next = unmanaged(set.new())
        #expect(next != nil)
        next?.takeBio().destroy()
        for bio in held.dropFirst() { bio.takeBio().destroy() }
        #expect(set.statistics.failures == 1)
    }
}

/// Many threads on one set at once.
@Suite struct BioSetConcurrency {
    @Test func manyThreadsAllocatingAndFreeingLoseNothing() {
        let set = BioSet(name: "many-threads", reserve: 16)
        let threads = 4
        let finished = Atomic<Int>(0)
        let allDone = Gate()
        for thread in 0..<threads {
            startWorkerThread {
                var held: [UnmanagedBio] = []
                for round in 0..<20_000 {
                    held.append(set.alloc().unmanaged())
                    if held.count > (round + thread) % 300 {
                        // Free some here and some on the next thread over.
                        held.removeFirst().takeBio().destroy()
                    }
                }
                for bio in held { bio.takeBio().destroy() }
                if finished.wrappingAdd(1, ordering: .relaxed).newValue == threads { allDone.open() }
            }
        }
        #expect(allDone.wait(seconds: 60))
        let statistics = set.statistics
        #expect(statistics.inReserve == 16)
        #expect(statistics.failures == 0)
    }

    @Test func waitingAllocatorsAllGetServedUnderExhaustion() {
        let set = BioSet(name: "exhausted", reserve: 2, capacity: 2)
        let threads = 6
        let rounds = 500
        let served = Atomic<Int>(0)
        let finished = Atomic<Int>(0)
        let allDone = Gate()
        for _ in 0..<threads {
            startWorkerThread {
                for _ in 0..<rounds {
                    let bio = set.alloc()
                    served.wrappingAdd(1, ordering: .relaxed)
                    bio.destroy()
                }
                if finished.wrappingAdd(1, ordering: .relaxed).newValue == threads { allDone.open() }
            }
        }
        #expect(allDone.wait(seconds: 60))
        let count = served.load(ordering: .relaxed)
        #expect(count == threads * rounds)
        #expect(set.statistics.inReserve == 2)
    }
}
