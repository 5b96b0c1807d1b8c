import Synchronization

/// The memory behind a bio set: a reserve of `min_nr` preallocated requests that
/// guarantees forward progress, a shared free list, and per-thread LIFO caches in
/// front of both.
///
/// - Allocation takes from this thread's cache (no lock, no atomic read-modify-write,
///   no heap allocation); a miss refills it in a batch from the shared list, then grows
///   the pool up to `capacity`, then draws on the reserve. One that may wait sleeps
///   until a request comes back to the reserve, first handing this thread's un-submitted
///   requests of the same pool to the rescuer.
/// - Freeing refills the reserve first when it is short, then this thread's cache,
///   which spills half into the shared list when full. Any thread may free.
/// - A pool with a `capacity` keeps no per-thread caches: every free request must be
///   reachable by a waiter, or the guarantee would depend on idle threads' caches.
@usableFromInline final class BioPool: @unchecked Sendable {
    let id: Int
    let name: String
    let segmentCapacity: Int
    let elementSize: Int
    let padOffset: Int
    let padSize: Int
    /// Bytes copied into every new request's front pad (its initial value).
    let padTemplate: UnsafeMutableRawPointer?
    let reserveTarget: Int
    let capacity: Int?
    let cacheCapacity: Int

    private let lock = ConditionLock()
    private var reserve: [UnsafeMutableRawPointer] = []
    private var shared: [UnsafeMutableRawPointer] = []
    private var total = 0
    private var waiters = 0
    /// True while the reserve is below `reserveTarget`: frees then refill it first.
    /// Read without the lock on every free; written only under it.
    private let reserveShort = Atomic<Bool>(false)
    private var rescuerStorage: Rescuer?

    // Slow-path counters, for tests and status.
    let reserveDraws = Atomic<Int>(0)
    let waits = Atomic<Int>(0)
    let failures = Atomic<Int>(0)
    let rescued = Atomic<Int>(0)

    static let refillBatch = 32

    init(name: String, reserve: Int, capacity: Int?, segments: Int, padSize: Int, padAlignment: Int,
         padTemplate: UnsafeRawPointer?, cacheCapacity: Int) {
        precondition(reserve >= 0, "a bio set's reserve cannot be negative")
        precondition(capacity.map { $0 >= max(reserve, 1) } ?? true, "a bio set's capacity must hold its reserve")
        self.name = name
        self.segmentCapacity = segments
        self.padOffset = BioLayout.padOffset(segments: segments, padAlignment: max(padAlignment, 1))
        self.padSize = padSize
        self.elementSize = padOffset + padSize
        if padSize > 0, let padTemplate {
            let copy = UnsafeMutableRawPointer.allocate(byteCount: padSize, alignment: max(padAlignment, 1))
            copy.copyMemory(from: padTemplate, byteCount: padSize)
            self.padTemplate = copy
        } else {
            self.padTemplate = nil
        }
        self.reserveTarget = reserve
        self.capacity = capacity
        self.cacheCapacity = capacity == nil ? cacheCapacity : 0
        self.id = BioPool.register()
        for _ in 0..<reserve { self.reserve.append(newElement()) }
        total = reserve
        BioPool.attach(self)
    }

    // MARK: Registry (thread caches are indexed by pool id)

    /// Pools by id. A pthread mutex rather than `Mutex`: ThreadSanitizer sees it.
    private static let registryLock = ConditionLock()
    nonisolated(unsafe) private static var registry: [BioPool?] = []

    private static func register() -> Int {
        registryLock.withLock {
            registry.append(nil)
            return registry.count - 1
        }
    }

    private static func attach(_ pool: BioPool) {
        registryLock.withLock { registry[pool.id] = pool }
    }

    static func pool(withID id: Int) -> BioPool {
        registryLock.withLock { registry[id]! }
    }

    // MARK: Allocation

