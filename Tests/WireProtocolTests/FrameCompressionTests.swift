import Testing
@testable import WireProtocol

/// RSV1 as permessage-deflate's "compressed" bit (RFC 7692 §6): where the parser takes it and
/// where it is still a protocol error.
@Suite struct FrameCompressionTests {
    /// `frame` with RSV1 set on its first byte.
    func rsv1(_ frame: [UInt8]) -> [UInt8] {
        var f = frame
        f[0] |= 0x40
        return f
    }

    /// Not valid UTF-8 (deflate output rarely is): the parser must not check it for compressed text.
    let deflated: [UInt8] = [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]

    @Test func anUnfragmentedCompressedTextIsDeliveredUnvalidated() {
        let stream = rsv1(clientFrame(.text, deflated))
        for chunking in [[], [3], Array(repeating: 1, count: stream.count - 1)] {
            #expect(parse(stream, chunks: chunking, compression: true) == [.compressed(.text, deflated)])
        }
    }

    @Test func fragmentsJoinWithRSV1OnlyOnTheFirst() {
        let stream = rsv1(clientFrame(.binary, Array(deflated[0..<3]), fin: false))
            + clientFrame(.ping, [1])
            + clientFrame(.continuation, Array(deflated[3...]), fin: true)
        for chunking in [[], [1, 1, 1], Array(repeating: 1, count: stream.count - 1)] {
            #expect(parse(stream, chunks: chunking, compression: true) == [.ping([1]), .compressed(.binary, deflated)])
        }
    }

    @Test func withoutTheExtensionRSV1IsAProtocolError() {
        #expect(parse(rsv1(clientFrame(.text, "hi"))) == [.error(1002)])
    }

    @Test func rsv1OnAContinuationOrAControlFrameIsAProtocolError() {
        let continuation = clientFrame(.text, "a", fin: false) + rsv1(clientFrame(.continuation, "b"))
        #expect(parse(continuation, compression: true) == [.error(1002)])
        #expect(parse(rsv1(clientFrame(.ping, [1])), compression: true) == [.error(1002)])
        var rsv2 = clientFrame(.text, "hi")
        rsv2[0] |= 0x20
        #expect(parse(rsv2, compression: true) == [.error(1002)])
    }

    @Test func anUncompressedTextIsStillValidatedWhenCompressionIsAgreed() {
        #expect(parse(clientFrame(.text, [0xFF]), compression: true) == [.error(1007)])
        #expect(parse(clientFrame(.text, "plain"), compression: true) == [.text("plain")])
    }

    @Test func theWireSizeLimitStillAppliesToCompressedMessages() {
        #expect(parse(rsv1(clientFrame(.binary, [UInt8](repeating: 0, count: 100))), maxMessageSize: 50, compression: true) == [.error(1009)])
    }
}
