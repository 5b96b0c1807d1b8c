/// When a connection's replies are flushed: once at the end of the work that wrote them
/// (one read's input, one batch of completions handed over from other threads), so a
/// batch of requests costs one socket write, and at once outside such work (a request
/// completing on the event loop between reads).
///
/// A value the handler keeps on its event loop, where all this work happens: nothing in
/// it is shared between threads, and no event allocates. Each event that may call for a
/// flush returns whether the handler must flush now, and the handler reports every
/// flush (`flushed`).
struct ReplyFlushing: Equatable {
    enum State: Equatable {
        /// No work under way and nothing unflushed: a reply is flushed as it is written.
        case idle
        /// A read's input (or input held back by a pause) is being decoded and handled.
        case processingInput(unflushed: Bool)
        /// A read's input is handled and its replies wait for the end of the read
        /// (`channelReadComplete`), which may hand over more input first.
        case awaitingReadEnd
        /// Requests that completed on other threads are being answered.
        case answeringCompletions(unflushed: Bool)
        /// Input held back by a pause is being handled within a batch of completions,
        /// one of which made room to read again.
        case processingInputWithinCompletions(unflushed: Bool)
    }

    private(set) var state: State = .idle

    init() {}

    /// A state to start from, for tests.
    init(_ state: State) { self.state = state }

    /// Whether input is being handled, so that input held back by a pause is left to the
    /// loop under way rather than handled from inside it.
    var isProcessingInput: Bool {
        switch state {
        case .processingInput, .processingInputWithinCompletions: true
        case .idle, .awaitingReadEnd, .answeringCompletions: false
        }
    }

    /// Input is about to be handled. Never while input is being handled: that is checked
    /// first (`isProcessingInput`), and a read does not arrive in the middle of one.
    mutating func inputBegan() {
        switch state {
        case .idle: state = .processingInput(unflushed: false)
        case .awaitingReadEnd: state = .processingInput(unflushed: true)
        case .answeringCompletions(let unflushed): state = .processingInputWithinCompletions(unflushed: unflushed)
        case .processingInput, .processingInputWithinCompletions: break
        }
    }

    /// The input is handled; its replies wait for the end of the read, or of the batch of
    /// completions it was handled within.
    mutating func inputEnded() {
        switch state {
        case .processingInput(let unflushed): state = unflushed ? .awaitingReadEnd : .idle
        case .processingInputWithinCompletions(let unflushed): state = .answeringCompletions(unflushed: unflushed)
        case .idle, .awaitingReadEnd, .answeringCompletions: break
        }
    }

    /// Whether handled input's replies wait to be flushed at the end of its read (or,
    /// for input held back by a pause, once it is handled outside any read).
    var repliesAwaitReadEnd: Bool { state == .awaitingReadEnd }

    /// A batch of completions from other threads is about to be answered. It runs as a
    /// task of its own, so never within input being handled.
    mutating func completionsBegan() {
        switch state {
        case .idle: state = .answeringCompletions(unflushed: false)
        case .awaitingReadEnd: state = .answeringCompletions(unflushed: true)
        case .processingInput, .answeringCompletions, .processingInputWithinCompletions: break
        }
    }

    /// The batch of completions is answered. Returns whether its replies must be flushed
    /// now.
    mutating func completionsEnded() -> Bool {
        guard case .answeringCompletions(let unflushed) = state else { return false }
        state = .idle
        return unflushed
    }

    /// A reply was written to the channel. Returns whether to flush it now: outside any
    /// work, where nothing else would.
    mutating func replyWritten() -> Bool {
        switch state {
        case .idle, .awaitingReadEnd:
            return true
        case .processingInput:
            state = .processingInput(unflushed: true)
        case .answeringCompletions:
            state = .answeringCompletions(unflushed: true)
        case .processingInputWithinCompletions:
            state = .processingInputWithinCompletions(unflushed: true)
        }
        return false
    }

    /// Everything written so far has been flushed.
    mutating func flushed() {
        switch state {
        case .idle, .awaitingReadEnd: state = .idle
        case .processingInput: state = .processingInput(unflushed: false)
        case .answeringCompletions: state = .answeringCompletions(unflushed: false)
        case .processingInputWithinCompletions: state = .processingInputWithinCompletions(unflushed: false)
        }
    }
}
