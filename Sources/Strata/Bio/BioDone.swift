/// An object that takes back requests it issued when they complete (a geom, a
/// connection, a load generator). Held unowned: it must outlive its requests.
public protocol BioDoneHandler: AnyObject, Sendable {
    /// Called once per completed request, with the issuer's handle back.
    func bioDone(_ bio: consuming Bio)
}

extension BioDoneHandler {
    /// Calls `bioDone` on `object`, which is of this type, without retaining it.
    @inline(__always)
    static func runBioDone(on object: Unmanaged<AnyObject>, _ header: UnsafeMutablePointer<BioHeader>) {
        object._withUnsafeGuaranteedRef { unsafeDowncast($0, to: Self.self).bioDone(Bio(header: header)) }
    }
}

/// What runs when a request is delivered (`bio_done`).
public struct BioDone: @unchecked Sendable {
    @usableFromInline enum Kind {
        case unset
        case standard
        case handler(UnownedHandler)
        case closure(@Sendable (consuming Bio) -> Void)
    }

    /// The handler as an unretained object and its dynamic type. Calling through an
    /// `unowned(unsafe)` existential retains and releases the handler around every
    /// call; opening the type and using the object as a guaranteed reference does not.
    @usableFromInline struct UnownedHandler {
        @usableFromInline let object: Unmanaged<AnyObject>
        @usableFromInline let type: any BioDoneHandler.Type

        init(_ handler: any BioDoneHandler) {
            object = Unmanaged.passUnretained(handler)
            type = Swift.type(of: handler)
        }

        /// Runs the handler's `bioDone` for the request in `header`.
        @inline(__always)
        func run(_ header: UnsafeMutablePointer<BioHeader>) {
            type.runBioDone(on: object, header)
        }
    }

    @usableFromInline let kind: Kind

    @usableFromInline init(kind: Kind) { self.kind = kind }

    @usableFromInline static let unset = BioDone(kind: .unset)

    /// `g_std_done`: fold the child into its parent with the parent's combine rule and
    /// deliver the parent when its last child is in.
    public static let standard = BioDone(kind: .standard)

    /// Call `handler.bioDone(_:)`. The handler is not retained: this costs no reference
    /// counting per request, and the handler must outlive the request.
    public static func handler(_ handler: any BioDoneHandler) -> BioDone {
        BioDone(kind: .handler(UnownedHandler(handler)))
    }

    /// Call a closure (convenient; costs an allocation when the closure captures).
    public static func closure(_ body: @escaping @Sendable (consuming Bio) -> Void) -> BioDone {
        BioDone(kind: .closure(body))
    }
}

/// A request's done routine as its header keeps it: with no reference counting, so a
/// header is copied, reset and freed as plain memory. A closure is kept in a box that
/// the header holds one reference to, taken when the routine is set and given back when
/// it is replaced, reset or freed (`BioHeader.done`, `BioHeader.releaseDone`).
@usableFromInline enum DoneRoutine {
    case unset
    case standard
    case handler(BioDone.UnownedHandler)
    case closure(Unmanaged<DoneClosure>)

    /// The routine for `done`; a closure's box comes with a reference for the header.
    @inlinable init(_ done: BioDone) {
        switch done.kind {
        case .unset: self = .unset
        case .standard: self = .standard
        case .handler(let handler): self = .handler(handler)
        case .closure(let body): self = .closure(DoneClosure.retained(body))
        }
    }

    @inlinable var isSet: Bool {
        if case .unset = self { return false }
        return true
    }
}

/// The box a closure done routine lives in while a request holds it.
@usableFromInline final class DoneClosure {
    @usableFromInline let body: @Sendable (consuming Bio) -> Void

    init(_ body: @escaping @Sendable (consuming Bio) -> Void) { self.body = body }

    @usableFromInline static func retained(_ body: @escaping @Sendable (consuming Bio) -> Void) -> Unmanaged<DoneClosure> {
        Unmanaged.passRetained(DoneClosure(body))
    }
}

/// How a parent's children are folded together when they complete.
public enum BioCombine: Sendable {
    /// `g_std_done`: the first non-zero child error wins; completed bytes are summed.
    case firstError
    /// Replicated writes (a mirror): the parent succeeds if any child succeeded;
    /// completed is the largest child's. Otherwise the first error wins.
    case anySuccess
}
