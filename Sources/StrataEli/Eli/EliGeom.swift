import Dispatch
import Strata

/// ELI (geli, dm-crypt): every sector of its provider is kept encrypted on the provider
/// below, with AES-XTS and the sector's number as the tweak, in a LUKS volume.
///
/// Reads go down into the caller's buffer and are decrypted there as they come back.
/// Writes are encrypted into a buffer of the thread's own (the caller's data is never
/// changed), which goes down in its place and comes back to the completing thread's
/// cache. Neither allocates once the caches hold buffers of the sizes in use.
public final class EliGeom: Geom, @unchecked Sendable {
    /// The unlocked volume: its key and layout.
    public let volume: LUKSVolume
    /// What the entry said: the passphrase's file and whether TRIM goes down.
    public let keyFile: String?
    public let allowDiscards: Bool
    /// Bytes of the provider below before the encrypted data.
    let payloadOffset: Int64
    let sectorSize: Int
    /// The tweak of payload byte `p` is `ivOffset + p / ivUnit`; sectors of more than one
    /// unit step the tweak by `sectorSize / ivUnit`.
    let ivUnit: Int64
    let ivStep: UInt64
    private let threads: PerThread<EliThreadState>
    /// WRITE_ZEROES is written as encrypted zeros, a megabyte at a time, here.
    private let zeroing = DispatchQueue(label: "strata.eli.zeroing")
    static let zeroingChunk = 1 << 20

    init(name: String, volume: LUKSVolume, keyFile: String?, allowDiscards: Bool, forThisRunOnly: Bool) throws {
        // A key OpenSSL refuses is refused here, before any request.
        _ = try XTSCipher(key: volume.masterKey)
        self.volume = volume
        self.keyFile = keyFile
        self.allowDiscards = allowDiscards
        payloadOffset = volume.payloadOffset
        sectorSize = volume.sectorSize
        ivUnit = volume.ivLargeSectors ? Int64(volume.sectorSize) : 512
        ivStep = UInt64(Int64(volume.sectorSize) / ivUnit)
        let key = volume.masterKey
        threads = PerThread { EliThreadState(key: key) }
        super.init(name: name, className: "ELI", startOnlyPassesOn: false, madeForThisRunOnly: forThisRunOnly)
    }

    // MARK: I/O

    override public func start(_ bio: consuming ProviderBio) {
        switch bio.command {
        case .read:
            passShifted(bio)
        case .write:
            guard let clone = bio.cloneForOwnData() else {
                bio.deliver(.noMemory)
                return
            }
            let count = Int(bio.length)
            let data = bio.data
            let position = bio.offset
            let buffer = threads.withCurrent { state in
                let buffer = state.takeBuffer(count)
                encrypt(data, at: position, into: buffer, state)
                return buffer
            }
            clone.setData(UnsafeMutableRawBufferPointer(start: buffer, count: count))
            clone.offset += payloadOffset
            clone.done = .handler(self)
            passOnToFirstConsumer(bio, clone)
        case .flush:
            guard let clone = bio.clone() else {
                bio.deliver(.noMemory)
                return
            }
            passOnToFirstConsumer(bio, clone)
        case .delete:
            guard allowDiscards else {
                bio.deliver(.notSupported)
                return
            }
            passShifted(bio)
        case .writeZeroes:
            // Zeros on the disk below would read back as noise: zeros are encrypted
            // and written, which is never fast.
            if bio.flags.contains(.fastZero) {
                bio.deliver(.notSupported)
                return
            }
            let request = bio.unmanaged()
            zeroing.async { [self] in writeZeroes(request.takeProviderBio()) }
        case .getattr:
            getattr(bio)
        }
    }

    /// Sends `bio` down at its place in the payload; a read comes back to `bioDone`.
    private func passShifted(_ bio: consuming ProviderBio) {
        guard let clone = bio.clone() else {
            bio.deliver(.noMemory)
            return
        }
        clone.offset += payloadOffset
        if bio.command == .read { clone.done = .handler(self) }
        passOnToFirstConsumer(bio, clone)
    }

    private func getattr(_ bio: consuming ProviderBio) {
        switch bio.attribute {
        case BioAttribute.extents?:
            // Holes below would tell which sectors were ever written: all is data.
            let range = bio.extentRange(mediaSize: providers.first?.mediaSize ?? 0)
            bio.deliverAttribute(extents: range.isEmpty ? [] : [BioExtent(offset: range.lowerBound, length: Int64(range.count), kind: [])])
        case BioAttribute.canDelete?:
            guard allowDiscards else {
                bio.deliverAttribute(int32: 0)
                return
            }
            passShifted(bio)
        case BioAttribute.ident?:
            passShifted(bio)
        default:
            bio.deliver(.notSupported)
        }
    }

