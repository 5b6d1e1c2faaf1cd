import Stateroom
import Testing
@testable import WasmHost

/// Every worked example of shared/ABI.md, both directions, plus malformed inputs.
@Suite struct ABICodecTests {
    static var toProcess: [(String, MessageToProcess)] { [
        ("00000000", .initialize),
        ("01000000 07000000", .connect(ClientId(7))),
        ("02000000 07000000", .disconnect(ClientId(7))),
        ("03000000 02000000 01000000 0200000000000000 6869", .message(sender: ClientId(2), payload: .text("hi"))),
        ("03000000 02000000 00000000 0200000000000000 0102", .message(sender: ClientId(2), payload: .binary([1, 2]))),
        ("04000000", .timer),
    ] }

    static var fromProcess: [(String, MessageFromProcess)] { [
        ("00000000 00000000 01000000 0c00000000000000 6e65772076616c75653a2031",
         .message(recipient: .broadcast, payload: .text("new value: 1"))),
        ("00000000 01000000 03000000 01000000 0200000000000000 6f6b",
         .message(recipient: .client(ClientId(3)), payload: .text("ok"))),
        ("00000000 02000000 03000000 00000000 0100000000000000 ff",
         .message(recipient: .everyoneExcept(ClientId(3)), payload: .binary([255]))),
        ("01000000 a00f0000", .setTimer(milliseconds: 4000)),
    ] }

    @Test(arguments: 0..<toProcess.count)
    func encodesMessageToProcess(index: Int) {
        let (expected, message) = Self.toProcess[index]
        #expect(message.encoded() == hex(expected))
        #expect(message.encodedCount == hex(expected).count)
    }

    @Test(arguments: 0..<toProcess.count)
    func decodesMessageToProcess(index: Int) throws {
        let (bytes, expected) = Self.toProcess[index]
        let decoded = try MessageToProcess.decode(hex(bytes))
        #expect(describe(decoded) == describe(expected))
        #expect(decoded.encoded() == hex(bytes))
    }

    @Test(arguments: 0..<fromProcess.count)
    func decodesMessageFromProcess(index: Int) throws {
        let (bytes, expected) = Self.fromProcess[index]
        let decoded = try MessageFromProcess.decode(hex(bytes))
        #expect(describe(decoded) == describe(expected))
    }

    @Test(arguments: 0..<fromProcess.count)
    func encodesMessageFromProcess(index: Int) {
        let (expected, message) = Self.fromProcess[index]
        #expect(message.encoded() == hex(expected))
        #expect(message.encodedCount == hex(expected).count)
    }

    @Test func encodesInPlaceIntoALargerBuffer() {
        let message = MessageToProcess.message(sender: ClientId(2), payload: .text("hi"))
        var buffer = [UInt8](repeating: 0xAA, count: 40)
        let written = buffer.withUnsafeMutableBytes { message.encode(into: $0) }
        #expect(written == 22)
        #expect(Array(buffer[..<22]) == hex("03000000 02000000 01000000 0200000000000000 6869"))
        #expect(buffer[22] == 0xAA)
    }

    @Test func encodesABorrowedPayload() {
        let bytes: [UInt8] = [9, 8, 7]
        let encoded = bytes.withUnsafeBytes {
            MessageToProcess.message(sender: ClientId(1), payload: MessagePayload(borrowing: $0, kind: .binary)).encoded()
        }
        #expect(encoded == hex("03000000 01000000 00000000 0300000000000000 090807"))
    }

