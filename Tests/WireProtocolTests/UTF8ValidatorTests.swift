import Testing
import WireProtocol

@Suite struct UTF8ValidatorTests {
    func validate(_ bytes: [UInt8]) -> Bool {
        var v = UTF8Validator()
        return bytes.withUnsafeBytes { v.feed($0) } && v.isComplete
    }

    func validateInPieces(_ bytes: [UInt8], cuts: [Int]) -> Bool {
        var v = UTF8Validator()
        var start = 0
        for cut in cuts.sorted() + [bytes.count] where cut >= start {
            let ok = bytes[start..<cut].withUnsafeBytes { v.feed($0) }
            if !ok { return false }
            start = cut
        }
        return v.isComplete
    }

    func reference(_ bytes: [UInt8]) -> Bool {
        String(validating: bytes, as: UTF8.self) != nil
    }

    static let edgeCases: [[UInt8]] = [
        [], [0x00], [0x7F], [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF], [0xC2, 0x80], [0xDF, 0xBF],
        [0xE0, 0x80, 0x80], [0xE0, 0x9F, 0xBF], [0xE0, 0xA0, 0x80], [0xEF, 0xBF, 0xBF],
        [0xED, 0x9F, 0xBF], [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF], [0xEE, 0x80, 0x80],
        [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x8F, 0xBF, 0xBF], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF],
        [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFE], [0xFF],
        [0xC2], [0xE2, 0x82], [0xF0, 0x9F, 0x98], [0xC2, 0x41], [0xE2, 0x28, 0xA1], [0xF0, 0x28, 0x8C, 0xBC],
        Array("κόσμε".utf8), Array("Hello-µ@ßöäüàá-UTF-8!!".utf8), Array("😀👍🏽".utf8),
        Array(repeating: 0x61, count: 33) + [0x80], Array(repeating: 0x61, count: 31) + [0xE2, 0x82, 0xAC],
        Array(repeating: 0x61, count: 64) + [0xF0, 0x9F, 0x98, 0x80] + Array(repeating: 0x62, count: 40),
    ]

    @Test func edgeCasesMatchTheStandardLibrary() {
        for bytes in Self.edgeCases {
            #expect(validate(bytes) == reference(bytes), "\(bytes)")
            for cut in 0...bytes.count {
                #expect(validateInPieces(bytes, cuts: [cut]) == reference(bytes), "\(bytes) cut at \(cut)")
            }
        }
    }

    @Test func randomInputsMatchTheStandardLibraryWholeAndStreamed() {
        var rng = SplitMix64(seed: 99)
        let pieces: [[UInt8]] = [[0x41], [0x7F], [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80],
                                 [0xED, 0xA0, 0x80], [0xC0, 0xAF], [0x80], [0xF4, 0x90, 0x80, 0x80], [0xEF, 0xBF, 0xBF]]
        var validCount = 0
        for round in 0..<5000 {
            var bytes: [UInt8] = []
            if round % 3 == 0 {
                bytes = randomBytes(Int.random(in: 0...40, using: &rng), using: &rng)
            } else {
                for _ in 0..<Int.random(in: 0...30, using: &rng) {
                    if Int.random(in: 0..<10, using: &rng) < 8 {
                        bytes += Array(repeating: 0x61, count: Int.random(in: 0...12, using: &rng))
                        bytes += pieces[Int.random(in: 0..<5, using: &rng)]
                    } else {
                        bytes += pieces.randomElement(using: &rng)!
                    }
                }
                if Int.random(in: 0..<4, using: &rng) == 0, !bytes.isEmpty {
                    bytes.removeLast(Int.random(in: 1...min(3, bytes.count), using: &rng))
                }
            }
            let expected = reference(bytes)
            if expected { validCount += 1 }
            #expect(validate(bytes) == expected, "\(bytes)")
            let cuts = (0..<3).map { _ in Int.random(in: 0...bytes.count, using: &rng) }
            #expect(validateInPieces(bytes, cuts: cuts) == expected, "\(bytes) cuts \(cuts)")
        }
        #expect(validCount > 1000, "the generator exercises the valid side too")
    }

    @Test func failureIsStickyUntilReset() {
        var v = UTF8Validator()
        #expect(![UInt8(0xFF)].withUnsafeBytes { v.feed($0) })
        #expect(![UInt8(0x41)].withUnsafeBytes { v.feed($0) })
        #expect(!v.isComplete)
        v.reset()
        #expect([UInt8(0x41)].withUnsafeBytes { v.feed($0) })
        #expect(v.isComplete)
    }

    @Test func incompleteSequenceIsNotCompleteUntilFinished() {
        var v = UTF8Validator()
        #expect([UInt8(0xE2), 0x82].withUnsafeBytes { v.feed($0) })
        #expect(!v.isComplete)
        #expect([UInt8(0xAC)].withUnsafeBytes { v.feed($0) })
        #expect(v.isComplete)
    }
}
