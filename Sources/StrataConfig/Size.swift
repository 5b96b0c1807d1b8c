import Foundation

/// Byte sizes as people write them: `4096`, `64KiB`, `64K`, `1MiB`, `1M`, `1GiB`, `1G`,
/// `1TiB`, `1T` (all binary). Returns nil for anything else, zero, or an overflow.
public func parseSize(_ text: String) -> Int64? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
    guard !digits.isEmpty, let number = Int64(digits) else { return nil }
    let shifts: [String: Int64] = ["": 0, "B": 0, "K": 10, "KiB": 10, "M": 20, "MiB": 20, "G": 30, "GiB": 30,
                                   "T": 40, "TiB": 40]
    guard let shift = shifts[String(trimmed.dropFirst(digits.count))] else { return nil }
    let (value, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
    guard !overflow, value > 0 else { return nil }
    return value
}

/// The sizes accepted, for error messages.
let sizeForms = "a size like 4096, 64KiB, 64K, 1MiB, 1M, 1GiB, 1G or 1TiB"
