/// The life of one NBD connection, from the greeting to the last request let go: what
/// it takes, whether it answers, and when it closes and gives back its export.
///
/// A value with no I/O of its own: each event is a mutating method returning what the
/// connection handler must do, which the handler carries out (`NBDConnectionHandler`,
/// "Lifecycle"). Every close, whatever asked for it, is a `.close` action. The handler
/// keeps it on its event loop, where every event happens, so nothing here is shared
/// between threads. Its states and actions carry no references, so no event allocates.
struct ConnectionLifecycle: Equatable {
    enum State: Equatable {
        /// The greeting is out; the client's flags and options are being haggled. Nothing
        /// is in flight.
        case negotiating
        /// In transmission: requests are taken and answered.
        case serving
        /// In transmission while the server stops: requests still arriving are refused with
        /// ESHUTDOWN, as closing on unread input would reset the connection and lose the
        /// answers. A check every `stopCheckInterval` closes once nothing is in flight and
        /// no input came since the last check.
        case stopping(inputSinceCheck: Bool)
        /// The client sent DISC: no more requests; closes once those in flight are answered.
        case finishing
        /// The channel is asked to close, now or once what was written has gone out.
        /// Requests still in flight complete unanswered.
        case closing(CloseMode)
        /// The channel has closed with requests in flight: they complete unanswered, and the
        /// last one gives back the export and the handler's hold on itself.
        case closedAwaitingCompletions
        /// Closed with nothing in flight, the export and the hold given back. Final.
        case closed
    }

    enum CloseMode: Equatable {
        /// Close at once, dropping what the channel has not written yet (bad input, a hard
        /// cut-off).
        case now
        /// Close once everything written so far has reached the socket: the answers to a
        /// client that said goodbye or to requests in flight at a server stop. NIO fails a
        /// closed channel's pending writes, so closing at once would drop the replies of
        /// large reads still queued behind a full socket.
        case afterWrites
    }

    /// What the handler does after an event.
    enum Action: Equatable {
        case none
        /// Transmission began: hold the handler until it has closed with nothing in flight.
        /// Requests name their done handler unowned, and a closed connection's pipeline
        /// lets go of its handler.
        case holdUntilClosed
        /// Decode no more requests and stop reading.
        case stopTakingRequests
        /// Stop decoding and close the channel.
        case close(CloseMode)
        /// Check again after `stopCheckInterval` whether the stopping connection may close.
        case checkStopLater
        /// Give back the export's consumer and let go of the handler's hold on itself.
        case release
    }

    /// What to do with a request the client sent.
    enum RequestDecision: Equatable {
        case serve
        /// The server is stopping: answer it with ESHUTDOWN.
        case refuseShuttingDown
        /// Arrived after the connection stopped taking requests: drop it unanswered.
        case drop
    }

    /// What to do with a request that completed: answer it or not (the channel is
    /// closing or closed), then carry out the action (a finishing connection's last
    /// answer closes it; a closed one's last request releases the export).
    enum CompletionAction: Equatable {
        case answer(then: Action)
        case discard(then: Action)
    }

    /// How long a stopping connection must be quiet, with nothing in flight, to close.
    static let stopCheckInterval: Duration = .milliseconds(50)

    private(set) var state: State = .negotiating

    init() {}

    /// A state to start from, for tests.
    init(_ state: State) { self.state = state }

    // MARK: Questions

    /// Whether the channel is still open (closing included): writes may still go out.
    var channelIsOpen: Bool {
        switch state {
        case .negotiating, .serving, .stopping, .finishing, .closing: true
        case .closedAwaitingCompletions, .closed: false
        }
    }

    /// Whether the socket should be read: negotiating, or taking requests.
    var readsInput: Bool {
        switch state {
        case .negotiating, .serving, .stopping: true
        case .finishing, .closing, .closedAwaitingCompletions, .closed: false
        }
    }

