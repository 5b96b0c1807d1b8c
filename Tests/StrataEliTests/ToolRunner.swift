import Foundation
import Strata
import StrataEli

/// Whether cryptsetup is here: the interoperability suite runs only then (CI installs it).
let cryptsetupInstalled = FileManager.default.isExecutableFile(atPath: "/usr/sbin/cryptsetup")
let qemuImgInstalled = FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img")

struct ToolResult {
    let status: Int32
    let output: String
    let errors: String
}

/// Runs `tool` with `arguments` and waits for it.
func runTool(_ tool: String, _ arguments: [String]) throws -> ToolResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: tool)
    process.arguments = arguments
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ToolResult(status: process.terminationStatus, output: String(decoding: outputData, as: UTF8.self),
                      errors: String(decoding: errorData, as: UTF8.self))
}

/// Runs `qemu-img create` of a LUKS image with `arguments`. qemu-img times its key
/// derivation by the CPU time the process used (`iter-time`), and on a busy machine
/// whose clock ticks coarsely it may see none pass and give up ("Unable to get accurate
/// CPU usage"): that alone is tried again, a few times.
func createQemuLUKSImage(_ arguments: [String]) throws -> ToolResult {
    var result = try runTool("/usr/bin/qemu-img", arguments)
    for _ in 0..<4 where result.status != 0 && result.errors.contains("Unable to get accurate CPU usage") {
        result = try runTool("/usr/bin/qemu-img", arguments)
    }
    return result
}

/// Runs cryptsetup and throws, with what it said, unless it succeeds.
@discardableResult
func cryptsetup(_ arguments: [String]) throws -> String {
    let result = try runTool("/usr/sbin/cryptsetup", arguments)
    guard result.status == 0 else {
        throw StrataError(.io, "cryptsetup \(arguments.joined(separator: " ")) exited \(result.status): \(result.errors)")
    }
    return result.output
}

/// The volume key as cryptsetup dumps it, opened with the passphrase in `keyFile`.
func cryptsetupVolumeKey(_ image: String, keyFile: String) throws -> [UInt8] {
    let output = try cryptsetup(["luksDump", "--dump-volume-key", "--key-file", keyFile, "--batch-mode", image])
    guard let start = output.range(of: "MK dump:") else { throw StrataError(.invalid, "no MK dump in: \(output)") }
    let text = String(output[start.upperBound...])
    let words: [String] = text.components(separatedBy: .whitespacesAndNewlines)
    let hex = words.filter { $0.count == 2 && $0.allSatisfy(\.isHexDigit) }
    return hex.map { UInt8($0, radix: 16)! }
}

/// Whether cryptsetup opens `image` with the passphrase in `keyFile`.
func cryptsetupOpens(_ image: String, keyFile: String) throws -> Bool {
    try runTool("/usr/sbin/cryptsetup", ["open", "--test-passphrase", "--key-file", keyFile, "--batch-mode", image]).status == 0
}

/// The tiny KDF settings that keep cryptsetup quick.
let quickArgon2 = ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1"]
let quickPBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
let tinyArgon2 = KDFParameters.argon2id(time: 4, memory: 32, lanes: 1)
let tinyPBKDF2 = KDFParameters.pbkdf2(hash: "sha256", iterations: 1000)

func masterKeyBytes(_ volume: LUKSVolume) -> [UInt8] { volume.masterKey.withBytes { Array($0) } }

func fileBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
