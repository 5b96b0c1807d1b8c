import Dispatch
import Strata
import Synchronization

/// MIRROR (gmirror): every write goes to every component; reads go to one, by the
/// balance algorithm. A component that fails a write is ejected (BROKEN) before the
/// write is acknowledged, and the write succeeds if any copy took it; a failed read is
/// retried on another component. Metadata in each component's last sector (genid,
/// syncid, dirty flag, sync offset) lets a restart tell stale copies from fresh ones;
/// a mirror found dirty is resynchronized. Components are rebuilt online while I/O goes
/// on, and a rebuild resumes from its saved offset.
public final class MirrorGeom: Geom, @unchecked Sendable {
    public enum ComponentState: UInt8, Sendable {
        case empty, active, synchronizing, stale, broken
        public var name: String {
            switch self {
            case .empty: "EMPTY"
            case .active: "ACTIVE"
            case .synchronizing: "SYNCHRONIZING"
            case .stale: "STALE"
            case .broken: "BROKEN"
            }
        }
    }

    /// One component place. The table never changes size: `start` reads it without a
    /// lock; a slot's consumer is set before its state publishes it.
    final class Slot: @unchecked Sendable {
        let index: Int
        let stateStorage = Atomic<UInt8>(ComponentState.empty.rawValue)
        let syncOffset = Atomic<Int64>(0)
        let inFlight = Atomic<Int>(0)
        var consumer: Consumer?
        /// Read and written only by `writeMetadata` (under `metadataLock`) and during assembly.
        var metadata: MirrorMetadata?
        /// For `prefer`: set when the component is attached, before it is published.
        var priority = 0
        /// Its provider is on another machine (it answers "STRATA::link"): `prefer-local`
        /// reads go elsewhere, and it is taken back when its link returns. Set when the
        /// component is attached, before it is published.
        var isRemote = false
        /// How many times the remote component's link had been made when it was last
        /// taken in: a larger count later means the link was lost and found again.
        let linkEpoch = Atomic<Int>(0)
        /// Background writes (`async` replication) taken in for this component and not
        /// yet completed: it serves no read meanwhile.
        let laggingWrites = Atomic<Int>(0)
        /// Up while a timer looks for the remote component's link to come back.
        let watchingLink = Atomic<Bool>(false)
        /// The regions this component may lack (nil for places past the mirror's count).
        let missed: MirrorRegionMap?

        init(index: Int, missed: MirrorRegionMap?) {
            self.index = index
            self.missed = missed
        }

        var state: ComponentState { ComponentState(rawValue: stateStorage.load(ordering: .acquiring))! }
        func set(_ state: ComponentState) { stateStorage.store(state.rawValue, ordering: .releasing) }
        var name: String { consumer?.provider?.name ?? "-" }
    }

    static let maximumComponents = 16
    static let chunk: Int64 = 1 << 20

    public let mirrorID: UInt64
    public let mirrorSize: Int64
    public let balance: MirrorBalance
    public let slice: Int
    public let replication: MirrorReplication
    /// The remote components' backlog under `async` replication.
    let replicationQueue = ConditionMutex(ReplicationQueue())
    /// The backlog's size, read without the lock by writes deciding whether to park.
    let laggingBytes = Atomic<Int64>(0)
    let expected: Int
    let slots: [Slot]
    /// What changes under the lock: the fields every component's metadata shares, the
    /// component being rebuilt, and the rebuild gate. Nothing else reaches them.
    private let shared: ConditionMutex<SharedState>
    private let roundRobin = Atomic<Int>(0)
    /// Metadata writes happen here, never on an I/O thread.
    private let metadataQueue: DispatchQueue
    /// One metadata write at a time, whoever asks (ejection, rebuild, insert, access).
    private let metadataLock = ConditionLock()

