import StrataNBDProtocol

/// Sizes the server works with.
public enum NBDLimits {
    /// The longest READ or WRITE unless the server is told otherwise
    /// (`NBDServer.Limits.maximumRequest`): nbdkit's maximum; real traces send requests
    /// of up to about 50 MiB.
    public static let defaultMaximumRequest = 64 << 20
    /// The range `NBDServer.Limits.maximumRequest` may take. One request's payload (or a
    /// READ's reply) is held whole in memory, so the top bounds what one request costs;
    /// the wire's 32-bit lengths would allow 4 GiB.
    public static let maximumRequestRange = (1 << 20)...(1 << 30)
    /// Largest option payload kept in memory; longer ones are discarded and refused.
    public static let maximumOptionLength = 16 << 10
    /// Extents reported in one block-status chunk at most.
    public static let maximumExtents = 1 << 16
    /// Bytes of an error message at most (qemu hangs up on non-data payloads over 1000).
    public static let maximumMessage = 200
    /// Metadata contexts one SET_META_CONTEXT may select: each costs every BLOCK_STATUS a
    /// GETATTR and a chunk of up to `maximumExtents` extents. More is ERR_TOO_BIG.
    public static let maximumMetaContexts = 16
    /// Room for a provider's list of dirty bitmaps (`STRATA::dirty-bitmaps`); names past
    /// it are not offered.
    public static let dirtyBitmapListLength = 64 << 10
}

extension NBDMetaContext {
    /// The id the server gives `base:allocation` on every connection; dirty bitmaps
    /// selected with it number on from here.
    public static let baseAllocationID: UInt32 = 1
}
