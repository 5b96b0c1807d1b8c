/// An object that takes back requests it issued when they complete (a geom, a
/// connection, a load generator). Held unowned: it must outlive its requests.
public protocol BioDoneHandler: AnyObject, Sendable {
    /// Called once per completed request, with the issuer's handle back.
    func bioDone(_ bio: consuming Bio)
}

/// What runs when a request is delivered (`bio_done`).
public struct BioDone: @unchecked Sendable {
    @usableFromInline enum Kind {
        case unset
        case standard
        case handler(UnownedHandler)
        case closure(@Sendable (consuming Bio) -> Void)
    }

    @usableFromInline struct UnownedHandler {
        @usableFromInline unowned(unsafe) let target: any BioDoneHandler
    }

    @usableFromInline let kind: Kind

    @usableFromInline static let unset = BioDone(kind: .unset)

    /// `g_std_done`: fold the child into its parent with the parent's combine rule and
    /// deliver the parent when its last child is in.
    public static let standard = BioDone(kind: .standard)

    /// Call `handler.bioDone(_:)`. The handler is not retained: this costs no reference
    /// counting per request, and the handler must outlive the request.
    public static func handler(_ handler: any BioDoneHandler) -> BioDone {
        BioDone(kind: .handler(UnownedHandler(target: handler)))
    }

    /// Call a closure (convenient; costs an allocation when the closure captures).
    public static func closure(_ body: @escaping @Sendable (consuming Bio) -> Void) -> BioDone {
        BioDone(kind: .closure(body))
    }

    @usableFromInline var isSet: Bool {
        if case .unset = kind { return false }
        return true
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
