import Strata

/// `class: stripe`: `stripe-size` bytes from each component in turn (docs: `stripe.md`).
public enum StripeDefinition: ClassDefinition {
    public static let name = "stripe"
    public static let summary = "stripe-size bytes from each component in turn, reassembled from their labels."
    public static let geomClassName = "STRIPE"
    public static let shape = ClassShape.transform(consumers: 2...ComponentLabel.maximumCount)

    public struct Settings: ClassSettings {
        public var stripeSize: Int64 = 64 << 10
        public init() {}
        public static let keys: [SettingKey<Settings>] = [
            SettingKey("stripe-size", \.stripeSize, .size(512...(1 << 30), powerOfTwo: true),
                       help: "Bytes from each component in turn: a power of two of at least the sector size (default 64KiB)."),
        ]
    }

    public static func make(_ entry: ClassEntry<Settings>, in topology: Topology) throws -> Geom {
        try StripeGeom.assemble(in: topology, name: entry.name, over: entry.consumers, stripeSize: entry.settings.stripeSize)
    }

    public static func settings(of geom: Geom) -> Settings? {
        guard let stripe = geom as? StripeGeom else { return nil }
        var settings = Settings()
        settings.stripeSize = stripe.stripeSize
        return settings
    }

    public static func consumers(of geom: Geom) -> [String] { (geom as? LabelledGeom)?.componentNames ?? [] }
    public static var taster: (any GeomClass)? { StripeClass() }
}
