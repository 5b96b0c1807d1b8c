/// The pre-shared key file psktool writes and nbdkit, qemu and libnbd read:
/// `identity:hexkey`, one a line. The server reads all of it; a client, its identity's.
public enum PresharedKeyFile {
    /// The keys by identity.
    /// - Throws: a message naming the line that is not `IDENTITY:HEXKEY`, whose key is
    ///   not hexadecimal, or whose identity came before; or saying the file holds no key.
    public static func keys(in text: String) throws(Problem) -> [String: [UInt8]] {
        var keys: [String: [UInt8]] = [:]
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let entry = line.drop { $0 == " " || $0 == "\t" }
            if entry.isEmpty { continue }
            let number = index + 1
            guard let colon = entry.lastIndex(of: ":"), colon != entry.startIndex else {
                throw Problem(message: "line \(number) is not IDENTITY:HEXKEY")
            }
            let identity = String(entry[..<colon])
            guard let key = bytes(ofHex: entry[entry.index(after: colon)...]), !key.isEmpty else {
                throw Problem(message: "line \(number): the key of \(identity) is not hexadecimal")
            }
            guard keys[identity] == nil else {
                throw Problem(message: "line \(number): identity \(identity) appears twice")
            }
            keys[identity] = key
        }
        guard !keys.isEmpty else { throw Problem(message: "holds no key") }
        return keys
    }

    public struct Problem: Error, Sendable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    static func bytes(ofHex text: Substring) -> [UInt8]? {
        let digits = Array(text.utf8.reversed().drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }.reversed())
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = value(ofHexDigit: digits[index]), let low = value(ofHexDigit: digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func value(ofHexDigit digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
