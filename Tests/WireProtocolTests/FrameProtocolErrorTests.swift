import Testing
import WireProtocol

/// Each protocol rule, with the close code it must produce.
@Suite struct FrameProtocolErrorTests {
    @Test func unmaskedClientFrameIsProtocolError() {
        #expect(parse(rawFrame(b0: 0x81, payload: [0x61], masked: false)) == [.error(1002)])
    }

    @Test func maskedServerFrameIsProtocolErrorOnTheClientSide() {
        #expect(parse(clientFrame(.text, "x"), server: false) == [.error(1002)])
    }

    @Test(arguments: [UInt8(0x40), 0x20, 0x10])
    func reservedBitSetIsProtocolError(rsv: UInt8) {
        #expect(parse(rawFrame(b0: 0x81 | rsv, payload: [0x61])) == [.error(1002)])
    }

    @Test(arguments: [UInt8(3), 4, 5, 6, 7, 11, 12, 13, 14, 15])
    func unknownOpcodeIsProtocolError(opcode: UInt8) {
        #expect(parse(rawFrame(b0: 0x80 | opcode, payload: [])) == [.error(1002)])
    }

    @Test func controlFrameLongerThan125IsProtocolError() {
        #expect(parse(rawFrame(b0: 0x89, payload: [UInt8](repeating: 0, count: 126))) == [.error(1002)])
        #expect(parse(rawFrame(b0: 0x8A, payload: [UInt8](repeating: 0, count: 126))) == [.error(1002)])
        #expect(parse(rawFrame(b0: 0x88, payload: [3, 232] + [UInt8](repeating: 0x61, count: 124))) == [.error(1002)])
        // 125 is fine.
        #expect(parse(rawFrame(b0: 0x89, payload: [UInt8](repeating: 0, count: 125))) == [.ping([UInt8](repeating: 0, count: 125))])
    }

    @Test(arguments: [UInt8(0x08), 0x09, 0x0A])
    func fragmentedControlFrameIsProtocolError(opcode: UInt8) {
        #expect(parse(rawFrame(b0: opcode, payload: [])) == [.error(1002)])
    }

    @Test func continuationWithoutStartedMessageIsProtocolError() {
        #expect(parse(clientFrame(.continuation, "x")) == [.error(1002)])
        #expect(parse(clientFrame(.text, "a") + clientFrame(.continuation, "x")) == [.text("a"), .error(1002)])
    }

    @Test func newDataFrameInsideFragmentedMessageIsProtocolError() {
        #expect(parse(clientFrame(.text, "a", fin: false) + clientFrame(.text, "b")) == [.error(1002)])
        #expect(parse(clientFrame(.binary, "a", fin: false) + clientFrame(.binary, "b", fin: false)) == [.error(1002)])
    }

    @Test func sixtyFourBitLengthWithTopBitSetIsProtocolError() {
        let frame = rawFrame(b0: 0x82, payload: [], form: .sixtyFour, declaredLength: 1 << 63)
        #expect(parse(frame, maxMessageSize: Int.max) == [.error(1002)])
    }

    @Test func messageOverMaxSizeIsTooBigAsSoonAsTheHeaderShowsIt() {
        // Only the header is sent: the parser must not wait for the payload.
        let header = Array(rawFrame(b0: 0x82, payload: [], form: .sixtyFour, declaredLength: 1 << 40).prefix(14))
        #expect(parse(header, maxMessageSize: 1000) == [.error(1009)])
        #expect(parse(Array(clientFrame(.binary, [UInt8](repeating: 0, count: 101)).prefix(8)), maxMessageSize: 100) == [.error(1009)])
        #expect(parse(clientFrame(.binary, [UInt8](repeating: 0, count: 100)), maxMessageSize: 100).count == 1)
    }

    @Test func fragmentedMessageOverMaxSizeIsTooBigAtTheFragmentThatCrossesIt() {
        let stream = clientFrame(.binary, [UInt8](repeating: 0, count: 60), fin: false)
            + Array(clientFrame(.continuation, [UInt8](repeating: 0, count: 41)).prefix(6))
        #expect(parse(stream, maxMessageSize: 100) == [.error(1009)])
        let fits = clientFrame(.binary, [UInt8](repeating: 0, count: 60), fin: false)
            + clientFrame(.continuation, [UInt8](repeating: 0, count: 40))
        #expect(parse(fits, maxMessageSize: 100) == [.message(.binary, [UInt8](repeating: 0, count: 100))])
    }

