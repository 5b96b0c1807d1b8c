import Synchronization

/// The fields both sides of a request may read. `Bio` (the issuer's handle) and
/// `ProviderBio` (the provider's handle) share them; each adds what only its side may
/// change, so the private fields of one side are out of the other's reach by type.
public protocol BioFields: ~Copyable {
    /// The storage this handle refers to.
    var storage: BioStorage { get }
}

/// An opaque reference to a request's storage, for the shared accessors.
@frozen public struct BioStorage: @unchecked Sendable {
    @usableFromInline let header: UnsafeMutablePointer<BioHeader>
    @usableFromInline init(_ header: UnsafeMutablePointer<BioHeader>) { self.header = header }
}

extension BioFields where Self: ~Copyable {
    /// `bio_cmd`.
    @inlinable public var command: BioCommand { storage.header.pointee.command }
    /// `bio_offset`: byte offset into the provider.
    @inlinable public var offset: Int64 { storage.header.pointee.offset }
    /// `bio_length`: bytes to transfer (for GETATTR, the range an attribute asks about).
    @inlinable public var length: Int64 { storage.header.pointee.length }
    /// `bio_data`: where the bytes are (for GETATTR, where the answer goes).
    @inlinable public var data: BioData { storage.header.pointee.data }
    /// `bio_flags`: request flags and completion status.
    @inlinable public var flags: BioFlags { storage.header.pointee.flags }
    /// `bio_attribute`: the attribute a GETATTR asks for.
    @inlinable public var attribute: BioAttribute? { storage.header.pointee.attribute }
    /// `bio_from`: the consumer the request was issued on.
    @inlinable public var from: Consumer? { storage.header.pointee.from?.takeUnretainedValue() }
    /// `bio_to`: the provider the request was sent to.
    @inlinable public var to: Provider? { storage.header.pointee.to?.takeUnretainedValue() }
    /// `bio_children`: clones made of this request.
    @inlinable public var children: Int { Int(storage.header.pointee.children) }
    /// `bio_inbed`: clones that have completed.
    @inlinable public var inbed: Int { Int(storage.header.pointee.inbed.load(ordering: .acquiring)) }
    /// `bio_parent` is present: this request is a clone.
    @inlinable public var hasParent: Bool { storage.header.pointee.parent != nil }
    /// `bio_parent`: a read-only view of the request this one was cloned from.
    @inlinable public var parent: BioStorage? { storage.header.pointee.parent.map(BioStorage.init) }
    /// `bio_error` when BIO_ERROR is set.
    @inlinable public var error: BioError? {
        let code = storage.header.pointee.error
        return code == 0 ? nil : BioError(errno: code)
    }
    /// Segment slots this request was allocated with (`nr_iovecs`).
    @inlinable public var segmentCapacity: Int { Int(storage.header.pointee.segmentCapacity) }

    /// `g_print_bio`: one line with command, range, provider, flags and error.
    public var summary: String {
        let header = storage.header
        var line = "\(header.pointee.command) offset=\(header.pointee.offset) length=\(header.pointee.length)"
        if let attribute = header.pointee.attribute { line += " attribute=\(attribute.name)" }
        line += " provider=\(header.pointee.to?.takeUnretainedValue().name ?? "-")"
        let flags = header.pointee.flags
        if !flags.isEmpty { line += " flags=\(flags)" }
        let error = header.pointee.error
        line += " error=\(error)"
        if error != 0 { line += " (\(BioError(errno: error).name))" }
        return line
    }
}
