/// Requests held together before they are sent, linked through their own `next` field
/// (`struct bio_list`), so that collecting them allocates nothing.
///
/// A class that turns one request into several clones makes them all first, since a
/// clone that cannot be made fails the whole request, and sends them only once its own
/// hold is given up (`awaitChildren`). The clones wait here in between, in the order
/// they were appended. Where each goes is the class's to record, in fields of the clone
/// that belong to its issuer (`caller1`, `consumerFlags`).
///
/// A chain must be empty when it goes away: a request left in it would be lost.
public struct BioChain: ~Copyable {
    private var list = BioList()
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { list.isEmpty }

    /// Adds `bio`, which must not be in flight or on another list, at the end.
    public mutating func append(_ bio: consuming Bio) {
        list.append(bio.release())
        count += 1
    }

    /// The first request, taken out of the chain; nil when it is empty.
    public mutating func popFirst() -> Bio? {
        guard let header = list.popFirst() else { return nil }
        count -= 1
        return Bio(header: header)
    }

    /// Destroys every request in the chain (clones that will not be sent).
    public mutating func destroyAll() {
        while let bio = popFirst() { bio.destroy() }
    }

    deinit {
        precondition(list.isEmpty, "a BioChain went away holding \(count) requests")
    }
}
