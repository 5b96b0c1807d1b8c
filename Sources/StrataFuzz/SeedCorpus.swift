import StrataNBDProtocol

/// Bytes on the wire, written big-endian as NBD wants them. Seeds are built from raw
/// numbers rather than the project's encoders so that they can say what no encoder
/// would: wrong magic, lengths that lie, unknown commands.
struct Wire {
    private(set) var bytes: [UInt8] = []

    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
    }

    mutating func string(_ text: String) {
        bytes += Array(text.utf8)
    }

    mutating func raw(_ more: [UInt8]) {
        bytes += more
    }

    // MARK: Client messages

    static let fixedNewstyleNoZeroes = NBDHandshakeFlags.clientFixedNewstyle | NBDHandshakeFlags.clientNoZeroes

    mutating func option(_ code: UInt32, _ data: [UInt8] = []) {
        integer(NBDMagic.ihaveopt)
        integer(code)
        integer(UInt32(data.count))
        raw(data)
    }

    mutating func option(_ option: NBDOption, _ data: [UInt8] = []) {
        self.option(option.rawValue, data)
    }

    /// The data of INFO and GO.
    static func exportRequest(_ name: String, infos: [UInt16] = [NBDInfo.blockSize.rawValue]) -> [UInt8] {
        var wire = Wire()
        wire.integer(UInt32(name.utf8.count))
        wire.string(name)
        wire.integer(UInt16(infos.count))
        for info in infos { wire.integer(info) }
        return wire.bytes
    }

    /// The data of LIST_META_CONTEXT and SET_META_CONTEXT.
    static func metaContextRequest(_ name: String, queries: [String]) -> [UInt8] {
        var wire = Wire()
        wire.integer(UInt32(name.utf8.count))
        wire.string(name)
        wire.integer(UInt32(queries.count))
        for query in queries {
            wire.integer(UInt32(query.utf8.count))
            wire.string(query)
        }
        return wire.bytes
    }

    /// A request; `payload` follows the header (a WRITE's data, or anything a test wants).
    mutating func request(_ type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64 = 0, length: UInt64,
                          payload: [UInt8] = [], extended: Bool = false) {
        integer(extended ? NBDMagic.extendedRequest : NBDMagic.request)
        integer(flags)
        integer(type)
        integer(cookie)
        integer(offset)
        if extended { integer(length) } else { integer(UInt32(truncatingIfNeeded: length)) }
        raw(payload)
    }

    mutating func request(_ command: NBDCommand, flags: NBDCommandFlags = [], cookie: UInt64, offset: UInt64 = 0,
                          length: UInt64, payload: [UInt8] = [], extended: Bool = false) {
        request(command.rawValue, flags: flags.rawValue, cookie: cookie, offset: offset, length: length, payload: payload,
                extended: extended)
    }
}

extension Wire {
    // MARK: Server messages

    mutating func greeting(flags: UInt16 = NBDHandshakeFlags.fixedNewstyle | NBDHandshakeFlags.noZeroes) {
        integer(NBDMagic.nbd)
        integer(NBDMagic.ihaveopt)
        integer(flags)
    }

    mutating func optionReply(_ option: NBDOption, _ type: NBDOptionReply, _ data: [UInt8] = []) {
        integer(NBDMagic.optionReply)
        integer(option.rawValue)
        integer(type.rawValue)
        integer(UInt32(data.count))
        raw(data)
    }

    /// A structured chunk, or with `extended` an extended one; `length` defaults to the payload's.
    mutating func chunk(extended: Bool = false, flags: UInt16 = NBDReplyFlags.done, type: UInt16, cookie: UInt64,
                        offset: UInt64 = 0, length: UInt64? = nil, _ payload: [UInt8] = []) {
        integer(extended ? NBDMagic.extendedReply : NBDMagic.structuredReply)
        integer(flags)
        integer(type)
        integer(cookie)
        if extended {
            integer(offset)
            integer(length ?? UInt64(payload.count))
        } else {
            integer(UInt32(truncatingIfNeeded: length ?? UInt64(payload.count)))
        }
        raw(payload)
    }

