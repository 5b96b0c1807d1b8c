import Strata

/// The sector sizes a disk entry may give (`sector-size`).
package let sectorSizeNames: [(String, Int)] = [("512", 512), ("4096", 4096)]

/// The settings of the disks whose main value is their size (memory, null, zero,
/// power-cut): `{name: m0, memory: 1GiB, sector-size: 4096}`.
public struct SizedDiskSettings<Kind: SizedDiskKind>: ClassSettings {
    public var size: Int64 = 0
    public var sectorSize = 512

    public init() {}

    public static var keys: [SettingKey<Self>] {
        [SettingKey(Kind.name, \.size, .anySize, help: "The disk's size."),
         SettingKey("sector-size", \.sectorSize, names: sectorSizeNames, help: "512 (the default) or 4096.")]
    }
}

/// Names the key of a sized disk's size: the class's name.
public protocol SizedDiskKind: Sendable {
    static var name: String { get }
}

extension Disk {
    /// A disk's size and sector size as its entry writes them.
    func sizedSettings<Kind>() -> SizedDiskSettings<Kind> {
        var settings = SizedDiskSettings<Kind>()
        settings.size = provider.mediaSize
        settings.sectorSize = provider.sectorSize
        return settings
    }
}
