import Testing
import WireProtocol

@Suite struct MaskingTests {
    func naiveUnmask(_ bytes: [UInt8], _ key: [UInt8], phase: Int) -> [UInt8] {
        bytes.enumerated().map { $0.element ^ key[($0.offset + phase) % 4] }
    }

    @Test func wordAtATimeUnmaskMatchesNaiveReferenceOnRandomSizesPhasesAndAlignments() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<2000 {
            let size = Int.random(in: 0...300, using: &rng)
            let misalign = Int.random(in: 0...7, using: &rng)
            let phase = Int.random(in: 0...11, using: &rng)
            let key = randomBytes(4, using: &rng)
            let data = randomBytes(size, using: &rng)
            var buffer = [UInt8](repeating: 0xAB, count: misalign) + data + [0xCD]
            buffer.withUnsafeMutableBytes {
                unmask(UnsafeMutableRawBufferPointer(rebasing: $0[misalign..<misalign + size]),
                       key: (key[0], key[1], key[2], key[3]), phase: phase)
            }
            #expect(Array(buffer[misalign..<misalign + size]) == naiveUnmask(data, key, phase: phase))
            #expect(buffer.last == 0xCD && buffer.prefix(misalign).allSatisfy { $0 == 0xAB }, "no bytes outside touched")
        }
    }

    @Test func unmaskingInPiecesWithRunningPhaseEqualsUnmaskingWhole() {
        var rng = SplitMix64(seed: 8)
        let key = (UInt8(1), UInt8(2), UInt8(3), UInt8(4))
        let data = randomBytes(1000, using: &rng)
        var whole = data
        whole.withUnsafeMutableBytes { unmask($0, key: key, phase: 0) }
        var pieces = data
        pieces.withUnsafeMutableBytes { buffer in
            var at = 0
            while at < buffer.count {
                let n = min(buffer.count - at, Int.random(in: 1...70, using: &rng))
                unmask(UnsafeMutableRawBufferPointer(rebasing: buffer[at..<at + n]), key: key, phase: at)
                at += n
            }
        }
        #expect(pieces == whole)
    }

    @Test func maskingTwiceRestoresTheInput() {
        var data: [UInt8] = Array("The quick brown fox jumps over the lazy dog".utf8)
        let original = data
        data.withUnsafeMutableBytes { unmask($0, key: (9, 8, 7, 6), phase: 3) }
        #expect(data != original)
        data.withUnsafeMutableBytes { unmask($0, key: (9, 8, 7, 6), phase: 3) }
        #expect(data == original)
    }
}
