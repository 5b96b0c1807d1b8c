import Foundation

/// What a fuzz executable does when built without libFuzzer (a plain `swift build`):
/// replays inputs, such as a crash libFuzzer saved, or writes the seed corpus.
public enum FuzzReplay {
    static let usage = """
        usage: strata-fuzz-<target> PATH...           run each input file (every file of a directory)
               strata-fuzz-<target> --write-seeds DIR  write the seed corpus into DIR
        """

    /// Runs the command line and returns the exit status: 0 when every input passed,
    /// 1 when one failed, 2 for a bad command line.
    public static func main(_ target: NBDFuzzTarget, arguments: [String]) -> Int32 {
        if arguments.first == "--write-seeds" {
            guard arguments.count == 2 else { return fail(usage) }
            return writeSeeds(target, into: arguments[1])
        }
        guard !arguments.isEmpty, !arguments.contains(where: { $0.hasPrefix("-") }) else { return fail(usage) }
        var failures = 0
        var count = 0
        for path in arguments {
            for file in files(at: path) {
                guard let data = FileManager.default.contents(atPath: file) else { return fail("cannot read \(file)") }
                count += 1
                let failure = data.withUnsafeBytes { target.failure(running: $0) }
                if let failure {
                    failures += 1
                    print("FAIL \(file): \(failure)")
                }
            }
        }
        print("\(target.rawValue): \(count - failures) of \(count) inputs passed")
        return failures == 0 ? 0 : 1
    }

    /// The file itself, or the regular files of a directory in name order.
    private static func files(at path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.sorted().map { "\(path)/\($0)" }
    }

    private static func writeSeeds(_ target: NBDFuzzTarget, into directory: String) -> Int32 {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let seeds = target.seeds
            for seed in seeds {
                try Data(seed.input.bytes).write(to: URL(fileURLWithPath: "\(directory)/\(seed.name)"))
            }
            print("wrote \(seeds.count) seeds to \(directory)")
            return 0
        } catch {
            return fail("cannot write the seeds: \(error)")
        }
    }

    private static func fail(_ message: String) -> Int32 {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        return 2
    }
}
