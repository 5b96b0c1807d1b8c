import Foundation
import NIOCore
@testable import StrataFuzz
import StrataNBD
import StrataNBDProtocol
import Testing

/// The fuzz targets without libFuzzer: the checked-in corpus, then seeded mutations of
/// it, so that `swift test` exercises the same entry points on every run, in a few
/// seconds, and a failure names an input that reproduces it.
@Suite(.serialized) struct FuzzTests {
    /// The package root (this file is Tests/StrataNBDTests/FuzzTests.swift).
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Mutations run per target: about two seconds each in a debug build.
    static let mutations = 3000

    static func corpus(_ target: NBDFuzzTarget) throws -> [(name: String, input: FuzzInput)] {
        let directory = root.appendingPathComponent(target.corpusPath)
        return try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted().map { name in
            let bytes = try [UInt8](Data(contentsOf: directory.appendingPathComponent(name)))
            return (name, bytes.withUnsafeBytes { FuzzInput($0) })
        }
    }

    /// Saves an input that broke a property where a person can replay it.
    static func save(_ input: FuzzInput, _ target: NBDFuzzTarget) -> String {
        let name = "strata-fuzz-\(target.rawValue)-\(UUID().uuidString.prefix(8))"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(name).path
        guard FileManager.default.createFile(atPath: path, contents: Data(input.bytes)) else {
            return "(could not save it to \(path))"
        }
        return path
    }

    @Test(arguments: NBDFuzzTarget.allCases)
    func theCheckedInCorpusPasses(_ target: NBDFuzzTarget) throws {
        let corpus = try Self.corpus(target)
        #expect(corpus.count >= 40, "the corpus of \(target) has \(corpus.count) inputs")
        for (name, input) in corpus {
            if let failure = input.bytes.withUnsafeBytes({ target.failure(running: $0) }) {
                Issue.record("\(target.corpusPath)/\(name): \(failure)")
            }
        }
    }

    @Test(arguments: NBDFuzzTarget.allCases)
    func seededMutationsOfTheCorpusPass(_ target: NBDFuzzTarget) throws {
        // A fixed seed per target: the same inputs on every run, so a failure reproduces.
        let seed: UInt64 = target == .server ? 0x5345_5256 : 0x434c_4e54
        var mutator = Mutator(corpus: try Self.corpus(target).map(\.input), seed: seed)
        var failures = 0
        for _ in 0..<Self.mutations {
            let input = mutator.next()
            guard let failure = input.bytes.withUnsafeBytes({ target.failure(running: $0) }) else { continue }
            failures += 1
            let path = Self.save(input, target)
            Issue.record("\(failure); replay with: swift run strata-fuzz-\(target.rawValue) \(path)")
            if failures == 3 { return }
        }
    }

    /// The corpus is what `--write-seeds` writes: the server's seeds byte for byte (the
    /// client's include the server's answers, which change with its messages, so only
    /// their names are checked).
    @Test func theSeedsAreCheckedIn() throws {
        let server = Dictionary(uniqueKeysWithValues: try Self.corpus(.server).map { ($0.name, $0.input.bytes) })
        for seed in NBDFuzzTarget.server.seeds {
            #expect(server[seed.name] == seed.input.bytes, "\(seed.name) differs: run strata-fuzz-server --write-seeds")
        }
        let client = Set(try Self.corpus(.client).map(\.name))
        for seed in NBDFuzzTarget.client.seeds {
            #expect(client.contains(seed.name), "\(seed.name) is missing: run strata-fuzz-client --write-seeds")
        }
    }

    /// The split points cover the stream exactly, whatever the shape.
    @Test func everyShapeCutsTheStreamIntoAllOfItsBytes() {
        let stream = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        for shape in UInt8.min...UInt8.max {
            let pieces = FuzzInput(shape: shape, stream: stream).pieces
            #expect(pieces.flatMap { $0 } == stream, "shape \(shape)")
            #expect(pieces.allSatisfy { !$0.isEmpty }, "shape \(shape)")
        }
        #expect(FuzzInput(shape: 0, stream: stream).pieces.count == 1)
        #expect(FuzzInput(shape: 1, stream: stream).pieces.count == stream.count)
    }
}

/// The reply checker refuses what a client must not be sent, so that the server
/// target's "every reply is well-formed" can fail.
@Suite struct ReplyCheckerTests {
    static let exports = [ExportFacts(name: "disk0", description: "d", size: 1 << 20)]

