import Testing
import WireProtocol

@Suite struct FrameLengthTests {
    static let boundaries = [0, 1, 125, 126, 127, 65535, 65536, 70000]

    @Test(arguments: boundaries)
    func headerSizeAndBytesMatchEachLengthEncoding(length: Int) {
        let expectedSize = length <= 125 ? 2 : (length <= 65535 ? 4 : 10)
        #expect(frameHeaderSize(payloadLength: length) == expectedSize)
        var header = [UInt8](repeating: 0, count: 10)
        let size = header.withUnsafeMutableBytes { encodeFrameHeader(opcode: .binary, payloadLength: length, into: $0.baseAddress!) }
        #expect(size == expectedSize)
        #expect(header[0] == 0x82)
        switch expectedSize {
        case 2: #expect(header[1] == UInt8(length))
        case 4: #expect(Array(header[1..<4]) == [126, UInt8(length >> 8), UInt8(length & 0xFF)])
        default:
            #expect(header[1] == 127)
            let expected: [UInt8] = (0..<8).map { (i: Int) -> UInt8 in UInt8(truncatingIfNeeded: UInt64(length) >> UInt64(56 - 8 * i)) }
            #expect(Array(header[2..<10]) == expected)
        }
    }

    @Test(arguments: boundaries)
    func payloadOfEachBoundaryLengthRoundTripsThroughBothParsers(length: Int) {
        var rng = SplitMix64(seed: UInt64(length))
        let payload = randomBytes(length, using: &rng)
        #expect(parse(clientFrame(.binary, payload)) == [.message(.binary, payload)])
        #expect(parse(serverFrame(.binary, payload), server: false) == [.message(.binary, payload)])
        let split = frameHeaderSize(payloadLength: length) + 4 + length / 2
        #expect(parse(clientFrame(.binary, payload), chunks: [split]) == [.message(.binary, payload)])
    }

    @Test func nonMinimalLengthEncodingsAreAccepted() {
        let payload = Array("Hello".utf8)
        #expect(parse(rawFrame(b0: 0x81, payload: payload, form: .sixteen)) == [.message(.text, payload)])
        #expect(parse(rawFrame(b0: 0x81, payload: payload, form: .sixtyFour)) == [.message(.text, payload)])
        #expect(parse(rawFrame(b0: 0x89, payload: payload, form: .sixteen)) == [.ping(payload)])
    }

    @Test func fragmentedHeaderFlagIsEncoded() {
        var header = [UInt8](repeating: 0, count: 2)
        _ = header.withUnsafeMutableBytes { encodeFrameHeader(opcode: .text, fin: false, payloadLength: 3, into: $0.baseAddress!) }
        #expect(header == [0x01, 0x03])
    }

    @Test func closeFrameEncodesCodeAndReason() {
        #expect(closeFrame(.normal) == [0x88, 0x02, 0x03, 0xE8])
        #expect(closeFrame(.goingAway, reason: "bye") == [0x88, 0x05, 0x03, 0xE9] + Array("bye".utf8))
    }

    @Test func closeFrameReasonIsTruncatedAtACharacterBoundary() {
        // 61 two-byte characters = 122 bytes, then one more makes 124: must cut back to 122, not split it.
        let reason = String(repeating: "é", count: 62)
        let frame = closeFrame(.policyViolation, reason: reason)
        #expect(frame.count <= 2 + 125)
        #expect(frame[1] == 2 + 122)
        #expect(String(validating: frame[4...], as: UTF8.self) != nil)
        // ASCII is cut at exactly 123.
        #expect(closeFrame(.normal, reason: String(repeating: "a", count: 300)).count == 2 + 125)
        // And it parses back as a valid close.
        #expect(parse(frame, server: false) == [.close(1008, Array(frame[4...]))])
    }
}
