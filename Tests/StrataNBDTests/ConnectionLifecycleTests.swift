@testable import StrataNBD
import Testing

/// Each transition of `ConnectionLifecycle`, on the value alone: the state it leads to
/// and the action it asks of the handler.
@Suite struct ConnectionLifecycleTests {
    typealias State = ConnectionLifecycle.State

    static let everyState: [State] = [
        .negotiating, .serving, .stopping(inputSinceCheck: false), .stopping(inputSinceCheck: true), .finishing,
        .closing(.now), .closing(.afterWrites), .closedAwaitingCompletions, .closed,
    ]
    static let openStates = everyState.filter { $0 != .closedAwaitingCompletions && $0 != .closed }
    static let closedStates: [State] = [.closedAwaitingCompletions, .closed]

    // MARK: Negotiating

    @Test func aConnectionStartsNegotiating() {
        #expect(ConnectionLifecycle().state == .negotiating)
    }

    @Test func startingTransmissionServesAndHoldsTheHandler() {
        var lifecycle = ConnectionLifecycle()
        #expect(lifecycle.transmissionStarted() == .holdUntilClosed)
        #expect(lifecycle.state == .serving)
    }

    @Test(arguments: everyState.filter { $0 != .negotiating })
    func transmissionStartsOnlyOnce(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.transmissionStarted() == .none)
        #expect(lifecycle.state == state)
    }

    @Test func aServerStopWhileNegotiatingClosesAtOnce() {
        var lifecycle = ConnectionLifecycle()
        #expect(lifecycle.stopRequested() == .close(.now))
        #expect(lifecycle.state == .closing(.now))
    }

    // MARK: Serving

    @Test func aServingConnectionServesRequestsAndAnswersCompletions() {
        var lifecycle = ConnectionLifecycle(.serving)
        #expect(lifecycle.requestArrived() == .serve)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .answer(then: .none))
        #expect(lifecycle.requestCompleted(inFlight: 3) == .answer(then: .none))
        #expect(lifecycle.state == .serving)
    }

    @Test func inputWhileServingChangesNothing() {
        var lifecycle = ConnectionLifecycle(.serving)
        lifecycle.inputArrived()
        #expect(lifecycle.state == .serving)
    }

    @Test func aServerStopWhileServingStartsStoppingAndWaitsAWholeCheckFirst() {
        var lifecycle = ConnectionLifecycle(.serving)
        #expect(lifecycle.stopRequested() == .checkStopLater)
        #expect(lifecycle.state == .stopping(inputSinceCheck: true))
    }

    @Test(arguments: [State.serving, .stopping(inputSinceCheck: false), .stopping(inputSinceCheck: true)])
    func disconnectWithNothingInFlightClosesOnceWritten(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.disconnectRequested(inFlight: 0) == .close(.afterWrites))
        #expect(lifecycle.state == .closing(.afterWrites))
    }

    @Test(arguments: [State.serving, .stopping(inputSinceCheck: false), .stopping(inputSinceCheck: true)])
    func disconnectWithRequestsInFlightStopsTakingRequestsAndFinishes(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.disconnectRequested(inFlight: 2) == .stopTakingRequests)
        #expect(lifecycle.state == .finishing)
    }

    // MARK: Stopping

    @Test func aStoppingConnectionRefusesRequestsAndAnswersCompletions() {
        var lifecycle = ConnectionLifecycle(.stopping(inputSinceCheck: false))
        #expect(lifecycle.requestArrived() == .refuseShuttingDown)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .answer(then: .none))
        #expect(lifecycle.state == .stopping(inputSinceCheck: false))
    }

    @Test(arguments: [false, true])
    func inputWhileStoppingIsRememberedForTheNextCheck(alreadySeen: Bool) {
        var lifecycle = ConnectionLifecycle(.stopping(inputSinceCheck: alreadySeen))
        lifecycle.inputArrived()
        #expect(lifecycle.state == .stopping(inputSinceCheck: true))
    }

    @Test func aQuietStoppingConnectionWithNothingInFlightClosesOnceWritten() {
        var lifecycle = ConnectionLifecycle(.stopping(inputSinceCheck: false))
        #expect(lifecycle.stopCheckDue(inFlight: 0) == .close(.afterWrites))
        #expect(lifecycle.state == .closing(.afterWrites))
    }

    @Test func aStopCheckAfterInputForgetsItAndChecksAgain() {
        var lifecycle = ConnectionLifecycle(.stopping(inputSinceCheck: true))
        #expect(lifecycle.stopCheckDue(inFlight: 0) == .checkStopLater)
        #expect(lifecycle.state == .stopping(inputSinceCheck: false))
    }

    @Test func aStopCheckWithRequestsInFlightChecksAgain() {
        var lifecycle = ConnectionLifecycle(.stopping(inputSinceCheck: false))
        #expect(lifecycle.stopCheckDue(inFlight: 1) == .checkStopLater)
        #expect(lifecycle.state == .stopping(inputSinceCheck: false))
    }

    @Test(arguments: everyState.filter { if case .stopping = $0 { false } else { true } })
    func aStopCheckOutsideStoppingEndsTheChecks(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.stopCheckDue(inFlight: 0) == .none)
        #expect(lifecycle.state == state)
    }

    @Test(arguments: everyState.filter { $0 != .negotiating && $0 != .serving })
    func aSecondServerStopChangesNothing(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.stopRequested() == .none)
        #expect(lifecycle.state == state)
    }

    // MARK: Finishing

    @Test func aFinishingConnectionDropsRequestsAndAnswersAllButTheLastAsUsual() {
        var lifecycle = ConnectionLifecycle(.finishing)
        #expect(lifecycle.requestArrived() == .drop)
        #expect(lifecycle.requestCompleted(inFlight: 1) == .answer(then: .none))
        #expect(lifecycle.state == .finishing)
    }

    @Test func theLastAnswerOfAFinishingConnectionClosesItOnceWritten() {
        var lifecycle = ConnectionLifecycle(.finishing)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .answer(then: .close(.afterWrites)))
        #expect(lifecycle.state == .closing(.afterWrites))
    }

    @Test(arguments: everyState.filter { $0 != .serving && !$0.isStopping })
    func disconnectOutsideTransmissionChangesNothing(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.disconnectRequested(inFlight: 0) == .none)
        #expect(lifecycle.state == state)
    }

    // MARK: Closing

    @Test(arguments: [State.negotiating, .serving, .stopping(inputSinceCheck: true), .finishing],
          [ConnectionLifecycle.CloseMode.now, .afterWrites])
    func aCloseRequestFromAnOpenConnectionClosesIt(from state: State, mode: ConnectionLifecycle.CloseMode) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.closeRequested(mode) == .close(mode))
        #expect(lifecycle.state == .closing(mode))
    }

    @Test func aCloseNowCutsOffAConnectionWaitingForItsWrites() {
        var lifecycle = ConnectionLifecycle(.closing(.afterWrites))
        #expect(lifecycle.closeRequested(.now) == .close(.now))
        #expect(lifecycle.state == .closing(.now))
    }

    @Test(arguments: [
        (State.closing(.afterWrites), ConnectionLifecycle.CloseMode.afterWrites), (.closing(.now), .now),
        (.closing(.now), .afterWrites), (.closedAwaitingCompletions, .now), (.closedAwaitingCompletions, .afterWrites),
        (.closed, .now), (.closed, .afterWrites),
    ])
    func aCloseRequestWhileClosingOrClosedChangesNothing(from state: State, mode: ConnectionLifecycle.CloseMode) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.closeRequested(mode) == .none)
        #expect(lifecycle.state == state)
    }

    @Test(arguments: [ConnectionLifecycle.CloseMode.now, .afterWrites])
    func aClosingConnectionDropsRequestsAndDiscardsCompletions(mode: ConnectionLifecycle.CloseMode) {
        var lifecycle = ConnectionLifecycle(.closing(mode))
        #expect(lifecycle.requestArrived() == .drop)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .discard(then: .none))
        #expect(lifecycle.state == .closing(mode))
    }

    // MARK: Closed

    @Test(arguments: openStates)
    func aChannelClosedWithNothingInFlightReleasesEverything(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.channelClosed(inFlight: 0) == .release)
        #expect(lifecycle.state == .closed)
    }

    @Test(arguments: openStates.filter { $0 != .negotiating })
    func aChannelClosedWithRequestsInFlightWaitsForThem(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.channelClosed(inFlight: 2) == .none)
        #expect(lifecycle.state == .closedAwaitingCompletions)
    }

    @Test func requestsCompletingAfterTheCloseAreDiscardedAndTheLastReleasesEverything() {
        var lifecycle = ConnectionLifecycle(.closedAwaitingCompletions)
        #expect(lifecycle.requestCompleted(inFlight: 1) == .discard(then: .none))
        #expect(lifecycle.state == .closedAwaitingCompletions)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .discard(then: .release))
        #expect(lifecycle.state == .closed)
    }

    @Test(arguments: closedStates)
    func aClosedConnectionIgnoresEveryOtherEvent(from state: State) {
        var lifecycle = ConnectionLifecycle(state)
        #expect(lifecycle.requestArrived() == .drop)
        lifecycle.inputArrived()
        #expect(lifecycle.channelClosed(inFlight: 0) == .none)
        #expect(lifecycle.stopRequested() == .none)
        #expect(lifecycle.state == state)
    }

    @Test func aClosedConnectionDiscardsAStrayCompletionWithoutReleasingAgain() {
        var lifecycle = ConnectionLifecycle(.closed)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .discard(then: .none))
        #expect(lifecycle.state == .closed)
    }

    // MARK: What each state allows

    @Test(arguments: everyState)
    func eachStateSaysWhetherTheChannelIsOpenReadAndTakingRequests(_ state: State) {
        let lifecycle = ConnectionLifecycle(state)
        let (open, reads, takes): (Bool, Bool, Bool) = switch state {
        case .negotiating: (true, true, false)
        case .serving, .stopping: (true, true, true)
        case .finishing, .closing: (true, false, false)
        case .closedAwaitingCompletions, .closed: (false, false, false)
        }
        #expect(lifecycle.channelIsOpen == open)
        #expect(lifecycle.readsInput == reads)
        #expect(lifecycle.takesRequests == takes)
    }

    // MARK: Whole lives

    @Test func aClientThatDisconnectsWithRequestsInFlightIsAnsweredThenClosedThenReleased() {
        var lifecycle = ConnectionLifecycle()
        #expect(lifecycle.transmissionStarted() == .holdUntilClosed)
        #expect(lifecycle.disconnectRequested(inFlight: 2) == .stopTakingRequests)
        #expect(lifecycle.requestCompleted(inFlight: 1) == .answer(then: .none))
        #expect(lifecycle.requestCompleted(inFlight: 0) == .answer(then: .close(.afterWrites)))
        #expect(lifecycle.channelClosed(inFlight: 0) == .release)
        #expect(lifecycle.state == .closed)
    }

    @Test func aServerStopAnswersWhatIsInFlightAndClosesOnceTheClientIsQuiet() {
        var lifecycle = ConnectionLifecycle(.serving)
        #expect(lifecycle.stopRequested() == .checkStopLater)
        #expect(lifecycle.stopCheckDue(inFlight: 1) == .checkStopLater)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .answer(then: .none))
        lifecycle.inputArrived()
        #expect(lifecycle.requestArrived() == .refuseShuttingDown)
        #expect(lifecycle.stopCheckDue(inFlight: 0) == .checkStopLater)
        #expect(lifecycle.stopCheckDue(inFlight: 0) == .close(.afterWrites))
        #expect(lifecycle.channelClosed(inFlight: 0) == .release)
    }

    @Test func aViolationWithRequestsInFlightClosesNowAndReleasesAfterTheLastCompletion() {
        var lifecycle = ConnectionLifecycle(.serving)
        #expect(lifecycle.closeRequested(.now) == .close(.now))
        #expect(lifecycle.requestCompleted(inFlight: 1) == .discard(then: .none))
        #expect(lifecycle.channelClosed(inFlight: 1) == .none)
        #expect(lifecycle.requestCompleted(inFlight: 0) == .discard(then: .release))
        #expect(lifecycle.state == .closed)
    }
}

private extension ConnectionLifecycle.State {
    var isStopping: Bool { if case .stopping = self { true } else { false } }
}