    /// Up while a rebuild runs: writes then go through the rebuild gate. Written and
    /// read, as `untrackedWrites` is, sequentially consistent (see `write`).
    private let rebuildActive = Atomic<Bool>(false)
    /// Writes in flight that did not go through the gate (clones count one each), and
    /// writes between counting themselves and looking at `rebuildActive`.
    private let untrackedWrites = Atomic<Int>(0)
    /// Up while a rebuild waits for `untrackedWrites` to reach 0: the write that brings it
    /// there wakes the rebuild. Otherwise finishing an untracked write takes no lock.
    private let rebuildAwaitsUntrackedWrites = Atomic<Bool>(false)
    /// Bytes per second a rebuild may copy (0: no limit).
    public let rebuildRate = Atomic<Int>(0)
    /// Set when the mirror starts to wither: nothing is ejected or copied after that.
    private let stopping = Atomic<Bool>(false)

    override public func withering() {
        stopping.store(true, ordering: .releasing)
    }

    init(name: String, mirrorID: UInt64, mediaSize: Int64, balance: MirrorBalance, slice: Int, expected: Int,
         genid: UInt32, syncid: UInt32, replication: MirrorReplication = .sync) {
        self.mirrorID = mirrorID
        self.replication = replication
        self.mirrorSize = mediaSize
        self.balance = balance
        self.slice = slice
        self.expected = expected
        shared = ConditionMutex(SharedState(metadata: SharedMetadata(genid: genid, syncid: syncid)))
        slots = (0..<MirrorGeom.maximumComponents).map { index in
            Slot(index: index, missed: index < expected ? MirrorRegionMap(mediaSize: mediaSize) : nil)
        }
        metadataQueue = DispatchQueue(label: "strata.mirror.\(name)")
        super.init(name: name, className: "MIRROR")
    }

    // MARK: Reads

    private func readable(_ slot: Slot, _ end: Int64) -> Bool {
        // A remote component behind on writes (`async`) could answer with old data.
        if slot.isRemote && slot.laggingWrites.load(ordering: .relaxed) > 0 { return false }
        return switch slot.state {
        case .active: true
        case .synchronizing: end <= slot.syncOffset.load(ordering: .acquiring)
        default: false
        }
    }

    /// The components a read of `offset ..< end` may go to, leaving out `tried` (a bit
    /// mask of slot indexes).
    private func readers(end: Int64, excluding tried: UInt32) -> SlotMask {
        var readers = SlotMask()
        for index in 0..<expected where tried & (1 << UInt32(index)) == 0 && readable(slots[index], end) {
            readers.insert(index)
        }
        return readers
    }

    /// The component a read of `offset ..< end` goes to, avoiding `tried` (a bit mask).
    /// Among equals, the lowest index.
    private func chooseReader(end: Int64, tried: UInt32) -> Slot? {
        let candidates = readers(end: end, excluding: tried)
        guard !candidates.isEmpty else { return nil }
        switch balance {
        case .load, .split:
            return best(of: candidates) { $0.inFlight.load(ordering: .relaxed) < $1.inFlight.load(ordering: .relaxed) }
        case .prefer:
            return best(of: candidates) { $0.priority > $1.priority }
        case .preferLocal:
            return best(of: candidates) { a, b in
                a.isRemote != b.isRemote ? !a.isRemote : a.inFlight.load(ordering: .relaxed) < b.inFlight.load(ordering: .relaxed)
            }
        case .roundRobin:
            return slots[candidates.member(roundRobin.wrappingAdd(1, ordering: .relaxed).oldValue % candidates.count)]
        }
    }

    /// The best of `candidates` (not empty) by `isBetter`; among equals, the lowest index.
    private func best(of candidates: SlotMask, by isBetter: (Slot, Slot) -> Bool) -> Slot {
        var rest = candidates
        var best = slots[rest.popFirst()!]
        while let index = rest.popFirst() {
            if isBetter(slots[index], best) { best = slots[index] }
        }
        return best
    }

    private func send(_ clone: consuming Bio, to slot: Slot, tracking: WriteTracking) {
        clone.setCallerTag(ComponentIndex(slot.index), in: .caller1)
        clone.setCallerTag(tracking, in: .caller2)
        clone.done = .handler(self)
        slot.inFlight.wrappingAdd(1, ordering: .relaxed)
        slot.consumer!.request(clone)
    }

    override public func start(_ bio: consuming ProviderBio) {
        if case .async = replication {
            let isWrite = bio.command != .read && bio.command != .getattr
            var held: ProviderBio? = bio
            if parksForLag(&held, isWrite: isWrite) { return }
            return dispatch(held.take()!)
        }
        dispatch(bio)
    }

