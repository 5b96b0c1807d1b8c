import StrataNBDProtocol

/// Sizes the server works with.
public enum NBDLimits {
    /// Largest READ or WRITE payload (and advertised maximum).
    public static let maximumPayload = 32 << 20
    /// Largest option payload kept in memory; longer ones are discarded and refused.
    public static let maximumOptionLength = 16 << 10
    /// Extents reported in one block-status chunk at most.
    public static let maximumExtents = 1 << 16
    /// Bytes of an error message at most (qemu hangs up on non-data payloads over 1000).
    public static let maximumMessage = 200
}

extension NBDMetaContext {
    /// The id the server gives `base:allocation` on every connection.
    public static let baseAllocationID: UInt32 = 1
}