    override public func bioDone(_ bio: consuming Bio) {
        switch bio.command {
        case .read where bio.error == nil:
            let data = bio.data
            let position = bio.offset - payloadOffset
            threads.withCurrent { state in decrypt(data, at: position, state) }
        case .write:
            let buffer = bio.data.firstSegment.baseAddress!
            let count = Int(bio.length)
            threads.withCurrent { state in state.giveBack(buffer, count: count) }
        default:
            break
        }
        bio.finishClone()
    }

    // MARK: Sectors

    @inline(__always)
    private func tweak(_ position: Int64) -> UInt64 {
        volume.ivOffset &+ UInt64(position / ivUnit)
    }

    /// Decrypts `data`, which holds the sectors from payload byte `position` on, in place.
    /// Runs of whole sectors in one segment are done where they lie; a sector split
    /// between segments goes through the scratch sector.
    @inline(__always)
    private func decrypt(_ data: BioData, at position: Int64, _ state: EliThreadState) {
        let count = data.count
        var done = 0
        while done < count {
            let run = data.slice(offset: done, count: count - done).firstSegment
            let whole = run.count / sectorSize * sectorSize
            if whole > 0 {
                state.cipher.decrypt(run.baseAddress!, to: run.baseAddress!, count: whole, sectorSize: sectorSize,
                                     firstSector: tweak(position + Int64(done)), sectorStep: ivStep)
                done += whole
            } else {
                let sector = data.slice(offset: done, count: sectorSize)
                sector.copy(to: state.scratch)
                state.cipher.decrypt(state.scratch, to: state.scratch, count: sectorSize, sectorSize: sectorSize,
                                     firstSector: tweak(position + Int64(done)), sectorStep: ivStep)
                sector.copy(from: state.scratch)
                done += sectorSize
            }
        }
    }

    /// Encrypts `data` (sectors from payload byte `position` on) into `output`.
    @inline(__always)
    private func encrypt(_ data: BioData, at position: Int64, into output: UnsafeMutableRawPointer,
                         _ state: EliThreadState) {
        let count = data.count
        var done = 0
        while done < count {
            let run = data.slice(offset: done, count: count - done).firstSegment
            var whole = run.count / sectorSize * sectorSize
            var input = UnsafeRawPointer(run.baseAddress!)
            if whole == 0 {
                // A sector split between segments: gathered, then encrypted in place.
                whole = sectorSize
                data.slice(offset: done, count: sectorSize).copy(to: output + done)
                input = UnsafeRawPointer(output + done)
            }
            state.cipher.encrypt(input, to: output + done, count: whole, sectorSize: sectorSize,
                                 firstSector: tweak(position + Int64(done)), sectorStep: ivStep)
            done += whole
        }
    }

    /// Writes encrypted zeros over the range of a WRITE_ZEROES, on the zeroing queue,
    /// a chunk at a time, and completes it.
    private func writeZeroes(_ bio: consuming ProviderBio) {
        guard let consumer = consumers.first else {
            bio.deliver(.noDevice)
            return
        }
        let chunk = Int(min(Int64(Self.zeroingChunk), bio.length))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(chunk, sectorSize), alignment: EliThreadState.alignment)
        defer { buffer.deallocate() }
        do {
            if bio.flags.contains(.preflush) { try consumer.performSync(.flush, offset: 0, length: 0) }
            var position = bio.offset
            let end = bio.offset + bio.length
            while position < end {
                let count = Int(min(Int64(chunk), end - position))
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
                piece.initializeMemory(as: UInt8.self, repeating: 0)
                threads.withCurrent { state in
                    state.cipher.encrypt(piece.baseAddress!, to: piece.baseAddress!, count: count, sectorSize: sectorSize,
                                         firstSector: tweak(position), sectorStep: ivStep)
                }
                let last = position + Int64(count) == end
                try consumer.performSync(.write, offset: payloadOffset + position, length: Int64(count), buffer: piece,
                                         flags: last && bio.flags.contains(.fua) ? [.fua] : [])
                position += Int64(count)
            }
            bio.deliver(nil)
        } catch let error as StrataError {
            bio.deliver(error.code)
        } catch {
            bio.deliver(.io)
        }
    }
}
