#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Strata
import Synchronization

/// THIN: a pool of chunks on one provider, and volumes and snapshots carved from it on
/// demand, each a provider named `POOL/VOLUME` (docs: `thin.md`).
///
/// Reads, and writes to chunks a volume owns alone, are mapped and passed on by `start`
/// without a lock: the maps are read through atomics inside an epoch (`ThinEpochs`).
/// Everything that changes a map (a first write, a write to a chunk shared with a
/// snapshot, TRIM, WRITE_ZEROES, FLUSH, FUA and the verbs) runs on the pool's metadata
/// thread, which owns `ThinMetadata` and commits it.
public final class ThinPoolGeom: Geom, @unchecked Sendable {
    static let maximumVolumes = 4096
    /// Seconds between commits while metadata changes without FLUSH, as dm-thin's.
    static let commitInterval = 1.0

    let epochs = ThinEpochs()
    /// Set once, before the first provider exists (`adopt`).
    private(set) var geometry = ThinGeometry(chunkSize: 4096, dataStart: 0, dataChunks: 0, metadataBlocks: 0)
    private var references: UnsafeMutablePointer<Atomic<UInt32>>?
    /// Volumes by provider index (`Unmanaged<ThinVolume>` bits, each holding a reference).
    private let slots: UnsafeMutablePointer<Atomic<UInt>>
    /// The metadata has changed since the last commit: a FUA write must commit.
    private let uncommitted = Atomic<Bool>(false)
    /// The metadata thread's: used only on it (`perform`), and by `create` before it runs.
    private var metadata: ThinMetadata!
    private let queue = ConditionMutex(JobQueue())
    private let reportStorage = Mutex(ThinPoolReport())
    /// The volumes by name as the metadata thread last saw them, for other threads.
    private let catalogStorage = Mutex<[ThinCatalogEntry]>([])
    /// Free bytes below which the pool warns (0: never).
    let lowWater: Atomic<Int64>
    /// The metadata thread's buffer for whole chunks (copy on write, zero fill).
    private var chunkBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var warnedLowWater = false
    private var lastCommit = monotonicSeconds()
    private let completions = ThinCompletions()

    private init(name: String, lowWater: Int64) {
        slots = .allocate(capacity: Self.maximumVolumes)
        for index in 0..<Self.maximumVolumes { (slots + index).initialize(to: Atomic(0)) }
        self.lowWater = Atomic(lowWater)
        super.init(name: name, className: "THIN", startOnlyPassesOn: true)
    }

