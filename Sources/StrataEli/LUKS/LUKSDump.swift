/// What a LUKS header says, without any secret (no salts, digests or key material):
/// what `strata eli dump` prints and what tools may log. Codable, so it can be shown
/// as JSON.
public struct LUKSDump: Sendable, Codable, Equatable {
    public struct KeySlot: Sendable, Codable, Equatable {
        public let id: Int
        /// nil when Strata cannot read the slot's KDF (see `problem`).
        public let kdf: KDFParameters?
        public let stripes: Int?
        /// Where the slot's material is, in bytes.
        public let areaOffset: Int64
        public let areaSize: Int64
        /// Bytes of the volume key the slot holds.
        public let keySize: Int
        /// LUKS2 priority: 0 ignored unless named, 1 normal, 2 preferred (LUKS1: 1).
        public let priority: Int
        /// Why Strata cannot open this slot, when it cannot.
        public let problem: String?
    }

    public struct Digest: Sendable, Codable, Equatable {
        public let id: Int
        public let type: String
        public let hash: String
        public let iterations: Int
        public let keySlots: [Int]
        public let segments: [Int]
    }

    public let version: LUKSVersion
    public let uuid: String
    /// LUKS2's label (empty when none; always nil for LUKS1).
    public let label: String?
    /// The data's cipher as dm-crypt names it: `aes-xts-plain64`.
    public let cipher: String
    /// Bytes of the volume key.
    public let keySize: Int
    public let sectorSize: Int
    /// Where the encrypted data starts, in bytes.
    public let payloadOffset: Int64
    /// Bytes of encrypted data; nil when it runs to the end of the medium.
    public let payloadSize: Int64?
    /// LUKS2's header sequence number (nil for LUKS1).
    public let sequence: UInt64?
    /// Active key slots.
    public let keySlots: [KeySlot]
    public let digests: [Digest]
}