    private func newElement() -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer.allocate(byteCount: elementSize, alignment: BioLayout.alignment)
    }

    /// A new request with `segments` slots, or nil when `wait` is false and none is
    /// free at once.
    @inline(__always)
    func allocate(segments: Int, wait: Bool) -> UnsafeMutablePointer<BioHeader>? {
        precondition(segments <= segmentCapacity,
                     "\(segments) segments asked of bio set \(name), which has \(segmentCapacity)")
        var element: UnsafeMutableRawPointer? = nil
        if cacheCapacity > 0 {
            let cache = ThreadState.current.pointee.cache(for: id)
            if cache.pointee.count > 0 {
                cache.pointee.count -= 1
                element = cache.pointee.items![cache.pointee.count]
            }
        }
        if element == nil {
            element = slowAllocate(wait: wait)
            if element == nil { return nil }
        }
        let header = element!.bindMemory(to: BioHeader.self, capacity: 1)
        header.initialize(to: BioHeader(pool: Unmanaged.passUnretained(self), segmentCapacity: Int32(segments)))
        if let padTemplate {
            (element! + padOffset).copyMemory(from: padTemplate, byteCount: padSize)
        }
        return header
    }

    private func slowAllocate(wait: Bool) -> UnsafeMutableRawPointer? {
        var rescuedOnce = false
        lock.lock()
        defer { lock.unlock() }
        while true {
            if let element = shared.popLast() {
                refillCacheLocked()
                return element
            }
            if capacity.map({ total < $0 }) ?? true {
                total += 1
                if cacheCapacity > 0 { growIntoCacheLocked() }
                return newElement()
            }
            if let element = reserve.popLast() {
                reserveShort.store(reserve.count < reserveTarget, ordering: .relaxed)
                reserveDraws.add(1, ordering: .relaxed)
                return element
            }
            guard wait else {
                failures.add(1, ordering: .relaxed)
                return nil
            }
            if !rescuedOnce {
                // Requests of this pool queued on this thread will not run until we
                // return, and we may be waiting for exactly them: hand them over. Work a
                // provider put off under this thread's plug would not run either: do it.
                rescuedOnce = true
                lock.unlock()
                IOPath.rescuePending(of: self)
                BioPlug.flush()
                lock.lock()
                continue
            }
            waiters += 1
            waits.add(1, ordering: .relaxed)
            lock.wait()
            waiters -= 1
        }
    }

    /// Moves a batch from the shared list into this thread's cache (lock held).
    private func refillCacheLocked() {
        guard cacheCapacity > 0, !shared.isEmpty else { return }
        let cache = ThreadState.current.pointee.cache(for: id)
        ensureItems(cache)
        while cache.pointee.count < BioPool.refillBatch, let element = shared.popLast() {
            cache.pointee.items![cache.pointee.count] = element
            cache.pointee.count += 1
        }
    }

    /// Grows the pool by a batch into this thread's cache (lock held).
    private func growIntoCacheLocked() {
        let cache = ThreadState.current.pointee.cache(for: id)
        ensureItems(cache)
        while cache.pointee.count < BioPool.refillBatch - 1 {
            cache.pointee.items![cache.pointee.count] = newElement()
            cache.pointee.count += 1
            total += 1
        }
    }

    private func ensureItems(_ cache: UnsafeMutablePointer<LocalCache>) {
        if cache.pointee.items == nil {
            cache.pointee.items = .allocate(capacity: cacheCapacity)
        }
    }

    // MARK: Freeing

    @inline(__always)
    func free(_ header: UnsafeMutablePointer<BioHeader>) {
        header.pointee.releaseDone()
        header.deinitialize(count: 1)
        let element = UnsafeMutableRawPointer(header)
        if cacheCapacity > 0 && !reserveShort.load(ordering: .relaxed) {
            let cache = ThreadState.current.pointee.cache(for: id)
            if cache.pointee.count < cacheCapacity, let items = cache.pointee.items {
                items[cache.pointee.count] = element
                cache.pointee.count += 1
                return
            }
            spill(element, from: cache)
            return
        }
        lock.withLock { putBackLocked(element) }
    }

    private func putBackLocked(_ element: UnsafeMutableRawPointer) {
        if reserve.count < reserveTarget {
            reserve.append(element)
            reserveShort.store(reserve.count < reserveTarget, ordering: .relaxed)
        } else {
            shared.append(element)
        }
        if waiters > 0 { lock.broadcast() }
    }

    /// The cache is full (or has no storage yet): half of it goes to the shared list.
    private func spill(_ element: UnsafeMutableRawPointer, from cache: UnsafeMutablePointer<LocalCache>) {
        lock.withLock {
            if cache.pointee.items == nil {
                ensureItems(cache)
                cache.pointee.items![0] = element
                cache.pointee.count = 1
                return
            }
            let keep = cacheCapacity / 2
            while cache.pointee.count > keep {
                cache.pointee.count -= 1
                putBackLocked(cache.pointee.items![cache.pointee.count])
            }
            cache.pointee.items![cache.pointee.count] = element
            cache.pointee.count += 1
        }
    }

    /// Takes back every request in a cache (its thread is exiting).
    func takeBack(from cache: UnsafeMutablePointer<LocalCache>) {
        lock.withLock {
            while cache.pointee.count > 0 {
                cache.pointee.count -= 1
                putBackLocked(cache.pointee.items![cache.pointee.count])
            }
        }
    }

    // MARK: Rescuer

    /// The set's rescuer, started the first time a thread needs it.
    var rescuer: Rescuer {
        lock.withLock {
            if let rescuerStorage { return rescuerStorage }
            let made = Rescuer(pool: self)
            rescuerStorage = made
            return made
        }
    }

    /// Requests of this pool in the reserve and in the shared list (for tests).
    var freeCounts: (reserve: Int, shared: Int, total: Int) {
        lock.withLock { (reserve.count, shared.count, total) }
    }
}
