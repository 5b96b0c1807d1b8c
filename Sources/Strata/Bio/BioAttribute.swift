/// The name of an out-of-band attribute a GETATTR asks for (`bio_attribute`).
///
/// The answer is written into the request's data; `completed` says how many bytes of
/// it are valid. The typed helpers below write and read the common answers so no
/// class encodes them by hand.
///
/// An attribute is carried as the number of its name in the process's table of names
/// (`AttributeNames`): equal names get one number, so a request holds and compares its
/// attribute as a plain integer and cloning it down a stack costs no reference counting.
public struct BioAttribute: Hashable, Sendable, CustomStringConvertible {
    @usableFromInline let number: UInt32
    public init(_ name: String) { number = AttributeNames.number(for: name) }
    @inlinable init(builtIn number: UInt32) { self.number = number }
    public var name: String { AttributeNames.name(of: number) }
    public var description: String { name }

    // The constants have fixed numbers, the first in the table (`AttributeNames.builtIn`),
    // so that comparing a request's attribute with one is a comparison of integers: a
    // stored constant made from its name would be a lazily made global, reached through a
    // `swift_once` on every request that passes a check for it.

    /// "GEOM::candelete": an Int32, 1 when DELETE frees space on the provider.
    @inlinable public static var canDelete: BioAttribute { BioAttribute(builtIn: 0) }
    /// "GEOM::ident": a string that identifies the media (a serial number, a path).
    @inlinable public static var ident: BioAttribute { BioAttribute(builtIn: 1) }
    /// "STRATA::extents": the data, hole and zero ranges of `offset ..< offset+length`,
    /// as `BioExtent` records (what NBD block status reports).
    @inlinable public static var extents: BioAttribute { BioAttribute(builtIn: 2) }
    /// "STRATA::dirty-bitmaps": the names of the bitmaps `dirtyBitmap(_:)` can be asked
    /// for, as a string of names each ended by a newline (a thin volume's: the snapshots
    /// it can be compared with).
    @inlinable public static var dirtyBitmaps: BioAttribute { BioAttribute(builtIn: 3) }
    /// "STRATA::link": a string, the state of the network link a provider is reached
    /// through (CONNECTED, RECONNECTING or FAILED). Only a provider on another machine
    /// answers it; so a mirror tells its remote components from its local ones, and
    /// learns when a remote one is back.
    @inlinable public static var link: BioAttribute { BioAttribute(builtIn: 4) }

    /// "STRATA::dirty-bitmap:NAME": which ranges of `offset ..< offset+length` changed
    /// since the point in time NAME stands for, as `BioExtent` records whose kind is
    /// `.dirty` or empty (what NBD's `qemu:dirty-bitmap:NAME` context reports).
    public static func dirtyBitmap(_ name: String) -> BioAttribute { BioAttribute(Self.dirtyBitmapPrefix + name) }

    /// The bitmap this attribute asks for, if it is a `dirtyBitmap(_:)`.
    public var dirtyBitmapName: String? {
        guard number >= UInt32(AttributeNames.builtIn.count) else { return nil }
        let name = self.name
        return name.hasPrefix(Self.dirtyBitmapPrefix) ? String(name.dropFirst(Self.dirtyBitmapPrefix.count)) : nil
    }

    static let dirtyBitmapPrefix = "STRATA::dirty-bitmap:"
}

/// The names of the attributes the process has made, each under its own number. Names
/// are a small fixed set (the constants above and those of the classes), so the table
/// only grows when a new kind of attribute first appears.
enum AttributeNames {
    // A pthread lock, not Synchronization's Mutex: ThreadSanitizer sees it.
    private static let lock = ConditionLock()
    /// The names of `BioAttribute`'s constants, at their numbers.
    static let builtIn = ["GEOM::candelete", "GEOM::ident", "STRATA::extents", "STRATA::dirty-bitmaps", "STRATA::link"]
    nonisolated(unsafe) private static var names: [String] = builtIn
    nonisolated(unsafe) private static var numbers = Dictionary(uniqueKeysWithValues: builtIn.enumerated().map { ($1, UInt32($0)) })

    static func number(for name: String) -> UInt32 {
        lock.withLock {
            if let number = numbers[name] { return number }
            let number = UInt32(names.count)
            names.append(name)
            numbers[name] = number
            return number
        }
    }

    static func name(of number: UInt32) -> String {
        lock.withLock { names[Int(number)] }
    }
}