    /// Whether requests are taken (served or refused), which is when the next one may be
    /// polled for.
    var takesRequests: Bool {
        switch state {
        case .serving, .stopping: true
        case .negotiating, .finishing, .closing, .closedAwaitingCompletions, .closed: false
        }
    }

    // MARK: Events

    /// The export is open and transmission begins (GO, EXPORT_NAME).
    mutating func transmissionStarted() -> Action {
        guard case .negotiating = state else { return .none }
        state = .serving
        return .holdUntilClosed
    }

    /// A request (other than DISC) arrived.
    func requestArrived() -> RequestDecision {
        switch state {
        case .serving: .serve
        case .stopping: .refuseShuttingDown
        case .negotiating, .finishing, .closing, .closedAwaitingCompletions, .closed: .drop
        }
    }

    /// The client sent DISC, with `inFlight` requests not yet answered.
    mutating func disconnectRequested(inFlight: Int) -> Action {
        guard takesRequests else { return .none }
        if inFlight == 0 {
            state = .closing(.afterWrites)
            return .close(.afterWrites)
        }
        state = .finishing
        return .stopTakingRequests
    }

    /// A request completed, leaving `inFlight` requests not yet answered.
    mutating func requestCompleted(inFlight: Int) -> CompletionAction {
        switch state {
        case .serving, .stopping:
            return .answer(then: .none)
        case .finishing:
            guard inFlight == 0 else { return .answer(then: .none) }
            state = .closing(.afterWrites)
            return .answer(then: .close(.afterWrites))
        case .closedAwaitingCompletions:
            guard inFlight == 0 else { return .discard(then: .none) }
            state = .closed
            return .discard(then: .release)
        case .negotiating, .closing, .closed:
            // Nothing is in flight while negotiating or once closed; while closing the
            // answer could not reach the client.
            return .discard(then: .none)
        }
    }

    /// Input arrived from the client.
    mutating func inputArrived() {
        if case .stopping(inputSinceCheck: false) = state { state = .stopping(inputSinceCheck: true) }
    }

    /// The server is stopping: in-flight requests are answered, then the connection closes.
    mutating func stopRequested() -> Action {
        switch state {
        case .negotiating:
            // Nothing in flight to answer.
            state = .closing(.now)
            return .close(.now)
        case .serving:
            // Counts as input, so the first check waits a whole interval.
            state = .stopping(inputSinceCheck: true)
            return .checkStopLater
        case .stopping, .finishing, .closing, .closedAwaitingCompletions, .closed:
            // Stopping or closing already; a finishing connection closes once answered.
            return .none
        }
    }

    /// A stopping connection's periodic check, with `inFlight` requests not yet answered.
    mutating func stopCheckDue(inFlight: Int) -> Action {
        guard case .stopping(let inputSinceCheck) = state else { return .none }
        if inFlight == 0 && !inputSinceCheck {
            state = .closing(.afterWrites)
            return .close(.afterWrites)
        }
        state = .stopping(inputSinceCheck: false)
        return .checkStopLater
    }

    /// Something asks for the channel to close: bad input, an error, a refused export,
    /// ABORT, or the server cutting off a connection that outlived its stop.
    mutating func closeRequested(_ mode: CloseMode) -> Action {
        switch state {
        case .negotiating, .serving, .stopping, .finishing:
            state = .closing(mode)
            return .close(mode)
        case .closing(.afterWrites) where mode == .now:
            // The client is not taking what was written: cut it off.
            state = .closing(.now)
            return .close(.now)
        case .closing, .closedAwaitingCompletions, .closed:
            return .none
        }
    }

    /// The channel has closed (whoever closed it), with `inFlight` requests not yet
    /// answered.
    mutating func channelClosed(inFlight: Int) -> Action {
        switch state {
        case .closedAwaitingCompletions, .closed:
            return .none
        case .negotiating, .serving, .stopping, .finishing, .closing:
            guard inFlight == 0 else {
                state = .closedAwaitingCompletions
                return .none
            }
            state = .closed
            return .release
        }
    }
}
