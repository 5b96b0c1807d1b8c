import Strata
import StrataEli

/// A `LUKSMedium` in memory that records its writes, so that a test can replay any
/// prefix of them (a power cut between two writes) or half of one (a torn write).
final class MemoryMedium: LUKSMedium {
    var bytes: [UInt8]
    private(set) var writes: [(offset: Int64, bytes: [UInt8])] = []
    private(set) var flushes = 0

    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }
    init(copying bytes: [UInt8]) { self.bytes = bytes }

    var size: Int64 { Int64(bytes.count) }

    func read(at offset: Int64, count: Int) throws -> [UInt8] {
        guard offset >= 0, offset + Int64(count) <= size else { throw StrataError(.io, "read past the end") }
        return Array(bytes[Int(offset)..<Int(offset) + count])
    }

    func write(_ data: [UInt8], at offset: Int64) throws {
        guard offset >= 0, offset + Int64(data.count) <= size else { throw StrataError(.io, "write past the end") }
        bytes.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data)
        writes.append((offset, data))
    }

    func flush() throws { flushes += 1 }

    func forgetWrites() { writes = [] }
}
