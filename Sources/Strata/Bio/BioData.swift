/// One contiguous piece of a request's data, laid out like `struct iovec`.
@frozen public struct IOSegment: @unchecked Sendable {
    public var base: UnsafeMutableRawPointer
    public var count: Int

    @inlinable public init(base: UnsafeMutableRawPointer, count: Int) {
        self.base = base
        self.count = count
    }

    @inlinable public init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.base = buffer.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 1 << 12)!
        self.count = buffer.count
    }
}

/// A view of a request's data: `count` bytes scattered over one or more segments.
///
/// The view does not own the bytes or the segment array; the issuer keeps both alive
/// until the request completes. Clones and splits take sub-views of their parent's data,
/// so passing a request down a stack never copies a byte or a segment list (the role of
/// Linux's `bvec_iter`).
@frozen public struct BioData: @unchecked Sendable {
    /// The first segment of the view.
    @usableFromInline let segments: UnsafePointer<IOSegment>?
    /// How many segments from `segments` the view may touch.
    @usableFromInline let segmentCount: Int
    /// Bytes of the first segment that lie before the view.
    @usableFromInline let headOffset: Int
    /// Bytes in the view.
    public let count: Int

    /// No data (flush, delete, write-zeroes).
    public static let none = BioData(segments: nil, segmentCount: 0, headOffset: 0, count: 0)

    @usableFromInline init(segments: UnsafePointer<IOSegment>?, segmentCount: Int, headOffset: Int, count: Int) {
        self.segments = segments
        self.segmentCount = segmentCount
        self.headOffset = headOffset
        self.count = count
    }

    /// A view over `segmentCount` segments, covering all their bytes.
    public init(segments: UnsafePointer<IOSegment>, segmentCount: Int) {
        var total = 0
        for index in 0..<segmentCount { total += segments[index].count }
        self.init(segments: segments, segmentCount: segmentCount, headOffset: 0, count: total)
    }

    public var isEmpty: Bool { count == 0 }

    /// The sub-view `offset ..< offset + count` of this view, without copying.
    public func slice(offset: Int, count: Int) -> BioData {
        precondition(offset >= 0 && count >= 0 && offset + count <= self.count,
                     "slice \(offset)+\(count) outside data of \(self.count) bytes")
        guard count > 0, let segments else { return .none }
        var index = 0
        var skip = headOffset + offset
        while index < segmentCount - 1 && skip >= segments[index].count {
            skip -= segments[index].count
            index += 1
        }
        return BioData(segments: segments + index, segmentCount: segmentCount - index, headOffset: skip, count: count)
    }

    /// The view's first non-empty contiguous piece (the whole view when it is one
    /// segment); empty for an empty view. With `slice`, the piece from any position on.
    public var firstSegment: UnsafeMutableRawBufferPointer {
        guard count > 0, let segments else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        var skip = headOffset
        var index = 0
        while index < segmentCount - 1 && segments[index].count - skip <= 0 {
            skip = 0
            index += 1
        }
        let segment = segments[index]
        return UnsafeMutableRawBufferPointer(start: segment.base + skip, count: min(segment.count - skip, count))
    }

    /// Calls `body` with each contiguous piece of the view, in order.
    @inlinable public func forEachSegment(_ body: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        guard let segments else { return }
        var remaining = count
        var skip = headOffset
        var index = 0
        while remaining > 0 {
            precondition(index < segmentCount, "data view runs past its segments")
            let segment = segments[index]
            let length = min(segment.count - skip, remaining)
            if length > 0 {
                try body(UnsafeMutableRawBufferPointer(start: segment.base + skip, count: length))
            }
            remaining -= length
            skip = 0
            index += 1
        }
    }

    /// Copies `count` bytes from `source` into the view (a read's data arriving).
    @inlinable public func copy(from source: UnsafeRawPointer) {
        var at = source
        forEachSegment { piece in
            piece.baseAddress!.copyMemory(from: at, byteCount: piece.count)
            at += piece.count
        }
    }

    /// Copies the view's bytes to `destination` (a write's data leaving).
    @inlinable public func copy(to destination: UnsafeMutableRawPointer) {
        var at = destination
        forEachSegment { piece in
            at.copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            at += piece.count
        }
    }

    /// Fills the view with zeros.
    @inlinable public func zero() {
        forEachSegment { piece in piece.initializeMemory(as: UInt8.self, repeating: 0) }
    }

    /// The view's bytes as an array, for tests and diagnostics (allocates).
    public var bytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 { copy(to: buffer.baseAddress!) }
            initialized = count
        }
    }
}
