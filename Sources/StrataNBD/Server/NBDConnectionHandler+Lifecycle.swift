import NIOCore
import Strata

extension NBDConnectionHandler {
    // MARK: Lifecycle

    /// Asks the connection to stop because the server is stopping. Requests in flight
    /// finish and are answered; requests that still arrive are answered with ESHUTDOWN;
    /// once nothing is in flight and the client has been quiet for a moment, it closes
    /// (`ConnectionLifecycle.State.stopping`). Called on the event loop.
    func stopGracefully() {
        perform(lifecycle.stopRequested())
    }

    /// Closes the connection: at once (bad input, an error, the server cutting it off), or
    /// once what was written has reached the socket (ABORT). Called on the event loop.
    func close(_ mode: ConnectionLifecycle.CloseMode) {
        perform(lifecycle.closeRequested(mode))
    }

    /// Carries out what the lifecycle asks after an event.
    func perform(_ action: ConnectionLifecycle.Action) {
        switch action {
        case .none:
            break
        case .holdUntilClosed:
            heldUntilClosed = self
        case .stopTakingRequests:
            session.phase = .closed
            pauseReading()
        case .close(let mode):
            closeChannel(mode)
        case .checkStopLater:
            eventLoop.scheduleTask(in: TimeAmount(ConnectionLifecycle.stopCheckInterval)) {
                self.perform(self.lifecycle.stopCheckDue(inFlight: self.requests.count))
            }
        case .release:
            releaseExport()
            releaseHold()
        }
    }

    /// The one place the handler closes its channel: decoding stops, the gathered replies
    /// are flushed, and the channel closes now or once they have been written.
    private func closeChannel(_ mode: ConnectionLifecycle.CloseMode) {
        session.phase = .closed
        guard let context else { return }
        flushReplies()
        switch mode {
        case .now:
            context.close(promise: nil)
        case .afterWrites:
            // Writes complete in order: once this empty one has, everything before it is out.
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(allocator.buffer(capacity: 0))).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }

    /// Gives back the export's consumer, if transmission began.
    private func releaseExport() {
        guard let consumer else { return }
        self.consumer = nil
        served?.closed(consumer)
        served?.sectorLocks.unregister(self)
        giveBack(consumer)
    }

    /// Closes and destroys a consumer of an export's provider (`openConsumer`).
    func giveBack(_ consumer: Consumer) {
        if consumer.provider != nil {
            try? core.topology.access(consumer, read: -consumer.readCount, write: -consumer.writeCount,
                                      exclusive: -consumer.exclusiveCount)
        }
        core.topology.destroy(consumer)
    }

    /// Lets go of the handler's hold on itself once the I/O path has unwound: a
    /// completion may be what brought the count to zero.
    private func releaseHold() {
        guard let hold = heldUntilClosed else { return }
        heldUntilClosed = nil
        eventLoop.execute { _ = hold }
    }
}
