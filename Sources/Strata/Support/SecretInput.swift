#if canImport(Glibc)
import Glibc
#endif

/// Reads one line from standard input as a secret (a passphrase): on a terminal, after
/// `prompt` on standard error and with echo off; otherwise the next line as it comes,
/// so that a script can pipe in one passphrase per line. The newline is not part of it.
/// The bytes are in memory of the function's own, wiped once `body` returns.
/// - Throws: `StrataError` when standard input ends before any byte, or the line runs
///   past `maximum` bytes.
public func readSecretLine<Result>(prompt: String, maximum: Int = 8 << 20,
                                   _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
    var saved = termios()
    let isTerminal = isatty(STDIN_FILENO) == 1 && tcgetattr(STDIN_FILENO, &saved) == 0
    if isTerminal {
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)
        _ = prompt.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }
    defer {
        if isTerminal {
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
            _ = write(STDERR_FILENO, "\n", 1)
        }
    }
    var capacity = 256
    var buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    var count = 0
    defer {
        explicit_bzero(buffer, capacity)
        buffer.deallocate()
    }
    var byte: UInt8 = 0
    while true {
        let got = read(STDIN_FILENO, &byte, 1)
        if got < 0 && errno == EINTR { continue }
        if got <= 0 || byte == UInt8(ascii: "\n") {
            if count == 0 && got <= 0 { throw StrataError(.invalid, "standard input ended before a passphrase was read") }
            break
        }
        if count == capacity {
            guard capacity < maximum else { throw StrataError(.invalid, "a passphrase is at most \(maximum) bytes") }
            let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity * 2, alignment: 16)
            grown.copyMemory(from: buffer, byteCount: count)
            explicit_bzero(buffer, capacity)
            buffer.deallocate()
            buffer = grown
            capacity *= 2
        }
        buffer.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }
    byte = 0
    guard count > 0 else { throw StrataError(.invalid, "the passphrase read from standard input is empty") }
    return try body(UnsafeRawBufferPointer(start: buffer, count: count))
}
