import Foundation
import Strata
import StrataDisks
import StrataNBD
import Testing

/// The server against the clients users already have: nbdinfo, nbdcopy and nbdsh
/// (libnbd), qemu-img and qemu-io, fio's nbd engine. Each test starts a server in this
/// process and runs the real tool against it.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RealClientTests {
    static let size: Int64 = 64 << 20

    /// A 64 MiB memory disk exported as "disk0" (the default), a read-only export of the
    /// same disk as "ro", and a null disk as "null".
    static func fixture() async throws -> ServerFixture {
        try await ServerFixture(tcp: true) { topology, _ in
            _ = try MemoryDisk.create(in: topology, name: "md0", size: size)
            _ = try NullDisk.create(in: topology, name: "null0", size: 1 << 30)
            return [
                NBDExport(name: "disk0", provider: "md0", description: "scratch disk", isDefault: true),
                NBDExport(name: "ro", provider: "md0", readOnly: true, description: "read-only view"),
                NBDExport(name: "null", provider: "null0"),
            ]
        }
    }

    // MARK: nbdinfo

    @Test func nbdinfoListsEveryExportWithItsDescription() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let result = try run("nbdinfo", ["--list", "--json", fixture.uri()])
        #expect(result.status == 0, "\(result)")
        for name in ["\"disk0\"", "\"ro\"", "\"null\"", "\"scratch disk\"", "\"read-only view\""] {
            #expect(result.output.contains(name), "\(name) missing from \(result.output)")
        }
    }

    @Test func nbdinfoReportsSizeBlockSizesAndFlags() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let result = try run("nbdinfo", ["--json", fixture.uri(export: "disk0")])
        #expect(result.status == 0, "\(result)")
        let info = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any]
        let export = (info?["exports"] as? [[String: Any]])?.first
        #expect(export?["export-size"] as? Int == Int(Self.size))
        #expect(export?["block_size_minimum"] as? Int == 1)
        #expect(export?["block_size_preferred"] as? Int == 4096)
        #expect(export?["block_size_maximum"] as? Int == 64 << 20)
        #expect(export?["is_read_only"] as? Bool == false)
        #expect(export?["can_multi_conn"] as? Bool == true)
        #expect(export?["can_trim"] as? Bool == true)
        #expect(export?["can_fua"] as? Bool == true)
        #expect(export?["can_zero"] as? Bool == true)
        #expect(export?["can_fast_zero"] as? Bool == true)
        #expect(export?["can_df"] as? Bool == true)
        #expect(export?["can_cache"] as? Bool == true)
        #expect(export?["description"] as? String == "scratch disk")
    }

    @Test(arguments: [("write", 0), ("flush", 0), ("trim", 0), ("zero", 0), ("fua", 0), ("multi-conn", 0), ("cache", 0)])
    func nbdinfoCanAnswersForTheWritableExport(feature: String, status: Int32) async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let result = try run("nbdinfo", ["--can", feature, fixture.uri(export: "disk0")])
        #expect(result.status == status, "\(feature): \(result)")
    }

    @Test func aReadOnlyExportSaysSoAndOffersNoWrites() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        #expect(try run("nbdinfo", ["--is", "read-only", fixture.uri(export: "ro")]).status == 0)
        #expect(try run("nbdinfo", ["--can", "write", fixture.uri(export: "ro")]).status == 2)
        #expect(try run("nbdinfo", ["--can", "trim", fixture.uri(export: "ro")]).status == 2)
        let write = try run("qemu-io", ["-f", "raw", "-c", "write -P 0x11 0 4k", fixture.qemuURI(export: "ro")])
        #expect(write.status != 0 || write.errors.lowercased().contains("permission") || write.output.lowercased().contains("denied"),
                "\(write)")
    }

    @Test func nbdinfoMapShowsDataAndHoles() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let write = try run("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 1M 2M", fixture.qemuURI(export: "disk0")])
        #expect(write.status == 0, "\(write)")
        let map = try run("nbdinfo", ["--map", "--json", fixture.uri(export: "disk0")])
        #expect(map.status == 0, "\(map)")
        let entries = try JSONSerialization.jsonObject(with: Data(map.output.utf8)) as? [[String: Any]] ?? []
        let summary = entries.map { "\($0["offset"]!)+\($0["length"]!):\($0["type"]!)" }
        #expect(summary == ["0+1048576:3", "1048576+2097152:0", "3145728+\(Int(Self.size) - 3145728):3"], "\(summary)")
    }

    // MARK: qemu-img and qemu-io

    @Test func qemuImgInfoConvertCompareAndMap() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let image = fixture.directory + "/source.raw"
        #expect(try run("qemu-img", ["create", "-f", "raw", image, "64M"]).status == 0)
        #expect(try run("qemu-io", ["-f", "raw", "-c", "write -P 0x33 0 1M", "-c", "write -P 0x44 10M 3M", image]).status == 0)
        let info = try run("qemu-img", ["info", "--output=json", fixture.qemuURI(export: "disk0")])
        #expect(info.status == 0 && info.output.contains("\"virtual-size\": 67108864"), "\(info)")
        let convert = try run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", image, fixture.qemuURI(export: "disk0")])
        #expect(convert.status == 0, "\(convert)")
        let compare = try run("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, fixture.qemuURI(export: "disk0")])
        #expect(compare.status == 0, "\(compare)")
        let map = try run("qemu-img", ["map", "--output=json", "-f", "raw", fixture.qemuURI(export: "disk0")])
        #expect(map.status == 0, "\(map)")
        #expect(map.output.contains("\"start\": 0, \"length\": 1048576, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true"),
                "\(map.output)")
        #expect(map.output.contains("\"start\": 10485760, \"length\": 3145728, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true"),
                "\(map.output)")
    }

    @Test func qemuIoWritesReadsVerifiesZeroesAndDiscards() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let uri = fixture.qemuURI(export: "disk0")
        let commands = [
            "write -P 0xab 0 64k", "read -P 0xab 0 64k",
            "write -P 0xcd 1M 1M", "read -P 0xcd 1M 1M",
            "write -z 1M 512k", "read -P 0 1M 512k", "read -P 0xcd 1536k 512k",
            "discard 0 64k", "read -P 0 0 64k",
            "aio_write -P 0x11 4M 128k", "aio_write -P 0x22 5M 128k", "aio_flush",
            "read -P 0x11 4M 128k", "read -P 0x22 5M 128k",
            "write -f -P 0x77 8M 4k", "read -P 0x77 8M 4k", "flush",
        ]
        let result = try run("qemu-io", ["-f", "raw"] + commands.flatMap { ["-c", $0] } + [uri])
        #expect(result.status == 0, "\(result)")
        #expect(!result.output.contains("Pattern verification failed"), "\(result.output)")
        #expect(!result.output.lowercased().contains("error"), "\(result.output)")
    }

    // MARK: nbdcopy

    @Test func nbdcopyCopiesInBothDirections() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let source = fixture.directory + "/in.raw"
        let back = fixture.directory + "/out.raw"
        #expect(try run("qemu-img", ["create", "-f", "raw", source, "64M"]).status == 0)
        #expect(try run("qemu-io", ["-f", "raw", "-c", "write -P 0x5c 3M 5M", "-c", "write -P 0x6d 40M 1M", source]).status == 0)
        let upload = try run("nbdcopy", [source, fixture.uri(export: "disk0")])
        #expect(upload.status == 0, "\(upload)")
        let download = try run("nbdcopy", [fixture.uri(export: "disk0"), back])
        #expect(download.status == 0, "\(download)")
        let original = try Data(contentsOf: URL(fileURLWithPath: source))
        let copied = try Data(contentsOf: URL(fileURLWithPath: back))
        #expect(original == copied)
    }

    // MARK: fio

    @Test func fioVerifiesCrc32cAtQueueDepth32() async throws {
        let fixture = try await Self.fixture()
        defer { Task { await fixture.stop() } }
        let job = """
        [global]
        ioengine=nbd
        uri=\(fixture.uri(export: "disk0"))
        size=32M
        bs=4k
        iodepth=32
        verify=crc32c
        verify_fatal=1
        verify_state_save=0
        do_verify=1
        [write-and-verify]
        rw=randwrite
        """
        let jobFile = fixture.directory + "/verify.fio"
        try job.write(toFile: jobFile, atomically: true, encoding: .utf8)
        let result = try run("fio", ["--output-format=terse", jobFile])
        #expect(result.status == 0, "\(result)")
        #expect(!result.errors.contains("verify:"), "\(result.errors)")
    }
}
