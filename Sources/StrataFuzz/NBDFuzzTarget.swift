/// The fuzz targets of the NBD code, each an entry point that takes any bytes and
/// throws a `FuzzFailure` when a property breaks (a trap in the code under test is a
/// crash, as it would be in the server).
public enum NBDFuzzTarget: String, CaseIterable, Sendable {
    /// One client connection to the real server: handshake, options, requests.
    case server
    /// The client's reply decoder on a server's byte stream.
    case client

    /// Runs one input.
    public func run(_ bytes: UnsafeRawBufferPointer) throws(FuzzFailure) {
        try run(FuzzInput(bytes))
    }

    public func run(_ input: FuzzInput) throws(FuzzFailure) {
        switch self {
        case .server: try ServerFuzzTarget.run(input)
        case .client: try ClientDecoderFuzzTarget.run(input)
        }
    }

    /// Runs one input and returns what broke, if anything.
    public func failure(running bytes: UnsafeRawBufferPointer) -> FuzzFailure? {
        do {
            try run(bytes)
            return nil
        } catch {
            return error
        }
    }

    /// Runs one input for libFuzzer, which learns of a failure only by a crash: a broken
    /// property traps with its description.
    public func runOrTrap(_ bytes: UnsafeRawBufferPointer) {
        if let failure = failure(running: bytes) {
            fatalError("NBD fuzz target '\(rawValue)': \(failure)")
        }
    }

    /// The seed inputs, by file name.
    public var seeds: [(name: String, input: FuzzInput)] {
        switch self {
        case .server: SeedCorpus.server
        case .client: SeedCorpus.client
        }
    }

    /// Where the checked-in corpus lives, relative to the package root.
    public var corpusPath: String { "Fuzz/Corpus/nbd-\(rawValue)" }
}