    private func dispatch(_ bio: consuming ProviderBio) {
        switch bio.command {
        case .read, .getattr:
            read(bio)
        case .write, .delete, .writeZeroes, .flush:
            write(bio)
        }
    }

    private func read(_ bio: consuming ProviderBio) {
        let end = bio.offset + max(bio.length, 0)
        if balance == .split && bio.command == .read && bio.length >= 2 * Int64(slice) {
            let readers = readers(end: end, excluding: 0)
            if readers.count >= 2 {
                splitRead(bio, across: readers)
                return
            }
        }
        guard let slot = chooseReader(end: end, tried: 0) else {
            bio.deliver(.io)
            return
        }
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        clone.consumerFlags = 1 << UInt32(slot.index)
        send(clone, to: slot, tracking: .none)
        bio.awaitChildren()
    }

    private func splitRead(_ bio: consuming ProviderBio, across readers: SlotMask) {
        var clones = BioChain()
        var at: Int64 = 0
        var turn = 0
        while at < bio.length {
            let piece = min(Int64(slice), bio.length - at)
            guard let clone = bio.clone(range: at, length: piece) else {
                clones.destroyAll()
                bio.deliver(.noMemory)
                return
            }
            clone.consumerFlags = 1 << UInt32(readers.member(turn % readers.count))
            clones.append(clone)
            at += piece
            turn += 1
        }
        bio.awaitChildren()
        while let clone = clones.popFirst() {
            let slot = slots[clone.consumerFlags.trailingZeroBitCount]
            send(clone, to: slot, tracking: .none)
        }
    }

    // MARK: Writes

    private func write(_ bio: consuming ProviderBio) {
        let range = bio.offset..<(bio.offset + max(bio.length, 0))
        // Writes count themselves before looking at the rebuild flag, which the rebuild
        // raises before looking at the count: either the write sees the flag and goes
        // through the gate, or the rebuild waits for it (`waitForUntrackedWrites`).
        untrackedWrites.wrappingAdd(1, ordering: .sequentiallyConsistent)
        guard rebuildActive.load(ordering: .sequentiallyConsistent) else {
            replicate(bio, over: range, tracking: .untracked)
            return
        }
        finishUntrackedWrite()
        // The gate's test and the parking are one step under the lock: the rebuild lets
        // parked writes go after each chunk, and one parked after the last would wait
        // for ever.
        let isFlush = bio.command == .flush
        var admitted: ProviderBio? = bio
        let id = shared.withLock { state -> TrackingID? in
            guard let id = state.gate.register(range, isFlush: isFlush) else {
                state.gate.parked.append(admitted.take()!)
                return nil
            }
            return id
        }
        if let id, let bio = admitted.take() {
            replicate(bio, over: range, tracking: .tracked(id))
        }
    }

