import Strata

/// What a configuration asks to build, checked before any disk is opened: that no two
/// entries open one file, the order the entries can be made in, and what tasting must
/// leave alone. (Each entry's class and keys were checked as the file was read.)
struct AssemblyPlan {
    struct Step {
        /// The entry's index in `Configuration.geoms`.
        let index: Int
        let definition: any ClassDefinition.Type
    }

    /// The geom entries, each after the entries whose providers it consumes; among
    /// entries free to go, the file's order.
    let order: [Step]
    /// Providers that entries consume or exports serve: tasting never reads them.
    let claimed: Set<String>
    /// The names of the geoms the entries make, and of those destroyed at run time:
    /// tasting never makes one.
    let reservedGeomNames: Set<String>

    /// - Throws: `ConfigError` for two entries that open one file, or entries that
    ///   consume each other in a cycle.
    init(_ configuration: Configuration) throws {
        try AssemblyPlan.checkMedia(of: configuration)
        let specs = configuration.geoms
        let steps = specs.enumerated().map { index, spec in Step(index: index, definition: ClassRegistry.named(spec.className)!) }
        // The entries each entry waits for: those that may offer a provider it consumes.
        // A name no entry offers is a disk's, or one tasting is to make (a partition of
        // a disk the file gives no part entry), looked for when the entry is made.
        let waitsFor: [[Int]] = specs.map { spec in
            spec.consumers.flatMap { consumer in
                steps.filter { $0.definition.offers(consumer, entry: specs[$0.index].name) }.map(\.index)
            }
        }
        var made = Set<Int>()
        var order: [Step] = []
        while order.count < steps.count {
            guard let next = steps.first(where: { !made.contains($0.index) && waitsFor[$0.index].allSatisfy(made.contains) }) else {
                throw AssemblyPlan.cycle(among: steps.map(\.index).filter { !made.contains($0) }, waitsFor: waitsFor,
                                         configuration: configuration)
            }
            made.insert(next.index)
            order.append(next)
        }
        self.order = order
        claimed = Set(specs.flatMap(\.consumers) + configuration.exports.map(\.provider))
        reservedGeomNames = Set(steps.map { $0.definition.geomName(forEntry: specs[$0.index].name) }
            + configuration.withdrawn.flatMap { name in registeredClasses.map { $0.geomName(forEntry: name) } })
    }

    /// Refuses two entries that open one file or device, however their paths name it
    /// (links, `..`): two disks writing one file overwrite each other, and a mirror of a
    /// file with itself would call one copy two.
    /// - Throws: `ConfigError` at the second entry, naming the first.
    private static func checkMedia(of configuration: Configuration) throws {
        var opened: [String: (entry: EntrySpec, medium: Medium)] = [:]
        for spec in configuration.disks + configuration.geoms {
            let definition = ClassRegistry.named(spec.className)!
            for medium in definition.media(settings: spec.settings, relativeTo: configuration.directory) {
                guard let first = opened[medium.identity] else {
                    opened[medium.identity] = (spec, medium)
                    continue
                }
                let written = first.entry.parameters[first.medium.key]
                let place = written.map { value in
                    "\(value.file)\(value.line.map { ":\($0)" } ?? ""): \(value.key): '\(value.text)'"
                } ?? first.entry.path
                let problem = "is the \(medium.noun) \(first.entry.name) opens (\(place)); \(article(medium.noun)) \(medium.noun) can be one disk only"
                throw spec.error(SettingError(key: medium.key, value: medium.name, problem: problem), in: configuration.file)
            }
        }
    }

    /// The error for entries that wait on each other: one cycle among them, named.
    private static func cycle(among waiting: [Int], waitsFor: [[Int]], configuration: Configuration) -> ConfigError {
        // Every waiting entry waits on another waiting one; follow the first until it repeats.
        var path = [waiting[0]]
        var next = waitsFor[waiting[0]].first { waiting.contains($0) }!
        while !path.contains(next) {
            path.append(next)
            next = waitsFor[next].first { waiting.contains($0) }!
        }
        let loop = path[path.firstIndex(of: next)!...] + [next]
        let first = loop.first!
        let spec = configuration.geoms[first]
        return ConfigError(file: configuration.file, line: spec.line, key: "geoms[\(first)].consumers", value: nil,
                           problem: "make a cycle: \(loop.map { configuration.geoms[$0].name }.joined(separator: " → "))")
    }
}

/// "a" or "an", for a noun in a message.
func article(_ noun: String) -> String { "aeiou".contains(noun.first ?? "x") ? "an" : "a" }
