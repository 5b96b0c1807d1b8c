/// Big-endian bytes of an integer (metadata is big-endian on disk).
func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// The big-endian integer at `offset` in `bytes`.
func bigEndianInteger<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int, as type: T.Type) -> T {
    var value: T = 0
    for byte in bytes[offset..<(offset + MemoryLayout<T>.size)] { value = value << 8 | T(byte) }
    return value
}
