@testable import StrataEli
import Testing

/// IEEE 1619-2007 (P1619/D16) XTS-AES test vectors, as the Linux kernel's crypto
/// self-tests (crypto/testmgr.h, aes_xts_tv_template) carry them. The data unit's
/// sequence number is the plain64 tweak: vector 2's IV 33 33 33 33 33 00... is sector
/// 0x3333333333, little endian.
///
/// Vector 1 (an all-zero key, whose two halves are equal) cannot be used: OpenSSL
/// refuses XTS keys whose halves are equal (a weakness the standard's later
/// revisions forbid), which `XTSCipher` reports as an error, tested below.
@Suite struct XTSKnownAnswerTests {
    /// 00 01 ... ff twice: the plaintext of vectors 4 to 14.
    static let counting512 = (0..<512).map { UInt8($0 & 0xff) }

    struct Vector: Sendable, CustomStringConvertible {
        let name: String
        let key: String
        let sector: UInt64
        let plaintext: [UInt8]
        let ciphertext: String
        var description: String { name }
    }

    static let vectors: [Vector] = [
        Vector(name: "XTS-AES-128 vector 2 (32 bytes)", key: "11111111111111111111111111111111" + "22222222222222222222222222222222",
               sector: 0x33_3333_3333, plaintext: [UInt8](repeating: 0x44, count: 32),
               ciphertext: "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"),
        Vector(name: "XTS-AES-128 vector 3 (32 bytes)", key: "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0" + "22222222222222222222222222222222",
               sector: 0x33_3333_3333, plaintext: [UInt8](repeating: 0x44, count: 32),
               ciphertext: "af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89"),
        Vector(name: "XTS-AES-128 vector 4 (512 bytes, sector 0)",
               key: "27182818284590452353602874713526" + "31415926535897932384626433832795",
               sector: 0, plaintext: counting512, ciphertext: """
               27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89cc78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad\
               40e736ddb4d35412328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce93fdf166a24912b422976146ae20ce84\
               6bb7dc9ba94a767aaef20c0d61ad02655ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8a750e8768defffed\
               9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f4341332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c\
               5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e94bff94effd01a91735ca1726acd0b197c4e5b03393697e1\
               26826fb6bbde8ecc1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3e7ff72b1e99785ca0a7e7720c5b36dc6\
               d72cac9574c8cbbc2f801e23e56fd344b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd74d20cc39881c213\
               ee770b1010e4bea718846977ae119f7a023ab58cca0ad752afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e\
               bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18deb4a427d1923ce3ff262735779a418f20a282df920147bea\
               be421ee5319d0568
               """),
        Vector(name: "XTS-AES-256 vector 10 (512 bytes, sector 0xff)",
               key: "2718281828459045235360287471352662497757247093699959574966967627"
                   + "3141592653589793238462643383279502884197169399375105820974944592",
               sector: 0xff, plaintext: counting512, ciphertext: """
               1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc33\
               45befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a75\
               7123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa754\
               21c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec\
               583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f6160\
               15e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae9be69a2ffeceb1bec9de244fbe15992b\
               11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac6e333b93eb4aff04\
               79da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed438\
               51ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea7\
               0b9c6e693e148c151
               """),
    ]

