import Dispatch

extension Consumer {
    /// Sends one request on this consumer and waits for it: for tasting and metadata
    /// I/O on the event thread or a user's thread. Never call it from a `start` or done
    /// routine, which must not block.
    ///
    /// - Returns: the bytes completed and the completion flags.
    /// - Throws: `StrataError` with the request's errno.
    @discardableResult
    public func performSync(_ command: BioCommand, offset: Int64, length: Int64,
                            buffer: UnsafeMutableRawBufferPointer? = nil, flags: BioFlags = [],
                            attribute: BioAttribute? = nil) throws -> (completed: Int64, flags: BioFlags) {
        let finished = DispatchSemaphore(value: 0)
        let outcome = SyncOutcome()
        let bio = Bio.make(command, offset: offset, length: length, buffer: buffer, flags: flags, attribute: attribute,
                           from: .unpooled)
        bio.done = .closure { done in
            outcome.set(error: done.error, completed: done.completed, flags: done.flags)
            done.destroy()
            finished.signal()
        }
        let providerName = provider?.name ?? "-"
        request(bio)
        // Under a plug the request may have been put off until the plug ends: do it now.
        BioPlug.flush()
        finished.wait()
        if let error = outcome.error { throw StrataError(error, "\(command) at \(offset)+\(length) on \(providerName)") }
        return (outcome.completed, outcome.flags)
    }

    /// Reads `count` bytes at `offset` and waits for them.
    public func readSync(at offset: Int64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { buffer in
            _ = try performSync(.read, offset: offset, length: Int64(count), buffer: buffer)
        }
        return bytes
    }

    /// Writes `bytes` at `offset` and waits for the write to complete.
    public func writeSync(_ bytes: [UInt8], at offset: Int64, flags: BioFlags = []) throws {
        var copy = bytes
        try copy.withUnsafeMutableBytes { buffer in
            _ = try performSync(.write, offset: offset, length: Int64(buffer.count), buffer: buffer, flags: flags)
        }
    }
}

extension Bio {
    /// A request from `set` filled in with the given fields (one data segment at most).
    static func make(_ command: BioCommand, offset: Int64, length: Int64, buffer: UnsafeMutableRawBufferPointer?,
                     flags: BioFlags, attribute: BioAttribute?, from set: AnyBioSet) -> Bio {
        let bio = set.alloc(segments: 1)
        bio.command = command
        bio.offset = offset
        bio.length = length
        bio.flags = flags
        bio.attribute = attribute
        if let buffer { bio.setData(buffer) }
        return bio
    }
}

/// What a synchronous request's done routine hands back to the waiting thread; the
/// semaphore orders the write before the read.
final class SyncOutcome: @unchecked Sendable {
    private(set) var error: BioError?
    private(set) var completed: Int64 = 0
    private(set) var flags: BioFlags = []

    func set(error: BioError?, completed: Int64, flags: BioFlags) {
        self.error = error
        self.completed = completed
        self.flags = flags
    }
}
