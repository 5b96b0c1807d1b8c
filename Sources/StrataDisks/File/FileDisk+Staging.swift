#if canImport(Glibc)
import Glibc
#endif
import Strata

/// What is written to a file disk while its topology is being assembled: classes write
/// their metadata then (a mirror's generation, a label), and an assembly that fails must
/// leave every file as it found it. The sectors are kept in memory, read back over the
/// file's own data, and written to the file, durably, when the assembly is finished.
struct StagedWrites {
    let sectorSize: Int
    /// Staged sectors by index.
    private(set) var sectors: [Int64: [UInt8]] = [:]
    /// An assembly writes metadata, a few sectors per class; this much means something
    /// is copying data, which must wait for the assembly's end (`whenAssembled`).
    static let limit = 64 << 20

    init(sectorSize: Int) { self.sectorSize = sectorSize }

    /// Keeps `data`, written at `offset` (sector-aligned, as every request a provider
    /// gets); false if that would pass the limit.
    mutating func write(_ bytes: [UInt8], at offset: Int64) -> Bool {
        guard (sectors.count + bytes.count / sectorSize) * sectorSize <= StagedWrites.limit else { return false }
        let first = offset / Int64(sectorSize)
        for index in 0..<(bytes.count / sectorSize) {
            sectors[first + Int64(index)] = Array(bytes[(index * sectorSize)..<((index + 1) * sectorSize)])
        }
        return true
    }

    /// Lays the staged sectors of `offset ..< offset + data.count` over what was read
    /// there from the file.
    func patch(_ data: BioData, at offset: Int64) {
        let first = offset / Int64(sectorSize)
        let count = Int64(data.count / sectorSize)
        if Int64(sectors.count) < count {
            for (index, sector) in sectors where index >= first && index < first + count {
                place(sector, at: Int(index - first), in: data)
            }
        } else {
            for index in first..<(first + count) {
                if let sector = sectors[index] { place(sector, at: Int(index - first), in: data) }
            }
        }
    }

    private func place(_ sector: [UInt8], at index: Int, in data: BioData) {
        sector.withUnsafeBytes { data.slice(offset: index * sectorSize, count: sectorSize).copy(from: $0.baseAddress!) }
    }
}

extension FileDisk {
    /// While `topology` is being assembled, keeps what is written to the disk in memory
    /// until the assembly is finished; if it is abandoned, drops it, and removes the file
    /// if this disk created it.
    func holdWritesWhileAssembling(_ topology: Topology, sectorSize: Int, created: Bool) throws {
        guard topology.isAssembling else { return }
        staged.withLock { $0 = StagedWrites(sectorSize: sectorSize) }
        isStaging.store(true, ordering: .releasing)
        let path = self.path
        var removeCreatedFile: (@Sendable () -> Void)?
        if created { removeCreatedFile = { _ = unlink(path) } }
        try topology.whenAssembled({ [self] in try writeStagedSectors() }, abandoned: removeCreatedFile)
    }

    /// Writes the staged sectors to the file and makes them durable; requests go to the
    /// file from then on.
    private func writeStagedSectors() throws {
        try staged.withLock { staged in
            guard let writes = staged else { return }
            // Each sector is written from an aligned buffer, which O_DIRECT needs.
            var aligned = AlignedBuffer(alignment: directAlignment?.memory ?? 4096)
            let sector = UnsafeMutableRawBufferPointer(start: aligned.reserve(writes.sectorSize), count: writes.sectorSize)
            for (index, bytes) in writes.sectors.sorted(by: { $0.key < $1.key }) {
                sector.copyBytes(from: bytes)
                let failure = write(sector, at: index * Int64(writes.sectorSize), durable: false)
                guard failure == 0 else {
                    throw StrataError(BioError(errno: failure), "write what the assembly wrote to \(path)")
                }
            }
            guard fdatasync(descriptor) == 0 else { throw StrataError(BioError(errno: errno), "fdatasync \(path)") }
            staged = nil
            isStaging.store(false, ordering: .releasing)
        }
    }

    /// Serves a request while the assembly goes on: reads from the file with the staged
    /// sectors laid over them, writes into memory, on the caller's thread. A request
    /// that arrives as the staging ends goes to the engine.
    func startStaged(_ bio: consuming ProviderBio) {
        let command = bio.command
        let offset = bio.offset
        let length = bio.length
        let data = bio.data
        let failure: Int32? = staged.withLock { staged -> Int32? in
            guard staged != nil else { return nil }
            switch command {
            case .read:
                // Assembly only: a buffer for direct I/O is made for the request.
                var bounce = AlignedBuffer(alignment: directAlignment?.memory ?? 4096)
                let failure = read(into: data, at: offset, bounce: &bounce)
                if failure == 0 { staged!.patch(data, at: offset) }
                return failure
            case .write:
                return staged!.write(data.bytes, at: offset) ? 0 : ENOSPC
            case .writeZeroes:
                guard length <= StagedWrites.limit else { return ENOSPC }
                return staged!.write([UInt8](repeating: 0, count: Int(length)), at: offset) ? 0 : ENOSPC
            case .delete, .flush:
                // DELETE is advice, and nothing staged is on the file yet to flush.
                return 0
            case .getattr:
                return nil
            }
        }
        guard let failure else {
            dispatch(bio)
            return
        }
        if failure == ENOSPC {
            topology?.emit(.error, "file disk \(name): the assembly wrote more than \(StagedWrites.limit) bytes to \(path)")
        }
        finish(bio, failure: failure, call: command == .read ? "pread" : "hold")
    }
}