/// One range of a provider and what it holds, as the extents attribute reports it.
@frozen public struct BioExtent: Hashable, Sendable, CustomStringConvertible {
    public struct Kind: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Not allocated: reading it costs nothing (NBD_STATE_HOLE).
        public static let hole = Kind(rawValue: 1)
        /// Reads as zeros (NBD_STATE_ZERO).
        public static let zero = Kind(rawValue: 2)
        /// In a dirty bitmap's answer: changed since the bitmap's point in time (the bit
        /// `qemu:dirty-bitmap` contexts report). The same bit as `hole`, which only an
        /// extents answer carries.
        public static let dirty = Kind(rawValue: 1)
    }

    public var offset: Int64
    public var length: Int64
    public var kind: Kind

    public init(offset: Int64, length: Int64, kind: Kind) {
        self.offset = offset
        self.length = length
        self.kind = kind
    }

    public var description: String {
        let what = kind.contains(.hole) ? "hole" : (kind.contains(.zero) ? "zero" : "data")
        return "\(what)@\(offset)+\(length)"
    }

    /// Bytes one record takes in a GETATTR answer.
    public static let encodedSize = 24
}

extension ProviderBio {
    /// Answers a GETATTR with an Int32 and delivers it.
    public consuming func deliverAttribute(int32 value: Int32) {
        guard data.count >= 4 else { deliver(.invalid); return }
        withUnsafeBytes(of: value) { data.slice(offset: 0, count: 4).copy(from: $0.baseAddress!) }
        completed = 4
        deliver(nil)
    }

    /// Answers a GETATTR with a NUL-terminated UTF-8 string, truncated to fit.
    public consuming func deliverAttribute(string value: String) {
        var bytes = Array(value.utf8)
        bytes.append(0)
        let count = min(bytes.count, data.count)
        guard count > 0 else { deliver(.invalid); return }
        bytes.withUnsafeBytes { data.slice(offset: 0, count: count).copy(from: $0.baseAddress!) }
        completed = Int64(count)
        deliver(nil)
    }

    /// How many extent records fit in this GETATTR's answer buffer.
    public var extentCapacity: Int { data.count / BioExtent.encodedSize }

    /// The part of a media of `mediaSize` bytes an extents GETATTR asks about, clipped to
    /// the media (empty past its end; an offset and length that overflow reach its end).
    public func extentRange(mediaSize: Int64) -> Range<Int64> {
        let (requestedEnd, overflow) = offset.addingReportingOverflow(max(length, 0))
        let start = min(max(offset, 0), mediaSize)
        let end = max(start, overflow ? mediaSize : min(requestedEnd, mediaSize))
        return start..<end
    }

    /// Answers an extents GETATTR with `extents`, in order from `offset`, and delivers
    /// it. The answer holds as many as fit in the buffer (`extentCapacity`); the issuer
    /// asks again from where the answer stops.
    public consuming func deliverAttribute(extents: some Collection<BioExtent>) {
        var at = 0
        for extent in extents.prefix(extentCapacity) {
            var record = (extent.offset, extent.length, extent.kind.rawValue, UInt32(0))
            withUnsafeBytes(of: &record) {
                data.slice(offset: at, count: BioExtent.encodedSize).copy(from: $0.baseAddress!)
            }
            at += BioExtent.encodedSize
        }
        completed = Int64(at)
        deliver(nil)
    }
}

extension Bio {
    /// The Int32 answer of a completed GETATTR.
    public var attributeInt32: Int32? {
        guard error == nil, completed >= 4 else { return nil }
        var value: Int32 = 0
        withUnsafeMutableBytes(of: &value) { data.slice(offset: 0, count: 4).copy(to: $0.baseAddress!) }
        return value
    }

    /// The string answer of a completed GETATTR.
    public var attributeString: String? {
        guard error == nil, completed > 0 else { return nil }
        let bytes = data.slice(offset: 0, count: Int(completed)).bytes
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// Moves the offsets of a completed extents GETATTR by `delta`, in place: for a
    /// class whose provider starts somewhere else on the one below.
    public func shiftExtents(by delta: Int64) {
        guard error == nil else { return }
        for index in 0..<(Int(completed) / BioExtent.encodedSize) {
            let record = data.slice(offset: index * BioExtent.encodedSize, count: 8)
            var value: Int64 = 0
            withUnsafeMutableBytes(of: &value) { record.copy(to: $0.baseAddress!) }
            value += delta
            withUnsafeBytes(of: value) { record.copy(from: $0.baseAddress!) }
        }
    }

    /// The extent records of a completed extents GETATTR.
    public var attributeExtents: [BioExtent] {
        guard error == nil else { return [] }
        let count = Int(completed) / BioExtent.encodedSize
        var result: [BioExtent] = []
        result.reserveCapacity(count)
        for index in 0..<count {
            var record: (Int64, Int64, UInt32, UInt32) = (0, 0, 0, 0)
            withUnsafeMutableBytes(of: &record) {
                data.slice(offset: index * BioExtent.encodedSize, count: BioExtent.encodedSize).copy(to: $0.baseAddress!)
            }
            result.append(BioExtent(offset: record.0, length: record.1, kind: .init(rawValue: record.2)))
        }
        return result
    }
}
