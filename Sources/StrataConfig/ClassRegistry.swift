import Strata
import StrataClasses
import StrataDisks
import StrataEli
import StrataRBD

/// Every class the topology file, the control socket and the command line know, one
/// line each; a class is otherwise wholly in its own folder.
public let registeredClasses: [any ClassDefinition.Type] = [
    FileDiskDefinition.self,
    MemoryDiskDefinition.self,
    NullDiskDefinition.self,
    ZeroDiskDefinition.self,
    PowerCutDiskDefinition.self,
    RemoteDiskDefinition.self,
    RBDDiskDefinition.self,
    NopDefinition.self,
    ConcatDefinition.self,
    StripeDefinition.self,
    LabelDefinition.self,
    PartDefinition.self,
    MirrorDefinition.self,
    ThinDefinition.self,
    EliDefinition.self,
]

/// Finding classes in `registeredClasses`.
public enum ClassRegistry {
    /// The class a topology file, a route or a command names.
    public static func named(_ name: String) -> (any ClassDefinition.Type)? {
        registeredClasses.first { $0.name == name }
    }

    /// The class of a running geom.
    public static func of(_ geom: Geom) -> (any ClassDefinition.Type)? {
        registeredClasses.first { $0.geomClassName == geom.className }
    }

    /// The disk classes, whose names are the keys of a disk entry.
    public static var disks: [any ClassDefinition.Type] { registeredClasses.filter { $0.shape == .disk } }

    /// The transform classes, named by `class:`.
    public static var transforms: [any ClassDefinition.Type] { registeredClasses.filter { $0.shape != .disk } }

    /// What recognizes metadata on providers, for tasting.
    public static var tasters: [any GeomClass] { registeredClasses.compactMap { $0.taster } }
}
