import Strata

/// A geom over several components that each carry a `ComponentLabel` (concat, stripe):
/// it assembles from its labels, maps each request onto its components, and splits
/// requests that cross a boundary. Subclasses say how an offset maps (`locate`) and how
/// big the whole is (`mediaSize`).
open class LabelledGeom: Geom, @unchecked Sendable {
    public let kind: ComponentLabel.Kind
    public let id: UInt64
    public let componentCount: Int
    public let stripeSize: Int64
    /// Components by label index; nil until tasted or attached.
    public internal(set) var components: [Consumer?]
    /// Data bytes of each component, from its label.
    public internal(set) var dataSizes: [Int64]
    /// The components in label order, set once all are present and before the provider
    /// exists; `start` reads it without the topology lock.
    private var ordered: [Consumer] = []
    /// `ordered` without reference counts, for passing requests on: a component read from
    /// `ordered` costs a retain and a release per request. `ordered` keeps them alive.
    private var orderedReferences: [Unmanaged<Consumer>] = []

    init(name: String, className: String, kind: ComponentLabel.Kind, id: UInt64, count: Int, stripeSize: Int64) {
        self.kind = kind
        self.id = id
        self.componentCount = count
        self.stripeSize = stripeSize
        components = Array(repeating: nil, count: count)
        dataSizes = Array(repeating: 0, count: count)
        super.init(name: name, className: className, startOnlyPassesOn: true)
    }

    /// Bytes the geom's provider offers, once every component is present.
    open func mediaSize() -> Int64 { fatalError("\(className) must say its media size") }

    /// Where byte `offset` lives: the component, the offset in it, and how many bytes
    /// from there stay in that component before the next boundary.
    open func locate(_ offset: Int64) -> (component: Int, offset: Int64, run: Int64) {
        fatalError("\(className) must map offsets")
    }

    /// The name written in the labels (the geom's name, unless a class says otherwise).
    open var labelName: String { name }

    /// The label component `index` carries.
    func label(index: Int, dataSize: Int64) -> ComponentLabel {
        ComponentLabel(kind: kind, name: labelName, id: id, index: index, count: componentCount, stripeSize: stripeSize,
                       dataSize: dataSize)
    }

    var isComplete: Bool { components.allSatisfy { $0 != nil } }

    /// The components' providers in label order ("(missing)" where one is absent).
    public var componentNames: [String] { components.map { $0?.provider?.name ?? "(missing)" } }

    /// Attaches `provider` as component `index` (from its label) and makes the provider
    /// once all are present. Topology locked (tasting or creation).
    func adopt(_ provider: Provider, index: Int, dataSize: Int64, in topology: Topology) throws {
        guard index < componentCount else {
            throw StrataError(.invalid, "\(className.lowercased()) \(name): \(provider.name) says it is component \(index) of a geom that has \(componentCount)")
        }
        let room = provider.mediaSize - Int64(provider.sectorSize)
        guard dataSize <= room else {
            throw StrataError(.invalid, "\(className.lowercased()) \(name): \(provider.name)'s label says \(dataSize) data bytes, but it has room for \(room)")
        }
        guard components[index] == nil else {
            throw StrataError(.exists, "\(className.lowercased()) \(name): component \(index) is already \(components[index]!.provider?.name ?? "?")")
        }
        let consumer = topology.createConsumer(for: self)
        try topology.attach(consumer, to: provider)
        components[index] = consumer
        dataSizes[index] = dataSize
        if isComplete && providers.isEmpty {
            ordered = components.map { $0! }
            orderedReferences = ordered.map { Unmanaged.passUnretained($0) }
            let sector = components.map { $0!.provider!.sectorSize }.max()!
            try topology.createProvider(for: self, name: name, mediaSize: mediaSize() / Int64(sector) * Int64(sector),
                                        sectorSize: sector, stripeSize: stripeSize, stripeOffset: 0)
        }
    }

    // MARK: I/O

    override open func start(_ bio: consuming ProviderBio) {
        switch bio.command {
        case .flush:
            fanOut(bio)
        case .getattr:
            if bio.attribute == .extents {
                extents(bio)
            } else if bio.attribute == .ident {
                bio.deliverAttribute(string: "\(className.lowercased()):\(name)")
            } else {
                passToFirst(bio)
            }
        case .read, .write, .delete, .writeZeroes:
            split(bio)
        }
    }

