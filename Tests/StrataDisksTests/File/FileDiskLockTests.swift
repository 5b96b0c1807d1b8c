#if canImport(Glibc)
import Glibc
#endif
@testable import StrataDisks
import Strata
import Testing

/// A file disk holds an open file description lock on its file: a second opener, in this
/// process or another, is refused at once with the file and the holder named; read-only
/// disks share a file, and refuse every change.
@Suite struct FileDiskLockTests {
    /// Opens `path` as a file disk in a topology of its own.
    static func open(_ path: String, size: Int64? = nil, readOnly: Bool = false) throws -> (Topology, FileDisk) {
        let topology = Topology()
        let disk = try FileDisk.create(in: topology, name: "other", path: path, size: size, readOnly: readOnly)
        return (topology, disk)
    }

    /// The error opening `path` throws, if it is `InUse`.
    static func refusal(_ path: String, readOnly: Bool = false) -> FileDisk.InUse? {
        do {
            let (topology, _) = try open(path, readOnly: readOnly)
            topology.shutdown()
            return nil
        } catch {
            return error as? FileDisk.InUse
        }
    }

    @Test func aSecondOpenerIsRefusedAtOnceNamingTheFileAndTheProcessHoldingIt() throws {
        let fixture = try FileDiskFixture()
        defer { fixture.tearDown() }
        let (disk, issuer) = try fixture.open(size: 1 << 20)
        try issuer.write([UInt8](repeating: 0xAA, count: 4096), at: 0)

        let refused = try #require(Self.refusal(disk.path), "a second writer of one file")
        #expect(refused.path == disk.path)
        #expect(refused.holders.map(\.pid) == [getpid()])
        #expect(refused.description == "\(disk.path) is in use: locked by this process (PID \(getpid()))", "\(refused)")
        #expect(Self.refusal(disk.path, readOnly: true) != nil, "a reader beside a writer")
        #expect(try issuer.bytes(at: 0, count: 4096) == [UInt8](repeating: 0xAA, count: 4096))

        // The lock goes with the disk.
        #expect(fixture.closeDisk())
        let (topology, _) = try Self.open(disk.path)
        #expect(topology.shutdown())
    }

    @Test func readOnlyDisksShareAFileAndKeepAWriterOut() throws {
        let directory = try TemporaryDirectory("strata-filelock")
        defer { directory.remove() }
        let path = directory.file("shared.img")
        let (creator, _) = try Self.open(path, size: 1 << 20)
        #expect(creator.shutdown())

        let (first, _) = try Self.open(path, readOnly: true)
        let (second, _) = try Self.open(path, readOnly: true)
        let refused = try #require(Self.refusal(path), "a writer beside readers")
        #expect(refused.holders.map(\.pid) == [getpid()], "\(refused)")
        #expect(first.shutdown())
        #expect(Self.refusal(path) != nil, "a writer beside the last reader")
        #expect(second.shutdown())
        let (writer, _) = try Self.open(path)
        #expect(writer.shutdown())
    }

    /// A loop device with nothing attached opens, empty: enough to take its lock.
    static let unusedLoopDevice = "/dev/loop7"

    @Test(.enabled(if: access(unusedLoopDevice, R_OK | W_OK) == 0, "needs \(unusedLoopDevice)"))
    func aBlockDeviceIsLockedToo() throws {
        let (topology, disk) = try Self.open(Self.unusedLoopDevice, readOnly: true)
        defer { topology.shutdown() }
        #expect(disk.isBlockDevice)
        #expect(Self.refusal(Self.unusedLoopDevice) != nil, "a writer of a block device a reader holds")
    }

