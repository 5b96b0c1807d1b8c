@testable import StrataNBD
import Testing

/// Each transition of `ReplyFlushing`, on the value alone: when a connection's replies
/// are flushed at once and when with the work that wrote them.
@Suite struct ReplyFlushingTests {
    typealias State = ReplyFlushing.State

    static let everyState: [State] = [
        .idle, .awaitingReadEnd,
        .processingInput(unflushed: false), .processingInput(unflushed: true),
        .answeringCompletions(unflushed: false), .answeringCompletions(unflushed: true),
        .processingInputWithinCompletions(unflushed: false), .processingInputWithinCompletions(unflushed: true),
    ]

    @Test func aConnectionStartsIdle() {
        #expect(ReplyFlushing().state == .idle)
    }

    // MARK: Replies

    @Test(arguments: [State.idle, .awaitingReadEnd])
    func aReplyWrittenOutsideAnyWorkIsFlushedAtOnce(from state: State) {
        var flushing = ReplyFlushing(state)
        #expect(flushing.replyWritten() == true)
        #expect(flushing.state == state, "the flush that follows moves it")
    }

    @Test(arguments: [false, true])
    func aReplyWrittenWhileHandlingInputWaitsForItsEnd(alreadyUnflushed: Bool) {
        var flushing = ReplyFlushing(.processingInput(unflushed: alreadyUnflushed))
        #expect(flushing.replyWritten() == false)
        #expect(flushing.state == .processingInput(unflushed: true))
    }

    @Test(arguments: [false, true])
    func aReplyWrittenWhileAnsweringCompletionsWaitsForTheBatchsEnd(alreadyUnflushed: Bool) {
        var flushing = ReplyFlushing(.answeringCompletions(unflushed: alreadyUnflushed))
        #expect(flushing.replyWritten() == false)
        #expect(flushing.state == .answeringCompletions(unflushed: true))
    }

    @Test(arguments: [false, true])
    func aReplyWrittenWhileHandlingInputWithinCompletionsWaitsForTheBatchsEnd(alreadyUnflushed: Bool) {
        var flushing = ReplyFlushing(.processingInputWithinCompletions(unflushed: alreadyUnflushed))
        #expect(flushing.replyWritten() == false)
        #expect(flushing.state == .processingInputWithinCompletions(unflushed: true))
    }

    // MARK: Input

    @Test func inputBeganWhileIdleHasNothingUnflushed() {
        var flushing = ReplyFlushing()
        flushing.inputBegan()
        #expect(flushing.state == .processingInput(unflushed: false))
        #expect(flushing.isProcessingInput)
    }

    @Test func inputBeganBeforeTheReadEndedKeepsTheEarlierRepliesUnflushed() {
        var flushing = ReplyFlushing(.awaitingReadEnd)
        flushing.inputBegan()
        #expect(flushing.state == .processingInput(unflushed: true))
    }

    @Test(arguments: [false, true])
    func inputBeganWithinCompletionsIsFlushedWithThem(unflushed: Bool) {
        var flushing = ReplyFlushing(.answeringCompletions(unflushed: unflushed))
        flushing.inputBegan()
        #expect(flushing.state == .processingInputWithinCompletions(unflushed: unflushed))
        #expect(flushing.isProcessingInput)
    }

    @Test func inputEndedWithRepliesWaitsForTheReadEnd() {
        var flushing = ReplyFlushing(.processingInput(unflushed: true))
        flushing.inputEnded()
        #expect(flushing.state == .awaitingReadEnd)
        #expect(flushing.repliesAwaitReadEnd)
    }

    @Test func inputEndedWithoutRepliesIsIdle() {
        var flushing = ReplyFlushing(.processingInput(unflushed: false))
        flushing.inputEnded()
        #expect(flushing.state == .idle)
        #expect(!flushing.repliesAwaitReadEnd)
    }

