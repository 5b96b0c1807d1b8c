import Strata
@testable import StrataClasses
import Testing

/// The mirror's write tracking tag and its rebuild gate, without a mirror around them.
@Suite struct MirrorRebuildGateTests {
    typealias WriteTracking = MirrorGeom.WriteTracking

    @Test func writeTrackingRoundTripsThroughAWord() {
        var gate = MirrorGeom.RebuildGate()
        let ids = (0..<3).map { _ in gate.register(0..<4096, isFlush: false)! }
        for id in ids { _ = gate.finish(id) }
        let tags = [WriteTracking.none, .untracked] + ids.map(WriteTracking.tracked)
        let decoded = tags.map { WriteTracking(rawBits: $0.rawBits) }
        let words = Set(tags.map(\.rawBits))
        #expect(decoded == tags)
        #expect(WriteTracking(rawBits: 0) == .none, "a request never tagged counts nothing")
        #expect(words.count == tags.count)
    }

    @Test func aWriteOverTheChunkBeingCopiedIsRefusedAndOthersAreTrackedUntilTheirLastClone() {
        var gate = MirrorGeom.RebuildGate()
        let next: Range<Int64> = (2 << 20)..<(3 << 20)
        gate.copying = (1 << 20)..<(2 << 20)
        let overlapping = gate.register((2 << 20) - 4096..<(2 << 20), isFlush: false)
        let flush = gate.register(0..<0, isFlush: true)
        let write = gate.register((2 << 20)..<((2 << 20) + 4096), isFlush: false)!
        let trackedAtFirst = gate.overlapsTrackedWrite(next)
        gate.expect(clones: 2, for: write)
        let endedByFirstClone = gate.finish(write)
        let trackedWithOneCloneOut = gate.overlapsTrackedWrite(next)
        let endedBySecondClone = gate.finish(write)
        let trackedAfterBoth = gate.overlapsTrackedWrite(next)
        let unsent = gate.register(0..<4096, isFlush: false)!
        let unsentEnded = gate.finish(unsent)
        _ = gate.finish(flush!)
        #expect(overlapping == nil, "overlaps the chunk: parked")
        #expect(flush != nil, "a flush never waits")
        #expect(trackedAtFirst && trackedWithOneCloneOut && !trackedAfterBoth)
        #expect(!endedByFirstClone && endedBySecondClone)
        #expect(unsentEnded, "a write that sent nothing is let go by one finish")
    }
}
