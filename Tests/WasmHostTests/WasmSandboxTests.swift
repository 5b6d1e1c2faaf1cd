@_spi(Fuzzing) import WasmKit
import Stateroom
import StateroomWasm
import Testing
@testable import WasmHost

/// Faults end only their own instance; limits hold.
@Suite struct WasmSandboxTests {
    @Test(arguments: [
        ("boom", "wasm guest failed in message: stateroom_recv: trap: unreachable"),
        ("recurse", "wasm guest failed in message: stateroom_recv: trap: call stack exhausted"),
        ("divide", "wasm guest failed in message: stateroom_recv: trap: integer divide by zero"),
    ])
    func trapEndsTheInstance(command: String, reason: String) throws {
        let (room, ctx) = try makeRoom(makeFactory(.trap))
        room.connect(client: ClientId(1), context: ctx)
        #expect(ctx.events.isEmpty)
        room.send(command, context: ctx)
        #expect(ctx.events == [.closeRoom(reason)])
        #expect(room.isTerminated)
        // Every later call is a no-op.
        room.send(command, context: ctx)
        room.timer(context: ctx)
        room.disconnect(client: ClientId(1), context: ctx)
        #expect(ctx.events.count == 1)
    }

    @Test func faultyRoomDoesNotDisturbAnotherRoomOrModule() throws {
        let counter = try makeFactory(.counter)
        let trap = try makeFactory(.trap)
        let (healthy, hctx) = try makeRoom(counter, id: "healthy")
        let (other, octx) = try makeRoom(counter, id: "other")
        let (faulty, fctx) = try makeRoom(trap, id: "faulty")
        healthy.send("increment", context: hctx)
        faulty.send("boom", context: fctx)
        healthy.send("increment", context: hctx)
        other.send("decrement", context: octx)
        #expect(fctx.closeReason != nil)
        #expect(hctx.texts == ["new value: 1", "new value: 2"])
        #expect(octx.texts == ["new value: -1"])
        // The next room of the faulty module starts afresh.
        let (again, actx) = try makeRoom(trap, id: "faulty")
        again.connect(client: ClientId(1), context: actx)
        #expect(actx.events.isEmpty && !again.isTerminated)
    }

    @Test func infiniteLoopRunsOutOfFuel() throws {
        let counter = try makeFactory(.counter)
        let (healthy, hctx) = try makeRoom(counter)
        let (room, ctx) = try makeRoom(makeFactory(.loop))
        room.send("spin", context: ctx)
        #expect(ctx.events == [.closeRoom("wasm guest failed in message: stateroom_recv: exceeded its 100 ms budget (trap: out of fuel)")])
        healthy.send("increment", context: hctx)
        #expect(hctx.texts == ["new value: 1"])
    }

    @Test func fuelIsRefilledForEachCallback() throws {
        // 50 callbacks, each well within the budget but together far beyond it.
        let limits = WasmLimits(callbackBudgetMilliseconds: 1, fuelPerMillisecond: 100_000, spareInstances: 0)
        let wat = minimalModule(recv: """
            (local $i i32)
            (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
                     (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))
            """)
        let (room, ctx) = try makeRoom(makeFactory(wat: wat, limits: limits))
        for _ in 0..<50 { room.send("x", context: ctx) }
        #expect(ctx.events.isEmpty && !room.isTerminated)
    }

    @Test func memoryGrowthStopsAtTheCap() throws {
        let limits = WasmLimits(maxMemoryBytes: 4 << 20, spareInstances: 0)  // 64 pages
        let (room, ctx) = try makeRoom(makeFactory(.grow, limits: limits))
        room.send("grow", context: ctx)
        // 2 initial pages + 16-page steps: 50 pages fit, 66 would not.
        #expect(ctx.texts == ["full at 50 pages"])
        #expect(!room.isTerminated)
        room.send("oom", context: ctx)
        #expect(ctx.closeReason == "wasm guest failed in message: stateroom_recv: trap: unreachable")
    }

    @Test func memoryCapDefaultsTo64MiB() throws {
        let (room, ctx) = try makeRoom(makeFactory(.grow, limits: WasmLimits(spareInstances: 0)))
        room.send("grow", context: ctx)
        #expect(ctx.texts == ["full at 1010 pages"])  // 2 + 63 × 16 ≤ 1024 pages
    }

