import Foundation

/// A class verb's JSON answer as people read it: `key: value` lines, nested objects
/// indented, a list of objects as a table (a `name` column first), byte counts as sizes.
/// `--json` prints the answer as the server gave it instead.
enum VerbAnswer: Decodable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case list([VerbAnswer])
    case object([String: VerbAnswer])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([VerbAnswer].self) {
            self = .list(value)
        } else {
            self = .object(try container.decode([String: VerbAnswer].self))
        }
    }

    /// The answer's text for a terminal; the JSON itself when it is not JSON at all.
    static func text(of json: Data) -> String {
        guard let answer = try? JSONDecoder().decode(VerbAnswer.self, from: json) else {
            return String(decoding: json, as: UTF8.self)
        }
        return answer.lines(key: nil).joined(separator: "\n")
    }

    /// Whether a key's integers count bytes, by its name: `size`, `allocated`, `shared`,
    /// `…-size`, `…-used`, `…-water`, `bytes…`, `…Bytes` (not counts of chunks or blocks).
    static func isByteCount(_ key: String?) -> Bool {
        guard let key, !key.contains("chunks"), !key.contains("blocks") else { return false }
        return ["size", "allocated", "shared"].contains(key) || key.hasPrefix("bytes") || key.hasSuffix("Bytes")
            || ["-size", "-used", "-water", "Size"].contains { key.hasSuffix($0) }
    }

    /// Whether a key's integers are times, in seconds since 1970.
    static func isTime(_ key: String?) -> Bool { key == "created" }

    /// One value on one line (a table cell, or after `key: `).
    func scalarText(key: String?) -> String {
        switch self {
        case .null: return "-"
        case .bool(let value): return value ? "yes" : "no"
        case .integer(let value) where Self.isByteCount(key) && value > 0: return Self.size(value)
        case .integer(let value) where Self.isTime(key):
            return ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(value)))
        case .integer(let value): return "\(value)"
        case .number(let value): return value == value.rounded() ? "\(Int64(value))" : String(format: "%.2f", value)
        case .string(let value): return value.isEmpty ? "-" : value
        case .list(let items): return items.isEmpty ? "none" : items.map { $0.scalarText(key: key) }.joined(separator: ", ")
        case .object(let fields):
            return Self.orderedKeys(fields.keys).map { "\($0)=\(fields[$0]!.scalarText(key: $0))" }.joined(separator: " ")
        }
    }

    /// `bytes` in the largest binary unit it reaches, whole where exact, else to one
    /// decimal (`64KiB`, `3.5GiB`); below 1 KiB as it is.
    static func size(_ bytes: Int64) -> String {
        var unit = "", shift = 0
        for (name, bits) in [("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40), ("PiB", 50)] where bytes >= Int64(1) << bits {
            (unit, shift) = (name, bits)
        }
        guard shift > 0 else { return "\(bytes)" }
        if bytes & (Int64(1) << shift - 1) == 0 { return "\(bytes >> shift)\(unit)" }
        return String(format: "%.1f", Double(bytes) / Double(Int64(1) << shift)) + unit
    }

    static func orderedKeys(_ keys: some Collection<String>) -> [String] {
        keys.sorted { ($0 == "name" ? 0 : 1, $0) < ($1 == "name" ? 0 : 1, $1) }
    }

    var isTable: Bool {
        guard case .list(let items) = self, !items.isEmpty else { return false }
        return items.allSatisfy { if case .object = $0 { true } else { false } }
    }

    func lines(key: String?) -> [String] {
        switch self {
        case .object(let fields):
            return Self.orderedKeys(fields.keys).flatMap { name -> [String] in
                let value = fields[name]!
                switch value {
                case .object(let inner) where !inner.isEmpty:
                    return ["\(name):"] + value.lines(key: name).map { "  " + $0 }
                case .list where value.isTable:
                    return ["\(name):"] + value.lines(key: name).map { "  " + $0 }
                default:
                    return ["\(name): \(value.scalarText(key: name))"]
                }
            }
        case .list(let items) where isTable:
            let rows = items.map { item -> [String: VerbAnswer] in
                if case .object(let fields) = item { return fields }
                return [:]
            }
            let columns = Self.orderedKeys(Set(rows.flatMap(\.keys)))
            let cells = rows.map { row in columns.map { row[$0]?.scalarText(key: $0) ?? "-" } }
            let header = columns.map { $0.uppercased() }
            let widths = columns.indices.map { column in ([header] + cells).map { $0[column].count }.max()! }
            return ([header] + cells).map { row in
                zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
            }
        default:
            return [scalarText(key: key)]
        }
    }
}
