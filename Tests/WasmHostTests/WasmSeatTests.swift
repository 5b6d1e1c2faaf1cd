import Stateroom
import Testing
@testable import WasmHost

/// The seats extension (StateroomWasm/IDENTITY.md, "Seats"): a module that imports
/// `env.stateroom_client_connected(client: i32) -> i32` asks the context of the callback in
/// progress whether a client is connected (1) or away in its seat's grace or not in the room (0);
/// a module without the import loads and runs exactly as before.
@Suite struct WasmSeatTests {
    static let importLine = #"(import "env" "stateroom_client_connected" (func $connected (param i32) (result i32)))"#

    /// A guest that answers every `Message` with a binary broadcast of two little-endian u32s:
    /// the client it asked about and what `stateroom_client_connected` answered. It asks about
    /// the client id in the payload's first 4 bytes, or about the sender if the payload is empty.
    static let askingModule = minimalModule(
        recv: """
            (local $client i32)
            (if (i32.ne (i32.load (local.get $ptr)) (i32.const 3)) (then (return)))
            (local.set $client (i32.load offset=4 (local.get $ptr)))
            (if (i64.ge_u (i64.load offset=12 (local.get $ptr)) (i64.const 4))
              (then (local.set $client (i32.load offset=20 (local.get $ptr)))))
            (i32.store (i32.const 1024) (local.get $client))
            (i32.store (i32.const 1028) (call $connected (local.get $client)))
            (call $sendBytes (i32.const 1024) (i32.const 8))
            """,
        imports: importLine)

