import Stateroom
import StateroomWasm
import Testing

/// Records what a guest hands to `stateroom_send`, decoded back into readable lines.
final class RecordingOutput: GuestOutput {
    var lines: [String] = []
    func emit(_ encoded: UnsafeRawBufferPointer) {
        do {
            switch try MessageFromProcess.decode(encoded) {
            case .message(let to, let payload): lines.append("\(to) \(describe(payload))")
            case .setTimer(let ms): lines.append("timer \(ms)")
            }
        } catch {
            lines.append("undecodable: \(error)")
        }
    }
    func closeRoom(reason: String) { lines.append("close \(reason)") }
}

/// A service exercising every callback and every kind of request.
struct Probe: StateroomService {
    var seen: [String] = []
    mutating func initialize(context: some StateroomContext) {
        seen.append("init")
        context.setTimer(milliseconds: 250)
    }
    mutating func connect(client: ClientId, context: some StateroomContext) {
        seen.append("connect \(client.rawValue)")
        context.send("hello \(client)", to: .client(client))
    }
    mutating func disconnect(client: ClientId, context: some StateroomContext) {
        seen.append("disconnect \(client.rawValue)")
        context.send("bye", to: .everyoneExcept(client))
    }
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        seen.append("message \(client.rawValue)")
        if message.isText("close") { context.closeRoom(reason: "asked to") }
        context.send(message, to: .broadcast)  // the borrowed view is re-sent as is
    }
    mutating func timer(context: some StateroomContext) {
        seen.append("timer")
        context.send(binary: [1, 2, 3], to: .broadcast)
    }
}

func deliver(_ runtime: inout GuestRuntime<Probe, RecordingOutput>, _ event: MessageToProcess) throws {
    try withBytes(event.encoded()) { (raw) throws(ABIDecodeError) in try runtime.receive(raw) }.get()
}

@Suite struct GuestDispatch {
    @Test func everyEventReachesItsCallbackAndEveryRequestIsEncoded() throws {
        let out = RecordingOutput()
        var runtime = GuestRuntime(service: Probe(), output: out)
        try deliver(&runtime, .initialize)
        try deliver(&runtime, .connect(ClientId(1)))
        try deliver(&runtime, .message(sender: ClientId(1), payload: .text("hi")))
        try deliver(&runtime, .message(sender: ClientId(1), payload: .binary([9, 0])))
        try deliver(&runtime, .timer)
        try deliver(&runtime, .disconnect(ClientId(1)))
        #expect(runtime.service.seen == ["init", "connect 1", "message 1", "message 1", "timer", "disconnect 1"])
        #expect(out.lines == [
            "timer 250",
            "client(ClientId(1)) text \"hello ClientId(1)\"",
            "broadcast text \"hi\"",
            "broadcast binary 0900",
            "broadcast binary 010203",
            "everyoneExcept(ClientId(1)) text \"bye\"",
        ])
    }

    @Test func closeRoomGoesToTheOutput() throws {
        let out = RecordingOutput()
        var runtime = GuestRuntime(service: Probe(), output: out)
        try deliver(&runtime, .message(sender: ClientId(2), payload: .text("close")))
        #expect(out.lines.first == "close asked to")
    }

    @Test func anUndecodableEventCallsNothing() {
        let out = RecordingOutput()
        var runtime = GuestRuntime(service: Probe(), output: out)
        let bad: [UInt8] = [9, 0, 0, 0]
        #expect(throws: ABIDecodeError.unknownVariant(type: "MessageToProcess", tag: 9)) {
            try withBytes(bad) { (raw) throws(ABIDecodeError) in try runtime.receive(raw) }.get()
        }
        #expect(runtime.service.seen.isEmpty)
        #expect(out.lines.isEmpty)
    }

    @Test func theEncodeBufferIsReusedAcrossMessages() throws {
        // Many sends through one context: each emitted buffer holds exactly one command.
        let out = RecordingOutput()
        var runtime = GuestRuntime(service: Probe(), output: out)
        for i in 1...50 { try deliver(&runtime, .connect(ClientId(UInt32(i)))) }
        #expect(out.lines.count == 50)
        #expect(out.lines.last == "client(ClientId(50)) text \"hello ClientId(50)\"")
    }
}

@Suite struct Scripts {
    @Test func theScriptFormatParses() throws {
        let s = try StateroomScript(parsing: """
            # a comment
            connect 1
            text 1 hello there
            binary 2 00ff
            timer

            disconnect 1
            """)
        #expect(s.steps == [.connect(1), .text(1, "hello there"), .binary(2, [0, 255]), .timer, .disconnect(1)])
    }

    @Test func aBadLineIsNamed() {
        #expect(throws: StateroomScriptError.self) { try StateroomScript(parsing: "connect 1\nshout 1 x") }
    }

    @Test func theTranscriptShowsInputsAndOutputs() throws {
        var probe = Probe()
        let lines = runStateroomScript(try StateroomScript(parsing: "connect 1\ntext 1 hi\ntimer"), service: &probe)
        #expect(lines == [
            "> init", "< set timer 250 ms",
            "> connect 1", "< client 1: text \"hello ClientId(1)\"",
            "> text 1 \"hi\"", "< broadcast: text \"hi\"",
            "> timer", "< broadcast: binary 010203",
        ])
    }
}
