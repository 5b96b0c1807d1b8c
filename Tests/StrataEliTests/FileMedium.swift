#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Strata
import StrataEli

/// A `LUKSMedium` over a plain file (pread/pwrite), as the tests need to share
/// volumes with cryptsetup and qemu-img.
final class FileMedium: LUKSMedium {
    let path: String
    let fd: Int32
    let size: Int64

    init(path: String) throws {
        self.path = path
        fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw StrataError(.io, "open \(path): errno \(errno)") }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw StrataError(.io, "fstat \(path): errno \(errno)") }
        size = Int64(info.st_size)
    }

    deinit { close(fd) }

    func read(at offset: Int64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            guard got > 0 else { throw StrataError(.io, "pread \(path) at \(offset): \(got == 0 ? "end of file" : "errno \(errno)")") }
            done += got
        }
        return bytes
    }

    func write(_ bytes: [UInt8], at offset: Int64) throws {
        var done = 0
        while done < bytes.count {
            let put = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done)) }
            guard put > 0 else { throw StrataError(.io, "pwrite \(path) at \(offset): errno \(errno)") }
            done += put
        }
    }

    func flush() throws {
        guard fsync(fd) == 0 else { throw StrataError(.io, "fsync \(path): errno \(errno)") }
    }
}

/// A temporary directory, removed when the value goes.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/strata-luks-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw StrataError(.io, "mkdtemp: errno \(errno)") }
        path = String(cString: made)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// A sparse file of `size` bytes in the directory.
    func file(_ name: String, size: Int64) throws -> String {
        let file = path + "/" + name
        let fd = open(file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StrataError(.io, "create \(file): errno \(errno)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw StrataError(.io, "ftruncate \(file): errno \(errno)") }
        return file
    }

    /// A file holding `text` (a passphrase for `--key-file`, without a newline).
    func keyFile(_ name: String, _ text: String) throws -> String {
        let file = path + "/" + name
        try Data(text.utf8).write(to: URL(fileURLWithPath: file))
        return file
    }
}

func secret(_ text: String) -> SecretBytes { SecretBytes(copying: Array(text.utf8)) }

func hexBytes(_ text: String) -> [UInt8] {
    let digits = Array(text.filter { !$0.isWhitespace })
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
}
