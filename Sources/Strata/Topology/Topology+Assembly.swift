/// Where a topology is in being put together from a configuration.
enum AssemblyPhase: Sendable {
    /// Built, or never assembled: messages go out, deferred work runs at once.
    case running
    case assembling(AssemblyState)
    /// The assembly failed: the topology is being taken down, silently.
    case abandoned
}

/// What an assembly under way holds back until it ends.
struct AssemblyState: Sendable {
    /// Geom names the configuration declares: tasting may not make geoms by them.
    var reserved: Set<String>
    var heldLog: [(LogLevel, String)] = []
    /// Run in order when the assembly is finished (a disk's held writes, then the
    /// work that may follow them: a mirror's rebuild).
    var whenFinished: [@Sendable () throws -> Void] = []
    /// Run when it is abandoned (a file the assembly created is removed).
    var whenAbandoned: [@Sendable () -> Void] = []
}

extension Topology {
    /// Begins putting the topology together from a configuration. Until
    /// `finishAssembly`, messages are held back (a failed start reports its one error,
    /// not the teardown of what it had built), work that classes defer with
    /// `whenAssembled` waits, and disks that persist their data hold what is written
    /// to them in memory, so that an assembly that fails changes nothing on disk.
    /// - Parameter reserving: the geom names the configuration declares; tasting may not
    ///   make a geom by one of them.
    public func beginAssembly(reserving names: Set<String> = []) {
        assembly.withLock { phase in
            precondition({ if case .running = phase { true } else { false } }(), "an assembly is already under way")
            phase = .assembling(AssemblyState(reserved: names))
        }
    }

    /// Whether the topology is being assembled: what a class writes now may be dropped.
    public var isAssembling: Bool {
        assembly.withLock { phase in if case .assembling = phase { true } else { false } }
    }

    /// Runs `action` once the assembly under way is finished, or now if there is none;
    /// `abandoned` runs instead if the assembly fails.
    public func whenAssembled(_ action: @escaping @Sendable () throws -> Void,
                              abandoned: (@Sendable () -> Void)? = nil) throws {
        let now: Bool = assembly.withLock { phase in
            guard case .assembling(var state) = phase else { return true }
            state.whenFinished.append(action)
            if let abandoned { state.whenAbandoned.append(abandoned) }
            phase = .assembling(state)
            return false
        }
        if now { try action() }
    }

    /// Ends the assembly: deferred work runs in the order it was asked for (the first
    /// error stops it and is thrown), then the held messages go out.
    public func finishAssembly() throws {
        let state: AssemblyState? = assembly.withLock { phase in
            guard case .assembling(let state) = phase else { return nil }
            phase = .running
            return state
        }
        guard let state else { return }
        defer { for (level, message) in state.heldLog { log?(level, message) } }
        for action in state.whenFinished { try action() }
    }

    /// Ends a failed assembly: held messages and deferred work are dropped, what was
    /// to undo it runs, and messages stay silent from now on, while the caller takes the
    /// topology down (`shutdown`).
    public func abandonAssembly() {
        let state: AssemblyState? = assembly.withLock { phase in
            guard case .assembling(let state) = phase else { return nil }
            phase = .abandoned
            return state
        }
        for undo in state?.whenAbandoned ?? [] { undo() }
    }

    /// Whether the assembly under way reserves `name` for the configuration.
    func isReserved(_ name: String) -> Bool {
        assembly.withLock { phase in
            if case .assembling(let state) = phase { state.reserved.contains(name) } else { false }
        }
    }
}