    /// Pins the WasmKit SPI the memory cap relies on (`@_spi(Fuzzing) Store.resourceLimiter`,
    /// consulted by `memory.grow` and at instantiation). If this breaks after a WasmKit upgrade,
    /// the memory cap is gone.
    @Test func resourceLimiterSPIStillGovernsMemoryGrow() throws {
        final class DenyAll: ResourceLimiter {
            func limitMemoryGrowth(to desired: Int) throws -> Bool { desired <= 65536 }
        }
        let engine = Engine(configuration: EngineConfiguration(memoryBoundsChecking: .software))
        let store = Store(engine: engine)
        store.resourceLimiter = DenyAll()
        let module = try parseWasm(bytes: wat2wasm("""
            (module (memory 1) (func (export "grow") (result i32) (memory.grow (i32.const 1))))
            """))
        let instance = try module.instantiate(store: store)
        #expect(try instance.exports[function: "grow"]!.invoke() == [.i32(UInt32(bitPattern: -1))])
    }

    @Test(arguments: [
        ("range", "stateroom_send: range 4294967280+100 is outside guest memory (131072 bytes)"),
        ("overflow", "stateroom_send: range 1024+4294967295 is outside guest memory (131072 bytes)"),
        ("tag", "stateroom_send: undecodable payload (8 bytes): unknown MessageFromProcess variant 9"),
        ("recipient", "stateroom_send: undecodable payload (24 bytes): unknown MessageRecipient variant 7"),
        ("length", "stateroom_send: undecodable payload (22 bytes): truncated input: MessagePayload bytes runs past the end"),
        ("utf8", "stateroom_send: undecodable payload (22 bytes): Text payload is not valid UTF-8"),
        ("short", "stateroom_send: undecodable payload (2 bytes): truncated input: MessageFromProcess tag runs past the end"),
    ])
    func badSendEndsTheInstance(command: String, detail: String) throws {
        let factory = try makeFactory(.badSend)
        let (room, ctx) = try makeRoom(factory)
        room.send("fine", context: ctx)
        #expect(ctx.take() == [.send(.broadcast, .text, Array("fine".utf8))])
        room.send(command, context: ctx)
        #expect(ctx.events == [.closeRoom("wasm guest failed in message: stateroom_recv: " + detail)])
        #expect(room.isTerminated)
    }

    @Test func mallocReturningOutOfRangePointerEndsTheInstance() throws {
        let wat = minimalModule(recv: "").replacingOccurrences(
            of: "(local.get $p))\n  (func (export \"stateroom_free\")",
            with: "(drop (local.get $p)) (i32.const 0xFFFFFF00))\n  (func (export \"stateroom_free\")")
        let (room, ctx) = try makeRoomOrRecord(wat)
        room?.send("x", context: ctx)
        #expect(ctx.closeReason?.contains("stateroom_malloc(") == true)
        #expect(ctx.closeReason?.contains("outside guest memory") == true)
    }

    /// `malloc_fault.wat`: `null` makes its `stateroom_malloc` answer 0 from the next call on,
    /// `past` a block starting 2 bytes before the end of its memory; both set a 0 ms timer.
    /// The host keeps its event buffer (256 bytes since `Init`), so the timer is delivered
    /// without a malloc; the first event that does not fit (320 bytes) frees the buffer and asks
    /// for a 512-byte one, which fails.
    @Test(arguments: [
        ("null", "stateroom_malloc(512) returned 0 (no memory for the 320-byte event)"),
        ("past", "stateroom_malloc(512) returned 131070, outside guest memory (131072 bytes)"),
    ])
    func mallocFailureEndsTheRoomWithoutWritingToGuestMemory(command: String, detail: String) throws {
        let log = LogRecorder()
        let factory = try makeFactory(.mallocFault, logger: log.logger())
        let (room, ctx) = try makeRoom(factory)
        let (other, octx) = try makeRoom(factory, id: "other")
        room.send("before", context: ctx)
        #expect(ctx.take() == [.send(.broadcast, .text, Array("before".utf8))])
        room.send(command, context: ctx)
        #expect(ctx.take() == [.setTimer(0)])
        room.timer(context: ctx)  // fits the kept buffer: no malloc, nothing fails
        room.send("fits", context: ctx)
        #expect(ctx.take() == [.send(.broadcast, .text, Array("fits".utf8))])
        #expect(!room.isTerminated)
        room.send(String(repeating: "z", count: 300), context: ctx)  // needs a bigger buffer: its malloc fails
        let reason = "wasm guest failed in message: " + detail
        #expect(ctx.events == [.closeRoom(reason)])
        #expect(room.isTerminated)
        let errors = log.lines.filter { $0.level == .error }
        #expect(errors.map(\.message) == [reason + "; closing the room"])
        #expect(errors.first?.metadata["room"] == "room")
        // The other room of the same module is untouched.
        other.send("after", context: octx)
        #expect(octx.events == [.send(.broadcast, .text, Array("after".utf8))])
    }