    /// Sends a write to every component that must take it: the ACTIVE ones, and a
    /// SYNCHRONIZING one when the write starts below its sync offset or falls where it
    /// misses nothing (a flush to all). The others record the range as missed, for
    /// their rebuild.
    private func replicate(_ bio: consuming ProviderBio, over range: Range<Int64>, tracking: WriteTracking) {
        var targets = SlotMask()
        let isFlush = bio.command == .flush
        for index in 0..<expected {
            let slot = slots[index]
            switch slot.state {
            case .active: targets.insert(index)
            case .synchronizing:
                // Below the sync offset the component is up to date, and so it is in the
                // regions its map does not mark (it was taken back after a while away).
                if isFlush || range.lowerBound < slot.syncOffset.load(ordering: .acquiring) || !slot.missed!.isMarked(range) {
                    targets.insert(index)
                } else {
                    slot.missed!.mark(range)
                }
            case .broken:
                if !isFlush { slot.missed!.mark(range) }
            case .empty, .stale:
                break
            }
        }
        if case .async = replication {
            // Remote components get the write in the background while an up-to-date
            // local one takes it here; with none, they take it here, but only once the
            // writes on their way have landed (the local one may have failed since
            // `start` looked).
            var remotes = SlotMask()
            var localCopies = 0
            var candidates = targets
            while let index = candidates.popFirst() {
                let slot = slots[index]
                if slot.isRemote && slot.state == .active { remotes.insert(index) }
                if !slot.isRemote && slot.state == .active { localCopies += 1 }
            }
            if !remotes.isEmpty && localCopies > 0 {
                sendLagging(bio, to: remotes)
                targets.remove(remotes)
            } else if !remotes.isEmpty && laggingBytes.load(ordering: .acquiring) > 0 {
                var held: ProviderBio? = bio
                if parkUntilCaughtUp(&held) {
                    finishTracking(tracking)
                    return
                }
                bio = held.take()!
            }
        }
        guard !targets.isEmpty else {
            finishTracking(tracking)
            bio.deliver(.io)
            return
        }
        bio.combine = .anySuccess
        var clones = BioChain()
        for _ in 0..<targets.count {
            guard let clone = bio.clone() else {
                clones.destroyAll()
                finishTracking(tracking)
                bio.deliver(.noMemory)
                return
            }
            clones.append(clone)
        }
        // The write counted once so far; from here each clone counts, and its completion
        // takes it off.
        switch tracking {
        case .none: preconditionFailure("a write is always counted")
        case .untracked: untrackedWrites.wrappingAdd(targets.count - 1, ordering: .sequentiallyConsistent)
        case .tracked(let id): shared.withLock { $0.gate.expect(clones: targets.count, for: id) }
        }
        bio.awaitChildren()
        while let index = targets.popFirst() { send(clones.popFirst()!, to: slots[index], tracking: tracking) }
    }

    /// A write's clone completed, or the write ended before sending any: it counts one
    /// less.
    private func finishTracking(_ tracking: WriteTracking) {
        switch tracking {
        case .none:
            break
        case .untracked:
            finishUntrackedWrite()
        case .tracked(let id):
            if shared.withLock({ $0.gate.finish(id) }) { shared.wakeWaiters() }
        }
    }

    private func finishUntrackedWrite() {
        let left = untrackedWrites.wrappingSubtract(1, ordering: .sequentiallyConsistent).newValue
        if left == 0 && rebuildAwaitsUntrackedWrites.load(ordering: .sequentiallyConsistent) { shared.wakeWaiters() }
    }

    // MARK: Completion

    override public func bioDone(_ bio: consuming Bio) {
        let slot = slots[bio.callerTag(.caller1, as: ComponentIndex.self).value]
        slot.inFlight.wrappingSubtract(1, ordering: .relaxed)
        finishTracking(bio.callerTag(.caller2, as: WriteTracking.self))
        guard let error = bio.error else {
            bio.finishClone()
            return
        }
        if bio.command == .read || bio.command == .getattr {
            if bio.command == .read { eject(slot, because: error) }
            let end = bio.offset + max(bio.length, 0)
            if let other = chooseReader(end: end, tried: bio.consumerFlags) {
                // Retry the same clone on another component.
                bio.consumerFlags |= 1 << UInt32(other.index)
                send(bio, to: other, tracking: .none)
                return
            }
            bio.finishClone()
            return
        }
        guard bio.command != .flush || error != .notSupported else {
            bio.finishClone()
            return
        }
        // What the component did not take, its rebuild copies; after a failed flush,
        // nothing written since the last one is known to be there.
        if bio.command == .flush {
            slot.missed!.mark(from: 0)
        } else {
            slot.missed!.mark(bio.offset..<(bio.offset + max(bio.length, 0)))
        }
        // A copy that did not take the write must never be read again, even after a
        // crash: the write is acknowledged only once the other components' metadata
        // records the ejection, as md holds writes until its superblock marks a failed
        // disk. The metadata queue is serial, so this runs after the ejection's write
        // (or an earlier one for the same component). Acknowledging first would leave
        // a window in which a restart finds the stale copy in sync and reads from it.
        eject(slot, because: error)
        let held = bio.unmanaged()
        metadataQueue.async { held.takeBio().finishClone() }
    }

