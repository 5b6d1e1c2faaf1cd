import Stateroom
import StateroomWasm
import Testing

// The ABI codec that the host (WasmHost) and the guest SDK share: every worked example of
// shared/ABI.md byte for byte in both directions, borrowing, and malformed input.

/// `"01000000 0200..."` → bytes (spaces ignored).
func hex(_ s: String) -> [UInt8] {
    let digits = Array(s.utf8.filter { $0 != UInt8(ascii: " ") })
    return stride(from: 0, to: digits.count, by: 2).map { i in
        UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16)!
    }
}

/// Calls `body` with a view of `bytes`, returning its result or its decoding error.
func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(ABIDecodeError) -> R) -> Result<R, ABIDecodeError> {
    bytes.withUnsafeBytes { raw in
        do throws(ABIDecodeError) {
            return .success(try body(raw))
        } catch {
            return .failure(error)
        }
    }
}

/// A decoded message as a line, read while its borrowed payload is still valid.
func describe(_ m: MessageToProcess) -> String {
    switch m {
    case .initialize: return "init"
    case .connect(let c): return "connect \(c)"
    case .disconnect(let c): return "disconnect \(c)"
    case .message(let s, let p): return "message \(s) \(describe(p))"
    case .timer: return "timer"
    }
}

/// A decoded request as a line, read while its borrowed payload is still valid.
func describe(_ m: MessageFromProcess) -> String {
    switch m {
    case .message(let r, let p): return "\(r) \(describe(p))"
    case .setTimer(let ms): return "setTimer \(ms)"
    }
}

func decodeToProcess(_ bytes: [UInt8]) throws(ABIDecodeError) -> String {
    try withBytes(bytes) { (raw) throws(ABIDecodeError) in describe(try MessageToProcess.decode(raw)) }.get()
}

func decodeFromProcess(_ bytes: [UInt8]) throws(ABIDecodeError) -> String {
    try withBytes(bytes) { (raw) throws(ABIDecodeError) in describe(try MessageFromProcess.decode(raw)) }.get()
}

@Suite struct ABIWorkedExamples {
    // Computed: the messages hold payloads, which are not Sendable.
    static var toProcess: [(bytes: String, message: MessageToProcess, decoded: String)] { [
        ("00000000", .initialize, "init"),
        ("01000000 07000000", .connect(ClientId(7)), "connect ClientId(7)"),
        ("02000000 07000000", .disconnect(ClientId(7)), "disconnect ClientId(7)"),
        ("03000000 02000000 01000000 0200000000000000 6869",
         .message(sender: ClientId(2), payload: .text("hi")), "message ClientId(2) text \"hi\""),
        ("03000000 02000000 00000000 0200000000000000 0102",
         .message(sender: ClientId(2), payload: .binary([1, 2])), "message ClientId(2) binary 0102"),
        ("04000000", .timer, "timer"),
    ] }

    static var fromProcess: [(bytes: String, message: MessageFromProcess, decoded: String)] { [
        ("00000000 00000000 01000000 0c00000000000000 6e65772076616c75653a2031",
         .message(recipient: .broadcast, payload: .text("new value: 1")), "broadcast text \"new value: 1\""),
        ("00000000 01000000 03000000 01000000 0200000000000000 6f6b",
         .message(recipient: .client(ClientId(3)), payload: .text("ok")), "client(ClientId(3)) text \"ok\""),
        ("00000000 02000000 03000000 00000000 0100000000000000 ff",
         .message(recipient: .everyoneExcept(ClientId(3)), payload: .binary([255])),
         "everyoneExcept(ClientId(3)) binary ff"),
        ("01000000 a00f0000", .setTimer(milliseconds: 4000), "setTimer 4000"),
    ] }

    @Test(arguments: 0..<toProcess.count)
    func messageToProcessEncodes(index: Int) {
        let example = Self.toProcess[index]
        #expect(example.message.encoded() == hex(example.bytes))
        #expect(example.message.encodedCount == hex(example.bytes).count)
    }

    @Test(arguments: 0..<toProcess.count)
    func messageToProcessDecodes(index: Int) throws {
        let example = Self.toProcess[index]
        #expect(try decodeToProcess(hex(example.bytes)) == example.decoded)
        // And re-encodes to the same bytes.
        let again = try withBytes(hex(example.bytes)) { (raw) throws(ABIDecodeError) in
            try MessageToProcess.decode(raw).encoded()
        }.get()
        #expect(again == hex(example.bytes))
    }

