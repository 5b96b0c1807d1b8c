/// The rule for the names of disks, geoms and exports, in a topology file or made at
/// run time. A name may hold slashes, as GEOM's do (`label/NAME`, a pool's
/// `POOL/VOLUME`), but no empty, `.` or `..` part between them, which a URL's path
/// (`nbd+unix:///NAME`, a control route) would collapse or drop; and no control
/// character, which would forge lines in the log and in `strata list`.
public enum EntryName {
    /// What is wrong with `name`, or nil when it may name an entry.
    public static func problem(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "must not hold control characters (a newline, a tab)"
        }
        if name.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
            return "must not begin or end with /, nor hold //, nor . or .. as a part between slashes"
        }
        return nil
    }
}
