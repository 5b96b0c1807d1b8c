import Strata

/// STRIPE (gstripe): `stripe-size` bytes from each component in turn. The media is the
/// number of components times the smallest, rounded down to the stripe size; requests
/// are split at stripe boundaries. The stripe size is reported upward.
public final class StripeGeom: LabelledGeom, @unchecked Sendable {
    /// log2 of the stripe size, a power of two (checked by `create` and by the label's
    /// decoding): the mapping shifts and masks rather than divides.
    private let stripeShift: Int64

    init(name: String, id: UInt64, count: Int, stripeSize: Int64) {
        precondition(stripeSize > 0 && stripeSize & (stripeSize - 1) == 0, "stripe size \(stripeSize) is not a power of two")
        stripeShift = Int64(stripeSize.trailingZeroBitCount)
        super.init(name: name, className: "STRIPE", kind: .stripe, id: id, count: count, stripeSize: stripeSize)
    }

    /// Makes a stripe over `providers` and labels them.
    /// - Throws: `SettingError` when the stripe size is not a power of two at least the
    ///   sector size or is larger than a component, `StrataError` when there are fewer
    ///   than 2 components.
    @discardableResult
    public static func create(in topology: Topology, name: String, over providers: [Provider],
                              stripeSize: Int64 = 64 << 10) throws -> StripeGeom {
        guard providers.count >= 2, providers.count <= ComponentLabel.maximumCount else {
            throw StrataError(.invalid, "stripe \(name): \(providers.count) components; a stripe has 2 to \(ComponentLabel.maximumCount)")
        }
        let sector = Int64(providers.map(\.sectorSize).max()!)
        guard stripeSize >= sector, stripeSize & (stripeSize - 1) == 0 else {
            throw SettingError(key: "stripe-size", value: formatByteSize(stripeSize),
                               problem: "must be a power of two of at least \(sector) (the sector size)")
        }
        let smallest = providers.map { $0.mediaSize - Int64($0.sectorSize) }.min()!
        guard smallest >= stripeSize else {
            throw SettingError(key: "stripe-size", value: formatByteSize(stripeSize),
                               problem: "is larger than the smallest component (\(smallest) bytes)")
        }
        let geom = StripeGeom(name: name, id: UInt64.random(in: 1...UInt64.max), count: providers.count, stripeSize: stripeSize)
        try LabelledAssembly.create(geom, over: providers, in: topology)
        return geom
    }

    /// The stripe a topology file names over `providers`: reassembled from their labels,
    /// or made and labelled if they are blank.
    /// - Throws: `StrataError` when the labels contradict the entry (components, their
    ///   order, the stripe size).
    public static func assemble(in topology: Topology, name: String, over providers: [Provider],
                                stripeSize: Int64 = 64 << 10) throws -> StripeGeom {
        try LabelledAssembly.assemble(
            kind: .stripe, labelName: name, over: providers, in: topology,
            create: { try create(in: topology, name: name, over: providers, stripeSize: stripeSize) },
            make: { StripeGeom(name: $0.name, id: $0.id, count: $0.count, stripeSize: $0.stripeSize) },
            disagreement: { label in
                label.stripeSize == stripeSize ? nil : "its metadata says stripe-size \(label.stripeSize), the file says \(stripeSize)"
            })
    }

    override public func mediaSize() -> Int64 {
        let perComponent = dataSizes.min()! / stripeSize * stripeSize
        return perComponent * Int64(componentCount)
    }

    override public func locate(_ offset: Int64) -> (component: Int, offset: Int64, run: Int64) {
        let stripe = offset >> stripeShift
        let within = offset & (stripeSize - 1)
        let (row, component) = stripe.quotientAndRemainder(dividingBy: Int64(componentCount))
        return (Int(component), row << stripeShift | within, stripeSize - within)
    }
}

/// The stripe class: reassembles stripes from their labels.
public final class StripeClass: GeomClass {
    public let name = "STRIPE"
    public init() {}

    public func taste(_ provider: Provider, in topology: Topology) -> Geom? {
        LabelledAssembly.taste(provider, kind: .stripe, in: topology) { label in
            StripeGeom(name: label.name, id: label.id, count: label.count, stripeSize: label.stripeSize)
        }
    }
}