    /// Marks a component BROKEN if it was in use, and records the ejection in the others'
    /// metadata (a new genid).
    func eject(_ slot: Slot, because error: BioError) {
        let was = slot.state
        guard was == .active || was == .synchronizing else { return }
        // Errors caused by the mirror's own teardown (access closed under a rebuild)
        // say nothing about the component. (No topology lock here: this runs in done
        // routines, which must never wait for it.)
        guard let topology, !stopping.load(ordering: .acquiring) else { return }
        slot.set(.broken)
        topology.emit(.warning, "mirror \(name): component \(slot.name) failed (\(error)); ejected, mirror degraded")
        metadataQueue.async { [self] in
            shared.withLock { $0.metadata.genid &+= 1 }
            writeMetadata()
        }
        if slot.isRemote { watchLink(of: slot) }
    }

    /// A component went away: eject it and go on with the rest. The slot keeps its
    /// consumer (requests that chose it fail cleanly); its access is closed so the
    /// topology can detach it once they have.
    override public func orphan(_ consumer: Consumer) {
        guard let slot = slots.first(where: { $0.consumer === consumer }) else { return }
        eject(slot, because: .noDevice)
        try? topology?.access(consumer, read: -consumer.readCount, write: -consumer.writeCount,
                              exclusive: -consumer.exclusiveCount)
    }

    // MARK: Access: dirty while open for writing

    override public func access(_ provider: Provider, read: Int, write: Int, exclusive: Int) throws {
        // The components stay open while the mirror runs; only the dirty flag follows
        // the writers above.
        let writers = provider.accessCounts.write
        if writers == 0 && write > 0 {
            shared.withLock {
                $0.metadata.dirty = true
                $0.metadata.syncid &+= 1
            }
            writeMetadata()
        } else if writers > 0 && writers + write == 0 {
            // Clean means every copy has every write: remote ones catch up first.
            waitForLaggingWrites()
            flushComponents()
            shared.withLock { $0.metadata.dirty = false }
            writeMetadata()
        }
    }

    private func flushComponents() {
        for slot in slots.prefix(expected) where slot.state == .active || slot.state == .synchronizing {
            _ = try? slot.consumer?.performSync(.flush, offset: 0, length: 0)
        }
    }

    /// Writes every live component's metadata (durably).
    func writeMetadata() {
        metadataLock.lock()
        defer { metadataLock.unlock() }
        let recorded = shared.withLock { $0.metadata }
        for slot in slots.prefix(expected) {
            let state = slot.state
            guard state == .active || state == .synchronizing, let consumer = slot.consumer,
                  let provider = consumer.provider, var metadata = slot.metadata else { continue }
            metadata.genid = recorded.genid
            metadata.syncid = recorded.syncid
            metadata.balance = balance
            metadata.slice = slice
            metadata.flags = recorded.dirty ? [.dirty] : []
            if state == .synchronizing {
                metadata.flags.insert(.synchronizing)
                metadata.syncOffset = slot.syncOffset.load(ordering: .acquiring)
            } else {
                metadata.syncOffset = 0
            }
            slot.metadata = metadata
            do {
                try consumer.writeSync(metadata.encoded(sectorSize: provider.sectorSize),
                                       at: provider.mediaSize - Int64(provider.sectorSize), flags: .fua)
            } catch {
                topology?.emit(.error, "mirror \(name): writing metadata to \(slot.name): \(error)")
            }
        }
    }

    // MARK: Rebuild

    /// Copies everything to `slot` from the live components while I/O goes on, from its
    /// sync offset on; the offset is saved as it goes, so a restart resumes. One rebuild
    /// at a time; the next waiting component follows.
    func startRebuild() {
        let next: Slot? = shared.withLock { state in
            guard state.rebuilding == nil,
                  let slot = slots.prefix(expected).first(where: { $0.state == .synchronizing }) else { return nil }
            state.rebuilding = slot.index
            return slot
        }
        guard let slot = next else { return }
        startWorkerThread { [self] in
            rebuildActive.store(true, ordering: .sequentiallyConsistent)
            waitForUntrackedWrites()
            let copied = copy(into: slot)
            shared.withLock { $0.gate.copying = nil }
            rebuildActive.store(false, ordering: .sequentiallyConsistent)
            releaseParked()
            if let copied {
                slot.set(.active)
                topology?.emit(.notice, "mirror \(name): \(slot.name) synchronized (\(formatByteSize(copied)) copied)")
            }
            metadataQueue.sync { writeMetadata() }
            // Only now, with the copy's end on every component, is the mirror COMPLETE:
            // stopped a moment earlier, it would copy again at the next start.
            shared.withLock { $0.rebuilding = nil }
            startRebuild()
        }
    }

