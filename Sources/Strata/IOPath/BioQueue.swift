/// A FIFO of requests a provider has accepted and will serve later (a worker's queue,
/// requests parked during a rebuild). Linked through the requests themselves: queueing
/// never allocates. Not thread-safe: guard it with the class's own lock.
public struct BioQueue: ~Copyable {
    @usableFromInline var list = BioList()
    public private(set) var count = 0

    public init() {}

    deinit {
        precondition(list.isEmpty, "a BioQueue was dropped with \(count) requests in it")
    }

    public var isEmpty: Bool { list.isEmpty }

    public mutating func append(_ bio: consuming ProviderBio) {
        list.append(bio.unmanaged().header)
        count += 1
    }

    public mutating func popFirst() -> ProviderBio? {
        guard let header = list.popFirst() else { return nil }
        count -= 1
        return ProviderBio(header: header)
    }
}