    @Test(arguments: [false, true])
    func inputEndedWithinCompletionsReturnsToTheBatch(unflushed: Bool) {
        var flushing = ReplyFlushing(.processingInputWithinCompletions(unflushed: unflushed))
        flushing.inputEnded()
        #expect(flushing.state == .answeringCompletions(unflushed: unflushed))
        #expect(!flushing.repliesAwaitReadEnd, "the batch's end flushes them")
    }

    // MARK: Completions

    @Test(arguments: [(State.idle, false), (.awaitingReadEnd, true)])
    func completionsBeganKeepWhatIsUnflushed(from state: State, unflushed: Bool) {
        var flushing = ReplyFlushing(state)
        flushing.completionsBegan()
        #expect(flushing.state == .answeringCompletions(unflushed: unflushed))
        #expect(!flushing.isProcessingInput)
    }

    @Test(arguments: [false, true])
    func completionsEndedFlushIfAnythingWasWritten(unflushed: Bool) {
        var flushing = ReplyFlushing(.answeringCompletions(unflushed: unflushed))
        #expect(flushing.completionsEnded() == unflushed)
        #expect(flushing.state == .idle)
    }

    // MARK: Flushes

    @Test(arguments: everyState)
    func aFlushLeavesNothingUnflushedAndTheWorkUnderWay(from state: State) {
        var flushing = ReplyFlushing(state)
        flushing.flushed()
        let expected: State = switch state {
        case .idle, .awaitingReadEnd: .idle
        case .processingInput: .processingInput(unflushed: false)
        case .answeringCompletions: .answeringCompletions(unflushed: false)
        case .processingInputWithinCompletions: .processingInputWithinCompletions(unflushed: false)
        }
        #expect(flushing.state == expected)
    }

    // MARK: Events that cannot happen there

    @Test(arguments: everyState.filter { $0.isProcessingInput })
    func inputDoesNotBeginWithinInput(from state: State) {
        var flushing = ReplyFlushing(state)
        flushing.inputBegan()
        #expect(flushing.state == state)
    }

    @Test(arguments: everyState.filter { !$0.isProcessingInput })
    func inputEndsOnlyAfterItBegan(from state: State) {
        var flushing = ReplyFlushing(state)
        flushing.inputEnded()
        #expect(flushing.state == state)
    }

    @Test(arguments: everyState.filter { $0 != .idle && $0 != .awaitingReadEnd })
    func completionsBeginOnlyOutsideOtherWork(from state: State) {
        var flushing = ReplyFlushing(state)
        flushing.completionsBegan()
        #expect(flushing.state == state)
    }

    @Test(arguments: everyState.filter { if case .answeringCompletions = $0 { false } else { true } })
    func completionsEndOnlyAfterTheyBegan(from state: State) {
        var flushing = ReplyFlushing(state)
        #expect(flushing.completionsEnded() == false)
        #expect(flushing.state == state)
    }

    // MARK: Whole runs

    @Test func aReadOfSeveralRequestsIsFlushedOnceAtItsEnd() {
        var flushing = ReplyFlushing()
        flushing.inputBegan()
        #expect(flushing.replyWritten() == false)
        #expect(flushing.replyWritten() == false)
        flushing.inputEnded()
        #expect(flushing.repliesAwaitReadEnd)
        flushing.flushed()
        #expect(flushing.state == .idle)
    }

    @Test func inputResumedWithinABatchOfCompletionsIsFlushedOnceWithIt() {
        var flushing = ReplyFlushing()
        flushing.completionsBegan()
        #expect(flushing.replyWritten() == false)
        flushing.inputBegan()
        #expect(flushing.replyWritten() == false)
        flushing.inputEnded()
        #expect(!flushing.repliesAwaitReadEnd)
        #expect(flushing.completionsEnded() == true)
        #expect(flushing.state == .idle)
    }
}

private extension ReplyFlushing.State {
    var isProcessingInput: Bool { ReplyFlushing(self).isProcessingInput }
}