    @Test func mallocReturningNullWritesNothingAtAddressZero() throws {
        // The null answer comes before any write: guest memory at 0 keeps its bytes (the fixture
        // leaves 0..<16 zero), which the host would have overwritten with the event.
        let factory = try makeFactory(.mallocFault, limits: WasmLimits(spareInstances: 0))
        let guest = try GuestInstance(
            module: factory.module, engine: factory.lazyEngine, plan: factory.plan,
            limits: factory.limits, logger: factory.logger)
        try guest.withSink({ _ in }) { () throws(GuestFailure) in try guest.deliver(.initialize) }
        let text = Array("null".utf8)
        try text.withUnsafeBytes { raw in
            try guest.withSink({ _ in }) { () throws(GuestFailure) in
                try guest.deliver(.message(sender: ClientId(1), payload: MessagePayload(borrowing: raw, kind: .text)))
            }
        }
        // The timer fits the buffer `Init` got; the 320-byte message needs a new one: malloc
        // answers 0, and the host writes nothing.
        try guest.withSink({ _ in }) { () throws(GuestFailure) in try guest.deliver(.timer) }
        let big = [UInt8](repeating: 0x7A, count: 300)
        #expect(throws: GuestFailure.self) {
            try big.withUnsafeBytes { raw in
                try guest.withSink({ _ in }) { () throws(GuestFailure) in
                    try guest.deliver(.message(sender: ClientId(1), payload: MessagePayload(borrowing: raw, kind: .text)))
                }
            }
        }
        let low = try guest.state.read(0, 16, "test") { Array($0) }
        #expect(low == [UInt8](repeating: 0, count: 16))
    }

    @Test func sparesAreReadyAndUsed() async throws {
        let factory = try makeFactory(.counter, limits: WasmLimits(spareInstances: 2))
        for _ in 0..<200 where factory.readySpareCount < 2 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(factory.readySpareCount == 2)
        var rooms: [(WasmService, RecordingContext)] = []
        for i in 0..<5 { rooms.append(try makeRoom(factory, id: "r\(i)")) }  // spares, then fresh ones
        for (room, ctx) in rooms {
            room.send("increment", context: ctx)
            #expect(ctx.texts == ["new value: 1"])
        }
        for _ in 0..<200 where factory.readySpareCount < 2 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(factory.readySpareCount == 2)
    }

    @Test func roomsOnManyThreadsAtOnce() async throws {
        // Shards are threads: one factory, rooms created and driven concurrently.
        let factory = try makeFactory(.counter, limits: WasmLimits(spareInstances: 1))
        let results = await withTaskGroup(of: [String].self) { group in
            for shard in 0..<4 {
                group.addTask {
                    guard let room = try? factory.makeWasmService(roomId: "s\(shard)", shard: shard) else { return [] }
                    let ctx = RecordingContext()
                    room.initialize(context: ctx)
                    for _ in 0..<50 { room.send("increment", context: ctx) }
                    return [ctx.texts.last ?? ""]
                }
            }
            return await group.reduce(into: []) { $0 += $1 }
        }
        #expect(results == Array(repeating: "new value: 50", count: 4))
    }
}

/// A room of an inline module; the factory must load.
func makeRoomOrRecord(_ wat: String) throws -> (WasmService?, RecordingContext) {
    let (room, ctx) = try makeRoom(makeFactory(wat: wat))
    return (room, ctx)
}

import WAT
