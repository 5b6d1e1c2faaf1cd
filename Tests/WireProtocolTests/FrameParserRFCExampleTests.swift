import Testing
import WireProtocol

/// RFC 6455 §5.7 examples, byte for byte.
@Suite struct FrameParserRFCExampleTests {
    let hello = Array("Hello".utf8)

    @Test func maskedSingleFrameTextHelloIsParsed() {
        let frame: [UInt8] = [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        #expect(parse(frame) == [.text("Hello")])
        #expect(clientFrame(.text, "Hello") == frame)
    }

    @Test func unmaskedSingleFrameTextHelloIsParsedByClientAndRejectedByServer() {
        let frame: [UInt8] = [0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]
        #expect(parse(frame, server: false) == [.text("Hello")])
        #expect(parse(frame, server: true) == [.error(1002)])
        #expect(serverFrame(.text, hello) == frame)
    }

    @Test func fragmentedUnmaskedHelIsJoinedWithLo() {
        let frames: [UInt8] = [0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F]
        #expect(parse(frames, server: false) == [.text("Hello")])
    }

    @Test func fragmentedMaskedHelloIsJoined() {
        let frames = clientFrame(.text, "Hel", fin: false) + clientFrame(.continuation, "lo")
        #expect(parse(frames) == [.text("Hello")])
    }

    @Test func unmaskedPingAndMaskedPongCarryHello() {
        let ping: [UInt8] = [0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]
        #expect(parse(ping, server: false) == [.ping(hello)])
        let pong: [UInt8] = [0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        #expect(parse(pong) == [.pong(hello)])
        #expect(clientFrame(.pong, hello) == pong)
    }

    @Test func binary256BytesUsesSixteenBitLength() {
        let payload = (0..<256).map { UInt8($0 & 0xFF) }
        let frame = serverFrame(.binary, payload)
        #expect(Array(frame.prefix(4)) == [0x82, 0x7E, 0x01, 0x00])
        #expect(frame.count == 260)
        #expect(parse(frame, server: false) == [.message(.binary, payload)])
        #expect(parse(clientFrame(.binary, payload)) == [.message(.binary, payload)])
    }

    @Test func binary64KiBUsesSixtyFourBitLength() {
        let payload = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let frame = serverFrame(.binary, payload)
        #expect(Array(frame.prefix(10)) == [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
        #expect(parse(frame, server: false) == [.message(.binary, payload)])
        #expect(parse(clientFrame(.binary, payload)) == [.message(.binary, payload)])
        // Split in the middle of the payload and of the header.
        #expect(parse(clientFrame(.binary, payload), chunks: [5, 30000]) == [.message(.binary, payload)])
    }
}
