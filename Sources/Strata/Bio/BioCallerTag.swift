/// A value an issuer keeps in one of its private words of a request (`caller1`,
/// `caller2`): the component a clone went to, a shift to apply at completion, how a
/// write is counted. It is stored as the word's bits, so keeping it allocates nothing,
/// and it is read back as the type that stored it: one type says how the value is
/// encoded and decoded, where an integer smuggled in a raw pointer is read back as
/// whatever each reader assumes.
///
/// A new or reset request holds the bits 0 in both words, so `init(rawBits: 0)` is what
/// a word never set reads as.
public protocol BioCallerTag {
    /// The value `rawBits` gave.
    init(rawBits: UInt)
    /// The value as one word.
    var rawBits: UInt { get }
}

/// One of the issuer's two private words of a request.
public enum BioCallerField: Sendable {
    /// `bio_caller1`.
    case caller1
    /// `bio_caller2`.
    case caller2
}

extension Bio {
    /// The tag kept in `field`, read as `Tag`.
    @inlinable public func callerTag<Tag: BioCallerTag>(_ field: BioCallerField, as tag: Tag.Type = Tag.self) -> Tag {
        let word = switch field {
        case .caller1: header.pointee.caller1
        case .caller2: header.pointee.caller2
        }
        return Tag(rawBits: UInt(bitPattern: word))
    }

    /// Keeps `tag` in `field`, replacing what it held.
    @inlinable public func setCallerTag<Tag: BioCallerTag>(_ tag: Tag, in field: BioCallerField) {
        let word = UnsafeMutableRawPointer(bitPattern: tag.rawBits)
        switch field {
        case .caller1: header.pointee.caller1 = word
        case .caller2: header.pointee.caller2 = word
        }
    }
}
