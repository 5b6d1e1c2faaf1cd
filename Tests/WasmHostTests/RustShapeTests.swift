import Foundation
import Logging
import Stateroom
import Testing
@testable import WasmHost
import WasmKit

/// A module shaped like one built by Stateroom's Rust SDK for `wasm32-wasi`
/// (Fixtures/rust_shape/rust_shape.c, built by the same linker, wasm-ld): no `_initialize`, and
/// every export wrapped by the linker in the constructors (wasi-libc's environment set-up through
/// `environ_sizes_get`) and destructors (stdout flush through `fd_write`). The host's kept event
/// buffer and its WASI imports must work through those wrappers.
@Suite struct RustShapeTests {
    /// Built once per test process with the Swift toolchain's clang and wasm-ld.
    static let module: Result<[UInt8], any Error> = Result {
        let script = URL(filePath: #filePath).deletingLastPathComponent()
            .appending(path: "Fixtures/rust_shape/build.sh")
        let out = FileManager.default.temporaryDirectory
            .appending(path: "rust_shape-\(getpid()).wasm")
        defer { try? FileManager.default.removeItem(at: out) }
        // system(3) rather than Foundation's Process, whose run() leaves a weak-reference side
        // table behind that LeakSanitizer reports (make sanitize-address).
        let status = system("/bin/sh '\(script.path)' '\(out.path)'")
        guard status == 0 else {
            throw WasmLoadError.invalidModule(path: script.path, reason: "build.sh exited with status \(status)")
        }
        return [UInt8](try Data(contentsOf: out))
    }

    static func factory(logger: Logger = Logger(label: "wasm-test")) throws -> WasmServiceFactory {
        try WasmServiceFactory(bytes: module.get(), name: "rust_shape", limits: testLimits, logger: logger)
    }

    /// What the guest answers to `ctors`.
    struct Report: Equatable {
        var constructorRuns: UInt32, environCount: UInt32, environSize: UInt32, pages: UInt32, heapInUse: UInt32
    }

    static func report(_ room: WasmService, _ ctx: RecordingContext) throws -> Report {
        _ = ctx.take()
        room.send("ctors", context: ctx)
        let events = ctx.take()
        guard events.count == 1, case .send(.client(ClientId(1)), .binary, let b) = events[0], b.count == 20 else {
            Issue.record("unexpected answer to ctors: \(events)")
            throw WasmLoadError.invalidModule(path: "rust_shape", reason: "no report")
        }
        func u32(_ i: Int) -> UInt32 {
            UInt32(b[i * 4]) | UInt32(b[i * 4 + 1]) << 8 | UInt32(b[i * 4 + 2]) << 16 | UInt32(b[i * 4 + 3]) << 24
        }
        return Report(constructorRuns: u32(0), environCount: u32(1), environSize: u32(2), pages: u32(3), heapInUse: u32(4))
    }

    @Test func theModuleHasTheShapeOfARustSDKBuild() throws {
        let module = try parseWasm(bytes: Self.module.get())
        let exports = Set(module.exports.map(\.name))
        #expect(!exports.contains("_initialize") && !exports.contains("_start"))
        #expect(exports.isSuperset(of: ["memory", "stateroom_malloc", "stateroom_free", "stateroom_recv",
                                        "STATEROOM_API_VERSION", "STATEROOM_API_PROTOCOL", "__heap_base", "__data_end"]))
        let imports = Set(module.imports.map { "\($0.module).\($0.name)" })
        #expect(imports == ["env.stateroom_send", "wasi_snapshot_preview1.environ_sizes_get",
                            "wasi_snapshot_preview1.environ_get", "wasi_snapshot_preview1.fd_write",
                            "wasi_snapshot_preview1.proc_exit"])
    }

    /// One guest call per event even through the wrappers: the constructors run once for the
    /// buffer's `stateroom_malloc`, then once per event (not three times: malloc, recv, free).
    @Test func everyEventIsOneCallThroughTheWrappers() throws {
        let (room, ctx) = try makeRoom(Self.factory())
        room.connect(client: ClientId(1), context: ctx)
        for i in 0..<100 { room.send("message \(i)", context: ctx) }
        #expect(ctx.texts == (0..<100).map { "message \($0)" })
        let report = try Self.report(room, ctx)
        // malloc (the kept buffer) + Init + connect + 100 messages + `ctors` itself.
        #expect(report.constructorRuns == 1 + 1 + 1 + 100 + 1)
        // The host's WASI environment is empty, so wasi-libc's set-up allocates nothing.
        #expect(report.environCount == 0 && report.environSize == 0)
        #expect(!room.isTerminated)
    }

    @Test func theSeedCounterScenario() throws {
        let (room, ctx) = try makeRoom(Self.factory())
        room.connect(client: ClientId(1), context: ctx)
        room.connect(client: ClientId(2), context: ctx)
        room.send("increment", from: 1, context: ctx)
        room.send("increment", from: 2, context: ctx)
        room.send("decrement", from: 1, context: ctx)
        room.disconnect(client: ClientId(2), context: ctx)
        room.send("decrement", from: 1, context: ctx)
        room.send("decrement", from: 1, context: ctx)
        #expect(ctx.texts == ["new value: 1", "new value: 2", "new value: 1", "new value: 0", "new value: -1"])
    }

    /// Events of growing size: the kept buffer is freed and a bigger one allocated through the
    /// wrapped exports, an event over the largest kept size gets a block of its own; every payload
    /// arrives verbatim and the guest's heap does not grow with the number of messages.
    @Test func eventsOfEverySizeArriveAndTheHeapStaysFlat() throws {
        let (room, ctx) = try makeRoom(Self.factory())
        room.connect(client: ClientId(1), context: ctx)
        for size in [0, 1, 200, 300, 5_000, 70_000, 10, 40_000, 3] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ size) }
            _ = ctx.take()
            room.message(client: ClientId(1), message: .binary(payload), context: ctx)
            #expect(ctx.events == [.send(.broadcast, .binary, payload)], "size \(size)")
        }
        let before = try Self.report(room, ctx)
        for i in 0..<2_000 {
            room.message(client: ClientId(1), message: .binary([UInt8](repeating: UInt8(i & 0xff), count: 1 + i % 900)), context: ctx)
        }
        _ = ctx.take()
        let after = try Self.report(room, ctx)
        #expect(after.heapInUse == before.heapInUse)
        #expect(after.pages == before.pages)
        #expect(after.constructorRuns == before.constructorRuns + 2_001)
        #expect(!room.isTerminated)
    }

    /// The destructor's `fd_write` runs after `stateroom_recv` returns, still inside the export:
    /// the line reaches the room's log.
    @Test func stdoutFlushedByTheDestructorIsLogged() throws {
        let recorder = LogRecorder()
        let (room, ctx) = try makeRoom(Self.factory(logger: recorder.logger()))
        room.connect(client: ClientId(1), context: ctx)
        room.send("log", context: ctx)
        #expect(ctx.texts == ["logged"])
        #expect(recorder.lines.contains { $0.message.contains("hello from the rust-shaped guest") && $0.metadata["stream"] == "stdout" })
    }

    /// A panic (a trap inside the wrapped `stateroom_recv`) ends that room only.
    @Test func aPanicEndsOnlyThatRoom() throws {
        let factory = try Self.factory()
        let (a, actx) = try makeRoom(factory, id: "a")
        let (b, bctx) = try makeRoom(factory, id: "b")
        a.connect(client: ClientId(1), context: actx)
        b.connect(client: ClientId(1), context: bctx)
        a.send("increment", context: actx)
        a.send("panic", context: actx)
        #expect(a.isTerminated)
        #expect(actx.closeReason != nil)
        b.send("increment", context: bctx)
        b.send("increment", context: bctx)
        #expect(bctx.texts == ["new value: 1", "new value: 2"])
        #expect(!b.isTerminated)
    }

    /// The whole-instance snapshot (durable rooms) works for this shape: its only hidden mutable
    /// global is the shadow-stack pointer, and the restored room continues the count.
    @Test func snapshotRoundTripContinuesTheCount() throws {
        let factory = try Self.factory()
        #expect(factory.hiddenMutableGlobalCount == 1)
        let (room, ctx) = try makeRoom(factory)
        room.connect(client: ClientId(1), context: ctx)
        for _ in 0..<3 { room.send("increment", context: ctx) }
        let snapshot = try room.snapshot()
        let restored = try factory.makeWasmService(roomId: "restored", shard: 0, restoring: WasmSnapshot(decoding: snapshot.encoded()))
        let rctx = RecordingContext()
        restored.send("increment", context: rctx)
        restored.send("hello", context: rctx)
        #expect(rctx.texts == ["new value: 4", "hello"])
    }
}
