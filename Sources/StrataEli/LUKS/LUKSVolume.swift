import Strata

/// Where a LUKS header is read and written: the provider below an eli geom, or a
/// plain file.
public protocol LUKSMedium {
    /// Bytes the medium holds.
    var size: Int64 { get }
    func read(at offset: Int64, count: Int) throws -> [UInt8]
    func write(_ bytes: [UInt8], at offset: Int64) throws
    /// Makes what was written durable.
    func flush() throws
}

/// The LUKS on-disk formats.
public enum LUKSVersion: String, Sendable, Codable {
    case luks1, luks2
}

/// What an unlocked LUKS volume gives the eli class: the key and where and how the
/// data is encrypted.
public struct LUKSVolume: Sendable {
    public let version: LUKSVersion
    public let uuid: String
    /// The volume (master) key.
    public let masterKey: SecretBytes
    /// As cryptsetup writes it: `aes-xts-plain64`.
    public let cipher: String
    /// Bytes per encryption sector: 512 or 4096.
    public let sectorSize: Int
    /// Where the encrypted data starts on the medium, in bytes.
    public let payloadOffset: Int64
    /// Bytes of encrypted data; nil when it runs to the end of the medium (LUKS2's
    /// `dynamic`, and always for LUKS1).
    public let payloadSize: Int64?
    /// The tweak of the payload's first sector (LUKS2's `iv_tweak`), in IV units.
    public let ivOffset: UInt64
    /// The IV counts encryption sectors (dm-crypt's `iv_large_sectors`) rather than
    /// 512-byte sectors. False for every LUKS volume: cryptsetup never sets the flag
    /// for LUKS2, so a 4096-byte sector at payload byte `b` has the tweak
    /// `ivOffset + b / 512` (checked against data cryptsetup encrypted).
    public let ivLargeSectors: Bool

    public init(version: LUKSVersion, uuid: String, masterKey: SecretBytes, cipher: String, sectorSize: Int,
                payloadOffset: Int64, payloadSize: Int64?, ivOffset: UInt64, ivLargeSectors: Bool) {
        self.version = version
        self.uuid = uuid
        self.masterKey = masterKey
        self.cipher = cipher
        self.sectorSize = sectorSize
        self.payloadOffset = payloadOffset
        self.payloadSize = payloadSize
        self.ivOffset = ivOffset
        self.ivLargeSectors = ivLargeSectors
    }
}
