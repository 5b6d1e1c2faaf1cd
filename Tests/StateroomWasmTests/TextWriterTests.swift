import Stateroom
import StateroomWasm
import Testing

/// Keeps the exact bytes a guest hands to `stateroom_send`.
final class RawOutput: GuestOutput {
    var sent: [[UInt8]] = []
    func emit(_ encoded: UnsafeRawBufferPointer) { sent.append(Array(encoded)) }
    func closeRoom(reason: String) {}
}

/// A context without scratch memory of its own: `sendText` takes the protocol's default.
final class PlainContext: StateroomContext {
    var sent: [(MessageRecipient, MessagePayload.Kind, [UInt8])] = []
    func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        sent.append((recipient, message.kind, message.bytes))
    }
    func setTimer(milliseconds: UInt32) {}
    func closeRoom(reason: String) {}
}

/// Calls `sendText` through a generic context, as a service does (`some StateroomContext`).
func sendGreeting(_ context: some StateroomContext, to recipient: MessageRecipient, value: Int) {
    context.sendText(to: recipient) { text in
        text.append("new value: ")
        text.append(value)
    }
}

@Suite struct TextWriterTests {
    static let recipients: [MessageRecipient] = [.broadcast, .client(ClientId(7)), .everyoneExcept(ClientId(4_000_000_000))]

    @Test(arguments: recipients)
    func guestSendTextEncodesWhatSendOfAStringEncodes(recipient: MessageRecipient) {
        let out = RawOutput()
        let context = GuestContext(output: out)
        for value in [0, 7, -1, 42, 1_000_000, -987_654_321, Int.max, Int.min] {
            sendGreeting(context, to: recipient, value: value)
            context.send("new value: \(value)", to: recipient)
        }
        #expect(out.sent.count == 16)
        for i in stride(from: 0, to: out.sent.count, by: 2) {
            #expect(out.sent[i] == out.sent[i + 1], "message \(i / 2)")
        }
        let expected = MessageFromProcess.message(recipient: recipient, payload: .text("new value: -9223372036854775808")).encoded()
        #expect(out.sent.last == expected)
    }

    @Test func everyKindOfPieceIsAppendedInOrder() {
        let out = RawOutput()
        let context = GuestContext(output: out)
        let received = "été ✓"
        received.utf8CString.withUnsafeBytes { raw in
            let borrowed = MessagePayload(borrowing: UnsafeRawBufferPointer(rebasing: raw.dropLast()), kind: .text)
            context.sendText(to: .client(ClientId(2))) { text in
                text.append("<")
                text.append(borrowed)
                text.append("> from ")
                text.append("alice" + String(3))
                text.append(-5)
                text.append("" as StaticString)
                text.append("é" as StaticString)  // a one-scalar literal has no pointer form
            }
        }
        let expected = MessageFromProcess.message(recipient: .client(ClientId(2)), payload: .text("<été ✓> from alice3-5é")).encoded()
        #expect(out.sent == [expected])
    }

    @Test func aTextLongerThanTheScratchMemoryGrowsItAndKeepsWhatWasWritten() {
        let out = RawOutput()
        let context = GuestContext(output: out, buffer: GuestEncodeBuffer(capacity: 64))
        var reference = ""
        context.sendText(to: .broadcast) { text in
            for i in 0..<500 {
                text.append("item ")
                text.append(i)
                text.append(";")
                reference += "item \(i);"
            }
        }
        #expect(reference.utf8.count > 4_000)
        #expect(out.sent == [MessageFromProcess.message(recipient: .broadcast, payload: .text(reference)).encoded()])
        // The scratch memory is reused: a short message after the long one is still exact.
        sendGreeting(context, to: .broadcast, value: 3)
        #expect(out.sent.last == MessageFromProcess.message(recipient: .broadcast, payload: .text("new value: 3")).encoded())
    }