    /// Sends the request to every component (a flush).
    private func fanOut(_ bio: consuming ProviderBio) {
        var clones = BioChain()
        for _ in ordered {
            guard let clone = bio.clone() else {
                clones.destroyAll()
                bio.deliver(.noMemory)
                return
            }
            clones.append(clone)
        }
        bio.awaitChildren()
        var component = 0
        while let clone = clones.popFirst() {
            ordered[component].request(clone)
            component += 1
        }
    }

    private func passToFirst(_ bio: consuming ProviderBio) {
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        passOn(bio, clone, to: orderedReferences[0])
    }

    /// Maps a data request onto the components, one clone per run between boundaries.
    private func split(_ bio: consuming ProviderBio) {
        let offset = bio.offset
        let length = bio.length
        let first = locate(offset)
        if first.run >= length {
            // The common case: all of it in one component.
            guard let clone = bio.clone() else {
                bio.deliver(.noMemory)
                return
            }
            clone.offset = first.offset
            passOn(bio, clone, to: orderedReferences[first.component])
            return
        }
        // Each clone carries its component in `caller1`, a field of its issuer's.
        var clones = BioChain()
        var done: Int64 = 0
        while done < length {
            let place = locate(offset + done)
            let piece = min(place.run, length - done)
            guard let clone = bio.clone(range: done, length: piece) else {
                clones.destroyAll()
                bio.deliver(.noMemory)
                return
            }
            clone.offset = place.offset
            clone.setCallerTag(ComponentIndex(place.component), in: .caller1)
            clones.append(clone)
            done += piece
        }
        bio.awaitChildren()
        while let clone = clones.popFirst() {
            ordered[clone.callerTag(.caller1, as: ComponentIndex.self).value].request(clone)
        }
    }

    /// Extents of the run the range starts in, shifted into the geom's coordinates; the
    /// asker continues from where the answer stops.
    private func extents(_ bio: consuming ProviderBio) {
        let place = locate(bio.offset)
        let length = min(bio.length, place.run)
        guard length > 0, let clone = bio.clone(range: 0, length: bio.length) else {
            bio.deliverAttribute(extents: [])
            return
        }
        clone.offset = place.offset
        clone.length = length
        // The shift back, kept in the consumer-private field for the done routine.
        clone.setCallerTag(ExtentsShift(bio.offset - place.offset), in: .caller1)
        clone.done = .handler(self)
        passOn(bio, clone, to: orderedReferences[place.component])
    }

    override open func bioDone(_ bio: consuming Bio) {
        bio.shiftExtents(by: bio.callerTag(.caller1, as: ExtentsShift.self).bytes)
        bio.finishClone()
    }
}

/// Creates labelled geoms from a topology file or a program, and reassembles them by
/// tasting: the part concat and stripe share.
enum LabelledAssembly {
    /// Makes `geom` over `providers` and writes every component's label.
    /// - Throws: `StrataError` when a component already carries another geom's label.
    static func create(_ geom: LabelledGeom, over providers: [Provider], in topology: Topology) throws {
        try topology.add(geom)
        for provider in providers {
            if let existing = ComponentLabel.read(from: provider, through: geom, in: topology),
               existing.name != geom.labelName || existing.kind != geom.kind {
                topology.remove(geom)
                throw StrataError(.busy, "\(provider.name) carries the metadata of \(existing.kind.className) \(existing.name); clear it first")
            }
        }
        do {
            for (index, provider) in providers.enumerated() {
                let dataSize = provider.mediaSize - Int64(provider.sectorSize)
                let writer = topology.createConsumer(for: geom)
                defer { topology.destroy(writer) }
                try topology.attach(writer, to: provider)
                try topology.access(writer, read: 0, write: 1, exclusive: 0)
                defer { try? topology.access(writer, read: 0, write: -1, exclusive: 0) }
                try geom.label(index: index, dataSize: dataSize).write(through: writer)
            }
            for (index, provider) in providers.enumerated() {
                try geom.adopt(provider, index: index, dataSize: provider.mediaSize - Int64(provider.sectorSize), in: topology)
            }
        } catch {
            topology.wither(geom)
            throw error
        }
    }

