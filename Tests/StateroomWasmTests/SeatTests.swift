import Stateroom
import StateroomWasm
import Testing

// The seats extension in the guest SDK (IDENTITY.md, "Seats"): `context.isConnected(_:)` in a
// guest answers through its output — in a wasm module, the host import
// `env.stateroom_client_connected`; in an output without a host behind it, true.

/// A service that reports what `context.isConnected(_:)` answers for clients 1 to 3 on every
/// message, and for the client itself when it connects.
struct Presence: StateroomService {
    var seen: [String] = []
    func presence(_ context: some StateroomContext) -> String {
        (UInt32(1)...3).map { "\($0):\(context.isConnected(ClientId($0)) ? "here" : "away")" }.joined(separator: " ")
    }
    mutating func connect(client: ClientId, context: some StateroomContext) {
        seen.append("connect \(client.rawValue) \(context.isConnected(client))")
    }
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        seen.append("message \(client.rawValue) \(presence(context))")
        context.send(presence(context), to: .client(client))
    }
}

/// An output that answers `isConnected` as a host with seats would, and records every question.
final class SeatedOutput: GuestOutput {
    var away: Set<ClientId> = []
    var asked: [UInt32] = []
    let recorder = RecordingOutput()
    var lines: [String] { recorder.lines }
    func emit(_ encoded: UnsafeRawBufferPointer) { recorder.emit(encoded) }
    func closeRoom(reason: String) { recorder.closeRoom(reason: reason) }
    func isConnected(_ client: ClientId) -> Bool {
        asked.append(client.rawValue)
        return !away.contains(client)
    }
}

func receive<S: StateroomService>(_ runtime: inout GuestRuntime<S, SeatedOutput>, _ bytes: [UInt8]) throws(ABIDecodeError) {
    try withBytes(bytes) { (raw) throws(ABIDecodeError) in try runtime.receive(raw) }.get()
}

@Suite struct GuestSeats {
    @Test func theContextAsksTheOutput() throws {
        let out = SeatedOutput()
        var runtime = GuestRuntime(service: Presence(), output: out)
        out.away = [ClientId(2)]
        try receive(&runtime, MessageToProcess.connect(ClientId(1)).encoded())
        try receive(&runtime, MessageToProcess.message(sender: ClientId(1), payload: .text("who")).encoded())
        out.away = [ClientId(1), ClientId(3)]
        try receive(&runtime, MessageToProcess.message(sender: ClientId(1), payload: .text("who")).encoded())
        #expect(runtime.service.seen == [
            "connect 1 true",
            "message 1 1:here 2:away 3:here",
            "message 1 1:away 2:here 3:away",
        ])
        #expect(out.lines == [
            "client(ClientId(1)) text \"1:here 2:away 3:here\"",
            "client(ClientId(1)) text \"1:away 2:here 3:away\"",
        ])
        #expect(out.asked == [1, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])
        #expect(runtime.context.isConnected(ClientId(3)) == false)
    }

    @Test func anOutputWithoutSeatsCountsEveryClientAsConnected() throws {
        // RecordingOutput implements only `emit` and `closeRoom`: the protocol's default answers.
        let out = RecordingOutput()
        #expect(out.isConnected(ClientId(1)))
        var runtime = GuestRuntime(service: Presence(), output: out)
        try receive(&runtime, MessageToProcess.connect(ClientId(2)).encoded())
        try receive(&runtime, MessageToProcess.message(sender: ClientId(2), payload: .text("who")).encoded())
        #expect(runtime.service.seen == ["connect 2 true", "message 2 1:here 2:here 3:here"])
        #expect(GuestContext(output: RecordingOutput()).isConnected(ClientId(99)))
    }

    @Test func theScriptTranscriptCountsEveryClientAsConnected() throws {
        // `stateroom build --native` and `stateroom replay` have no seats: every client is here.
        var service = Presence()
        let lines = runStateroomScript(try StateroomScript(parsing: "connect 1\ntext 1 who"), service: &service)
        #expect(lines.last == "< client 1: text \"1:here 2:here 3:here\"")
    }
}