    /// Writes that counted themselves before the rebuild flag was up are not tracked: the
    /// rebuild lets them finish first. It sleeps on the lock's condition; the write that
    /// brings the count to 0 sees `rebuildAwaitsUntrackedWrites` and wakes it. Flag and
    /// count are sequentially consistent, so either that write sees the flag or this test
    /// sees its decrement: the wake-up cannot be missed.
    private func waitForUntrackedWrites() {
        rebuildAwaitsUntrackedWrites.store(true, ordering: .sequentiallyConsistent)
        shared.wait { _ in untrackedWrites.load(ordering: .sequentiallyConsistent) == 0 }
        rebuildAwaitsUntrackedWrites.store(false, ordering: .sequentiallyConsistent)
    }

    /// Starts the rebuild of what is synchronizing once the topology's assembly is
    /// finished (`Topology.whenAssembled`): a rebuild writes data, which an assembly that
    /// may still fail must not.
    func startRebuildWhenAssembled(in topology: Topology) {
        try? topology.whenAssembled { [self] in startRebuild() }
    }

    /// Copies to `target` the regions its map marks, from its sync offset on: everything
    /// for a new or stale component, only what changed while it was out for one taken
    /// back. Returns the bytes copied, or nil if the copy stopped before the end.
    private func copy(into target: Slot) -> Int64? {
        let map = target.missed!
        // Writes sent to it in the background before it went out end first: one landing
        // after the copy of its region would undo it.
        waitForLaggingWrites(of: target)
        var sinceSave = 0
        var offset = target.syncOffset.load(ordering: .acquiring)
        let started = monotonicSeconds()
        var copied: Int64 = 0
        while offset < mirrorSize {
            guard target.state == .synchronizing, topology != nil, !stopping.load(ordering: .acquiring) else { return nil }
            let region = Int(offset / map.regionSize)
            let regionEnd = min(Int64(region + 1) * map.regionSize, mirrorSize)
            if !map.isMarked(region: region) {
                // A region is passed over behind the gate, as a chunk is copied: a write
                // marking it cannot come between the look and the offset moving past it.
                shared.withLock { $0.gate.copying = offset..<regionEnd }
                shared.wait { !$0.gate.overlapsTrackedWrite(offset..<regionEnd) }
                let unchanged = !map.isMarked(region: region)
                if unchanged { target.syncOffset.store(regionEnd, ordering: .releasing) }
                shared.withLock { $0.gate.copying = nil }
                releaseParked()
                if unchanged {
                    offset = regionEnd
                    continue
                }
            }
            let range = offset..<min(offset + MirrorGeom.chunk, regionEnd)
            // Writes over the chunk park from here on; those registered over it finish first.
            shared.withLock { $0.gate.copying = range }
            shared.wait { !$0.gate.overlapsTrackedWrite(range) }
            guard let data = readChunk(range), target.state == .synchronizing else {
                shared.withLock { $0.gate.copying = nil }
                releaseParked()
                return nil
            }
            do {
                try target.consumer!.writeSync(data, at: range.lowerBound)
            } catch {
                shared.withLock { $0.gate.copying = nil }
                eject(target, because: (error as? StrataError)?.code ?? .io)
                releaseParked()
                return nil
            }
            target.syncOffset.store(range.upperBound, ordering: .releasing)
            // Writes parked over the region's last chunk start below the offset now, and go
            // to the target: nothing marks the region again.
            if range.upperBound == regionEnd { map.clear(region: region) }
            shared.withLock { $0.gate.copying = nil }
            releaseParked()
            offset = range.upperBound
            copied += Int64(range.count)
            sinceSave += 1
            if sinceSave >= 16 {
                sinceSave = 0
                // The copies were plain writes: the saved offset must not reach the media
                // before they do, or a power cut resumes past copies that were lost.
                guard flushCopies(to: target) else { return nil }
                metadataQueue.sync { writeMetadata() }
            }
            let rate = rebuildRate.load(ordering: .relaxed)
            if rate > 0 {
                let due = Double(copied) / Double(rate)
                let elapsed = monotonicSeconds() - started
                if due > elapsed { sleepSeconds(due - elapsed) }
            }
        }
        // The component is marked up to date next: its last copies must be durable first.
        return flushCopies(to: target) ? copied : nil
    }