    @Test func invalidUTF8InTextIsInvalidPayload() {
        #expect(parse(clientFrame(.text, [0x61, 0xFF])) == [.error(1007)])
        #expect(parse(clientFrame(.text, [0xC0, 0x80])) == [.error(1007)])
        #expect(parse(clientFrame(.text, [0xED, 0xA0, 0x80])) == [.error(1007)])
        #expect(parse(clientFrame(.text, [0xE2, 0x82])) == [.error(1007)], "incomplete at FIN")
        // Binary is not checked.
        #expect(parse(clientFrame(.binary, [0xFF])) == [.message(.binary, [0xFF])])
    }

    @Test func invalidUTF8InFirstFragmentIsReportedBeforeTheFinalFragment() {
        #expect(parse(clientFrame(.text, [0x61, 0xFE], fin: false)) == [.error(1007)])
        // And within a frame that is still arriving.
        let frame = clientFrame(.text, [0xFE] + [UInt8](repeating: 0x61, count: 1000))
        #expect(parse(Array(frame.prefix(20))) == [.error(1007)])
    }

    @Test func incompleteUTF8AtFinalFragmentIsInvalidPayload() {
        let stream = clientFrame(.text, [0xF0, 0x9F], fin: false) + clientFrame(.continuation, [0x98])
        #expect(parse(stream) == [.error(1007)])
    }

    @Test func fourByteCharacterSplitAcrossFragmentsIsAccepted() {
        let emoji: [UInt8] = [0xF0, 0x9F, 0x98, 0x80]
        for cut in 0...4 {
            let stream = clientFrame(.text, Array(emoji[..<cut]), fin: false) + clientFrame(.continuation, Array(emoji[cut...]))
            #expect(parse(stream) == [.message(.text, emoji)], "cut at \(cut)")
        }
        let three = clientFrame(.text, [0xF0], fin: false) + clientFrame(.continuation, [0x9F, 0x98], fin: false)
            + clientFrame(.continuation, [0x80])
        #expect(parse(three) == [.message(.text, emoji)])
    }

    @Test func onePayloadByteCloseIsProtocolError() {
        #expect(parse(clientFrame(.close, [0x03])) == [.error(1002)])
    }

    @Test(arguments: [UInt16(0), 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
    func invalidCloseCodeIsProtocolError(code: UInt16) {
        #expect(!CloseCode.isValidReceived(code))
        #expect(parse(clientFrame(.close, [UInt8(code >> 8), UInt8(code & 0xFF)])) == [.error(1002)])
    }

    @Test(arguments: [UInt16(1000), 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999])
    func validCloseCodeIsDelivered(code: UInt16) {
        #expect(CloseCode.isValidReceived(code))
        #expect(parse(clientFrame(.close, [UInt8(code >> 8), UInt8(code & 0xFF)] + Array("é".utf8)))
            == [.close(code, Array("é".utf8))])
    }

    @Test func emptyCloseHasNoCode() {
        #expect(parse(clientFrame(.close, [])) == [.close(nil, [])])
    }

    @Test func closeReasonThatIsNotUTF8IsInvalidPayload() {
        #expect(parse(clientFrame(.close, [0x03, 0xE8, 0xFF])) == [.error(1007)])
        #expect(parse(clientFrame(.close, [0x03, 0xE8, 0xE2, 0x82])) == [.error(1007)])
    }

    @Test func controlFramesMayInterleaveWithFragments() {
        let stream = clientFrame(.binary, [1], fin: false) + clientFrame(.ping, "a") + clientFrame(.continuation, [2], fin: false)
            + clientFrame(.pong, "b") + clientFrame(.close, [0x03, 0xE8]) + clientFrame(.continuation, [3])
        #expect(parse(stream) == [.ping([0x61]), .pong([0x62]), .close(1000, []), .message(.binary, [1, 2, 3])])
    }

    @Test func deadParserKeepsReportingTheSameError() {
        var parser = FrameParser(role: .server, maxMessageSize: 100)
        var events: [Ev] = []
        feed(&parser, clientFrame(.continuation, "x")[...], into: &events)
        #expect(events == [.error(1002)])
        #expect(parser.failure == .protocolError)
        var valid = clientFrame(.text, "ok")
        valid.withUnsafeMutableBytes { buffer in
            var offset = 0
            guard case .protocolError(let code) = parser.next(buffer, offset: &offset) else {
                Issue.record("expected the error again")
                return
            }
            #expect(code == .protocolError)
            #expect(offset == buffer.count)
        }
    }
}