    deinit {
        for index in 0..<Self.maximumVolumes {
            let bits = slots[index].load(ordering: .relaxed)
            if bits != 0 { Unmanaged<ThinVolume>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!).release() }
        }
        slots.deinitialize(count: Self.maximumVolumes)
        slots.deallocate()
        chunkBuffer.deallocate()
    }

    // MARK: Making

    /// Opens the pool on `provider`, or formats one there if its first 8 KiB are blank;
    /// creates the volumes `settings` lists that it lacks, and makes a provider for each
    /// volume and snapshot.
    /// - Throws: `SettingError` for settings that disagree with the pool on the provider,
    ///   `StrataError` when the provider holds something else or a damaged pool.
    static func create(in topology: Topology, name: String, over provider: Provider,
                       settings: ThinDefinition.Settings) throws -> ThinPoolGeom {
        guard provider.sectorSize <= ThinFormat.blockSize else {
            throw StrataError(.invalid, "\(provider.name): a thin pool needs sectors of 4096 bytes or less (it has \(provider.sectorSize))")
        }
        guard !provider.isReadOnly else {
            throw StrataError(.readOnly, "\(provider.name) is read-only; a thin pool writes its metadata")
        }
        // Checked before anything is written: a pool that cannot be made is not formatted.
        let wantedVolumes = try ThinDefinition.volumes(settings.volumes)
        let pool = ThinPoolGeom(name: name, lowWater: settings.lowWater)
        try topology.add(pool)
        do {
            let consumer = topology.createConsumer(for: pool)
            try topology.attach(consumer, to: provider)
            try topology.access(consumer, read: 1, write: 1, exclusive: 1)
            let superblock: ThinSuperblock
            switch try ThinMetadata.find(on: consumer) {
            case .pool(let found):
                if let chunkSize = settings.chunkSize, found.chunkSize != Int(chunkSize) {
                    throw SettingError(key: "chunk-size", value: formatByteSize(chunkSize),
                                       problem: "differs from the \(formatByteSize(Int64(found.chunkSize))) chunks of the pool on \(provider.name)")
                }
                superblock = found
            case .blank:
                superblock = try ThinMetadata.format(consumer, name: name, chunkSize: settings.chunkSize ?? ThinDefinition.defaultChunkSize,
                                                     metadataSize: settings.metadataSize)
            case .other:
                throw StrataError(.invalid, "\(provider.name) holds data that is not a thin pool (its first 8 KiB are not blank); zero them to make a pool there")
            }
            let metadata = try ThinMetadata.open(consumer, superblock: superblock, epochs: pool.epochs)
            pool.adopt(metadata)
            var created = false
            for wanted in wantedVolumes where metadata.volume(named: wanted.name) == nil {
                _ = try metadata.createVolume(wanted.name, size: wanted.size)
                created = true
            }
            if created || metadata.superblock.name != name { try metadata.commit(renaming: name) }
            for volume in metadata.volumes { try pool.makeProvider(for: volume, in: topology) }
            pool.refreshReport()
            pool.startWorker()
        } catch {
            topology.wither(pool)
            throw error
        }
        return pool
    }

    private func adopt(_ metadata: ThinMetadata) {
        self.metadata = metadata
        geometry = metadata.geometry
        references = metadata.references
        chunkBuffer = .allocate(byteCount: Int(geometry.chunkSize), alignment: ThinFormat.blockSize)
        metadata.onChangesChanged = { [weak self] changed in self?.uncommitted.store(changed, ordering: .releasing) }
    }

    /// Makes the provider `POOL/NAME` of a volume, in a free slot.
    func makeProvider(for volume: ThinVolume, in topology: Topology) throws {
        guard let slot = (0..<Self.maximumVolumes).first(where: { slots[$0].load(ordering: .acquiring) == 0 }) else {
            throw StrataError(.noSpace, "thin pool \(name) serves \(Self.maximumVolumes) volumes already")
        }
        slots[slot].store(UInt(bitPattern: Unmanaged.passRetained(volume).toOpaque()), ordering: .releasing)
        do {
            volume.provider = try topology.createProvider(for: self, name: "\(name)/\(volume.name)", mediaSize: volume.size,
                                                          sectorSize: consumers[0].provider!.sectorSize, index: slot,
                                                          readOnly: volume.isSnapshot)
        } catch {
            releaseSlot(slot)
            throw error
        }
    }

    /// Empties a slot; the volume it held is let go once every request that may have
    /// read the slot before has finished (on the metadata thread, which alone waits for
    /// epochs).
    private func releaseSlot(_ slot: Int) {
        let bits = slots[slot].exchange(0, ordering: .acquiringAndReleasing)
        guard bits != 0 else { return }
        let volume = Unmanaged<ThinVolume>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!)
        _ = try? perform { _ in
            self.epochs.synchronize()
            volume.release()
        }
    }

    /// Takes a volume's provider away (deleted): requests fail from now on, and its slot
    /// is free once the provider is gone.
    func removeProvider(of volume: ThinVolume, in topology: Topology) {
        guard let provider = volume.provider else { return }
        topology.orphan(provider)
        topology.settle()
        let deadline = monotonicSeconds() + 10
        while topology.provider(named: provider.name) === provider && monotonicSeconds() < deadline {
            sleepSeconds(0.001)
            topology.settle()
        }
        releaseSlot(provider.index)
        volume.provider = nil
    }

    // MARK: The I/O path

    /// The volume a provider index serves, unretained (the slot holds it while its
    /// provider exists), as `Unmanaged<ThinVolume>` bits; 0 for none.
    @inline(__always) private func volumeBits(at index: Int) -> UInt {
        slots[index].load(ordering: .acquiring)
    }

    @inline(__always) private static func root(of volumeBits: UInt) -> UInt64 {
        Unmanaged<ThinVolume>.fromOpaque(UnsafeRawPointer(bitPattern: volumeBits)!)._withUnsafeGuaranteedRef {
            $0.root.load(ordering: .acquiring)
        }
    }

    /// The volume, retained: for the slow paths.
    private static func volume(_ volumeBits: UInt) -> ThinVolume {
        Unmanaged<ThinVolume>.fromOpaque(UnsafeRawPointer(bitPattern: volumeBits)!).takeUnretainedValue()
    }

    override public func start(_ bio: consuming ProviderBio) {
        // In the epoch before the slot is read: a volume taken out of its slot after is
        // kept for this request (`releaseSlot`), as are the nodes its map leads to.
        let parity = epochs.enter()
        let volume = volumeBits(at: bio.providerIndex)
        guard volume != 0 else {
            epochs.leave(parity)
            bio.deliver(.noDevice)
            return
        }
        switch bio.command {
        case .read:
            read(bio, volume, parity)
        case .write:
            let mustCommit = bio.flags.contains(.preflush) || bio.flags.contains(.fua) && uncommitted.load(ordering: .acquiring)
            if mustCommit {
                let retained = Self.volume(volume)
                epochs.leave(parity)
                enqueue(bio, retained)
            } else {
                writeInPlace(bio, volume, parity)
            }
        case .getattr:
            let retained = Self.volume(volume)
            epochs.leave(parity)
            attribute(bio, retained)
        case .delete, .writeZeroes, .flush:
            let retained = Self.volume(volume)
            epochs.leave(parity)
            enqueue(bio, retained)
        }
    }

    /// A clone's epoch, kept in its `caller1`.
    struct EpochParity: BioCallerTag {
        let value: Int
        init(_ value: Int) { self.value = value }
        init(rawBits: UInt) { value = Int(rawBits) }
        var rawBits: UInt { UInt(value) }
    }

    override public func bioDone(_ bio: consuming Bio) {
        epochs.leave(bio.callerTag(.caller1, as: EpochParity.self).value)
        bio.finishClone()
    }

    /// Sends the clone of `bio`'s bytes `relative..<relative+length` to data chunk `data`.
    @inline(__always)
    private func sendPiece(of bio: borrowing ProviderBio, relative: Int64, length: Int64, toChunk data: Int64) {
        let clone = bio.duplicate(range: relative, length: length)
        let offset = bio.offset + relative
        clone.offset = geometry.offset(ofChunk: data) + (offset & (geometry.chunkSize - 1))
        clone.setCallerTag(EpochParity(epochs.enter()), in: .caller1)
        clone.done = .handler(self)
        requestOnFirstConsumer(clone)
    }

    /// Sends each piece of `bio` (one per chunk) whose chunk `root` maps to its data
    /// chunk, and hands the others to `unmapped`: whether any piece went down, and the
    /// bytes of those that did not.
    @inline(__always)
    private func sendMappedPieces(of bio: borrowing ProviderBio, root: UInt64,
                                  unmapped: (_ relative: Int64, _ length: Int64) -> Void) -> (sent: Bool, unmappedBytes: Int64) {
        var sent = false
        var unmappedBytes: Int64 = 0
        forEachPiece(of: bio) { chunk, _, length, relative in
            let entry = ThinLookup.entry(root: root, chunk: chunk)
            if entry == 0 {
                unmapped(relative, length)
                unmappedBytes += length
            } else {
                sendPiece(of: bio, relative: relative, length: length, toChunk: Int64(entry - 1))
                sent = true
            }
        }
        return (sent, unmappedBytes)
    }

    private func read(_ bio: consuming ProviderBio, _ volume: UInt, _ parity: Int) {
        let shift = Int64(geometry.chunkShift)
        let first = bio.offset >> shift
        let last = (bio.offset + bio.length - 1) >> shift
        let root = Self.root(of: volume)
        if first == last {
            let entry = ThinLookup.entry(root: root, chunk: first)
            guard entry != 0 else {
                epochs.leave(parity)
                bio.deliverZeros()
                return
            }
            guard let clone = bio.clone() else {
                epochs.leave(parity)
                bio.deliver(.noMemory)
                return
            }
            clone.offset = geometry.offset(ofChunk: Int64(entry - 1)) + (bio.offset & (geometry.chunkSize - 1))
            clone.setCallerTag(EpochParity(parity), in: .caller1)
            clone.done = .handler(self)
            passOnToFirstConsumer(bio, clone)
            return
        }
        let (sent, zeroed) = sendMappedPieces(of: bio, root: root) { relative, length in
            bio.data.slice(offset: Int(relative), count: Int(length)).zero()
        }
        epochs.leave(parity)
        if sent {
            bio.addCompleted(zeroed)
            bio.awaitChildren()
        } else if bio.flags.contains(.zeroHint) {
            bio.deliverZeros()
        } else {
            bio.deliverAll()
        }
    }

    /// A write whose every chunk the volume owns alone goes straight to them; any other
    /// goes to the metadata thread.
    private func writeInPlace(_ bio: consuming ProviderBio, _ volume: UInt, _ parity: Int) {
        let shift = Int64(geometry.chunkShift)
        let first = bio.offset >> shift
        let last = (bio.offset + bio.length - 1) >> shift
        let root = Self.root(of: volume)
        if first == last {
            guard let data = ThinLookup.exclusiveChunk(root: root, chunk: first, references: references!) else {
                let retained = Self.volume(volume)
                epochs.leave(parity)
                enqueue(bio, retained)
                return
            }
            guard let clone = bio.clone() else {
                epochs.leave(parity)
                bio.deliver(.noMemory)
                return
            }
            clone.offset = geometry.offset(ofChunk: data) + (bio.offset & (geometry.chunkSize - 1))
            clone.setCallerTag(EpochParity(parity), in: .caller1)
            clone.done = .handler(self)
            passOnToFirstConsumer(bio, clone)
            return
        }
        for chunk in first...last where ThinLookup.exclusiveChunk(root: root, chunk: chunk, references: references!) == nil {
            let retained = Self.volume(volume)
            epochs.leave(parity)
            enqueue(bio, retained)
            return
        }
        // A piece unmapped since the test above, by a TRIM racing this write, is dropped:
        // its bytes go as if the TRIM had come after.
        let (sent, dropped) = sendMappedPieces(of: bio, root: root) { _, _ in }
        epochs.leave(parity)
        if sent {
            bio.addCompleted(dropped)
            bio.awaitChildren()
        } else {
            bio.deliverAll()
        }
    }

    private func attribute(_ bio: consuming ProviderBio, _ volume: ThinVolume) {
        guard let attribute = bio.attribute else {
            bio.deliver(.invalid)
            return
        }
        if attribute == .canDelete {
            bio.deliverAttribute(int32: 1)
        } else if attribute == .extents {
            let parity = epochs.enter()
            let extents = extents(of: volume, from: bio.offset, length: bio.length, limit: bio.extentCapacity) { root, first, end, body in
                ThinLookup.runs(root: root, from: first, to: end) { start, count, mapped in body(start, count, !mapped) }
            }
            epochs.leave(parity)
            bio.deliverAttribute(extents: extents.map { BioExtent(offset: $0.offset, length: $0.length, kind: $0.flag ? [.hole, .zero] : []) })
        } else if attribute == .dirtyBitmaps {
            let catalog = self.catalog
            let names = catalog.filter { $0.isSnapshot && $0.id != volume.id && Self.sharesHistory($0.id, volume.id, catalog) }
                .map { $0.name + "\n" }
            bio.deliverAttribute(string: names.joined())
        } else if let snapshotName = attribute.dirtyBitmapName {
            let catalog = self.catalog
            guard let snapshot = catalog.first(where: { $0.name == snapshotName && $0.isSnapshot })?.volume,
                  Self.sharesHistory(snapshot.id, volume.id, catalog) else {
                bio.deliver(.noDevice)
                return
            }
            let parity = epochs.enter()
            let older = snapshot.root.load(ordering: .acquiring)
            let extents = extents(of: volume, from: bio.offset, length: bio.length, limit: bio.extentCapacity) { root, first, end, body in
                ThinLookup.differences(older, root, from: first, to: end, body)
            }
            epochs.leave(parity)
            bio.deliverAttribute(extents: extents.map { BioExtent(offset: $0.offset, length: $0.length, kind: $0.flag ? .dirty : []) })
        } else {
            bio.deliver(.notSupported)
        }
    }

    /// Whether two volumes come from one another (a snapshot of it, its origin, or
    /// sharing one ancestor), so that changes between them mean something.
    static func sharesHistory(_ a: UInt32, _ b: UInt32, _ catalog: [ThinCatalogEntry]) -> Bool {
        func ancestry(_ id: UInt32) -> Set<UInt32> {
            var ids: Set<UInt32> = [id]
            var current = catalog.first { $0.id == id }?.origin ?? 0
            while current != 0, ids.insert(current).inserted { current = catalog.first { $0.id == current }?.origin ?? 0 }
            return ids
        }
        return !ancestry(a).isDisjoint(with: ancestry(b))
    }

    /// Byte runs of `volume` from `offset` as `runs` gives them by chunk, clipped to the
    /// request and the volume, at most `limit` of them.
    private func extents(of volume: ThinVolume, from offset: Int64, length: Int64, limit: Int,
                         runs: (UInt64, Int64, Int64, (Int64, Int64, Bool) -> Bool) -> Void) -> [(offset: Int64, length: Int64, flag: Bool)] {
        let end = min(offset + length, volume.size)
        guard offset < end, limit > 0 else { return [] }
        let shift = Int64(geometry.chunkShift)
        var result: [(offset: Int64, length: Int64, flag: Bool)] = []
        runs(volume.root.load(ordering: .acquiring), offset >> shift, (end - 1) >> shift + 1) { start, count, flag in
            let lower = max(offset, start << shift)
            let upper = min(end, (start + count) << shift)
            if lower < upper { result.append((lower, upper - lower, flag)) }
            return result.count < limit
        }
        return result
    }

    // MARK: The metadata thread

    enum Job {
        case request(UnmanagedBio, ThinVolume)
        case task(@Sendable (ThinMetadata) -> Void)
    }

    struct JobQueue {
        var jobs: [Job] = []
        /// The metadata thread was started: jobs wait for it from now on.
        var started = false
        var stopping = false
        var stopped = false
        var thread: pthread_t?
    }

    private func enqueue(_ bio: consuming ProviderBio, _ volume: ThinVolume) {
        let reference = bio.unmanaged()
        let accepted = queue.withLock { queue in
            guard !queue.stopping else { return false }
            queue.jobs.append(.request(reference, volume))
            return true
        }
        if accepted {
            queue.wakeWaiters()
        } else {
            reference.takeProviderBio().deliver(.shutdown)
        }
    }

    /// Runs `body` with the metadata on the metadata thread and returns what it gives
    /// (at once when called on that thread, or when there is none: before it starts and
    /// once it has stopped).
    func perform<Result>(_ body: @escaping (ThinMetadata) throws -> Result) throws -> Result {
        if isMetadataThread { return try body(metadata) }
        let outcome = ThinOutcome<Result>()
        let done = DispatchSemaphore(value: 0)
        let unsafeBody = UnsafeSendable(body)
        let accepted = queue.withLock { queue in
            guard queue.started && !queue.stopped else { return false }
            queue.jobs.append(.task { metadata in
                outcome.value = Swift.Result { try unsafeBody.value(metadata) }
                done.signal()
            })
            return true
        }
        guard accepted else { return try body(metadata) }
        queue.wakeWaiters()
        done.wait()
        return try outcome.value!.get()
    }

    private var isMetadataThread: Bool {
        queue.withLock { queue in queue.thread.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    private func startWorker() {
        queue.withLock { $0.started = true }
        startWorkerThread { [self] in
            queue.withLock { $0.thread = pthread_self() }
            run()
        }
    }

    private func run() {
        while true {
            var batch: [Job] = []
            var stop = false
            queue.wait(until: { !$0.jobs.isEmpty || $0.stopping }, seconds: Self.commitInterval)
            queue.withLock { queue in
                swap(&batch, &queue.jobs)
                stop = queue.stopping && batch.isEmpty
            }
            for job in batch {
                switch job {
                case .request(let reference, let volume): serve(reference.takeProviderBio(), volume)
                case .task(let body): body(metadata)
                }
            }
            if metadata.hasChanges && (monotonicSeconds() - lastCommit >= Self.commitInterval || stop) {
                commitLogging()
            }
            refreshReport()
            if stop { break }
        }
        queue.withLock { $0.stopped = true; $0.thread = nil }
        queue.wakeWaiters()
    }

    /// Stops the metadata thread once it has done what was asked before, committing
    /// last: a clean stop leaves every change durable.
    override public func withering() {
        let running = queue.withLock { queue in
            let running = queue.thread != nil
            queue.stopping = true
            return running
        }
        if running {
            queue.wakeWaiters()
            queue.wait(until: { $0.stopped }, seconds: 30)
        }
        completions.stop()
    }

    private func commitLogging() {
        do {
            try commit()
        } catch {
            topology?.emit(.error, "thin pool \(name): \(error)")
        }
    }

    private func commit() throws {
        lastCommit = monotonicSeconds()
        try metadata.commit()
    }

    /// A verb's commit (on the metadata thread): the verb answers once it is durable.
    func commitLogged(_ metadata: ThinMetadata) throws {
        defer { refreshReport() }
        do {
            try commit()
        } catch {
            topology?.emit(.error, "thin pool \(name): \(error)")
            throw error
        }
    }

    /// Commits a verb's change, or takes it back with `undo` when the commit could not
    /// even start (no room for metadata): a verb that fails changes nothing.
    func commitOrUndo(_ metadata: ThinMetadata, undo: () -> Void) throws {
        do {
            try commitLogged(metadata)
        } catch let error as StrataError where error.code == .noSpace {
            undo()
            throw error
        }
    }

    /// Does one request that changes a map, synchronously on the metadata thread.
    private func serve(_ bio: consuming ProviderBio, _ volume: ThinVolume) {
        do {
            if bio.flags.contains(.preflush) || bio.command == .flush { try commit() }
            switch bio.command {
            case .write:
                try forEachPiece(of: bio) { chunk, inChunk, length, relative in
                    try write(volume, chunk: chunk, at: inChunk, length: length) { buffer in
                        bio.data.slice(offset: Int(relative), count: Int(length)).copy(to: buffer)
                    }
                }
            case .delete, .writeZeroes:
                try zeroOrUnmap(bio, volume)
            default:
                break
            }
            if bio.flags.contains(.fua) { try commit() }
            completions.deliver(bio, nil)
        } catch let error as StrataError {
            completions.deliver(bio, BioError(errno: error.code.errno))
        } catch {
            completions.deliver(bio, .io)
        }
    }

    @inline(__always)
    private func forEachPiece(of bio: borrowing ProviderBio,
                              _ body: (_ chunk: Int64, _ inChunk: Int64, _ length: Int64, _ relative: Int64) throws -> Void) rethrows {
        let shift = Int64(geometry.chunkShift)
        var position = bio.offset
        let end = bio.offset + bio.length
        while position < end {
            let chunk = position >> shift
            let pieceEnd = min(end, (chunk + 1) << shift)
            try body(chunk, position - chunk << shift, pieceEnd - position, position - bio.offset)
            position = pieceEnd
        }
    }

    private func zeroOrUnmap(_ bio: borrowing ProviderBio, _ volume: ThinVolume) throws {
        let isTrim = bio.command == .delete
        let keepAllocated = bio.flags.contains(.noHole)
        if bio.flags.contains(.fastZero) && !isTrim {
            var partial = keepAllocated
            forEachPiece(of: bio) { _, _, length, _ in if length != geometry.chunkSize { partial = true } }
            if partial { throw StrataError(.notSupported, "only whole unshared chunks zero fast") }
        }
        try forEachPiece(of: bio) { chunk, inChunk, length, _ in
            let mapped = ThinLookup.entry(root: volume.root.load(ordering: .acquiring), chunk: chunk) != 0
            if length == geometry.chunkSize && !keepAllocated {
                guard mapped else { return }
                guard roomForNodes(volume.depth) else {
                    // TRIM only advises: without room to record it, the chunk stays.
                    if isTrim { return }
                    throw StrataError(.noSpace, "thin pool \(name): its metadata area is full")
                }
                metadata.unmap(volume, chunk: chunk)
            } else if mapped || keepAllocated {
                do {
                    try write(volume, chunk: chunk, at: inChunk, length: length) { buffer in
                        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(length))
                    }
                } catch let error as StrataError where error.code == .noSpace && isTrim {
                    // TRIM only advises: a shared chunk that cannot be copied stays as it is.
                }
            }
        }
    }

    /// Room in the metadata area for `nodes` more changed nodes, committing first to
    /// get back what earlier changes freed, if that helps.
    private func roomForNodes(_ nodes: Int) -> Bool {
        if metadata.hasMetadataRoom(forNodes: nodes) { return true }
        guard metadata.commitReleasesSpace else { return false }
        commitLogging()
        return metadata.hasMetadataRoom(forNodes: nodes)
    }

    /// Writes `length` bytes that `fill` puts in a buffer at `inChunk` of virtual chunk
    /// `chunk`: in place if the volume owns the chunk alone, else into a new chunk
    /// (copied from the old one, or zeros) that the map then takes.
    func write(_ volume: ThinVolume, chunk: Int64, at inChunk: Int64, length: Int64,
                       fill: (UnsafeMutableRawPointer) -> Void) throws {
        let consumer = consumers[0]
        let root = volume.root.load(ordering: .acquiring)
        if let data = ThinLookup.exclusiveChunk(root: root, chunk: chunk, references: references!) {
            fill(chunkBuffer.baseAddress!)
            try consumer.performSync(.write, offset: geometry.offset(ofChunk: data) + inChunk, length: length,
                                     buffer: UnsafeMutableRawBufferPointer(rebasing: chunkBuffer[0..<Int(length)]))
            return
        }
        guard roomForNodes(volume.depth) else {
            throw StrataError(.noSpace, "thin pool \(name): its metadata area is full")
        }
        var allocated = metadata.allocateChunk()
        if allocated == nil && metadata.commitReleasesSpace {
            commitLogging()
            allocated = metadata.allocateChunk()
        }
        guard let data = allocated else {
            refreshReport()
            throw StrataError(.noSpace, "thin pool \(name) is out of data space")
        }
        do {
            let old = ThinLookup.entry(root: root, chunk: chunk)
            let target = geometry.offset(ofChunk: data)
            if length != geometry.chunkSize {
                if old != 0 {
                    // The write's bytes over a copy of the old chunk.
                    try consumer.performSync(.read, offset: geometry.offset(ofChunk: Int64(old - 1)), length: geometry.chunkSize,
                                             buffer: chunkBuffer)
                } else {
                    // Zeros around the bytes, in the same write: one request rather than
                    // zeroing the chunk and then writing into it.
                    let base = chunkBuffer.baseAddress!
                    base.initializeMemory(as: UInt8.self, repeating: 0, count: Int(inChunk))
                    (base + Int(inChunk + length)).initializeMemory(as: UInt8.self, repeating: 0,
                                                                    count: Int(geometry.chunkSize - inChunk - length))
                }
            }
            fill(chunkBuffer.baseAddress! + Int(inChunk))
            try consumer.performSync(.write, offset: target, length: geometry.chunkSize, buffer: chunkBuffer)
        } catch {
            metadata.unallocate(data)
            throw error
        }
        metadata.map(volume, chunk: chunk, to: data)
        checkLowWater()
    }

    private func checkLowWater() {
        let free = metadata.freeChunks * geometry.chunkSize
        let mark = lowWater.load(ordering: .relaxed)
        if free < mark && !warnedLowWater {
            warnedLowWater = true
            topology?.emit(.warning, "thin pool \(name) is low on space: \(formatByteSize(free)) free, below its low-water mark of \(formatByteSize(mark))")
        } else if free >= mark && warnedLowWater {
            warnedLowWater = false
        }
    }

    // MARK: Status

    /// The pool's space and state as the metadata thread last saw them.
    var report: ThinPoolReport { reportStorage.withLock { $0 } }

    func refreshReport() {
        let metadata = self.metadata!
        let state: String
        if let failure = metadata.failure {
            state = "FAILED: \(failure)"
        } else if metadata.freeChunks == 0 {
            state = "OUT OF DATA SPACE"
        } else if !metadata.hasMetadataRoom(forNodes: 8) {
            state = "OUT OF METADATA SPACE"
        } else if metadata.freeChunks * geometry.chunkSize < lowWater.load(ordering: .relaxed) {
            state = "LOW SPACE"
        } else {
            state = "OK"
        }
        let report = ThinPoolReport(pool: name, state: state, chunkSize: geometry.chunkSize,
                                    dataSize: geometry.dataChunks * geometry.chunkSize,
                                    dataUsed: metadata.usedChunks * geometry.chunkSize,
                                    metadataSize: geometry.metadataBlocks * Int64(ThinFormat.blockSize),
                                    metadataUsed: metadata.usedMetadataBlocks * Int64(ThinFormat.blockSize),
                                    lowWater: lowWater.load(ordering: .relaxed), generation: metadata.superblock.generation,
                                    volumes: metadata.volumes.count)
        reportStorage.withLock { $0 = report }
        let catalog = catalogEntries(metadata)
        catalogStorage.withLock { $0 = catalog }
    }

    /// The volumes by name, for threads other than the metadata thread.
    var catalog: [ThinCatalogEntry] { catalogStorage.withLock { $0 } }
}

/// What a job on the metadata thread gives back to the thread waiting for it.
final class ThinOutcome<Value>: @unchecked Sendable {
    var value: Result<Value, any Error>?
}

/// A value handed to the metadata thread with its caller waiting: never used by both.
struct UnsafeSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A pool's space and state, for `strata status` and `strata thin list`.
public struct ThinPoolReport: Codable, Sendable, Equatable {
    public var pool = ""
    public var state = "OK"
    public var chunkSize: Int64 = 0
    public var dataSize: Int64 = 0
    public var dataUsed: Int64 = 0
    public var metadataSize: Int64 = 0
    public var metadataUsed: Int64 = 0
    public var lowWater: Int64 = 0
    public var generation: UInt64 = 0
    public var volumes = 0

    enum CodingKeys: String, CodingKey {
        case pool, state, generation, volumes
        case chunkSize = "chunk-size", dataSize = "data-size", dataUsed = "data-used", metadataSize = "metadata-size"
        case metadataUsed = "metadata-used", lowWater = "low-water"
    }
}
