import CStrataSystem
import Testing

/// `strata_copy_streaming`, which the memory disk copies large writes with: the same
/// bytes as memcpy whatever the alignment of either side and the length, touching
/// nothing outside the destination range.
@Suite struct StreamingCopyTests {
    @Test func copiesLikeMemcpyAtAnyAlignmentAndLength() {
        let capacity = 4096 + 256
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 64)
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 64)
        defer {
            source.deallocate()
            destination.deallocate()
        }
        for index in 0..<capacity { source[index] = UInt8(truncatingIfNeeded: index &* 7 &+ 3) }
        // Lengths below, at and past the 64-byte loop and the 16-byte head, at offsets
        // that leave the destination aligned and not, and the source likewise.
        for length in [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 1000, 4096] {
            for sourceOffset in [0, 1, 8, 15] {
                for destinationOffset in [0, 1, 7, 16, 33] {
                    destination.initializeMemory(as: UInt8.self, repeating: 0xEE)
                    strata_copy_streaming(destination.baseAddress! + destinationOffset,
                                          source.baseAddress! + sourceOffset, length)
                    let copied = Array(destination[destinationOffset..<destinationOffset + length])
                    let expected = Array(source[sourceOffset..<sourceOffset + length])
                    #expect(copied == expected, "\(length) bytes from +\(sourceOffset) to +\(destinationOffset)")
                    let untouched = destination.enumerated().allSatisfy { index, byte in
                        (destinationOffset..<destinationOffset + length).contains(index) || byte == 0xEE
                    }
                    #expect(untouched, "\(length) bytes from +\(sourceOffset) to +\(destinationOffset) wrote outside")
                }
            }
        }
    }
}