    /// The geom an entry of a topology file names, over exactly `providers`: reassembled
    /// from their labels, or, when all are blank, made by `create` (which labels them).
    /// - Parameters:
    ///   - make: a geom (not yet in the topology) for the labels found.
    ///   - disagreement: how the labels contradict the entry beyond the components (a
    ///     stripe size), or nil.
    /// - Throws: `StrataError` when a provider carries another geom's label, some are
    ///   blank and some not, or the labels name other components or another order.
    static func assemble<Made: LabelledGeom>(kind: ComponentLabel.Kind, labelName: String, over providers: [Provider],
                                             in topology: Topology, create: () throws -> Made, make: (ComponentLabel) -> Made,
                                             disagreement: (ComponentLabel) -> String? = { _ in nil }) throws -> Made {
        let labels = providers.map { provider in
            (try? topology.probing(provider, for: kind.className) { ComponentLabel.decode(try $0.readLastSector()) }) ?? nil
        }
        let what = "\(kind.className) \(labelName)"
        for (provider, label) in zip(providers, labels) {
            if let label, label.kind != kind || label.name != labelName {
                throw StrataError(.busy, "\(provider.name) carries the metadata of \(label.kind.className) \(label.name); clear it first")
            }
        }
        let found = labels.compactMap { $0 }
        if found.isEmpty { return try create() }
        if let blank = zip(providers, labels).first(where: { $0.1 == nil })?.0 {
            throw StrataError(.invalid, "\(blank.name) has no label but the others carry \(what)'s; a \(kind.className) cannot take a new component")
        }
        guard Set(found.map(\.id)).count == 1 else {
            throw StrataError(.invalid, "the components carry the labels of different geoms named \(labelName)")
        }
        let first = found[0]
        let listed = providers.map(\.name)
        var byIndex = [String](repeating: "(missing)", count: first.count)
        for (provider, label) in zip(providers, found) where label.index < first.count { byIndex[label.index] = provider.name }
        guard first.count == providers.count, byIndex == listed else {
            throw StrataError(.invalid, "its metadata has components [\(byIndex.joined(separator: ", "))], the file says [\(listed.joined(separator: ", "))]")
        }
        if let difference = disagreement(first) { throw StrataError(.invalid, difference) }
        let geom = make(first)
        try topology.add(geom)
        do {
            for (provider, label) in zip(providers, found) {
                try geom.adopt(provider, index: label.index, dataSize: label.dataSize, in: topology)
            }
        } catch {
            topology.wither(geom)
            throw error
        }
        return geom
    }

    /// Tastes `provider` for a label of `kind`; joins it to its geom, making the geom if
    /// it is the first component seen.
    static func taste(_ provider: Provider, kind: ComponentLabel.Kind, in topology: Topology,
                      make: (ComponentLabel) -> LabelledGeom) -> Geom? {
        let label = try? topology.probing(provider, for: kind.className) { probe in
            ComponentLabel.decode(try probe.readLastSector())
        }
        guard let label, label.kind == kind else { return nil }
        let geom: LabelledGeom
        if let existing = topology.geom(named: label.geomName) {
            guard let same = existing as? LabelledGeom, same.kind == kind, same.id == label.id else {
                topology.emit(.warning, "\(provider.name) carries \(kind.className) \(label.name) metadata, but a different geom has that name")
                return nil
            }
            geom = same
        } else {
            geom = make(label)
            guard (try? topology.add(geom)) != nil else { return nil }
        }
        do {
            try geom.adopt(provider, index: label.index, dataSize: label.dataSize, in: topology)
        } catch {
            topology.emit(.warning, "\(provider.name): \(error)")
            return nil
        }
        return geom
    }
}

extension ComponentLabel {
    /// The name of the geom a label belongs to: a label's geom is `label/NAME`.
    var geomName: String { kind == .label ? "label/\(name)" : name }
}

extension ComponentLabel.Kind {
    var className: String {
        switch self {
        case .concat: "concat"
        case .stripe: "stripe"
        case .label: "label"
        }
    }
}