    @Test func aDescriptorsLocksAreReadFromItsFdinfo() {
        // st_dev of major 0xfe, minor 1, as glibc encodes it.
        let device: UInt64 = 0xfe << 8 | 1
        func fdinfo(_ locks: String...) -> String {
            "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t77\n" + locks.map { "lock:\t\($0)\n" }.joined()
        }
        let writer = fdinfo("1: OFDLCK ADVISORY  WRITE -1 fe:01:77 0 EOF")
        let reader = fdinfo("1: POSIX  ADVISORY  READ 515 fe:01:77 100 100")
        #expect(FileDisk.holdsLock(writer, device: device, inode: 77, writersOnly: true))
        #expect(FileDisk.holdsLock(reader, device: device, inode: 77, writersOnly: false))
        #expect(!FileDisk.holdsLock(reader, device: device, inode: 77, writersOnly: true))
        #expect(!FileDisk.holdsLock(writer, device: device, inode: 78, writersOnly: false), "another inode")
        #expect(!FileDisk.holdsLock(writer, device: 0xfe << 8, inode: 77, writersOnly: false), "another device")
        #expect(!FileDisk.holdsLock(fdinfo("1: -> OFDLCK ADVISORY  WRITE -1 fe:01:77 0 EOF"), device: device, inode: 77,
                                    writersOnly: false), "a lock waited for")
        #expect(!FileDisk.holdsLock(fdinfo("1: FLOCK  ADVISORY  WRITE 818 fe:01:77 0 EOF"), device: device, inode: 77,
                                    writersOnly: false), "flock(2) locks do not refuse ours")
        #expect(!FileDisk.holdsLock(fdinfo(), device: device, inode: 77, writersOnly: false))
        let named = FileDisk.InUse(path: "/srv/a.img", holders: [(4242, "strata")])
        #expect(named.description == "/srv/a.img is in use: locked by PID 4242 (strata)")
        #expect(FileDisk.InUse(path: "/srv/a.img", holders: []).description == "/srv/a.img is in use: locked by another process")
    }

    @Test func aReadOnlyDiskReadsTheFileAndRefusesEveryChange() throws {
        let directory = try TemporaryDirectory("strata-filelock")
        defer { directory.remove() }
        let path = directory.file("image.img")
        let content = pattern(count: 1 << 20, at: 0, seed: 7)
        do {
            let (topology, disk) = try Self.open(path, size: 1 << 20)
            let issuer = try Issuer(on: disk.provider, in: topology)
            try issuer.write(content, at: 0)
            try issuer.close()
            #expect(topology.shutdown())
        }
        chmod(path, 0o444)

        let (topology, disk) = try Self.open(path, readOnly: true)
        defer { topology.shutdown() }
        #expect(disk.isReadOnly && disk.provider.isReadOnly && topology.isReadOnly(disk.provider))
        #expect(FileDiskDefinition.settings(of: disk)?.readOnly == true)
        #expect(throws: StrataError.self, "a write open") { try Issuer(on: disk.provider, in: topology, write: 1, name: "w") }
        do {
            _ = try Issuer(on: disk.provider, in: topology, write: 1, name: "w2")
        } catch let error as StrataError {
            #expect(error.code == .readOnly && error.message.contains("write open of other: it is read-only"), "\(error)")
        }
        let reader = try Issuer(on: disk.provider, in: topology, write: 0, name: "r")
        #expect(try reader.bytes(at: 0, count: 1 << 20) == content)
        for command in [BioCommand.write, .delete, .writeZeroes] {
            do {
                if command == .write {
                    try reader.write([UInt8](repeating: 0, count: 4096), at: 0)
                } else {
                    try reader.send(command, at: 0, length: 4096)
                }
                Issue.record("\(command) on a read-only disk succeeded")
            } catch let error as StrataError {
                #expect(error.code == .permission, "\(command): \(error)")
            }
        }
        #expect(try #require(readFile(path)) == content, "the file is as it was")
    }

    @Test func aReadOnlyDiskOfAMissingFileIsNotCreated() throws {
        let directory = try TemporaryDirectory("strata-filelock")
        defer { directory.remove() }
        let path = directory.file("missing.img")
        #expect(throws: StrataError.self) { try Self.open(path, size: 1 << 20, readOnly: true) }
        #expect(access(path, F_OK) != 0)
    }
}