    static let malformed: [(String, ABIDecodeError)] = [
        ("", .truncated(field: "MessageFromProcess tag")),
        ("000000", .truncated(field: "MessageFromProcess tag")),
        ("09000000", .unknownVariant(type: "MessageFromProcess", tag: 9)),
        ("00000000", .truncated(field: "MessageRecipient tag")),
        ("00000000 07000000", .unknownVariant(type: "MessageRecipient", tag: 7)),
        ("00000000 01000000", .truncated(field: "Client.client")),
        ("00000000 02000000 0300", .truncated(field: "EveryoneExcept.client")),
        ("00000000 00000000", .truncated(field: "MessagePayload tag")),
        ("00000000 00000000 02000000 0000000000000000", .unknownVariant(type: "MessagePayload", tag: 2)),
        ("00000000 00000000 01000000 02000000", .truncated(field: "MessagePayload length")),
        // Length larger than the remaining bytes, and lengths that overflow.
        ("00000000 00000000 01000000 0300000000000000 6869", .truncated(field: "MessagePayload bytes")),
        ("00000000 00000000 00000000 ffffffffffffffff 00", .truncated(field: "MessagePayload bytes")),
        ("00000000 00000000 00000000 0000000001000000", .truncated(field: "MessagePayload bytes")),
        // Invalid UTF-8 in Text: a lone continuation byte, a truncated sequence, an overlong NUL.
        ("00000000 00000000 01000000 0100000000000000 80", .invalidUTF8),
        ("00000000 00000000 01000000 0200000000000000 e282", .invalidUTF8),
        ("00000000 00000000 01000000 0200000000000000 c080", .invalidUTF8),
        ("01000000 a00f", .truncated(field: "SetTimer.ms_delay")),
    ]

    @Test(arguments: 0..<malformed.count)
    func rejectsMalformedMessageFromProcess(index: Int) {
        let (bytes, expected) = Self.malformed[index]
        #expect(throws: expected) { try MessageFromProcess.decode(hex(bytes)) }
    }

    @Test func rejectsMalformedMessageToProcess() {
        #expect(throws: ABIDecodeError.unknownVariant(type: "MessageToProcess", tag: 5)) {
            try MessageToProcess.decode(hex("05000000"))
        }
        #expect(throws: ABIDecodeError.truncated(field: "Connect.client")) {
            try MessageToProcess.decode(hex("01000000 07"))
        }
        #expect(throws: ABIDecodeError.truncated(field: "MessagePayload bytes")) {
            try MessageToProcess.decode(hex("03000000 02000000 00000000 0500000000000000 0102"))
        }
    }

    @Test func binaryPayloadMayHoldAnyBytes() throws {
        let all = (0...255).map { UInt8($0) }
        let message = MessageFromProcess.message(recipient: .broadcast, payload: .binary(all))
        let decoded = try MessageFromProcess.decode(message.encoded())
        guard case .message(.broadcast, let payload) = decoded else { Issue.record("wrong decode"); return }
        #expect(payload.kind == .binary)
        #expect(payload.bytes == all)
    }

    @Test func emptyAndMultibyteText() throws {
        for text in ["", "héllo wörld ✓ 🎉"] {
            let decoded = try MessageFromProcess.decode(MessageFromProcess.message(recipient: .broadcast, payload: .text(text)).encoded())
            guard case .message(_, let payload) = decoded else { Issue.record("wrong decode"); return }
            #expect(payload.text == text)
        }
    }

    @Test func trailingBytesAreIgnoredLikeBincode1() throws {
        let decoded = try MessageFromProcess.decode(hex("01000000 a00f0000 ffff"))
        #expect(describe(decoded) == describe(MessageFromProcess.setTimer(milliseconds: 4000)))
    }
}

private func describe(_ m: MessageToProcess) -> String {
    switch m {
    case .initialize: return "init"
    case .connect(let c): return "connect \(c)"
    case .disconnect(let c): return "disconnect \(c)"
    case .message(let s, let p): return "message \(s) \(p.kind) \(p.bytes)"
    case .timer: return "timer"
    }
}

private func describe(_ m: MessageFromProcess) -> String {
    switch m {
    case .message(let r, let p): return "message \(r) \(p.kind) \(p.bytes)"
    case .setTimer(let ms): return "setTimer \(ms)"
    }
}