    /// Makes the copies written to `target` durable; a target that fails is ejected.
    private func flushCopies(to target: Slot) -> Bool {
        do {
            try target.consumer!.performSync(.flush, offset: 0, length: 0)
            return true
        } catch let error as StrataError where error.code == .notSupported {
            // Nothing to flush: the component has no volatile cache.
            return true
        } catch {
            eject(target, because: (error as? StrataError)?.code ?? .io)
            return false
        }
    }

    /// Reads a chunk from a live component, a local one if there is one, ejecting any
    /// that fails.
    private func readChunk(_ range: Range<Int64>) -> [UInt8]? {
        while let source = slots.prefix(expected).first(where: { $0.state == .active && !$0.isRemote })
            ?? slots.prefix(expected).first(where: { $0.state == .active }) {
            do {
                return try source.consumer!.readSync(at: range.lowerBound, count: range.count)
            } catch {
                eject(source, because: (error as? StrataError)?.code ?? .io)
            }
        }
        return nil
    }

    private func releaseParked() {
        var waiting = shared.withLock { $0.gate.takeParked() }
        while let bio = waiting.popFirst() { start(bio) }
    }

    // MARK: Status

    /// COMPLETE, DEGRADED or SYNCHRONIZING, with progress and each component's state.
    public var status: (state: String, progress: Double, components: [(name: String, state: String)]) {
        let used = slots.prefix(expected)
        let components = used.map { ($0.name, $0.state.name) }
        if let index = shared.withLock({ $0.rebuilding }) {
            let done = Double(slots[index].syncOffset.load(ordering: .relaxed)) / Double(max(mirrorSize, 1))
            return ("SYNCHRONIZING", done, components)
        }
        let complete = used.allSatisfy { $0.state == .active }
        return (complete ? "COMPLETE" : "DEGRADED", complete ? 1 : 0, components)
    }

    func bumpGeneration() {
        shared.withLock { $0.metadata.genid &+= 1 }
    }

    func updateGenerations(_ genid: UInt32, _ syncid: UInt32) {
        shared.withLock {
            $0.metadata.genid = genid
            $0.metadata.syncid = syncid
        }
    }
}

extension MirrorGeom {
    /// What the mirror's lock guards (`shared`).
    struct SharedState: ~Copyable {
        var metadata: SharedMetadata
        /// The slot being rebuilt, from the start of its rebuild until the end is in every
        /// component's metadata.
        var rebuilding: Int?
        var gate = RebuildGate()
    }

    /// The fields every component's metadata records of the mirror as a whole.
    struct SharedMetadata {
        var genid: UInt32
        var syncid: UInt32
        /// Open for writing: a mirror found dirty at assembly was not closed cleanly.
        var dirty = false
    }
}

/// Slot indexes as bits of a mask (a mirror has at most 16 components): choosing the
/// components a request may go to allocates nothing, where filtering the slots made an
/// array per request.
struct SlotMask {
    private var bits: UInt32 = 0

    var count: Int { bits.nonzeroBitCount }
    var isEmpty: Bool { bits == 0 }

    mutating func insert(_ index: Int) { bits |= 1 << UInt32(index) }

    mutating func remove(_ other: SlotMask) { bits &= ~other.bits }

    /// The lowest index, taken out of the mask; nil when it is empty.
    mutating func popFirst() -> Int? {
        guard bits != 0 else { return nil }
        let index = bits.trailingZeroBitCount
        bits &= bits &- 1
        return index
    }

    /// The index of the `n`th member (from 0) in increasing order.
    func member(_ n: Int) -> Int {
        precondition(n >= 0 && n < count, "member \(n) of a mask of \(count)")
        var rest = bits
        for _ in 0..<n { rest &= rest &- 1 }
        return rest.trailingZeroBitCount
    }
}
