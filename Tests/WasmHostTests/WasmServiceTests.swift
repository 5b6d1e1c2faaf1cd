import Stateroom
import Testing
@testable import WasmHost

/// The behaviour of each well-behaved fixture, hosted by WasmService with a recording context.
@Suite struct WasmServiceTests {
    @Test func counterBroadcastsNewValues() throws {
        let (room, ctx) = try makeRoom(makeFactory(.counter))
        room.connect(client: ClientId(1), context: ctx)
        room.send("increment", from: 1, context: ctx)
        room.send("increment", from: 2, context: ctx)
        room.send("hello", from: 2, context: ctx)  // ignored
        room.send("decrement", from: 1, context: ctx)
        room.send("decrement", context: ctx)
        room.send("decrement", context: ctx)
        #expect(ctx.events == [
            .send(.broadcast, .text, Array("new value: 1".utf8)),
            .send(.broadcast, .text, Array("new value: 2".utf8)),
            .send(.broadcast, .text, Array("new value: 1".utf8)),
            .send(.broadcast, .text, Array("new value: 0".utf8)),
            .send(.broadcast, .text, Array("new value: -1".utf8)),
        ])
        #expect(!room.isTerminated)
    }

    @Test func eachRoomHasItsOwnInstance() throws {
        let factory = try makeFactory(.counter)
        let (a, ca) = try makeRoom(factory, id: "a")
        let (b, cb) = try makeRoom(factory, id: "b")
        a.send("increment", context: ca)
        a.send("increment", context: ca)
        b.send("increment", context: cb)
        #expect(ca.texts == ["new value: 1", "new value: 2"])
        #expect(cb.texts == ["new value: 1"])
    }

    @Test func relayBroadcastsTextAndBinaryVerbatim() throws {
        let (room, ctx) = try makeRoom(makeFactory(.relay))
        let binary = (0...255).map { UInt8($0) } + [0, 0, 255]
        room.send("héllo ✓", context: ctx)
        room.message(client: ClientId(4), message: .binary(binary), context: ctx)
        room.message(client: ClientId(4), message: .binary([]), context: ctx)
        room.send("", context: ctx)
        let big = [UInt8](repeating: 7, count: 200_000)  // grows guest memory past its 2 pages
        room.message(client: ClientId(4), message: .binary(big), context: ctx)
        #expect(ctx.events == [
            .send(.broadcast, .text, Array("héllo ✓".utf8)),
            .send(.broadcast, .binary, binary),
            .send(.broadcast, .binary, []),
            .send(.broadcast, .text, []),
            .send(.broadcast, .binary, big),
        ])
    }

    @Test func relayAcceptsBorrowedPayloads() throws {
        let (room, ctx) = try makeRoom(makeFactory(.relay))
        let bytes: [UInt8] = Array("borrowed".utf8)
        bytes.withUnsafeBytes {
            room.message(client: ClientId(1), message: MessagePayload(borrowing: $0, kind: .text), context: ctx)
        }
        #expect(ctx.texts == ["borrowed"])
    }

    @Test func recipientsClientAndEveryoneExcept() throws {
        let (room, ctx) = try makeRoom(makeFactory(.recipients))
        room.connect(client: ClientId(3), context: ctx)
        room.send("just me", from: 3, context: ctx)
        room.message(client: ClientId(3), message: .binary([1, 2, 3]), context: ctx)
        #expect(ctx.events == [
            .send(.client(ClientId(3)), .text, Array("welcome".utf8)),
            .send(.client(ClientId(3)), .text, Array("just me".utf8)),
            .send(.everyoneExcept(ClientId(3)), .binary, [1, 2, 3]),
        ])
    }

    @Test func timerIsSetOnInitTicksAndIsReplaced() throws {
        let (room, ctx) = try makeRoom(makeFactory(.timer))
        #expect(ctx.take() == [.setTimer(100)])
        room.timer(context: ctx)
        room.timer(context: ctx)
        #expect(ctx.take() == [
            .send(.broadcast, .text, Array("tick 1".utf8)), .setTimer(100),
            .send(.broadcast, .text, Array("tick 2".utf8)), .setTimer(100),
        ])
        room.send("slow", context: ctx)
        room.send("fast", context: ctx)
        room.send("stop", context: ctx)
        #expect(ctx.take() == [.setTimer(60000), .setTimer(0), .setTimer(3_600_000)])
    }

    @Test func initializeIsDeliveredOnceAsInit() throws {
        // A guest that echoes the raw bytes it receives, so the host's encoding is visible.
        let wat = minimalModule(recv: """
            (call $sendBytes (local.get $ptr) (local.get $len))
            """)
        let factory = try makeFactory(wat: wat)
        let (room, ctx) = try makeRoom(factory)
        room.connect(client: ClientId(7), context: ctx)
        room.disconnect(client: ClientId(7), context: ctx)
        room.send("hi", from: 2, context: ctx)
        room.message(client: ClientId(2), message: .binary([1, 2]), context: ctx)
        room.timer(context: ctx)
        let sent = ctx.events.map { event -> [UInt8] in
            if case .send(.broadcast, .binary, let b) = event { return b }
            return []
        }
        #expect(sent == [
            hex("00000000"), hex("01000000 07000000"), hex("02000000 07000000"),
            hex("03000000 02000000 01000000 0200000000000000 6869"),
            hex("03000000 02000000 00000000 0200000000000000 0102"), hex("04000000"),
        ])
    }

    @Test func wasiModuleLogsWithTheRoomAndGetsClocksAndRandom() throws {
        let recorder = LogRecorder()
        let factory = try makeFactory(.wasi, logger: recorder.logger())
        let (room, ctx) = try makeRoom(factory, id: "wasi-room")

        room.send("log", context: ctx)
        #expect(ctx.texts == ["logged"])
        let lines = recorder.lines
        #expect(lines.contains { $0.message == "ready from _initialize" })
        let out = lines.first { $0.message == "hello stdout" }
        let err = lines.first { $0.message == "hello stderr" }
        #expect(out?.metadata["room"] == "wasi-room")
        #expect(out?.metadata["stream"] == "stdout")
        #expect(err?.metadata["room"] == "wasi-room")
        #expect(err?.metadata["stream"] == "stderr")

        _ = ctx.take()
        room.send("random", context: ctx)
        room.send("random", context: ctx)
        let randoms = ctx.take().compactMap { e -> [UInt8]? in
            if case .send(_, .binary, let b) = e { return b } else { return nil }
        }
        #expect(randoms.count == 2 && randoms[0].count == 16 && randoms[0] != randoms[1])

        room.send("clock", context: ctx)
        guard case .send(_, .binary, let clock) = ctx.take().first, clock.count == 16 else {
            Issue.record("no clock reply"); return
        }
        let realtime = clock[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let monotonic = clock[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        #expect(realtime > 1_600_000_000 * 1_000_000_000)  // after 2020
        #expect(monotonic > 0)

        room.send("environ", context: ctx)
        #expect(ctx.take() == [.send(.broadcast, .binary, [UInt8](repeating: 0, count: 16))])

        room.send("badfd", context: ctx)
        #expect(ctx.take() == [.send(.broadcast, .binary, [8, 0, 0, 0, 8, 0, 0, 0])])  // EBADF, EBADF
        #expect(!room.isTerminated)
    }

    @Test func wasiLogOutputIsCappedPerCallback() throws {
        let recorder = LogRecorder()
        let (room, ctx) = try makeRoom(makeFactory(.wasi, logger: recorder.logger()), id: "spam")
        room.send("spam", context: ctx)
        #expect(ctx.texts == ["spammed"])
        let spam = recorder.lines.filter { $0.message == "spam" }
        #expect(spam.count == HostState.logLinesPerCallback)
        #expect(recorder.lines.contains { $0.message.contains("\(200 - HostState.logLinesPerCallback) lines dropped") })
    }

    @Test func procExitEndsTheInstance() throws {
        let (room, ctx) = try makeRoom(makeFactory(.wasi))
        room.send("exit", context: ctx)
        #expect(ctx.closeReason == "wasm guest failed in message: stateroom_recv: guest called proc_exit(3)")
        #expect(room.isTerminated)
        room.send("log", context: ctx)
        #expect(ctx.events.count == 1)
    }
}

/// A module with the ABI's exports around a custom `stateroom_recv` body; `$sendBytes(ptr, len)`
/// broadcasts raw bytes as a binary message.
func minimalModule(recv: String, extra: String = "", imports: String = "", version: Int = 1) -> String {
    """
    (module
      (import "env" "stateroom_send" (func $send (param i32 i32)))
      \(imports)
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 4096))
      (global (export "STATEROOM_API_VERSION") i32 (i32.const 16))
      (global (export "STATEROOM_API_PROTOCOL") i32 (i32.const 20))
      (data (i32.const 16) "\\0\(version)\\00\\00\\00\\00\\00\\00\\00")
      (func $malloc (export "stateroom_malloc") (param $size i32) (result i32)
        (local $p i32)
        (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $size)))
        (local.get $p))
      (func (export "stateroom_free") (param i32 i32) (global.set $heap (i32.const 4096)))
      (func $sendBytes (param $ptr i32) (param $len i32)
        (local $m i32)
        (local.set $m (call $malloc (i32.add (local.get $len) (i32.const 20))))
        (i32.store (local.get $m) (i32.const 0))
        (i32.store offset=4 (local.get $m) (i32.const 0))
        (i32.store offset=8 (local.get $m) (i32.const 0))
        (i64.store offset=12 (local.get $m) (i64.extend_i32_u (local.get $len)))
        (memory.copy (i32.add (local.get $m) (i32.const 20)) (local.get $ptr) (local.get $len))
        (call $send (local.get $m) (i32.add (local.get $len) (i32.const 20))))
      \(extra)
      (func (export "stateroom_recv") (param $ptr i32) (param $len i32)
        \(recv))
    )
    """
}
