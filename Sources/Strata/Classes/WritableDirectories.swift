#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether `path` (absolute, as `absolutePath` makes it) lies in one of `directories`
/// or beneath it, once symbolic links are followed: a link inside an allowed directory
/// that points elsewhere does not let a path through. The part of a path that does not
/// exist yet is taken as written.
public func isBeneath(_ path: String, anyOf directories: [String]) -> Bool {
    let resolved = resolvingLinks(path)
    return directories.contains { directory in
        let root = resolvingLinks(directory)
        return resolved == root || resolved.hasPrefix(root == "/" ? "/" : root + "/")
    }
}

/// Refuses a path given through the control socket that does not lie beneath one of
/// `directories`, naming them.
/// - Throws: `SettingError` at `key` with the value as given.
public func checkBeneath(_ path: String, _ directories: [String], key: String, text: String) throws(SettingError) {
    guard !isBeneath(path, anyOf: directories) else { return }
    let list = directories.count == 1 ? directories[0]
        : directories.dropLast().joined(separator: ", ") + " or " + directories.last!
    throw SettingError(key: key, value: text, problem: "must be beneath \(list): the server writes only in its data-directory "
                       + "and the topology file's writable-directories")
}

/// `path` with its longest existing prefix resolved (`realpath`), and the rest after it.
private func resolvingLinks(_ path: String) -> String {
    var existing = absolutePath(path, relativeTo: "/")
    var rest: [Substring] = []
    while true {
        if let real = realpath(existing, nil) {
            defer { free(real) }
            return absolutePath(([Substring(String(cString: real))] + rest.reversed()).joined(separator: "/"), relativeTo: "/")
        }
        guard existing != "/", let slash = existing.lastIndex(of: "/") else { return path }
        rest.append(existing[existing.index(after: slash)...])
        existing = slash == existing.startIndex ? "/" : String(existing[..<slash])
    }
}
