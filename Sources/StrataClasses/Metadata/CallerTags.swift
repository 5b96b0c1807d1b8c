import Strata

/// The component a clone goes to, by its place in the class's table, kept in the clone's
/// `caller1` by classes that spread a request over their components (mirror, concat,
/// stripe).
struct ComponentIndex: BioCallerTag {
    let value: Int

    init(_ value: Int) { self.value = value }
    init(rawBits: UInt) { value = Int(bitPattern: rawBits) }
    var rawBits: UInt { UInt(bitPattern: value) }
}

/// What to add to the extents an extents GETATTR clone's answer reports, to bring them
/// from the component's coordinates into the geom's; kept in the clone's `caller1` for
/// its done routine (label, concat, stripe, part).
struct ExtentsShift: BioCallerTag {
    let bytes: Int64

    init(_ bytes: Int64) { self.bytes = bytes }
    // A word holds an Int64 whole: Strata runs on 64-bit Linux.
    init(rawBits: UInt) { bytes = Int64(Int(bitPattern: rawBits)) }
    var rawBits: UInt { UInt(bitPattern: Int(bytes)) }
}
