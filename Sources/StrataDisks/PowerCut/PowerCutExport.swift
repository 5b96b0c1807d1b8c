#if canImport(Glibc)
import Glibc
#endif
import Strata

extension PowerCutLog {
    /// Writes the images of every disk after each of `states` under `directory`, for
    /// checking with tools that read files (fsck, a database's recovery, a loop mount):
    /// `directory/00001/DISK.img`, `00002/...`, one folder per state in order, and
    /// `directory/states.txt` with a line per state, its folder and its description.
    /// Images are sparse files: pages of zeros are left as holes.
    /// - Returns: the folders, in order.
    /// - Throws: `StrataError` naming the path and call that failed, or the state that
    ///   does not fit the log.
    @discardableResult
    public func writeCrashImages(_ states: [CrashState], to directory: String) throws -> [String] {
        // Its parents too: a directory beneath the data directory may be the first thing
        // written there.
        var parent = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            parent += "/" + component
            try makeDirectory(parent)
        }
        var folders: [String] = []
        var manifest = ""
        for (index, state) in states.enumerated() {
            let name = String(index + 1).leftPadded(to: 5)
            let folder = directory + "/" + name
            try makeDirectory(folder)
            for (disk, image) in try crashImages(for: state) {
                try writeSparse(image, to: folder + "/" + disk + ".img")
            }
            folders.append(folder)
            manifest += "\(name) \(state)\n"
        }
        try writeSparse(Array(manifest.utf8), to: directory + "/states.txt")
        return folders
    }

    private func makeDirectory(_ path: String) throws {
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw StrataError(BioError(errno: errno), "mkdir \(path)")
        }
    }

    /// Writes `bytes` to a new file at `path`, leaving 4 KiB pages of zeros as holes (the
    /// file is sized first, so they read as zeros). A link at `path` is refused, not
    /// followed: the server may run as root, and whoever could write the folder could
    /// point the image at any file.
    private func writeSparse(_ bytes: [UInt8], to path: String) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw StrataError(BioError(errno: errno), "create \(path)") }
        defer { close(descriptor) }
        guard ftruncate(descriptor, off_t(bytes.count)) == 0 else {
            throw StrataError(BioError(errno: errno), "ftruncate \(path) to \(bytes.count) bytes")
        }
        let page = 4096
        let zero = [UInt8](repeating: 0, count: page)
        try bytes.withUnsafeBytes { source in
            try zero.withUnsafeBytes { zeros in
                func isZero(_ at: Int) -> Bool { memcmp(source.baseAddress! + at, zeros.baseAddress!, min(page, source.count - at)) == 0 }
                var at = 0
                while at < source.count {
                    guard !isZero(at) else {
                        at += page
                        continue
                    }
                    // One write for each run of pages holding data.
                    var end = at + page
                    while end < source.count && !isZero(end) { end += page }
                    end = min(end, source.count)
                    while at < end {
                        let written = pwrite(descriptor, source.baseAddress! + at, end - at, off_t(at))
                        if written < 0 && errno == EINTR { continue }
                        guard written > 0 else {
                            throw StrataError(BioError(errno: written < 0 ? errno : EIO), "pwrite \(path) at \(at)")
                        }
                        at += written
                    }
                }
            }
        }
    }
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
