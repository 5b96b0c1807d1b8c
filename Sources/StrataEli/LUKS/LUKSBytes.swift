import Strata

/// Big-endian fields and fixed-size strings of the LUKS binary headers. Both versions
/// store integers big endian and names as NUL-padded ASCII in fixed fields; these
/// helpers read them from a byte array at known offsets (the caller has already made
/// sure the array is as long as the header), so a hostile header can give bad values
/// but never an out-of-bounds read.
enum LUKSBytes {
    static func uint16(_ bytes: [UInt8], at offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    static func uint32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(bytes[offset + $1]) }
    }

    static func uint64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(bytes[offset + $1]) }
    }

    static func put(_ value: UInt16, into bytes: inout [UInt8], at offset: Int) {
        bytes[offset] = UInt8(value >> 8)
        bytes[offset + 1] = UInt8(value & 0xff)
    }

    static func put(_ value: UInt32, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<4 { bytes[offset + index] = UInt8((value >> (24 - 8 * UInt32(index))) & 0xff) }
    }

    static func put(_ value: UInt64, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<8 { bytes[offset + index] = UInt8((value >> (56 - 8 * UInt64(index))) & 0xff) }
    }

    /// The text of a NUL-padded field; invalid UTF-8 is kept visible (replacement
    /// characters) rather than refused, as these fields are names compared later.
    static func string(_ bytes: [UInt8], at offset: Int, length: Int) -> String {
        let field = bytes[offset..<offset + length]
        return String(decoding: field.prefix(while: { $0 != 0 }), as: UTF8.self)
    }

    /// Writes `text` NUL-padded into a field of `length` bytes; it must leave room for
    /// the terminating NUL, as cryptsetup expects one.
    static func put(_ text: String, into bytes: inout [UInt8], at offset: Int, length: Int) throws {
        let utf8 = Array(text.utf8)
        guard utf8.count < length else {
            throw StrataError(.invalid, "'\(text)' does not fit a \(length)-byte LUKS header field")
        }
        for index in 0..<length { bytes[offset + index] = index < utf8.count ? utf8[index] : 0 }
    }

    /// A random RFC 4122 version 4 UUID in its lowercase text form, as cryptsetup writes.
    static func randomUUID() throws -> String {
        var bytes = try randomBytes(16)
        bytes[6] = bytes[6] & 0x0f | 0x40
        bytes[8] = bytes[8] & 0x3f | 0x80
        let hex = bytes.map { String($0, radix: 16).leftPadded(to: 2) }
        return [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]].map { $0.joined() }.joined(separator: "-")
    }

    /// Whether `offset + count` lies inside a medium of `size` bytes, without overflow.
    static func fits(offset: Int64, count: Int64, in size: Int64) -> Bool {
        offset >= 0 && count >= 0 && offset <= size && count <= size - offset
    }
}

extension String {
    func leftPadded(to length: Int) -> String {
        count >= length ? self : String(repeating: "0", count: length - count) + self
    }
}

/// Constant-time comparison of two digests, so that a wrong key's rejection takes the
/// same time wherever the bytes differ.
func constantTimeEqual(_ left: [UInt8], _ right: [UInt8]) -> Bool {
    guard left.count == right.count else { return false }
    var difference: UInt8 = 0
    for index in 0..<left.count { difference |= left[index] ^ right[index] }
    return difference == 0
}
