import Stateroom
import StateroomWasm
import Testing

// The identity extension in the guest SDK (IDENTITY.md): the `ClientIdentity` codec, the
// runtime's client → identity table behind `context.identity(of:)`, and the script tools.

/// A service that reports what `context.identity(of:)` answers in every callback.
struct WhoIs: StateroomService {
    var seen: [String] = []
    func name(_ client: ClientId, _ context: some StateroomContext) -> String {
        context.identity(of: client).map { "\"\($0)\"" } ?? "nil"
    }
    mutating func connect(client: ClientId, context: some StateroomContext) {
        seen.append("connect \(client.rawValue) \(name(client, context))")
        context.send("hello \(context.identity(of: client) ?? "client\(client.rawValue)")", to: .client(client))
    }
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        seen.append("message \(client.rawValue) \(name(client, context))")
    }
    mutating func disconnect(client: ClientId, context: some StateroomContext) {
        seen.append("disconnect \(client.rawValue) \(name(client, context))")
    }
    mutating func timer(context: some StateroomContext) {
        seen.append("timer 1:\(name(ClientId(1), context)) 2:\(name(ClientId(2), context))")
    }
}

func receive<S: StateroomService>(_ runtime: inout GuestRuntime<S, RecordingOutput>, _ bytes: [UInt8]) throws(ABIDecodeError) {
    try withBytes(bytes) { (raw) throws(ABIDecodeError) in try runtime.receive(raw) }.get()
}

@Suite struct ClientIdentityCodec {
    @Test func encodesAsVariantFiveWithABincodeString() {
        #expect(ClientIdentity(client: ClientId(7), identity: "bob").encoded()
                == hex("05000000 07000000 0300000000000000 626f62"))
        #expect(ClientIdentity(client: ClientId(1), identity: "").encoded() == hex("05000000 01000000 0000000000000000"))
        let e = ClientIdentity(client: ClientId(0x01020304), identity: "zoë")
        #expect(e.encodedCount == 20)
        #expect(e.encoded() == hex("05000000 04030201 0400000000000000 7a6fc3ab"))
    }

    @Test func decodesWhatItEncodesAndIgnoresTrailingBytes() throws {
        for identity in ["bob", "", "zoë ✓ 🐙", String(repeating: "é", count: 600)] {
            let bytes = ClientIdentity(client: ClientId(42), identity: identity).encoded() + [9, 9]
            let decoded = try withBytes(bytes) { (raw) throws(ABIDecodeError) in try ClientIdentity.decode(raw) }.get()
            #expect(decoded.client == ClientId(42))
            #expect(decoded.identity == identity)
        }
    }

    @Test func malformedInputIsNamed() {
        func decode(_ s: String) -> ABIDecodeError? {
            guard case .failure(let e) = withBytes(hex(s), { (raw) throws(ABIDecodeError) in try ClientIdentity.decode(raw) })
            else { return nil }
            return e
        }
        #expect(decode("") == .truncated(field: "MessageToProcess tag"))
        #expect(decode("05000000 0700") == .truncated(field: "ClientIdentity.client"))
        #expect(decode("05000000 07000000 03000000") == .truncated(field: "ClientIdentity.identity length"))
        #expect(decode("05000000 07000000 0400000000000000 626f62") == .truncated(field: "ClientIdentity.identity bytes"))
        #expect(decode("05000000 07000000 ffffffffffffffff 626f62") == .truncated(field: "ClientIdentity.identity bytes"))
        #expect(decode("01000000 07000000") == .unknownVariant(type: "ClientIdentity", tag: 1))
    }

    @Test func abiV1StillRefusesVariantFive() {
        // MessageToProcess is ABI v1 exactly: the extension lives beside it, not in it.
        let bytes = ClientIdentity(client: ClientId(7), identity: "bob").encoded()
        let result = withBytes(bytes) { (raw) throws(ABIDecodeError) in try MessageToProcess.decode(raw) }
        guard case .failure(let error) = result else { Issue.record("decoded variant 5 as v1"); return }
        #expect(error == .unknownVariant(type: "MessageToProcess", tag: 5))
    }

    @Test func isEncodedLooksAtTheTagOnly() {
        #expect(withBytes(hex("05000000")) { ClientIdentity.isEncoded(in: $0) } == .success(true))
        #expect(withBytes(hex("050000")) { ClientIdentity.isEncoded(in: $0) } == .success(false))
        #expect(withBytes(hex("01000000 05000000")) { ClientIdentity.isEncoded(in: $0) } == .success(false))
    }
}