    mutating func simpleReply(error: UInt32 = 0, cookie: UInt64, _ data: [UInt8] = []) {
        integer(NBDMagic.simpleReply)
        integer(error)
        integer(cookie)
        raw(data)
    }

    /// Integers of any widths, one after another.
    static func bigEndian<each T: FixedWidthInteger>(_ values: repeat each T) -> [UInt8] {
        var wire = Wire()
        repeat wire.integer(each values)
        return wire.bytes
    }
}

/// The seed corpus of both targets: small inputs that reach each part of the protocol,
/// written to `Fuzz/Corpus/` by the fuzz executables' `--write-seeds`.
enum SeedCorpus {
    /// Client streams for the server target: every option, every command with good and
    /// bad flags, offsets and lengths, in all three reply styles, and streams cut short.
    static var server: [(name: String, input: FuzzInput)] {
        var seeds: [(String, [UInt8])] = []
        func seed(_ name: String, flags: UInt32 = Wire.fixedNewstyleNoZeroes, _ build: (inout Wire) -> Void) {
            var wire = Wire()
            wire.integer(flags)
            build(&wire)
            seeds.append((name, wire.bytes))
        }
        let go = { (wire: inout Wire, export: String) in wire.option(.go, Wire.exportRequest(export)) }
        let structuredGo = { (wire: inout Wire, export: String) in
            wire.option(.structuredReply)
            wire.option(.setMetaContext, Wire.metaContextRequest(export, queries: [NBDMetaContext.baseAllocation]))
            wire.option(.go, Wire.exportRequest(export))
        }
        let extendedGo = { (wire: inout Wire, export: String) in
            wire.option(.extendedHeaders)
            wire.option(.setMetaContext, Wire.metaContextRequest(export, queries: [NBDMetaContext.baseAllocation]))
            wire.option(.go, Wire.exportRequest(export))
        }
        let sector = [UInt8](repeating: 0x5a, count: 512)

        // Handshake.
        seed("flags-only") { _ in }
        seed("flags-unknown", flags: 0xff) { $0.option(.list) }
        seed("flags-not-fixed-newstyle", flags: 0) { $0.option(.list); $0.option(99) }
        seed("list-abort") { $0.option(.list); $0.option(.abort) }
        seed("list-with-data") { $0.option(.list, [1, 2, 3]) }
        seed("starttls") { $0.option(.startTLS) }
        seed("unknown-option") { $0.option(99, [0, 1, 2, 3]); $0.option(0, []); $0.option(.abort) }
        seed("option-bad-magic") { $0.integer(UInt64(0x1122_3344_5566_7788)); $0.integer(UInt32(3)); $0.integer(UInt32(0)) }
        seed("option-over-16k") { wire in
            wire.integer(NBDMagic.ihaveopt)
            wire.integer(NBDOption.info.rawValue)
            wire.integer(UInt32(16 << 10 + 1))
            wire.raw([UInt8](repeating: 0xee, count: 64))
        }
        seed("option-length-4g") { wire in
            wire.integer(NBDMagic.ihaveopt)
            wire.integer(NBDOption.go.rawValue)
            wire.integer(UInt32.max)
            wire.raw([0, 0, 0, 5])
        }
        seed("option-header-cut") { $0.integer(NBDMagic.ihaveopt); $0.integer(UInt16(7)) }
        seed("option-data-cut") { $0.option(.go, Wire.exportRequest("disk0")); $0.integer(NBDMagic.ihaveopt)
            $0.integer(NBDOption.info.rawValue); $0.integer(UInt32(100)); $0.raw([0, 0]) }
        seed("info-every-item") { $0.option(.info, Wire.exportRequest("", infos: [0, 1, 2, 3, 3, 77])); $0.option(.abort) }
        seed("info-each-export") { wire in
            for export in ["disk0", "ro", "4k", "missing"] {
                wire.option(.info, Wire.exportRequest(export, infos: [1, 2]))
            }
        }
        seed("info-long-utf8-name") { $0.option(.info, Wire.exportRequest(String(repeating: "é", count: 150), infos: [])) }
        seed("info-name-length-lies") { wire in
            var data = Wire()
            data.integer(UInt32(1000))
            data.string("disk0")
            data.integer(UInt16(0))
            wire.option(.info, data.bytes)
            wire.option(.go, [0, 0, 0])
        }
        seed("info-count-lies") { wire in
            var data = Wire()
            data.integer(UInt32(0))
            data.integer(UInt16(0xffff))
            data.integer(UInt16(1))
            wire.option(.info, data.bytes)
        }
        seed("structured-reply-with-data") { $0.option(.structuredReply, [0]); $0.option(.extendedHeaders, [0]) }
        seed("meta-context-before-structured") {
            $0.option(.setMetaContext, Wire.metaContextRequest("disk0", queries: [NBDMetaContext.baseAllocation]))
        }
        seed("list-meta-context") { wire in
            wire.option(.structuredReply)
            wire.option(.listMetaContext, Wire.metaContextRequest("", queries: []))
            wire.option(.listMetaContext, Wire.metaContextRequest("disk0", queries: ["base:", "qemu:dirty-bitmap:x"]))
            wire.option(.setMetaContext, Wire.metaContextRequest("disk0", queries: ["qemu:allocation-depth"]))
            wire.option(.setMetaContext, Wire.metaContextRequest("nope", queries: [NBDMetaContext.baseAllocation]))
        }
        seed("meta-context-count-4g") { wire in
            var data = Wire()
            data.integer(UInt32(0))
            data.integer(UInt32.max)
            data.integer(UInt32(0))
            wire.option(.structuredReply)
            wire.option(.setMetaContext, data.bytes)
        }
        seed("meta-context-query-length-4g") { wire in
            var data = Wire()
            data.integer(UInt32(0))
            data.integer(UInt32(1))
            data.integer(UInt32.max)
            data.string("base:allocation")
            wire.option(.extendedHeaders)
            wire.option(.listMetaContext, data.bytes)
        }
        seed("export-name-default", flags: NBDHandshakeFlags.clientFixedNewstyle) { wire in
            wire.option(.exportName)
            wire.request(.read, cookie: 1, offset: 512, length: 512)
            wire.request(.disconnect, cookie: 2, length: 0)
        }
        seed("export-name-4k") { wire in
            wire.option(.structuredReply)
            wire.option(.exportName, Array("4k".utf8))
            wire.request(.read, cookie: 8, length: 4096)
            wire.request(.read, cookie: 1, offset: 512, length: 512)
        }
        seed("export-name-unknown") { $0.option(.exportName, Array("nope".utf8)) }
        seed("export-name-after-extended") { $0.option(.extendedHeaders); $0.option(.exportName, Array("disk0".utf8)) }
        seed("option-after-go") { go(&$0, "disk0"); $0.option(.list) }

        // Transmission, simple replies.
        seed("simple-every-command") { wire in
            go(&wire, "disk0")
            wire.request(.write, cookie: 1, offset: 512, length: 512, payload: sector)
            wire.request(.read, cookie: 2, offset: 0, length: 1024)
            wire.request(.flush, cookie: 3, length: 0)
            wire.request(.trim, cookie: 4, offset: 4096, length: 4096)
            wire.request(.writeZeroes, cookie: 5, offset: 8192, length: 1024)
            wire.request(.cache, cookie: 6, length: 1 << 20)
            wire.request(.blockStatus, cookie: 7, length: 4096)
            wire.request(.disconnect, cookie: 8, length: 0)
        }
        seed("simple-fua-and-flags") { wire in
            go(&wire, "disk0")
            wire.request(.write, flags: .fua, cookie: 1, length: 512, payload: sector)
            wire.request(.trim, flags: .fua, cookie: 2, length: 512)
            wire.request(.writeZeroes, flags: [.fua, .noHole], cookie: 3, length: 512)
            wire.request(.writeZeroes, flags: .fastZero, cookie: 4, offset: 512, length: 512)
            wire.request(.read, flags: .dontFragment, cookie: 1, length: 512)
            wire.request(.read, flags: .noHole, cookie: 1, length: 512)
            wire.request(.cache, flags: .requestOne, cookie: 6, length: 512)
        }
        seed("simple-bad-requests") { wire in
            go(&wire, "disk0")
            wire.request(99, cookie: 1, length: 512)
            wire.request(.read, cookie: 1, length: 0)
            wire.request(.read, cookie: 1, offset: 100, length: 512)
            wire.request(.read, cookie: 1, length: 500)
            wire.request(.read, cookie: 1, offset: 1 << 20, length: 512)
            wire.request(.read, cookie: 1, offset: UInt64.max - 511, length: 1024)
            wire.request(.read, cookie: 1, length: 64 << 20)
            wire.request(.write, cookie: 1, offset: 1 << 20, length: 512, payload: sector)
            wire.request(.trim, cookie: 1, offset: (1 << 20) - 512, length: 1024)
            wire.request(.flush, flags: .fua, cookie: 1, length: 7)
        }
        seed("simple-read-only") { wire in
            go(&wire, "ro")
            wire.request(.write, cookie: 1, length: 512, payload: sector)
            wire.request(.trim, cookie: 1, length: 512)
            wire.request(.writeZeroes, cookie: 1, length: 512)
            wire.request(.read, cookie: 1, length: 512)
        }
        seed("simple-4k-sectors") { wire in
            go(&wire, "4k")
            wire.request(.read, cookie: 1, offset: 512, length: 512)
            wire.request(.write, cookie: 8, offset: 4096, length: 4096, payload: [UInt8](repeating: 1, count: 4096))
            wire.request(.read, cookie: 8, offset: 4096, length: 4096)
        }
        seed("simple-write-over-maximum") { wire in
            go(&wire, "disk0")
            wire.request(.write, cookie: 1, length: 65 << 20, payload: sector)
        }
        seed("simple-write-cut") { wire in
            go(&wire, "disk0")
            wire.request(.write, cookie: 1, length: 4096, payload: Array(sector.prefix(100)))
        }
        seed("simple-header-cut") { wire in
            go(&wire, "disk0")
            wire.integer(NBDMagic.request)
            wire.integer(UInt32(0))
        }
        seed("simple-bad-magic") { wire in
            go(&wire, "disk0")
            wire.request(.read, cookie: 1, length: 512)
            wire.request(.read, cookie: 1, length: 512, extended: true)
        }
        seed("simple-disconnect-then-more") { wire in
            go(&wire, "disk0")
            wire.request(.disconnect, cookie: 1, length: 0)
            wire.request(.read, cookie: 2, length: 512)
        }

        // Structured replies.
        seed("structured-every-command") { wire in
            structuredGo(&wire, "disk0")
            wire.request(.read, cookie: 1, offset: 1 << 19, length: 512)
            wire.request(.write, cookie: 2, offset: 512, length: 512, payload: sector)
            wire.request(.read, cookie: 2, offset: 0, length: 1024)
            wire.request(.read, flags: .dontFragment, cookie: 2, offset: 0, length: 1024)
            wire.request(.blockStatus, cookie: 3, length: 1 << 20)
            wire.request(.blockStatus, flags: .requestOne, cookie: 4, offset: 512, length: 4096)
            wire.request(.trim, cookie: 5, offset: 512, length: 512)
            wire.request(.writeZeroes, flags: .noHole, cookie: 6, length: 512)
            wire.request(.flush, cookie: 7, length: 0)
            wire.request(.disconnect, cookie: 8, length: 0)
        }
        seed("structured-errors") { wire in
            structuredGo(&wire, "ro")
            wire.request(.write, cookie: 1, length: 512, payload: sector)
            wire.request(.read, flags: .fastZero, cookie: 2, length: 512)
            wire.request(.blockStatus, cookie: 3, offset: 1 << 20, length: 512)
            wire.request(.read, cookie: 4, offset: 3, length: 512)
        }
        seed("structured-byte-ranges") { wire in
            structuredGo(&wire, "disk0")
            wire.request(.write, cookie: 1, offset: 511, length: 3, payload: [1, 2, 3])
            wire.request(.read, cookie: 2, offset: 510, length: 5)
            wire.request(.write, flags: .fua, cookie: 3, offset: 1000, length: 512, payload: sector)
            wire.request(.writeZeroes, cookie: 4, offset: 1001, length: 1500)
            wire.request(.writeZeroes, flags: .fastZero, cookie: 5, offset: 1, length: 3)
            wire.request(.trim, flags: .fua, cookie: 6, offset: 7, length: 5000)
            wire.request(.trim, cookie: 7, offset: 7, length: 3)
            wire.request(.blockStatus, cookie: 8, offset: 3, length: 4000)
            wire.request(.read, cookie: 9, offset: (1 << 20) - 3, length: 3)
        }
        seed("simple-4k-byte-ranges") { wire in
            go(&wire, "4k")
            wire.request(.write, cookie: 1, offset: 4095, length: 2, payload: [7, 7])
            wire.request(.read, cookie: 2, offset: 4094, length: 4)
            wire.request(.writeZeroes, flags: .noHole, cookie: 3, offset: 1, length: 9000)
        }
        seed("structured-block-status-without-context") { wire in
            wire.option(.structuredReply)
            go(&wire, "disk0")
            wire.request(.blockStatus, cookie: 1, length: 512)
            wire.request(.read, flags: .dontFragment, cookie: 1, length: 512)
        }

        // Extended headers.
        seed("extended-every-command") { wire in
            extendedGo(&wire, "disk0")
            wire.request(.write, flags: .payloadLength, cookie: 1, offset: 512, length: 512, payload: sector, extended: true)
            wire.request(.read, cookie: 2, offset: 0, length: 1024, extended: true)
            wire.request(.read, cookie: 2, offset: 1 << 19, length: 512, extended: true)
            wire.request(.blockStatus, cookie: 3, length: 1 << 20, extended: true)
            wire.request(.blockStatus, flags: .requestOne, cookie: 4, length: 1 << 40, extended: true)
            wire.request(.writeZeroes, flags: .fastZero, cookie: 5, length: 1 << 20, extended: true)
            wire.request(.cache, cookie: 6, length: 1 << 20, extended: true)
            wire.request(.flush, cookie: 7, length: 0, extended: true)
            wire.request(.disconnect, cookie: 8, length: 0, extended: true)
        }
        seed("extended-payload-rules") { wire in
            extendedGo(&wire, "disk0")
            wire.request(.write, cookie: 1, length: 512, extended: true)
            wire.request(.read, flags: .payloadLength, cookie: 2, length: 8, payload: [1, 2, 3, 4, 5, 6, 7, 8], extended: true)
            wire.request(.write, flags: .payloadLength, cookie: 3, length: 0, extended: true)
            wire.request(.blockStatus, flags: .payloadLength, cookie: 4, length: 4, payload: [0, 0, 0, 1], extended: true)
        }
        seed("extended-payload-over-maximum") { wire in
            extendedGo(&wire, "disk0")
            wire.request(.write, flags: .payloadLength, cookie: 1, length: 65 << 20, payload: sector, extended: true)
        }
        seed("extended-4k-read-only-mix") { wire in
            wire.option(.extendedHeaders)
            wire.option(.go, Wire.exportRequest("4k", infos: [0, 1, 2, 3]))
            wire.request(.blockStatus, cookie: 1, length: 4096, extended: true)
            wire.request(.read, cookie: 8, offset: 4096 * 63, length: 4096, extended: true)
            wire.request(.read, cookie: 8, offset: 4096 * 64, length: 4096, extended: true)
        }

        var inputs = seeds.map { (name: $0.0, input: FuzzInput(shape: 0, stream: $0.1)) }
        // The same conversations in pieces: a byte at a time, short reads and long reads.
        for (name, shape) in [("simple-every-command", 1), ("structured-every-command", 7), ("extended-every-command", 200),
                              ("list-meta-context", 3), ("simple-write-over-maximum", 130)] {
            let stream = seeds.first { $0.0 == name }!.1
            inputs.append((name: "\(name)-shape-\(shape)", input: FuzzInput(shape: UInt8(shape), stream: stream)))
        }
        return inputs
    }

