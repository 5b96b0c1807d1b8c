import Strata
import StrataDisks
import Testing

@Suite struct SmokeTests {
    @Test func writeThenReadThroughPassThroughOverMemory() async throws {
        let topology = Topology()
        let disk = try MemoryDisk.create(in: topology, name: "md0", size: 1 << 20)
        let pass = try PassThroughGeom.stack(on: disk.provider, in: topology, name: "p0")
        let device = try BlockDevice(opening: pass.providers[0], in: topology, writable: true)
        let pattern = PatternBuffer.pattern(count: 8192, at: 4096, seed: 3)
        try await device.write(pattern, at: 4096)
        let back = try await device.read(at: 4096, count: 8192)
        #expect(back == pattern)
        #expect(try await device.read(at: 0, count: 512) == [UInt8](repeating: 0, count: 512))
        device.close()
    }
}