@Suite struct GuestIdentityTable {
    @Test func theContextAnswersDuringConnectMessagesAndDisconnectThenForgets() throws {
        let out = RecordingOutput()
        var runtime = GuestRuntime(service: WhoIs(), output: out, acceptsIdentities: true)
        try receive(&runtime, MessageToProcess.initialize.encoded())
        try receive(&runtime, ClientIdentity(client: ClientId(1), identity: "bob").encoded())
        try receive(&runtime, MessageToProcess.connect(ClientId(1)).encoded())
        try receive(&runtime, MessageToProcess.connect(ClientId(2)).encoded())  // anonymous
        try receive(&runtime, MessageToProcess.message(sender: ClientId(1), payload: .text("hi")).encoded())
        try receive(&runtime, MessageToProcess.message(sender: ClientId(2), payload: .text("hi")).encoded())
        try receive(&runtime, MessageToProcess.timer.encoded())
        try receive(&runtime, MessageToProcess.disconnect(ClientId(1)).encoded())
        try receive(&runtime, MessageToProcess.timer.encoded())
        #expect(runtime.service.seen == [
            "connect 1 \"bob\"", "connect 2 nil",
            "message 1 \"bob\"", "message 2 nil",
            "timer 1:\"bob\" 2:nil",
            "disconnect 1 \"bob\"",   // still known in its disconnect callback
            "timer 1:nil 2:nil",      // and dropped after it
        ])
        #expect(out.lines == [
            "client(ClientId(1)) text \"hello bob\"", "client(ClientId(2)) text \"hello client2\"",
        ])
        #expect(runtime.context.identities.count == 0)
    }

    @Test func clientIdentityCallsNoCallbackAndSendsNothing() throws {
        let out = RecordingOutput()
        var runtime = GuestRuntime(service: WhoIs(), output: out, acceptsIdentities: true)
        try receive(&runtime, ClientIdentity(client: ClientId(3), identity: "carol").encoded())
        #expect(runtime.service.seen.isEmpty && out.lines.isEmpty)
        #expect(runtime.context.identity(of: ClientId(3)) == "carol")
    }

    @Test func aRuntimeWithoutTheExtensionRefusesVariantFive() {
        // What a module that does not declare STATEROOM_IDENTITY_VERSION would do (the host
        // never sends it one).
        let out = RecordingOutput()
        var runtime = GuestRuntime(service: WhoIs(), output: out)
        #expect(!runtime.acceptsIdentities)
        #expect(throws: ABIDecodeError.unknownVariant(type: "MessageToProcess", tag: 5)) {
            try receive(&runtime, ClientIdentity(client: ClientId(1), identity: "bob").encoded())
        }
        #expect(runtime.service.seen.isEmpty && out.lines.isEmpty)
        #expect(runtime.context.identity(of: ClientId(1)) == nil)
    }

    @Test func aTruncatedClientIdentityIsRefusedAndRecordsNothing() {
        var runtime = GuestRuntime(service: WhoIs(), output: RecordingOutput(), acceptsIdentities: true)
        #expect(throws: ABIDecodeError.truncated(field: "ClientIdentity.identity bytes")) {
            try receive(&runtime, hex("05000000 01000000 0500000000000000 626f62"))
        }
        #expect(runtime.context.identity(of: ClientId(1)) == nil)
    }

    @Test func theTableKeepsAnyOrderReplacesAndRemoves() {
        let table = GuestIdentities()
        for id: UInt32 in [5, 1, 9, 3, 7, 2] { table.set("c\(id)", for: ClientId(id)) }
        #expect(table.count == 6)
        for id: UInt32 in [1, 2, 3, 5, 7, 9] { #expect(table.identity(of: ClientId(id)) == "c\(id)") }
        for id: UInt32 in [0, 4, 6, 8, 10, .max] { #expect(table.identity(of: ClientId(id)) == nil) }
        table.set("again", for: ClientId(5))
        #expect(table.count == 6 && table.identity(of: ClientId(5)) == "again")
        table.remove(ClientId(5))
        table.remove(ClientId(4))  // not there: nothing happens
        #expect(table.count == 5 && table.identity(of: ClientId(5)) == nil && table.identity(of: ClientId(7)) == "c7")
        for id: UInt32 in 1...10 { table.remove(ClientId(id)) }
        #expect(table.count == 0)
    }

    @Test func aGuestContextMadeByHandAnswersFromItsTable() {
        let identities = GuestIdentities()
        identities.set("dave", for: ClientId(4))
        let context = GuestContext(output: RecordingOutput(), identities: identities)
        #expect(context.identity(of: ClientId(4)) == "dave")
        #expect(context.identity(of: ClientId(5)) == nil)
    }
}

@Suite struct IdentityScripts {
    @Test func connectAsParsesTheRestOfTheLine() throws {
        let s = try StateroomScript(parsing: "connect 1\nconnect 2 as bob\nconnect 3 as Zoë Smith ✓\ndisconnect 2")
        #expect(s.steps == [.connect(1), .connect(2, identity: "bob"), .connect(3, identity: "Zoë Smith ✓"), .disconnect(2)])
    }

    @Test func aConnectWithSomethingElseIsNamed() {
        #expect(throws: StateroomScriptError.self) { try StateroomScript(parsing: "connect 1 bob") }
        #expect(throws: StateroomScriptError.self) { try StateroomScript(parsing: "connect 1 as ") }
    }

    @Test func theTranscriptContextAnswersIdentitiesUntilDisconnect() throws {
        var service = WhoIs()
        let lines = runStateroomScript(try StateroomScript(parsing: """
            connect 1 as bob
            connect 2
            text 1 hi
            timer
            disconnect 1
            timer
            """), service: &service)
        #expect(lines == [
            "> init",
            "> connect 1 as \"bob\"", "< client 1: text \"hello bob\"",
            "> connect 2", "< client 2: text \"hello client2\"",
            "> text 1 \"hi\"", "> timer", "> disconnect 1", "> timer",
        ])
        #expect(service.seen == [
            "connect 1 \"bob\"", "connect 2 nil", "message 1 \"bob\"", "timer 1:\"bob\" 2:nil",
            "disconnect 1 \"bob\"", "timer 1:nil 2:nil",
        ])
    }

    @Test func benchMessagesSeeTheSetupsIdentities() throws {
        var service = WhoIs()
        _ = benchStateroomService(service: &service, setup: try StateroomScript(parsing: "connect 1 as bob"),
                                  text: "x", client: 1, count: 3, rounds: 1)
        #expect(service.seen == ["connect 1 \"bob\"", "message 1 \"bob\"", "message 1 \"bob\"", "message 1 \"bob\""])
    }
}