    /// Server streams for the client decoder target: what the real server answered to
    /// each server seed, then streams no honest server sends.
    static var client: [(name: String, input: FuzzInput)] {
        var inputs: [(name: String, input: FuzzInput)] = []
        for (name, seed) in server where seed.shape == 0 {
            // A seed the server fails on has no answer to keep; the corpus test reports it.
            guard let answer = try? ServerFuzzTarget.run(seed) else { continue }
            let clientFlags = seed.stream.count >= 4 ? seed.stream[3] : 0
            let script: UInt8 = (name.hasPrefix("export-name") ? 1 : 0) | (clientFlags & 2 != 0 ? 2 : 0)
            inputs.append((name: "answer-\(name)", input: FuzzInput(shape: 0, stream: [script] + answer)))
        }
        var seeds: [(String, UInt8, [UInt8])] = []
        func seed(_ name: String, script: UInt8 = 0, _ build: (inout Wire) -> Void) {
            var wire = Wire()
            build(&wire)
            seeds.append((name, script, wire.bytes))
        }
        let structured = { (wire: inout Wire) in
            wire.greeting()
            wire.optionReply(.structuredReply, .ack)
            wire.optionReply(.go, .ack)
        }
        let extended = { (wire: inout Wire) in
            wire.greeting()
            wire.optionReply(.extendedHeaders, .ack)
            wire.optionReply(.go, .ack)
        }
        seed("greeting-oldstyle") { wire in
            wire.integer(NBDMagic.nbd)
            wire.integer(UInt64(0x0042_0281_8612_53))
            wire.raw([UInt8](repeating: 0, count: 8))
        }
        seed("greeting-foreign") { $0.string("HTTP/1.1 200 OK\r\n\r\n") }
        seed("option-reply-bad-magic") { $0.greeting(); $0.integer(UInt64(1)); $0.raw([UInt8](repeating: 0, count: 12)) }
        seed("option-reply-too-long") { wire in
            wire.greeting()
            wire.integer(NBDMagic.optionReply)
            wire.integer(NBDOption.list.rawValue)
            wire.integer(NBDOptionReply.server.rawValue)
            wire.integer(UInt32(2 << 20))
            wire.raw([0, 0, 0, 1])
        }
        seed("export-name-zeroes", script: 1) { wire in
            wire.greeting(flags: NBDHandshakeFlags.fixedNewstyle)
            wire.integer(UInt64(1 << 20))
            wire.integer(UInt16(0x1ff))
            wire.raw([UInt8](repeating: 0, count: 124))
            wire.simpleReply(cookie: 1, [UInt8](repeating: 9, count: 512))
        }
        seed("export-name-after-options", script: 3) { wire in
            wire.greeting()
            wire.optionReply(.structuredReply, .ack)
            wire.integer(UInt64(1 << 20))
            wire.integer(UInt16(1))
            wire.chunk(type: NBDReplyType.offsetHole.rawValue, cookie: 3, Wire.bigEndian(UInt64(0), UInt32(512)))
        }
        seed("simple-replies") { wire in
            wire.greeting()
            wire.optionReply(.go, .ack)
            wire.simpleReply(cookie: 3, [UInt8](repeating: 7, count: 1536))
            wire.simpleReply(error: 22, cookie: 3)
            wire.simpleReply(cookie: 99)
            wire.simpleReply(cookie: 15, [1, 2, 3])
        }
        seed("structured-chunk-types") { wire in
            structured(&wire)
            wire.chunk(type: NBDReplyType.none.rawValue, cookie: 1)
            wire.chunk(flags: 0, type: NBDReplyType.offsetData.rawValue, cookie: 2, Wire.bigEndian(UInt64(512)) + [1])
            wire.chunk(type: NBDReplyType.offsetHole.rawValue, cookie: 2, Wire.bigEndian(UInt64(0), UInt32(512)))
            wire.chunk(type: NBDReplyType.blockStatus.rawValue, cookie: 3, Wire.bigEndian(UInt32(1), UInt32(512), UInt32(3)))
            wire.chunk(type: NBDReplyType.error.rawValue, cookie: 4, Wire.bigEndian(UInt32(5), UInt16(2)) + Array("no".utf8))
            wire.chunk(type: NBDReplyType.errorOffset.rawValue, cookie: 5,
                       Wire.bigEndian(UInt32(5), UInt16(0), UInt64(4096)))
            wire.chunk(type: 0x8123, cookie: 6, Wire.bigEndian(UInt32(0), UInt16(0)))
        }
        seed("structured-malformed") { wire in
            structured(&wire)
            wire.chunk(flags: 0, type: NBDReplyType.none.rawValue, cookie: 1)
            wire.chunk(type: NBDReplyType.offsetHole.rawValue, cookie: 2, Wire.bigEndian(UInt64(0), UInt32(0)))
        }
        seed("structured-lengths-lie") { wire in
            structured(&wire)
            wire.chunk(type: NBDReplyType.blockStatus.rawValue, cookie: 1, Wire.bigEndian(UInt32(1), UInt32(512)))
            wire.chunk(type: NBDReplyType.error.rawValue, cookie: 2, Wire.bigEndian(UInt32(5), UInt16(300)))
        }
        seed("structured-chunk-4g") { wire in
            structured(&wire)
            wire.chunk(type: NBDReplyType.offsetData.rawValue, cookie: 1, length: UInt64(UInt32.max), [0, 0])
        }
        seed("structured-unknown-type") { wire in
            structured(&wire)
            wire.chunk(type: 7, cookie: 1, [1, 2, 3])
        }
        seed("extended-chunks") { wire in
            extended(&wire)
            wire.chunk(extended: true, type: NBDReplyType.blockStatusExtended.rawValue, cookie: 1, offset: 0,
                       Wire.bigEndian(UInt32(1), UInt32(1), UInt64(512), UInt64(0)))
            wire.chunk(extended: true, type: NBDReplyType.offsetData.rawValue, cookie: 2, offset: 512,
                       Wire.bigEndian(UInt64(512)) + [UInt8](repeating: 4, count: 512))
            wire.chunk(extended: true, type: NBDReplyType.none.rawValue, cookie: 3)
        }
        seed("extended-malformed") { wire in
            extended(&wire)
            wire.chunk(extended: true, type: NBDReplyType.blockStatusExtended.rawValue, cookie: 1,
                       Wire.bigEndian(UInt32(1), UInt32(9), UInt64(512), UInt64(0)))
            wire.chunk(extended: true, type: NBDReplyType.blockStatus.rawValue, cookie: 2,
                       Wire.bigEndian(UInt32(1), UInt32(512), UInt32(0)))
            wire.simpleReply(cookie: 1)
        }
        seed("extended-chunk-huge") { wire in
            extended(&wire)
            wire.chunk(extended: true, type: NBDReplyType.offsetData.rawValue, cookie: 1, length: UInt64.max, [1])
        }
        inputs += seeds.map { (name: $0.0, input: FuzzInput(shape: 0, stream: [$0.1] + $0.2)) }
        for (name, shape) in [("structured-chunk-types", 1), ("extended-chunks", 5), ("simple-replies", 150)] {
            let seed = seeds.first { $0.0 == name }!
            inputs.append((name: "\(name)-shape-\(shape)", input: FuzzInput(shape: UInt8(shape), stream: [seed.1] + seed.2)))
        }
        return inputs
    }
}
