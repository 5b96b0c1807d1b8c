import Foundation
import Strata
import StrataDisks
import StrataEli
import Testing

/// LUKS header updates under power cuts: a volume formatted, keys added and removed, and
/// the volume formatted again over itself, through a power-cut disk; at every crash point,
/// with several subsets of the unflushed writes kept whole or torn, the header must read,
/// the passphrases that open it must be exactly those before the update in progress or
/// after it, and each must give the master key of that volume (a format in progress may
/// also leave no volume at all, never the old one with only some of its keys).
@Suite struct EliCrashTests {
    static let names = ["A", "B", "C", "D"]
    static let passphrases = names.map { SecretBytes(copying: Array("passphrase \($0) for the crash tests".utf8)) }
    static let quickKDF = KDFParameters.pbkdf2(hash: "sha256", iterations: 1000)

    /// A volume's format on a disk of some sector size, with the KDF its slots use.
    struct Layout: Sendable, CustomTestStringConvertible {
        let version: LUKSVersion
        let diskSectorSize: Int
        let kdf: KDFParameters
        var testDescription: String { "\(version.rawValue), \(diskSectorSize)-byte disk sectors, \(kdf.typeName)" }
    }

    static let layouts = [
        Layout(version: .luks2, diskSectorSize: 512, kdf: quickKDF),
        Layout(version: .luks1, diskSectorSize: 512, kdf: quickKDF),
        Layout(version: .luks2, diskSectorSize: 4096, kdf: quickKDF),
        Layout(version: .luks2, diskSectorSize: 512, kdf: .argon2id(time: 4, memory: 32, lanes: 1)),
    ]

    /// What opens the volume: the passphrases (by name) and the master key they give
    /// (nil when none does).
    struct Keys: CustomStringConvertible {
        let opening: Set<String>
        let masterKey: SecretBytes?

        static let none = Keys(opening: [], masterKey: nil)

        var description: String { opening.isEmpty ? "nothing opens" : "{\(opening.sorted().joined(separator: ","))} open" }
    }

    /// One update: where it began and was acknowledged in the log, and what opens the
    /// volume after it. A format wipes what was there before it writes the new volume,
    /// and can do nothing else (its headers and first key slot take the places of the
    /// old ones): while it is in progress, no volume at all is a third outcome.
    struct Update {
        let name: String
        let start: Int
        let acknowledged: Int
        let after: Keys
        var wipesFirst = false
    }

    /// A consumer of `provider` in `topology`, opened for reading (and writing), as the
    /// LUKS medium.
    static func medium(of provider: Provider, in topology: Topology, writing: Bool) throws -> ConsumerMedium {
        let tool = Geom(name: "eli-crash-\(writing ? "writer" : "reader")", className: "TEST")
        try topology.add(tool)
        let consumer = topology.createConsumer(for: tool)
        try topology.attach(consumer, to: provider)
        try topology.access(consumer, read: 1, write: writing ? 1 : 0, exclusive: 0)
        return ConsumerMedium(consumer: consumer, provider: provider)
    }

    /// What opens the volume on `medium`, trying every passphrase; nil when the header
    /// does not read, with the error.
    static func keys(on medium: any LUKSMedium) throws -> Result<Keys, any Error> {
        let header: LUKSHeader
        do {
            header = try LUKSHeader.read(from: medium)
        } catch {
            return .failure(error)
        }
        var opening: Set<String> = []
        var masterKey: SecretBytes?
        var differentKeys = false
        for (name, passphrase) in zip(names, passphrases) {
            let volume: LUKSVolume
            do {
                volume = try header.unlock(passphrase: passphrase)
            } catch let error as StrataError where error.code == .permission {
                continue
            }
            opening.insert(name)
            if let masterKey, !masterKey.isEqual(to: volume.masterKey) { differentKeys = true }
            masterKey = masterKey ?? volume.masterKey
        }
        if differentKeys {
            return .failure(StrataError(.invalid, "passphrases \(opening.sorted()) open the header to different master keys"))
        }
        return .success(Keys(opening: opening, masterKey: masterKey))
    }