    @Test func integersOfEveryWidthAndClientIdsReadAsInterpolationWritesThem() {
        let out = RawOutput()
        let context = GuestContext(output: out)
        context.sendText(to: .broadcast) { text in
            text.append(UInt8.max); text.append(" ")
            text.append(Int8.min); text.append(" ")
            text.append(UInt32.max); text.append(" ")
            text.append(UInt64.max); text.append(" ")
            text.append(Int64.min); text.append(" ")
            text.append(ClientId(12))
        }
        let reference = "\(UInt8.max) \(Int8.min) \(UInt32.max) \(UInt64.max) \(Int64.min) \(ClientId(12))"
        #expect(out.sent == [MessageFromProcess.message(recipient: .broadcast, payload: .text(reference)).encoded()])
    }

    @Test func aTextPrefixIsComparedWithoutCopying() {
        #expect(MessagePayload.text("/nick bob").hasTextPrefix("/nick "))
        #expect(MessagePayload.text("/nick ").hasTextPrefix("/nick "))
        #expect(!MessagePayload.text("/nic").hasTextPrefix("/nick "))
        #expect(!MessagePayload.text("hello").hasTextPrefix("/nick "))
        #expect(MessagePayload.text("anything").hasTextPrefix(""))
        #expect(!MessagePayload.binary(Array("/nick bob".utf8)).hasTextPrefix("/nick "))
    }

    @Test func aMessageSentWhileATextIsBeingWrittenDoesNotOverwriteIt() {
        let out = RawOutput()
        let context = GuestContext(output: out, buffer: GuestEncodeBuffer(capacity: 64))
        context.sendText(to: .broadcast) { outer in
            outer.append("outer ")
            context.send("plain", to: .client(ClientId(1)))
            context.sendText(to: .client(ClientId(2))) { inner in
                inner.append("inner ")
                inner.append(String(repeating: "x", count: 300))  // grows the inner memory
            }
            context.setTimer(milliseconds: 5)
            outer.append("done")
        }
        #expect(out.sent == [
            MessageFromProcess.message(recipient: .client(ClientId(1)), payload: .text("plain")).encoded(),
            MessageFromProcess.message(recipient: .client(ClientId(2)), payload: .text("inner " + String(repeating: "x", count: 300))).encoded(),
            MessageFromProcess.setTimer(milliseconds: 5).encoded(),
            MessageFromProcess.message(recipient: .broadcast, payload: .text("outer done")).encoded(),
        ])
        // Afterwards the room's scratch memory is used again.
        sendGreeting(context, to: .broadcast, value: 1)
        #expect(out.sent.last == MessageFromProcess.message(recipient: .broadcast, payload: .text("new value: 1")).encoded())
    }

    @Test func anEmptyTextIsAnEmptyTextMessage() {
        let out = RawOutput()
        GuestContext(output: out).sendText(to: .broadcast) { _ in }
        #expect(out.sent == [MessageFromProcess.message(recipient: .broadcast, payload: .text("")).encoded()])
    }

    @Test func aContextWithoutScratchMemoryGetsTheSameTextThroughTheDefault() {
        let context = PlainContext()
        sendGreeting(context, to: .everyoneExcept(ClientId(3)), value: -12)
        #expect(context.sent.count == 1)
        #expect(context.sent[0].0 == .everyoneExcept(ClientId(3)))
        #expect(context.sent[0].1 == .text)
        #expect(context.sent[0].2 == Array("new value: -12".utf8))
    }

    @Test func borrowedBinaryIsSentWithoutACopyFirst() {
        let out = RawOutput()
        let context = GuestContext(output: out)
        let bytes: [UInt8] = [0, 255, 1, 128]
        bytes.withUnsafeBytes { context.send(binary: $0, to: .client(ClientId(9))) }
        #expect(out.sent == [MessageFromProcess.message(recipient: .client(ClientId(9)), payload: .binary(bytes)).encoded()])
    }
}
