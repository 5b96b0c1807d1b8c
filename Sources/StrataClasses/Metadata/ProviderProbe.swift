import Strata

extension Topology {
    /// Runs `body` with a consumer of `geom` attached to `provider` and opened for
    /// reading only; the consumer is closed and destroyed afterwards, whatever happens.
    func reading<Result>(_ provider: Provider, through geom: Geom, _ body: (Consumer) throws -> Result) throws -> Result {
        let consumer = createConsumer(for: geom)
        defer { destroy(consumer) }
        try attach(consumer, to: provider)
        try access(consumer, read: 1, write: 0, exclusive: 0)
        defer { try? access(consumer, read: -1, write: 0, exclusive: 0) }
        return try body(consumer)
    }

    /// Like `reading(_:through:_:)` through a short-lived geom of class TASTE, for
    /// reading metadata off a provider no geom of the class holds yet. The probe's name
    /// is unique, so two tastes of one provider never collide.
    func probing<Result>(_ provider: Provider, for className: String, _ body: (Consumer) throws -> Result) throws -> Result {
        let probe = Geom(name: "taste:\(className):\(provider.name):\(UInt32.random(in: 0...UInt32.max))", className: "TASTE")
        try add(probe)
        defer { remove(probe) }
        return try reading(provider, through: probe, body)
    }
}

extension Consumer {
    /// The last sector of the provider this consumer reads, where labels and mirror
    /// metadata live.
    func readLastSector() throws -> [UInt8] {
        guard let provider else { throw StrataError(.noDevice, "\(name) is not attached") }
        return try readSync(at: provider.mediaSize - Int64(provider.sectorSize), count: provider.sectorSize)
    }
}