    /// Formats a volume on a power-cut disk and changes its keys; returns the log and
    /// each update.
    static func recordUpdates(_ layout: Layout) throws -> (PowerCutLog, [Update]) {
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let log = PowerCutLog()
        let disk = try PowerCutDisk.create(in: topology, name: "e0", size: 20 << 20, sectorSize: layout.diskSectorSize, log: log)
        let medium = try Self.medium(of: disk.provider, in: topology, writing: true)
        defer { try? topology.access(medium.consumer, read: -1, write: -1, exclusive: 0) }
        let (a, b, c, d) = (passphrases[0], passphrases[1], passphrases[2], passphrases[3])
        var updates = [Update(name: "no volume", start: 0, acknowledged: 0, after: .none)]
        var masterKey: SecretBytes?
        func update(_ name: String, opening: Set<String>, wipesFirst: Bool = false, _ body: () throws -> Void) throws {
            let start = log.count
            try body()
            let after = Keys(opening: opening, masterKey: masterKey)
            // The volume as written, read back before anything is cut.
            let found = try keys(on: medium).get()
            guard found.opening == opening, let key = found.masterKey, key.isEqual(to: masterKey!) else {
                throw StrataError(.invalid, "after \(name), \(found) with \(found.masterKey == nil ? "no" : "a") master key; expected \(after)")
            }
            updates.append(Update(name: name, start: start, acknowledged: log.count, after: after, wipesFirst: wipesFirst))
        }
        let sectorSize = layout.version == .luks2 ? layout.diskSectorSize : 512
        func format(_ passphrase: SecretBytes) throws {
            masterKey = try LUKSFormatter.format(medium, version: layout.version, passphrase: passphrase, keySize: 32,
                                                 sectorSize: sectorSize, kdf: layout.kdf).masterKey
        }
        try update("format A", opening: ["A"], wipesFirst: true) { try format(a) }
        try update("add B", opening: ["A", "B"]) {
            _ = try LUKSFormatter.addKey(medium, passphrase: a, newPassphrase: b, kdf: layout.kdf)
        }
        try update("add C", opening: ["A", "B", "C"]) {
            _ = try LUKSFormatter.addKey(medium, passphrase: a, newPassphrase: c, kdf: layout.kdf)
        }
        try update("remove A", opening: ["B", "C"]) { _ = try LUKSFormatter.removeKey(medium, passphrase: a) }
        try update("format D over it", opening: ["D"], wipesFirst: true) { try format(d) }
        return (log, updates)
    }

    /// What is wrong with the volume a fresh machine finds after the power cut `state`.
    static func problem(after state: CrashState, of log: PowerCutLog, updates: [Update]) throws -> String? {
        let done = updates.lastIndex { $0.acknowledged <= state.point }!
        var allowed = [updates[done]]
        if done + 1 < updates.count && updates[done + 1].start < state.point {
            allowed.append(updates[done + 1])
            if updates[done + 1].wipesFirst { allowed.append(updates[0]) }
        }
        let names = allowed.map(\.name).joined(separator: " or ")
        let topology = Topology()
        defer { _ = topology.shutdown() }
        let disk = try log.restore(state, in: topology)[0]
        let medium = try Self.medium(of: disk.provider, in: topology, writing: false)
        defer { try? topology.access(medium.consumer, read: -1, write: 0, exclusive: 0) }
        let found: Keys
        switch try keys(on: medium) {
        case .success(let keys): found = keys
        case .failure(let error):
            // No header at all is only the state before a format's new header.
            guard allowed.contains(where: { $0.after.opening.isEmpty }) else {
                return "\(state): the header is damaged (\(error)); it should read as after \(names)"
            }
            return nil
        }
        let matching = allowed.filter { update in
            update.after.opening == found.opening
                && (found.masterKey == nil || update.after.masterKey.map { $0.isEqual(to: found.masterKey!) } == true)
        }
        guard !matching.isEmpty else {
            let wrongKey = allowed.contains { $0.after.opening == found.opening } ? " (with another master key)" : ""
            return "\(state): \(found)\(wrongKey); after \(allowed.map { "\($0.name), \($0.after)" }.joined(separator: "; after "))"
        }
        return nil
    }

    /// Runs `body` on a thread of its own, so that seconds of synchronous work do not
    /// hold one of the few cooperative threads the asynchronous suites beside it need.
    static func onItsOwnThread<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    @Test(arguments: layouts)
    func everyCrashPointOfAHeaderUpdateOpensWithTheKeysBeforeOrAfter(layout: Layout) async throws {
        let (checked, points, failures) = try await Self.onItsOwnThread {
            let (log, updates) = try Self.recordUpdates(layout)
            let states = try log.crashStates(at: 0...log.count, subsetsPerPoint: 8, seed: 2026_1204)
            var failures: [String] = []
            for state in states {
                if let problem = try Self.problem(after: state, of: log, updates: updates) { failures.append(problem) }
            }
            return (states.count, log.count + 1, failures)
        }
        #expect(failures.isEmpty, "\(failures.count) of \(checked) crash states:\n\(failures.prefix(5).joined(separator: "\n"))")
        #expect(checked >= 100, "\(checked) crash states at \(points) points")
    }
}
