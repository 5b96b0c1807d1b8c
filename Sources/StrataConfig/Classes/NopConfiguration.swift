import Strata
import StrataClasses

/// `class: nop` in a topology file.
///
/// ```yaml
/// - name: n0
///   class: nop
///   consumers: [d0]
///   offset: 1MiB            # optional
///   size: 512MiB            # optional; default: the rest of the provider
///   read-fail-percent: 0    # 0..100
///   write-fail-percent: 0   # 0..100
///   error: 5                # errno of injected failures (default EIO)
///   delay-ms: 0             # 0..60000
///   count-until-fail: 0     # requests let through before all fail; 0 = never
/// ```
public struct NopConfiguration: ConfigurableClass {
    public let name = "nop"
    public let parameterKeys = ["offset", "size", "read-fail-percent", "write-fail-percent", "error", "delay-ms", "count-until-fail"]

    public init() {}

    public func make(_ spec: GeomSpec, over consumers: [Provider], in topology: Topology) throws -> Geom {
        guard consumers.count == 1 else {
            throw ConfigError(file: spec.parameters.values.first?.file ?? "", line: spec.line, key: "\(spec.name).consumers",
                              value: consumers.map(\.name).joined(separator: ", "), problem: "a nop consumes exactly one provider")
        }
        var settings = NopGeom.Settings()
        if let value = spec.parameters["read-fail-percent"] { settings.readFailPercent = try value.integer(in: 0...100) }
        if let value = spec.parameters["write-fail-percent"] { settings.writeFailPercent = try value.integer(in: 0...100) }
        if let value = spec.parameters["error"] { settings.error = Int32(try value.integer(in: 1...4095)) }
        if let value = spec.parameters["delay-ms"] { settings.delayMilliseconds = try value.integer(in: 0...60_000) }
        if let value = spec.parameters["count-until-fail"] { settings.countUntilFail = try value.integer(in: 0...Int(Int32.max)) }
        let offset = try spec.parameters["offset"].map { value -> Int64 in
            if value.text == "0" { return 0 }
            return try value.size()
        } ?? 0
        let size = try spec.parameters["size"]?.size()
        do {
            return try NopGeom.create(in: topology, name: spec.name, over: consumers[0], offset: offset, size: size,
                                      settings: settings)
        } catch let error as StrataError {
            // The nop's own message names the parameter; point at the entry.
            let key = error.message.hasPrefix("nop \(spec.name): offset") ? "offset" : "size"
            if let value = spec.parameters[key] { throw value.error(error.message) }
            throw error
        }
    }
}

/// The transform classes a topology file can name.
public let availableClasses: [any ConfigurableClass] = [
    NopConfiguration(), ConcatConfiguration(), StripeConfiguration(), LabelConfiguration(), PartConfiguration(),
    MirrorConfiguration(),
]

/// The classes that reassemble geoms from on-disk metadata: register them with a
/// topology before its disks are made.
public let tastingClasses: [any GeomClass] = [ConcatClass(), StripeClass(), LabelClass(), PartClass(), MirrorClass(wait: 0.5)]