    @Test(arguments: 0..<fromProcess.count)
    func messageFromProcessEncodes(index: Int) {
        let example = Self.fromProcess[index]
        #expect(example.message.encoded() == hex(example.bytes))
        #expect(example.message.encodedCount == hex(example.bytes).count)
    }

    @Test(arguments: 0..<fromProcess.count)
    func messageFromProcessDecodes(index: Int) throws {
        let example = Self.fromProcess[index]
        #expect(try decodeFromProcess(hex(example.bytes)) == example.decoded)
        let again = try withBytes(hex(example.bytes)) { (raw) throws(ABIDecodeError) in
            try MessageFromProcess.decode(raw).encoded()
        }.get()
        #expect(again == hex(example.bytes))
    }
}

@Suite struct ABICodecBorrowing {
    /// The start of `payload`'s bytes.
    func address(_ payload: MessagePayload) -> UnsafeRawPointer? { payload.withUnsafeBytes { $0.baseAddress } }

    @Test func aDecodedRequestPayloadIsAViewOfTheInputNotACopy() throws {
        let bytes = hex("00000000 01000000 03000000 01000000 0200000000000000 6f6b")
        let ok = try withBytes(bytes) { (raw) throws(ABIDecodeError) -> Bool in
            guard case .message(_, let payload) = try MessageFromProcess.decode(raw) else { return false }
            return address(payload) == raw.baseAddress! + 24 && payload.count == 2 && payload.isText("ok")
        }.get()
        #expect(ok)
    }

    @Test func aDecodedEventPayloadIsAViewOfTheInputNotACopy() throws {
        let bytes = hex("03000000 02000000 00000000 0200000000000000 0102")
        let ok = try withBytes(bytes) { (raw) throws(ABIDecodeError) -> Bool in
            guard case .message(_, let payload) = try MessageToProcess.decode(raw) else { return false }
            return address(payload) == raw.baseAddress! + 20 && payload.count == 2 && !payload.isText
        }.get()
        #expect(ok)
    }

    @Test func encodesInPlaceIntoALargerBufferAndNoFurther() {
        let message = MessageToProcess.message(sender: ClientId(2), payload: .text("hi"))
        var buffer = [UInt8](repeating: 0xAA, count: 40)
        let written = buffer.withUnsafeMutableBytes { message.encode(into: $0) }
        #expect(written == 22)
        #expect(Array(buffer[..<22]) == hex("03000000 02000000 01000000 0200000000000000 6869"))
        #expect(buffer[22...].allSatisfy { $0 == 0xAA })
    }

    @Test func encodesABorrowedPayload() {
        let bytes: [UInt8] = [9, 8, 7]
        let encoded = bytes.withUnsafeBytes {
            MessageToProcess.message(sender: ClientId(1), payload: MessagePayload(borrowing: $0, kind: .binary)).encoded()
        }
        #expect(encoded == hex("03000000 01000000 00000000 0300000000000000 090807"))
    }

    @Test func binaryPayloadsMayHoldAnyBytesAndTextAnyScalar() throws {
        let all = (0...255).map { UInt8($0) }
        let binary = MessageFromProcess.message(recipient: .broadcast, payload: .binary(all)).encoded()
        #expect(try withBytes(binary) { (raw) throws(ABIDecodeError) -> [UInt8] in
            guard case .message(_, let p) = try MessageFromProcess.decode(raw), !p.isText else { return [] }
            return p.bytes
        }.get() == all)
        for text in ["", "héllo wörld ✓ 🎉", "\u{7F}\u{80}\u{7FF}\u{800}\u{D7FF}\u{E000}\u{FFFF}\u{10000}\u{10FFFF}"] {
            let encoded = MessageFromProcess.message(recipient: .broadcast, payload: .text(text)).encoded()
            #expect(try withBytes(encoded) { (raw) throws(ABIDecodeError) -> String? in
                guard case .message(_, let p) = try MessageFromProcess.decode(raw) else { return nil }
                return p.text
            }.get() == text)
        }
    }
}

@Suite struct ABICodecMalformedInput {
    static let fromProcess: [(String, ABIDecodeError)] = [
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
        // A length larger than the bytes left, and lengths past Int.max / Int32.max.
        ("00000000 00000000 01000000 0300000000000000 6869", .truncated(field: "MessagePayload bytes")),
        ("00000000 00000000 00000000 ffffffffffffffff 00", .truncated(field: "MessagePayload bytes")),
        ("00000000 00000000 00000000 0000000001000000", .truncated(field: "MessagePayload bytes")),
        ("00000000 00000000 00000000 0000008000000000", .truncated(field: "MessagePayload bytes")),
        ("01000000 a00f", .truncated(field: "SetTimer.ms_delay")),
    ]

