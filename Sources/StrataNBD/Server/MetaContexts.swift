import NIOConcurrencyHelpers
import Strata
import StrataNBDProtocol

/// A metadata context a connection selected with SET_META_CONTEXT: the id its
/// BLOCK_STATUS chunks carry, and the GETATTR whose extents fill them.
struct SelectedMetaContext: Equatable, Sendable {
    enum Kind: Equatable, Sendable {
        /// `base:allocation`, from `STRATA::extents`: holes and zeros.
        case allocation
        /// `qemu:dirty-bitmap:NAME`, from `STRATA::dirty-bitmap:NAME`: dirty or clean.
        case dirtyBitmap
    }

    let id: UInt32
    /// The name on the wire.
    let name: String
    let kind: Kind
    /// What the provider is asked for each BLOCK_STATUS.
    let attribute: BioAttribute

    static let allocation = SelectedMetaContext(id: NBDMetaContext.baseAllocationID, name: NBDMetaContext.baseAllocation,
                                                kind: .allocation, attribute: .extents)

    static func dirtyBitmap(_ bitmap: String, id: UInt32) -> SelectedMetaContext {
        SelectedMetaContext(id: id, name: NBDMetaContext.dirtyBitmapPrefix + bitmap, kind: .dirtyBitmap,
                            attribute: .dirtyBitmap(bitmap))
    }

    /// The status flags of an extent of `kind` in this context.
    @inline(__always)
    func status(of kind: BioExtent.Kind) -> UInt32 {
        switch self.kind {
        case .allocation:
            (kind.contains(.hole) ? NBDAllocationFlags.hole : 0) | (kind.contains(.zero) ? NBDAllocationFlags.zero : 0)
        case .dirtyBitmap:
            kind.contains(.dirty) ? NBDDirtyBitmapFlags.dirty : 0
        }
    }
}

/// The metadata contexts an export offers, `base:allocation` and a
/// `qemu:dirty-bitmap:NAME` for each bitmap its provider lists, and which of them the
/// queries of a LIST or SET_META_CONTEXT name.
///
/// Queries follow the spec and qemu's documentation of its namespace: in LIST, `base:`,
/// `qemu:` and `qemu:dirty-bitmap:` are wildcards for their namespace, and no query at
/// all names every context; in SET only a context's whole name selects it. A query in
/// another namespace, or naming a context the export does not have, names nothing: the
/// spec has servers ignore those rather than fail.
struct MetaContextCatalog: Equatable {
    /// The bitmaps' names, in the provider's order, each once.
    let bitmaps: [String]

    init(bitmaps: [String] = []) {
        var seen: Set<String> = []
        self.bitmaps = bitmaps.filter { seen.insert($0).inserted }
    }

    /// Whether answering `queries` needs the provider's list of bitmaps: a LIST of
    /// everything, or a query in the `qemu` namespace.
    static func needsBitmaps(_ queries: [String], listing: Bool) -> Bool {
        (listing && queries.isEmpty) || queries.contains { $0.hasPrefix(NBDMetaContext.qemuNamespace) }
    }

    /// The names of the contexts LIST answers `queries` with, `base:allocation` first.
    func listed(by queries: [String]) -> [String] {
        let bitmapNames = bitmaps.map { NBDMetaContext.dirtyBitmapPrefix + $0 }
        if queries.isEmpty { return [NBDMetaContext.baseAllocation] + bitmapNames }
        let asked = Set(queries)
        var names: [String] = []
        if !asked.isDisjoint(with: [NBDMetaContext.baseNamespace, NBDMetaContext.baseAllocation]) {
            names.append(NBDMetaContext.baseAllocation)
        }
        if !asked.isDisjoint(with: [NBDMetaContext.qemuNamespace, NBDMetaContext.dirtyBitmapPrefix]) {
            names += bitmapNames
        } else {
            names += bitmapNames.filter(asked.contains)
        }
        return names
    }

    /// The contexts SET selects with `queries`: each named whole, once. `base:allocation`
    /// keeps its own id (`NBDMetaContext.baseAllocationID`); the bitmaps number on from
    /// it, in the provider's order.
    func selected(by queries: [String]) -> [SelectedMetaContext] {
        let asked = Set(queries)
        var contexts: [SelectedMetaContext] = asked.contains(NBDMetaContext.baseAllocation) ? [.allocation] : []
        var id = NBDMetaContext.baseAllocationID
        for bitmap in bitmaps where asked.contains(NBDMetaContext.dirtyBitmapPrefix + bitmap) {
            id += 1
            contexts.append(.dirtyBitmap(bitmap, id: id))
        }
        return contexts
    }

    /// The bitmap names in a provider's answer to `STRATA::dirty-bitmaps`: each ended by a
    /// newline. A name the answer's buffer cut short has no newline and is left out, as
    /// is one whose context name would be longer than the protocol's strings.
    static func bitmapNames(in answer: String) -> [String] {
        let longest = NBDMetaContext.maximumNameLength - NBDMetaContext.dirtyBitmapPrefix.utf8.count
        return answer.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
            .filter { !$0.isEmpty && $0.utf8.count <= longest }
            .map(String.init)
    }
}

/// The GETATTR that asks an export's provider for its dirty bitmaps while options are
/// haggled (`BioAttribute.dirtyBitmaps`). Most providers answer inside `request`; one
/// that answers later, from another thread, has the names handed to `later`. Whichever
/// of the two comes second, the issuer looking or the completion, takes the answer, so
/// it is taken exactly once.
final class DirtyBitmapListing: @unchecked Sendable {
    private enum State {
        case asking
        case answered([String])
        case awaited(@Sendable ([String]) -> Void)
    }

    private let state = NIOLockedValueBox(State.asking)
    /// The answer's room; freed with the listing, which the request's done routine holds.
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: NBDLimits.dirtyBitmapListLength, alignment: 8)

    deinit { buffer.deallocate() }

    /// Sends the GETATTR on `consumer`. Returns the names if the provider answered before
    /// the request returned; otherwise nil, and `later` gets them when it does.
    func ask(on consumer: Consumer, later: @escaping @Sendable ([String]) -> Void) -> [String]? {
        let bio = AnyBioSet.shared.alloc(segments: 1)
        bio.command = .getattr
        bio.attribute = .dirtyBitmaps
        bio.setData(buffer)
        bio.done = .closure { [self] done in
            // A provider that keeps no bitmaps refuses the attribute (or passes it down to
            // one that does): that is an empty list.
            let names = done.error == nil ? MetaContextCatalog.bitmapNames(in: done.attributeString ?? "") : []
            done.destroy()
            let waiting: (@Sendable ([String]) -> Void)? = state.withLockedValue { state in
                if case .awaited(let later) = state { return later }
                state = .answered(names)
                return nil
            }
            waiting?(names)
        }
        consumer.request(bio)
        return state.withLockedValue { state in
            if case .answered(let names) = state { return names }
            state = .awaited(later)
            return nil
        }
    }
}