    /// A checker past the greeting, in the options phase.
    static func negotiating() throws -> ReplyChecker {
        var checker = ReplyChecker(exports: exports, clientFlags: 3)
        var greeting = ByteBuffer()
        greeting.writeNBDGreeting(flags: 3)
        try checker.check(greeting)
        return checker
    }

    static func optionReply(_ option: NBDOption, _ type: NBDOptionReply, _ data: [UInt8] = []) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeNBDOptionReply(option: option.rawValue, type: type, length: data.count)
        buffer.writeBytes(data)
        return buffer
    }

    static func refuses(_ checker: inout ReplyChecker, _ write: ByteBuffer) -> Bool {
        do {
            try checker.check(write)
            return false
        } catch {
            return true
        }
    }

    /// A checker in transmission with simple replies, after GO.
    static func transmitting() throws -> ReplyChecker {
        var checker = try negotiating()
        var info = ByteBuffer()
        info.writeInteger(NBDInfo.export.rawValue)
        info.writeInteger(UInt64(1 << 20))
        info.writeInteger(UInt16(1))
        try checker.check(optionReply(.go, .info, Array(info.readableBytesView)))
        try checker.check(optionReply(.go, .ack))
        return checker
    }

    @Test func aBatchOfRepliesIsAcceptedAndAMessageCutShortIsRefused() throws {
        var checker = try Self.transmitting()
        var batch = ByteBuffer()
        for cookie: UInt64 in 1...3 { batch.writeNBDSimpleReply(error: 0, cookie: cookie) }
        batch.writeNBDSimpleReply(error: NBDError.io.rawValue, cookie: 4)
        #expect(!Self.refuses(&checker, batch))
        // A READ's reply: header and data in one write of their own.
        var read = ByteBuffer()
        read.writeNBDSimpleReply(error: 0, cookie: 5)
        read.writeBytes([UInt8](repeating: 0xA5, count: 512))
        #expect(!Self.refuses(&checker, read))
        var cut = ByteBuffer()
        cut.writeNBDSimpleReply(error: NBDError.io.rawValue, cookie: 6)
        cut.writeBytes([0x67, 0x44, 0x66])
        #expect(Self.refuses(&checker, cut))
    }

    @Test func anErrorMessageCutInsideACharacterIsRefused() throws {
        var checker = try Self.negotiating()
        #expect(!Self.refuses(&checker, Self.optionReply(.go, .errorUnknown, Array("no export named 'é'".utf8))))
        #expect(Self.refuses(&checker, Self.optionReply(.go, .errorUnknown, Array("no export named '".utf8) + [0xc3])))
    }

    @Test func goAcknowledgedWithoutInfoExportIsRefused() throws {
        var checker = try Self.negotiating()
        #expect(Self.refuses(&checker, Self.optionReply(.go, .ack)))
    }

    @Test func blockSizesThatQemuRejectsAreRefused() throws {
        var checker = try Self.negotiating()
        var good = ByteBuffer()
        good.writeInteger(NBDInfo.blockSize.rawValue)
        for value: UInt32 in [512, 4096, 32 << 20] { good.writeInteger(value) }
        #expect(!Self.refuses(&checker, Self.optionReply(.info, .info, Array(good.readableBytesView))))
        var bad = ByteBuffer()
        bad.writeInteger(NBDInfo.blockSize.rawValue)
        for value: UInt32 in [512, 3000, 32 << 20] { bad.writeInteger(value) }
        #expect(Self.refuses(&checker, Self.optionReply(.info, .info, Array(bad.readableBytesView))))
    }

    @Test func aChunkWithoutDoneIsRefused() throws {
        var checker = try Self.negotiating()
        try checker.check(Self.optionReply(.structuredReply, .ack))
        var info = ByteBuffer()
        info.writeInteger(NBDInfo.export.rawValue)
        info.writeInteger(UInt64(1 << 20))
        info.writeInteger(UInt16(1))
        try checker.check(Self.optionReply(.go, .info, Array(info.readableBytesView)))
        try checker.check(Self.optionReply(.go, .ack))
        var done = ByteBuffer()
        done.writeNBDChunkHeader(extended: false, flags: NBDReplyFlags.done, type: .none, cookie: 1, requestOffset: 0, length: 0)
        #expect(!Self.refuses(&checker, done))
        var notDone = ByteBuffer()
        notDone.writeNBDChunkHeader(extended: false, flags: 0, type: .offsetHole, cookie: 2, requestOffset: 0, length: 12)
        notDone.writeInteger(UInt64(0))
        notDone.writeInteger(UInt32(512))
        #expect(Self.refuses(&checker, notDone))
    }
}
