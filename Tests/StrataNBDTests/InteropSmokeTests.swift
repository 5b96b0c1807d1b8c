import Foundation
import Strata
import StrataDisks
import StrataNBD
import Testing

@Suite(.serialized) struct InteropSmokeTests {
    @Test func nbdinfoSeesTheExport() async throws {
        let fixture = try await ServerFixture { topology, _ in
            _ = try MemoryDisk.create(in: topology, name: "md0", size: 64 << 20)
            return [NBDExport(name: "disk0", provider: "md0", description: "test disk", isDefault: true)]
        }
        let result = try run("nbdinfo", ["--json", fixture.uri(export: "disk0")])
        await fixture.stop()
        #expect(result.status == 0, "\(result)")
        #expect(result.output.contains("\"export-size\": 67108864"), "\(result)")
    }
}