    @Test(arguments: 0..<fromProcess.count)
    func messageFromProcessIsRejectedNamingTheField(index: Int) {
        let (bytes, expected) = Self.fromProcess[index]
        #expect(throws: expected) { try decodeFromProcess(hex(bytes)) }
    }

    static let toProcess: [(String, ABIDecodeError)] = [
        ("", .truncated(field: "MessageToProcess tag")),
        ("05000000", .unknownVariant(type: "MessageToProcess", tag: 5)),
        ("01000000 07", .truncated(field: "Connect.client")),
        ("02000000", .truncated(field: "Disconnect.client")),
        ("03000000 0200", .truncated(field: "Message.sender")),
        ("03000000 02000000 02000000 0000000000000000", .unknownVariant(type: "MessagePayload", tag: 2)),
        ("03000000 02000000 00000000 0500000000000000 0102", .truncated(field: "MessagePayload bytes")),
        ("03000000 02000000 01000000 ffffffffffffffff", .truncated(field: "MessagePayload bytes")),
    ]

    @Test(arguments: 0..<toProcess.count)
    func messageToProcessIsRejectedNamingTheField(index: Int) {
        let (bytes, expected) = Self.toProcess[index]
        #expect(throws: expected) { try decodeToProcess(hex(bytes)) }
    }

    @Test func errorsDescribeTheFieldAtFault() {
        #expect(ABIDecodeError.truncated(field: "SetTimer.ms_delay").description
                == "truncated input: SetTimer.ms_delay runs past the end")
        #expect(ABIDecodeError.unknownVariant(type: "MessageRecipient", tag: 7).description
                == "unknown MessageRecipient variant 7")
    }

    @Test func errorsAreEqualOnlyWithTheSameCaseNamesAndTag() {
        // The tables above compare errors with ==, which compares the static names by their text.
        #expect(ABIDecodeError.truncated(field: "Client.client") == .truncated(field: "Client.client"))
        #expect(ABIDecodeError.truncated(field: "Client.client") != .truncated(field: "EveryoneExcept.client"))
        #expect(ABIDecodeError.unknownVariant(type: "MessagePayload", tag: 2) == .unknownVariant(type: "MessagePayload", tag: 2))
        #expect(ABIDecodeError.unknownVariant(type: "MessagePayload", tag: 2) != .unknownVariant(type: "MessagePayload", tag: 3))
        #expect(ABIDecodeError.unknownVariant(type: "MessagePayload", tag: 2) != .unknownVariant(type: "MessageRecipient", tag: 2))
        #expect(ABIDecodeError.truncated(field: "MessagePayload bytes") != .unknownVariant(type: "MessagePayload bytes", tag: 0))
    }

    /// Text from a guest, as `MessageFromProcess::Message { Broadcast, Text(bytes) }`.
    func guestText(_ body: String) -> [UInt8] {
        let b = hex(body)
        var length = UInt64(b.count).littleEndian
        return hex("00000000 00000000 01000000") + withUnsafeBytes(of: &length) { Array($0) } + b
    }

    @Test func textIsLeftToTheReaderToValidate() throws {
        // The codec does not validate: the host checks a guest's text in stateroom_send (with the
        // standard library's validator, WasmSandboxTests "utf8"), and a guest gets only text the
        // server's frame parser validated. So bytes that are not UTF-8 decode, as a view.
        let bytes = guestText("ff fe")
        let viewed = try withBytes(bytes) { (raw) throws(ABIDecodeError) -> Bool in
            guard case .message(.broadcast, let p) = try MessageFromProcess.decode(raw), p.isText else { return false }
            return p.withUnsafeBytes { $0.baseAddress == raw.baseAddress! + 20 && Array($0) == [0xFF, 0xFE] }
        }.get()
        #expect(viewed)
    }

    @Test func bytesAfterACompleteMessageAreIgnoredInBothDirectionsLikeBincode1() throws {
        #expect(try decodeFromProcess(hex("01000000 a00f0000 ffff")) == "setTimer 4000")
        #expect(try decodeFromProcess(hex("00000000 01000000 03000000 01000000 0200000000000000 6f6b 00"))
                == "client(ClientId(3)) text \"ok\"")
        #expect(try decodeToProcess(hex("04000000 00")) == "timer")
        #expect(try decodeToProcess(hex("03000000 02000000 00000000 0200000000000000 0102 03")) == "message ClientId(2) binary 0102")
    }
}
