/// One request a power-cut disk took, in the order the disks of a log took them.
public struct PowerCutEntry: Sendable, Equatable, CustomStringConvertible {
    public enum Operation: UInt8, Sendable, CaseIterable {
        case write = 1, writeZeroes, delete, flush

        public var name: String {
            switch self {
            case .write: "WRITE"
            case .writeZeroes: "WRITE_ZEROES"
            case .delete: "DELETE"
            case .flush: "FLUSH"
            }
        }
    }

    /// The entry's place in its log, from 0, counted across every disk of the log.
    public let sequence: Int
    /// The name of the disk that took the request.
    public let disk: String
    public let operation: Operation
    public let offset: Int64
    public let length: Int64
    /// Forced unit access: the change was durable when it was acknowledged.
    public let fua: Bool
    /// What a WRITE wrote; empty for the other operations (WRITE_ZEROES and DELETE
    /// leave zeros, as a memory disk does).
    public let data: [UInt8]

    public init(sequence: Int, disk: String, operation: Operation, offset: Int64, length: Int64, fua: Bool, data: [UInt8]) {
        (self.sequence, self.disk, self.operation) = (sequence, disk, operation)
        (self.offset, self.length, self.fua, self.data) = (offset, length, fua, data)
    }

    /// Whether the entry changes the media (everything but FLUSH).
    public var changesMedia: Bool { operation != .flush }

    public var description: String {
        operation == .flush ? "#\(sequence) \(disk) FLUSH"
            : "#\(sequence) \(disk) \(operation.name)\(fua ? "|FUA" : "") \(offset)+\(length)"
    }
}