    /// The answers the asking guest sent, as (client, answer) pairs.
    static func answers(_ ctx: RecordingContext) -> [(client: UInt32, answer: UInt32)] {
        ctx.events.compactMap { event in
            guard case .send(.broadcast, .binary, let b) = event, b.count == 8 else { return nil }
            func u32(_ at: Int) -> UInt32 { b[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
            return (u32(0), u32(4))
        }
    }

    static func ask(_ room: WasmService, about client: UInt32, from sender: UInt32 = 1, _ ctx: RecordingContext) {
        let bytes = withUnsafeBytes(of: client.littleEndian) { Array($0) }
        room.message(client: ClientId(sender), message: .binary(bytes), context: ctx)
    }

    @Test func theGuestSeesTrueAndFalseFromTheCallbacksContext() throws {
        let factory = try makeFactory(wat: Self.askingModule)
        #expect(factory.importsClientConnected)
        let (room, ctx) = try makeRoom(factory)
        ctx.away = [ClientId(2)]
        room.connect(client: ClientId(1), context: ctx)
        room.connect(client: ClientId(2), context: ctx)
        room.message(client: ClientId(1), message: .binary([]), context: ctx)  // the sender itself
        Self.ask(room, about: 2, ctx)
        Self.ask(room, about: 3, ctx)
        ctx.away = []  // client 2 resumed its seat
        Self.ask(room, about: 2, ctx)
        ctx.away = [ClientId(1)]
        room.message(client: ClientId(1), message: .binary([]), context: ctx)
        #expect(Self.answers(ctx).map { [$0.client, $0.answer] } == [[1, 1], [2, 0], [3, 1], [2, 1], [1, 0]])
        #expect(ctx.connectedQueries == [1, 2, 3, 2, 1].map(ClientId.init))
        #expect(ctx.closeReason == nil && !room.isTerminated)
    }

    @Test func eachCallbackAsksItsOwnContext() throws {
        let (room, first) = try makeRoom(makeFactory(wat: Self.askingModule))
        let second = RecordingContext()
        second.away = [ClientId(7)]
        Self.ask(room, about: 7, first)
        Self.ask(room, about: 7, second)
        Self.ask(room, about: 7, first)
        #expect(Self.answers(first).map(\.answer) == [1, 1])
        #expect(Self.answers(second).map(\.answer) == [0])
        #expect(first.connectedQueries.count == 2 && second.connectedQueries.count == 1)
    }

    @Test func everyCallbackMayAsk() throws {
        // A guest that asks about client 4 on every event and broadcasts the event's tag and
        // the answer: connect, disconnect, timer and init all have the context to ask.
        let wat = minimalModule(
            recv: """
                (i32.store (i32.const 1024) (i32.load (local.get $ptr)))
                (i32.store (i32.const 1028) (call $connected (i32.const 4)))
                (call $sendBytes (i32.const 1024) (i32.const 8))
                """,
            imports: Self.importLine)
        let service = try makeFactory(wat: wat).makeWasmService(roomId: "room", shard: 0)
        let ctx = RecordingContext()
        ctx.away = [ClientId(4)]
        service.initialize(context: ctx)
        service.connect(client: ClientId(4), context: ctx)
        service.timer(context: ctx)
        ctx.away = []
        service.disconnect(client: ClientId(4), context: ctx)
        #expect(Self.answers(ctx).map { [$0.client, $0.answer] } == [[0, 0], [1, 0], [4, 0], [2, 1]])
    }

    @Test func outsideACallbackTheAnswerIsConnected() throws {
        // `_initialize` runs at instantiation, with no room: the host answers 1 (no crash), and
        // the guest keeps the answer at 1100 to report it on its first message.
        let wat = minimalModule(
            recv: "(call $sendBytes (i32.const 1100) (i32.const 4))",
            extra: """
                (func (export "_initialize")
                  (i32.store (i32.const 1100) (call $connected (i32.const 9))))
                """,
            imports: Self.importLine)
        let (room, ctx) = try makeRoom(makeFactory(wat: wat))
        room.send("report", context: ctx)
        #expect(ctx.events.last == .send(.broadcast, .binary, [1, 0, 0, 0]))
        #expect(ctx.connectedQueries.isEmpty)
    }

    @Test func theHostStateAnswersConnectedWithNoCallbackInProgress() throws {
        let factory = try makeFactory(wat: Self.askingModule)
        let guest = try GuestInstance(
            module: factory.module, engine: factory.lazyEngine, plan: factory.plan,
            limits: factory.limits, logger: factory.logger)
        #expect(guest.state.isConnected == nil)
        #expect(guest.state.clientConnected(5))
        let answer = guest.withSink({ _ in }, isConnected: { $0 != ClientId(5) }) {
            [guest.state.clientConnected(5), guest.state.clientConnected(6)]
        }
        #expect(answer == [false, true])
        #expect(guest.state.isConnected == nil && guest.state.sink == nil)  // cleared after the call
        #expect(guest.state.clientConnected(5))
    }

    @Test func aWrongImportSignatureIsRefusedAtLoad() throws {
        let cases: [(declaration: String, actual: String)] = [
            ("(func (param i32))", "(i32) -> ()"),
            ("(func (param i64) (result i32))", "(i64) -> (i32)"),
            ("(func (param i32 i32) (result i32))", "(i32, i32) -> (i32)"),
            ("(func (result i32))", "() -> (i32)"),
        ]
        for (declaration, actual) in cases {
            let wat = minimalModule(recv: "", imports: #"(import "env" "stateroom_client_connected" \#(declaration))"#)
            let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
            #expect(error == .wrongImportType(
                module: "env", name: "stateroom_client_connected", expected: "(i32) -> (i32)", actual: actual))
            #expect(error?.description
                == "wasm import `env.stateroom_client_connected` has type \(actual), expected (i32) -> (i32)")
        }
        // Imported as something other than a function, or from another module: not provided.
        let global = minimalModule(recv: "", imports: #"(import "env" "stateroom_client_connected" (global i32))"#)
        #expect(throws: WasmLoadError.unexpectedImport(module: "env", name: "stateroom_client_connected", kind: "global")) {
            try makeFactory(wat: global)
        }
        let elsewhere = minimalModule(
            recv: "", imports: #"(import "stateroom" "stateroom_client_connected" (func (param i32) (result i32)))"#)
        let other = #expect(throws: WasmLoadError.self) { try makeFactory(wat: elsewhere) }
        #expect(other == .unexpectedImport(module: "stateroom", name: "stateroom_client_connected", kind: "function"))
        #expect(other?.description.contains("allowed: env.stateroom_send, env.stateroom_client_connected and") == true)
    }

    @Test func aModuleWithoutTheImportIsUnaffected() throws {
        // The v1 fixtures: same answers as ever, and the host never asks the context.
        let counter = try makeFactory(.counter)
        #expect(!counter.importsClientConnected)
        let (room, ctx) = try makeRoom(counter)
        ctx.away = [ClientId(1)]
        room.connect(client: ClientId(1), context: ctx)
        room.send("increment", from: 1, context: ctx)
        room.send("increment", from: 2, context: ctx)
        room.disconnect(client: ClientId(1), context: ctx)
        #expect(ctx.texts == ["new value: 1", "new value: 2"])
        #expect(ctx.connectedQueries.isEmpty)
        #expect(!room.isTerminated)

        // The bytes it is handed are ABI v1's, whoever is away.
        let echo = try makeFactory(wat: WasmIdentityTests.echoModule())
        #expect(!echo.importsClientConnected)
        let (echoRoom, echoCtx) = try makeRoom(echo)
        echoCtx.away = [ClientId(7)]
        echoRoom.connect(client: ClientId(7), context: echoCtx)
        echoRoom.send("hi", from: 7, context: echoCtx)
        #expect(WasmIdentityTests.delivered(echoCtx) == [
            hex("00000000"), hex("01000000 07000000"), hex("03000000 07000000 01000000 0200000000000000 6869"),
        ])
        #expect(echoCtx.connectedQueries.isEmpty)

        for fixture in [Fixture.relay, .recipients, .timer, .wasi] {
            #expect(try !makeFactory(fixture).importsClientConnected, "\(fixture)")
        }
    }

    @Test func theImportWorksAlongsideTheIdentityExtension() throws {
        // Both extensions in one module: `ClientIdentity` before `Connect`, and the guest may ask
        // while handling either (here: tag and answer about the client, for every event).
        let wat = minimalModule(
            recv: """
                (i32.store (i32.const 1024) (i32.load (local.get $ptr)))
                (i32.store (i32.const 1028) (call $connected (i32.const 3)))
                (call $sendBytes (i32.const 1024) (i32.const 8))
                """,
            extra: WasmIdentityTests.identityExport(),
            imports: Self.importLine)
        let factory = try makeFactory(wat: wat)
        #expect(factory.importsClientConnected && factory.acceptsIdentities)
        let (room, ctx) = try makeRoom(factory)
        ctx.identities[ClientId(3)] = "bob"
        ctx.away = [ClientId(3)]
        room.connect(client: ClientId(3), context: ctx)
        #expect(Self.answers(ctx).map { [$0.client, $0.answer] } == [[0, 1], [5, 0], [1, 0]])
    }
}
