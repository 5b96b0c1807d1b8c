/// A thread's plug (Linux's `struct blk_plug`, `blk_start_plug` and `blk_finish_plug`):
/// while an issuer holds one, a provider may put off the work of a request it was given
/// (`ProviderBio.deferToPlug`) and do it when the plug ends, in the order it was put off
/// (`Geom.resume`). A memory disk uses it to run a batch's copies back to back, each
/// starting to fetch the next one's source (`nextDeferred`): the cache and TLB misses
/// of one copy then overlap those of the next, where one request at a time each waits
/// its turn.
///
/// Holding a plug is the issuer's promise not to wait, on this thread, for a request it
/// submitted while plugged: the work is done only when the plug ends. The core's own
/// waits (a bio set's reserve, a synchronous request) do the work put off first
/// (`flush`), as Linux flushes the plug of a task about to sleep.
public enum BioPlug {
    /// Runs `body` plugged. Plugs nest; what was put off runs when the outermost ends,
    /// with the plug still held, so that requests submitted by the completions it runs
    /// (an issuer keeping its queue depth) are put off in turn and run in the same loop.
    public static func withPlug<Result>(_ body: () throws -> Result) rethrows -> Result {
        let thread = ThreadState.current
        thread.pointee.plugDepth += 1
        defer {
            if thread.pointee.plugDepth == 1 { runDeferred(thread) }
            thread.pointee.plugDepth -= 1
        }
        return try body()
    }

    /// Whether this thread holds a plug: a provider may put off work.
    @inlinable public static var isPlugged: Bool { ThreadState.current.pointee.plugDepth > 0 }

    /// Whether the next request put off on this thread goes to the same provider as
    /// `bio`, one being resumed: a provider that batches what it resumes (an io_uring
    /// submitted once) sends the batch when this is false, as its last request of the run.
    public static func nextDeferredGoesWith(_ bio: borrowing ProviderBio) -> Bool {
        guard let next = ThreadState.current.pointee.deferred.head, let to = next.pointee.to else { return false }
        return to.toOpaque() == bio.header.pointee.to?.toOpaque()
    }

    /// The geom and offset of the next request put off on this thread, if any: a geom
    /// resuming one starts fetching what the next will read while it works on this one.
    public static func nextDeferred() -> (geom: Unmanaged<Geom>, offset: Int64)? {
        guard let next = ThreadState.current.pointee.deferred.head, let to = next.pointee.to else { return nil }
        return (to._withUnsafeGuaranteedRef { $0.geomReference }, next.pointee.offset)
    }

    /// Does the work put off on this thread so far, now: before the thread waits.
    public static func flush() {
        let thread = ThreadState.current
        if !thread.pointee.deferred.isEmpty { runDeferred(thread) }
    }

    /// Resumes each request put off, oldest first, until none is left.
    static func runDeferred(_ thread: UnsafeMutablePointer<ThreadState>) {
        while let header = thread.pointee.deferred.popFirst() {
            // The geom does its work now: what is delivered from here reads the clock
            // anew, as after a working `start`.
            thread.pointee.clock = 0
            header.pointee.to!._withUnsafeGuaranteedRef { provider in
                provider.withGeom { $0.resume(ProviderBio(header: header)) }
            }
        }
        thread.pointee.clock = 0
    }
}

extension ProviderBio {
    /// Puts this request off until the thread's plug ends, when its geom's `resume`
    /// gets it back. Only from `start` (or a routine it calls) while
    /// `BioPlug.isPlugged`.
    public consuming func deferToPlug() {
        let thread = ThreadState.current
        precondition(thread.pointee.plugDepth > 0, "deferToPlug() without a plug: \(summary)")
        thread.pointee.deferred.append(unmanaged().header)
    }
}
