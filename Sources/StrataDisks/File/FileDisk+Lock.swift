#if canImport(Glibc)
import Glibc
#endif
import CStrataSystem
import Strata

extension FileDisk {
    /// The file or device is locked by another opener: another process serves it (a
    /// second `strata serve`, qemu), or another disk of this one has it open.
    public struct InUse: Error, Sendable, CustomStringConvertible {
        public let path: String
        /// The processes found holding a conflicting lock, with their commands; empty
        /// where none can be seen (another PID namespace, another user's process for an
        /// unprivileged server, a lock let go of meanwhile).
        public let holders: [(pid: Int32, command: String?)]

        /// Who holds the lock: "PID 1234 (strata)", "this process (PID 1234)" (another
        /// of its disks), or "another process".
        public var lockedBy: String {
            guard !holders.isEmpty else { return "another process" }
            if holders.count == 1 && holders[0].pid == getpid() { return "this process (PID \(holders[0].pid))" }
            let named = holders.map { holder in "\(holder.pid)" + (holder.command.map { " (\($0))" } ?? "") }
            return "PID\(holders.count == 1 ? "" : "s") \(named.joined(separator: ", "))"
        }

        public var description: String { "\(path) is in use: locked by \(lockedBy)" }
    }

    /// Takes an open file description lock on the whole of `descriptor`'s file: exclusive
    /// for a disk that writes, shared for a read-only one, so that two writers never
    /// share a file, nor a writer and a reader (which would read what it has not
    /// written). The lock belongs to the descriptor's open file description and goes
    /// with it when it is closed, also when the process dies.
    /// - Throws: `InUse` naming the holders; `StrataError` when the file system cannot
    ///   lock.
    static func lock(_ descriptor: Int32, path: String, exclusive: Bool) throws {
        guard strata_lock_whole_file(descriptor, exclusive ? 1 : 0) != 0 else { return }
        let failure = errno
        guard failure == EAGAIN || failure == EACCES else {
            throw StrataError(BioError(errno: failure), "lock \(path)")
        }
        var status = stat()
        let holders = fstat(descriptor, &status) == 0
            ? lockHolders(device: UInt64(status.st_dev), inode: UInt64(status.st_ino), writersOnly: !exclusive)
            : []
        throw InUse(path: path, holders: holders.map { ($0, command(of: $0)) })
    }

    /// The processes holding a lock on the file with `device` and `inode` that refuses
    /// ours (only write locks if `writersOnly`), each once.
    ///
    /// /proc/locks gives an open file description lock's PID as -1: it belongs to no
    /// process. So every descriptor of every process this one may look at is tried:
    /// one that reaches the file has its locks listed in its fdinfo.
    static func lockHolders(device: UInt64, inode: UInt64, writersOnly: Bool) -> [Int32] {
        var holders: [Int32] = []
        for process in directoryEntries("/proc") {
            guard let pid = Int32(process), pid > 0 else { continue }
            for descriptor in directoryEntries("/proc/\(pid)/fd") where !holders.contains(pid) {
                var status = stat()
                guard stat("/proc/\(pid)/fd/\(descriptor)", &status) == 0, UInt64(status.st_dev) == device,
                      UInt64(status.st_ino) == inode,
                      let information = readTextFile("/proc/\(pid)/fdinfo/\(descriptor)"),
                      holdsLock(information, device: device, inode: inode, writersOnly: writersOnly) else { continue }
                holders.append(pid)
            }
        }
        return holders
    }

    /// Whether a descriptor's fdinfo lists a POSIX or open file description lock on the
    /// file (a write lock if `writersOnly`). A line reads
    /// `lock: 1: OFDLCK ADVISORY  WRITE -1 fe:00:5662949 0 EOF`: the kernel's major and
    /// minor in hex, the inode in decimal; a lock waiting for another shows `->` and
    /// holds nothing.
    static func holdsLock(_ fdinfo: String, device: UInt64, inode: UInt64, writersOnly: Bool) -> Bool {
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff)
        let minor = (device & 0xff) | ((device >> 12) & ~0xff)
        return fdinfo.split(separator: "\n").contains { line in
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 7, fields[0] == "lock:", fields[2] == "POSIX" || fields[2] == "OFDLCK",
                  !writersOnly || fields[4] == "WRITE" else { return false }
            let place = fields[6].split(separator: ":")
            return place.count == 3 && UInt64(place[0], radix: 16) == major && UInt64(place[1], radix: 16) == minor
                && UInt64(place[2]) == inode
        }
    }

    /// The names in a folder, without `.` and `..`; none if it cannot be read.
    private static func directoryEntries(_ path: String) -> [String] {
        guard let folder = opendir(path) else { return [] }
        defer { closedir(folder) }
        var names: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The command of process `pid` (/proc/PID/comm), if it can be read.
    private static func command(of pid: Int32) -> String? {
        guard let text = readTextFile("/proc/\(pid)/comm") else { return nil }
        let command = text.split(separator: "\n").first.map(String.init) ?? ""
        return command.isEmpty ? nil : command
    }

    /// The whole of a small text file (a /proc file, whose size stat does not tell), or nil.
    private static func readTextFile(_ path: String) -> String? {
        let descriptor = retryingOnInterrupt { Glibc.open(path, O_RDONLY | O_CLOEXEC) }
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { return nil }
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension FileDisk {
    /// What identifies the file or device at `path` whatever path names it (links,
    /// `..`): a block device's device number, a file's device and inode; for a file
    /// still to be created, where it will be made: its folder's device and inode and
    /// its name, after the links that lead there. Nil when not even the folder can be
    /// looked at (opening the disk will say why).
    public static func identity(ofPath path: String) -> String? {
        var path = path
        var status = stat()
        // A link to a file still to be made is followed by hand, as open(O_CREAT) will;
        // 40 links is where the kernel gives up too (ELOOP).
        for _ in 0..<40 {
            if stat(path, &status) == 0 {
                if status.st_mode & S_IFMT == S_IFBLK { return "block \(status.st_rdev)" }
                return "file \(status.st_dev):\(status.st_ino)"
            }
            guard errno == ENOENT else { return nil }
            let slash = path.lastIndex(of: "/")
            let folder = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
            guard lstat(path, &status) == 0, status.st_mode & S_IFMT == S_IFLNK else {
                let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
                guard stat(folder, &status) == 0 else { return nil }
                return "new \(status.st_dev):\(status.st_ino)/\(name)"
            }
            var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let count = readlink(path, &target, target.count - 1)
            guard count > 0 else { return nil }
            let link = String(decoding: target[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            path = link.hasPrefix("/") ? link : folder + "/" + link
        }
        return nil
    }
}
