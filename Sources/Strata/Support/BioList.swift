/// A FIFO of requests linked through their own `next` field (`struct bio_list`):
/// putting a request on a list never allocates.
@usableFromInline struct BioList {
    @usableFromInline var head: UnsafeMutablePointer<BioHeader>? = nil
    @usableFromInline var tail: UnsafeMutablePointer<BioHeader>? = nil

    @usableFromInline init() {}

    @inlinable var isEmpty: Bool { head == nil }

    @inlinable mutating func append(_ bio: UnsafeMutablePointer<BioHeader>) {
        bio.pointee.next = nil
        if let tail { tail.pointee.next = bio } else { head = bio }
        tail = bio
    }

    @inlinable mutating func append(contentsOf other: BioList) {
        guard let otherHead = other.head else { return }
        if let tail { tail.pointee.next = otherHead } else { head = otherHead }
        tail = other.tail
    }

    @inlinable mutating func popFirst() -> UnsafeMutablePointer<BioHeader>? {
        guard let first = head else { return nil }
        head = first.pointee.next
        if head == nil { tail = nil }
        first.pointee.next = nil
        return first
    }

    /// Moves the requests for which `shouldTake` is true to a new list, keeping order.
    @usableFromInline mutating func extract(where shouldTake: (UnsafeMutablePointer<BioHeader>) -> Bool) -> BioList {
        var kept = BioList()
        var taken = BioList()
        while let bio = popFirst() {
            if shouldTake(bio) { taken.append(bio) } else { kept.append(bio) }
        }
        self = kept
        return taken
    }

    var count: Int {
        var n = 0
        var at = head
        while let bio = at { n += 1; at = bio.pointee.next }
        return n
    }
}
