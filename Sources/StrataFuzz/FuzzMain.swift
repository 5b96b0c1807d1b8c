#if STRATA_LIBFUZZER
/// libFuzzer's driver. SwiftPM points an executable's `main` at the module's entry
/// point rather than at libFuzzer's `main`, so the entry point starts the driver itself.
@_extern(c, "LLVMFuzzerRunDriver")
private func runDriver(_ argc: UnsafeMutablePointer<Int32>,
                       _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                       _ body: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// The target this binary fuzzes, set once before the driver starts.
nonisolated(unsafe) private var selectedTarget = NBDFuzzTarget.server

/// One input. libFuzzer learns of a broken property only by a crash: `runOrTrap` traps.
/// (libFuzzer's own `main`, linked in but unused, names this function too.)
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selectedTarget.runOrTrap(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#endif

/// What a fuzz executable runs. Built with `-Xswiftc -sanitize=fuzzer,address
/// -Xswiftc -DSTRATA_LIBFUZZER` (as scripts/check does), it is libFuzzer with its usual
/// command line; in a plain build it replays inputs (`FuzzReplay`), such as a crash
/// libFuzzer saved, without sanitizers.
public enum FuzzMain {
    public static func main(_ target: NBDFuzzTarget) -> Int32 {
        #if STRATA_LIBFUZZER
        selectedTarget = target
        var argc = CommandLine.argc
        var argv = Optional(CommandLine.unsafeArgv)
        return runDriver(&argc, &argv, fuzzOneInput)
        #else
        return FuzzReplay.main(target, arguments: Array(CommandLine.arguments.dropFirst()))
        #endif
    }
}