    /// Each vector both ways: the tweak written into OpenSSL's context, and the context
    /// initialised with it.
    @Test(arguments: vectors, [true, false])
    func encryptsAndDecrypts(_ vector: Vector, tweaksInPlace: Bool) throws {
        let cipher = try XTSCipher(key: SecretBytes(copying: hexBytes(vector.key)), tweaksInPlace: tweaksInPlace)
        #expect(cipher.writesTweaksInPlace == tweaksInPlace)
        let expected = hexBytes(vector.ciphertext)
        #expect(expected.count == vector.plaintext.count)
        var output = [UInt8](repeating: 0, count: vector.plaintext.count)
        vector.plaintext.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                cipher.encrypt(input.baseAddress!, to: out.baseAddress!, count: input.count, sectorSize: input.count,
                               firstSector: vector.sector)
            }
        }
        #expect(output == expected)
        // In place, back to the plaintext.
        output.withUnsafeMutableBytes { buffer in
            cipher.decrypt(buffer.baseAddress!, to: buffer.baseAddress!, count: buffer.count, sectorSize: buffer.count,
                           firstSector: vector.sector)
        }
        #expect(output == vector.plaintext)
    }

    /// Vector 4 then, with the next sector number, vector 5's input (vector 4's
    /// output): two 512-byte sectors in one call number them in turn.
    @Test func consecutiveSectorsTakeConsecutiveTweaks() throws {
        let vector = Self.vectors[2]
        let cipher = try XTSCipher(key: SecretBytes(copying: hexBytes(vector.key)))
        let twoSectors = vector.plaintext + vector.plaintext
        var output = [UInt8](repeating: 0, count: 1024)
        twoSectors.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                cipher.encrypt(input.baseAddress!, to: out.baseAddress!, count: 1024, sectorSize: 512, firstSector: 0)
            }
        }
        var second = [UInt8](repeating: 0, count: 512)
        vector.plaintext.withUnsafeBytes { input in
            second.withUnsafeMutableBytes { out in
                cipher.encrypt(input.baseAddress!, to: out.baseAddress!, count: 512, sectorSize: 512, firstSector: 1)
            }
        }
        #expect(Array(output[0..<512]) == hexBytes(vector.ciphertext))
        #expect(Array(output[512...]) == second)
        #expect(second != hexBytes(vector.ciphertext))
    }

    /// Many sectors in one call, 512 or 4096 bytes each, numbered in 512-byte units or in
    /// their own: with the tweaks written in place, each comes out as from a context
    /// initialised with its tweak.
    @Test(arguments: [(512, UInt64(1)), (4096, UInt64(8)), (4096, UInt64(1))])
    func tweaksWrittenInPlaceMatchAContextInitialisedWithEach(sectorSize: Int, step: UInt64) throws {
        var generator = SystemRandomNumberGenerator()
        let key = SecretBytes(copying: (0..<64).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let fast = try XTSCipher(key: key)
        let reference = try XTSCipher(key: key, tweaksInPlace: false)
        let plaintext = (0..<65536).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let first = UInt64.random(in: 0...(1 << 40), using: &generator)
        var viaFast = [UInt8](repeating: 0, count: plaintext.count)
        var viaReference = viaFast
        plaintext.withUnsafeBytes { input in
            viaFast.withUnsafeMutableBytes {
                fast.encrypt(input.baseAddress!, to: $0.baseAddress!, count: input.count, sectorSize: sectorSize,
                             firstSector: first, sectorStep: step)
            }
            viaReference.withUnsafeMutableBytes {
                reference.encrypt(input.baseAddress!, to: $0.baseAddress!, count: input.count, sectorSize: sectorSize,
                                  firstSector: first, sectorStep: step)
            }
        }
        #expect(fast.writesTweaksInPlace)
        #expect(viaFast == viaReference)
        #expect(viaFast != plaintext)
        // Decrypted the other way round, each gives the plaintext back.
        viaFast.withUnsafeMutableBytes {
            reference.decrypt($0.baseAddress!, to: $0.baseAddress!, count: $0.count, sectorSize: sectorSize,
                              firstSector: first, sectorStep: step)
        }
        viaReference.withUnsafeMutableBytes {
            fast.decrypt($0.baseAddress!, to: $0.baseAddress!, count: $0.count, sectorSize: sectorSize,
                         firstSector: first, sectorStep: step)
        }
        #expect(viaFast == plaintext)
        #expect(viaReference == plaintext)
    }

    /// Vector 1's key: its halves are equal, which OpenSSL refuses.
    @Test func refusesAKeyWithEqualHalves() {
        #expect(throws: (any Error).self) { try XTSCipher(key: SecretBytes(copying: [UInt8](repeating: 0, count: 32))) }
    }
}
