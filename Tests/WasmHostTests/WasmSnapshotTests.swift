import Foundation
import Logging
import Stateroom
import Testing
import WAT
@testable import WasmHost

/// Snapshots of a wasm room (WasmSnapshot.swift): captured between callbacks, encoded, decoded,
/// restored into a fresh instance of the same module, which then continues the room exactly.
@Suite struct WasmSnapshotTests {
    /// Fixtures/snapshot.wat: a counter and the allocator's heap pointer in memory, the number of
    /// messages in the exported mutable global `messages` (see the file for its commands).
    static func snapshotModule() throws -> [UInt8] {
        let url = Bundle.module.url(forResource: "snapshot", withExtension: "wat", subdirectory: "Fixtures")!
        return try wat2wasm(String(contentsOf: url, encoding: .utf8))
    }

    static func snapshotFactory(limits: WasmLimits = testLimits) throws -> WasmServiceFactory {
        try WasmServiceFactory(bytes: snapshotModule(), name: "snapshot", limits: limits, logger: Logger(label: "wasm-test"))
    }

    /// A room of `factory` after `Init` and `events` (texts from client 1), its context cleared.
    static func room(
        _ factory: WasmServiceFactory, after events: [String], id: String = "room"
    ) throws -> (WasmService, RecordingContext) {
        let (room, ctx) = try makeRoom(factory, id: id)
        #expect(ctx.texts == ["ready"])
        room.connect(client: ClientId(1), context: ctx)
        for text in events { room.send(text, context: ctx) }
        #expect(!room.isTerminated)
        _ = ctx.take()
        return (room, ctx)
    }

    /// Sends `events` to each room and returns what each broadcast, room by room.
    static func replies(_ rooms: [(WasmService, RecordingContext)], to events: [String]) -> [[String]] {
        rooms.map { room, ctx in
            for text in events { room.send(text, context: ctx) }
            defer { _ = ctx.take() }
            return ctx.texts
        }
    }

    @Test func roundTripContinuesTheRoom() throws {
        let factory = try Self.snapshotFactory()
        let (original, _) = try Self.room(factory, after: ["increment", "hello", "increment", "increment"])
        let snapshot = try original.snapshot()
        #expect(snapshot.formatVersion == WasmSnapshot.currentFormatVersion)
        #expect(snapshot.moduleHash == factory.moduleHash)
        #expect(snapshot.globals == [WasmSnapshot.Global(name: "messages", value: .i64(4))])

        let decoded = try WasmSnapshot(decoding: snapshot.encoded())
        #expect(decoded == snapshot)
        let restored = try factory.makeWasmService(roomId: "restored", shard: 0, restoring: decoded)
        let ctx = RecordingContext()
        // The room's state is already initialized: no `Init`, so no `ready`.
        #expect(ctx.events.isEmpty)
        // Capturing the restored room gives the snapshot it was made from.
        #expect(try restored.snapshot() == snapshot)

        let events = ["increment", "info", "other", "increment"]
        let replies = Self.replies([(original, RecordingContext()), (restored, ctx)], to: events)
        #expect(replies[1] == ["count 4 messages 5", "mallocs 6 buffer 65536", "count 5 messages 8"])
        #expect(replies[1] == replies[0])
        // A fresh room of the same module starts from zero: the state came from the snapshot.
        let (fresh, _) = try Self.room(factory, after: [], id: "fresh")
        #expect(Self.replies([(fresh, RecordingContext())], to: ["increment"]) == [["count 1 messages 1"]])
    }

    @Test func restoredRoomAdoptsTheEventBuffer() throws {
        let factory = try Self.snapshotFactory()
        let (original, octx) = try Self.room(factory, after: ["increment"])
        original.send("info", context: octx)
        let before = octx.texts
        let snapshot = try original.snapshot()
        #expect(snapshot.eventBuffer == WasmSnapshot.EventBuffer(pointer: 65536, capacity: 256))
        let restored = try factory.makeWasmService(roomId: "restored", shard: 0, restoring: snapshot)
        let ctx = RecordingContext()
        restored.send("info", context: ctx)
        // Same block, and no `stateroom_malloc` for a new one: only the previous reply's.
        #expect(before == ["mallocs 3 buffer 65536"])
        #expect(ctx.texts == ["mallocs 4 buffer 65536"])
    }

    @Test func restoringTwiceGivesIndependentRooms() throws {
        let factory = try Self.snapshotFactory()
        let (original, _) = try Self.room(factory, after: ["increment", "increment"])
        let snapshot = try original.snapshot()
        let first = try factory.makeWasmService(roomId: "first", shard: 0, restoring: snapshot)
        let second = try factory.makeWasmService(roomId: "second", shard: 1, restoring: snapshot)
        let (fctx, sctx, octx) = (RecordingContext(), RecordingContext(), RecordingContext())
        first.send("increment", context: fctx)
        first.send("increment", context: fctx)
        second.send("increment", context: sctx)
        original.send("x", context: octx)
        original.send("increment", context: octx)
        #expect(fctx.texts == ["count 3 messages 3", "count 4 messages 4"])
        #expect(sctx.texts == ["count 3 messages 3"])
        #expect(octx.texts == ["count 3 messages 4"])
        // The snapshot itself is a value: later events changed none of it.
        #expect(try WasmSnapshot(decoding: snapshot.encoded()) == snapshot)
        #expect(snapshot.globals == [WasmSnapshot.Global(name: "messages", value: .i64(2))])
    }

    @Test func zeroPagesAreNotStored() throws {
        let factory = try Self.snapshotFactory()
        // 2 pages, then 3 × 16: 50 pages (3.1 MiB), non-zero only in pages 0 (data), 1 (heap)
        // and the last page of each growth.
        let (original, _) = try Self.room(factory, after: ["grow", "grow", "grow", "increment"])
        let snapshot = try original.snapshot()
        #expect(snapshot.memory.pageCount == 50)
        #expect(snapshot.memory.storedPages == [0, 1, 17, 33, 49])
        #expect(snapshot.memory.bytes.count == 5 * WasmSnapshot.pageSize)
        let encoded = snapshot.encoded()
        #expect(encoded.count < snapshot.memory.byteCount / 9)
        #expect(encoded.count < 5 * WasmSnapshot.pageSize + 200)

        // The restored room's memory was grown to the image's size, page contents and all.
        let restored = try factory.makeWasmService(roomId: "restored", shard: 0, restoring: WasmSnapshot(decoding: encoded))
        #expect(try restored.snapshot() == snapshot)
        let replies = Self.replies([(original, RecordingContext()), (restored, RecordingContext())], to: ["grow", "increment"])
        #expect(replies[1] == ["pages 66", "count 2 messages 6"])
        #expect(replies[0] == replies[1])
    }

    @Test func pagesZeroInTheImageAreZeroedInTheFreshInstance() throws {
        // A data segment puts a marker in page 1; the guest clears it on its first event, so the
        // image does not store page 1, but a fresh instance has the marker there again.
        let wat = minimalModule(
            recv: "(memory.fill (i32.const 70000) (i32.const 0) (i32.const 6))",
            extra: #"(data (i32.const 70000) "marker")"#
        ).replacingOccurrences(of: #"(memory (export "memory") 1)"#, with: #"(memory (export "memory") 2)"#)
        let factory = try makeFactory(wat: wat)
        let (room, _) = try makeRoom(factory)
        let snapshot = try room.snapshot()
        #expect(snapshot.memory.pageCount == 2 && snapshot.memory.storedPages == [0])
        let restored = try factory.makeWasmService(roomId: "r", shard: 0, restoring: snapshot)
        #expect(try restored.snapshot().memory.storedPages == [0])
    }

    @Test func hiddenMutableGlobalsAreCounted() throws {
        // snapshot.wat keeps everything in memory or exported globals; counter.wat keeps its heap
        // pointer and its count in globals it does not export, which no snapshot can carry.
        #expect(try Self.snapshotFactory().hiddenMutableGlobalCount == 0)
        #expect(try makeFactory(.counter).hiddenMutableGlobalCount == 2)
    }

    @Test func snapshotOfAnotherModuleIsRefused() throws {
        let counter = try makeFactory(.counter)
        let factory = try Self.snapshotFactory()
        let (room, _) = try makeRoom(counter)
        let snapshot = try room.snapshot()
        #expect(snapshot.moduleHash == counter.moduleHash && counter.moduleHash != factory.moduleHash)
        let spares = factory.readySpareCount
        let error = #expect(throws: WasmSnapshotError.self) {
            try factory.makeWasmService(roomId: "r", shard: 0, restoring: snapshot)
        }
        #expect(error == .moduleMismatch(snapshot: counter.moduleHash, module: factory.moduleHash))
        #expect(error?.description == "wasm room snapshot is of module \(counter.moduleHash.shortHex), not of this module \(factory.moduleHash.shortHex)")
        #expect(counter.moduleHash.shortHex.count == 12)
        // Refused before an instance was taken.
        #expect(factory.readySpareCount == spares)
    }

    @Test func moduleHashIsSHA256OfTheBytes() throws {
        #expect(WasmModuleHash(of: Array("abc".utf8)).description
            == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let bytes = try Self.snapshotModule()
        #expect(try Self.snapshotFactory().moduleHash == WasmModuleHash(of: bytes))
        // Loading from a file hashes the same bytes.
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("snapshot-\(getpid()).wasm").path
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let fromFile = try WasmServiceFactory(path: path, limits: testLimits, logger: Logger(label: "wasm-test"))
        #expect(fromFile.moduleHash == WasmModuleHash(of: bytes))
    }

    @Test func memoryImageOverTheCapIsRefused() throws {
        let bytes = try Self.snapshotModule()
        let roomy = try WasmServiceFactory(bytes: bytes, limits: testLimits, logger: Logger(label: "wasm-test"))
        let (room, _) = try Self.room(roomy, after: ["grow", "grow"])  // 34 pages
        let snapshot = try room.snapshot()
        let tight = WasmLimits(maxMemoryBytes: 32 * WasmSnapshot.pageSize, spareInstances: 1)
        let small = try WasmServiceFactory(bytes: bytes, limits: tight, logger: Logger(label: "wasm-test"))
        #expect(small.moduleHash == roomy.moduleHash)
        let error = #expect(throws: WasmSnapshotError.self) {
            try small.makeWasmService(roomId: "r", shard: 0, restoring: snapshot)
        }
        #expect(error == .memoryOverCap(imageBytes: 34 * WasmSnapshot.pageSize, maxMemoryBytes: 32 * WasmSnapshot.pageSize))
    }

    @Test func growthPastTheModuleMaximumIsRefused() throws {
        // The declared maximum (5 pages) holds like the cap: the image is grown through memory.grow.
        let wat = minimalModule(recv: "").replacingOccurrences(of: #"(memory (export "memory") 1)"#, with: #"(memory (export "memory") 1 5)"#)
        let factory = try makeFactory(wat: wat)
        let (room, _) = try makeRoom(factory)
        let real = try room.snapshot()
        let forged = WasmSnapshot(
            formatVersion: real.formatVersion, moduleHash: real.moduleHash,
            memory: .init(pageCount: 8, storedPages: [], bytes: []), globals: [], eventBuffer: real.eventBuffer)
        let error = #expect(throws: WasmSnapshotError.self) {
            try factory.makeWasmService(roomId: "r", shard: 0, restoring: forged)
        }
        #expect(error == .memoryGrowthRefused(fromPages: 1, toPages: 8, reason: "memory.grow returned -1 (the module's maximum or the memory cap)"))
    }

    @Test func imagesThatDoNotAddUpAreRefusedOnRestore() throws {
        // Decoding never makes these; the restore checks anyway, since it writes guest memory.
        let factory = try Self.snapshotFactory()
        let (room, _) = try Self.room(factory, after: [])
        let real = try room.snapshot()
        func forged(_ memory: WasmSnapshot.MemoryImage) -> WasmSnapshot {
            WasmSnapshot(
                formatVersion: real.formatVersion, moduleHash: real.moduleHash, memory: memory,
                globals: real.globals, eventBuffer: real.eventBuffer)
        }
        let page = [UInt8](repeating: 1, count: WasmSnapshot.pageSize)
        for image in [
            WasmSnapshot.MemoryImage(pageCount: 2, storedPages: [0, 1], bytes: page),
            WasmSnapshot.MemoryImage(pageCount: 2, storedPages: [1, 0], bytes: page + page),
            WasmSnapshot.MemoryImage(pageCount: 2, storedPages: [2], bytes: page),
        ] {
            #expect(throws: WasmSnapshotError.inconsistent(reason: "the stored pages do not fit the 2-page memory")) {
                try factory.makeWasmService(roomId: "r", shard: 0, restoring: forged(image))
            }
        }
    }

    @Test func decodingRefusesWhatIsNotExactlyASnapshot() throws {
        let factory = try Self.snapshotFactory()
        let (room, _) = try Self.room(factory, after: ["increment"])
        let good = try room.snapshot().encoded()
        // magic 8, version 4, hash 32, pages 4, stored 4, buffer 8, global count 4: 64 bytes;
        // the global `messages`: 4 + 8 + 1 + 8 = 21; bitmap 1; then 2 stored pages.
        #expect(good.count == 64 + 21 + 1 + 2 * WasmSnapshot.pageSize)
        func decode(_ bytes: [UInt8]) -> WasmSnapshotError? {
            return #expect(throws: WasmSnapshotError.self) { try WasmSnapshot(decoding: bytes) }
        }
        func patched(_ offset: Int, _ bytes: [UInt8]) -> [UInt8] {
            var copy = good
            copy.replaceSubrange(offset..<offset + bytes.count, with: bytes)
            return copy
        }

        #expect(decode(Array("GET / HTTP/1.1\r\n".utf8)) == .badMagic)
        #expect(decode(patched(0, [0x53, 0x52, 0x57, 0x41, 0x53, 0x4d, 0x53, 0x4f])) == .badMagic)
        #expect(decode([]) == .truncated(field: "magic", needed: 8, available: 0))
        #expect(decode(patched(8, [2, 0, 0, 0])) == .unsupportedVersion(2, supported: 1))
        #expect(decode(Array(good.prefix(10))) == .truncated(field: "format version", needed: 4, available: 2))
        #expect(decode(Array(good.prefix(30))) == .truncated(field: "module hash", needed: 32, available: 18))
        #expect(decode(Array(good.prefix(70))) == .truncated(field: "globals", needed: 13, available: 6))
        #expect(decode(Array(good.prefix(80))) == .truncated(field: "global value", needed: 8, available: 3))
        #expect(decode(Array(good.prefix(85))) == .truncated(field: "page bitmap", needed: 1, available: 0))
        #expect(decode(Array(good.dropLast(1))) == .truncated(field: "page data", needed: 2 * WasmSnapshot.pageSize, available: 2 * WasmSnapshot.pageSize - 1))
        #expect(decode(good + [0]) == .trailingBytes(count: 1))
        #expect(decode(good + Array(repeating: 0, count: WasmSnapshot.pageSize)) == .trailingBytes(count: WasmSnapshot.pageSize))
        // Lengths that do not add up.
        #expect(decode(patched(48, [3, 0, 0, 0])) == .inconsistent(reason: "3 stored pages of a 2-page memory"))
        #expect(decode(patched(48, [1, 0, 0, 0])) == .inconsistent(reason: "the page bitmap marks 2 pages, the header says 1"))
        #expect(decode(patched(85, [0b111])) == .inconsistent(reason: "the page bitmap marks page 2 of a 2-page memory"))
        #expect(decode(patched(44, [1, 0, 1, 0])) == .inconsistent(reason: "65537 pages is more than a wasm32 memory has (65536)"))
        #expect(decode(patched(52, [0xf8, 0xff, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00])) == .inconsistent(reason: "event buffer 131064+256 does not fit the 2-page memory"))
        #expect(decode(patched(60, [0xff, 0xff, 0xff, 0x0f])) == .truncated(field: "globals", needed: 0x0fff_ffff * 13, available: good.count - 64))
        #expect(decode(patched(64, [0xff, 0xff, 0xff, 0])) == .truncated(field: "global name", needed: 0xff_ffff, available: good.count - 68))
        #expect(decode(patched(76, [0x7b])) == .inconsistent(reason: "global `messages` has unknown type 0x7b"))
        #expect(decode(patched(68, [0xff])) == .inconsistent(reason: "a global's name is not UTF-8"))
        // A page that is garbage is still a page: guest memory may hold anything.
        #expect(try WasmSnapshot(decoding: patched(86 + 100, [0xde, 0xad])).memory.bytes[100] == 0xde)
    }

    @Test func tamperedGlobalTypeIsRefusedOnRestore() throws {
        let factory = try Self.snapshotFactory()
        let (room, _) = try Self.room(factory, after: ["increment"])
        var bytes = try room.snapshot().encoded()
        #expect(bytes[76] == 0x7e)  // i64, as the module declares `messages`
        bytes[76] = 0x7c  // f64: same width, so the encoding still adds up
        let forged = try WasmSnapshot(decoding: bytes)
        #expect(forged.globals == [WasmSnapshot.Global(name: "messages", value: .f64(bitPattern: 1))])
        let error = #expect(throws: WasmSnapshotError.self) {
            try factory.makeWasmService(roomId: "r", shard: 0, restoring: forged)
        }
        #expect(error == .globalMismatch(name: "messages", reason: "it is f64, the module's is i64"))

        let real = try room.snapshot()
        let missing = WasmSnapshot(
            formatVersion: real.formatVersion, moduleHash: real.moduleHash, memory: real.memory,
            globals: [], eventBuffer: real.eventBuffer)
        #expect(throws: WasmSnapshotError.globalMismatch(name: "messages", reason: "the snapshot lacks it")) {
            try factory.makeWasmService(roomId: "r", shard: 0, restoring: missing)
        }
        let extra = WasmSnapshot(
            formatVersion: real.formatVersion, moduleHash: real.moduleHash, memory: real.memory,
            globals: real.globals + [.init(name: "STATEROOM_API_VERSION", value: .i32(99))], eventBuffer: real.eventBuffer)
        #expect(throws: WasmSnapshotError.globalMismatch(name: "STATEROOM_API_VERSION", reason: "the module exports no mutable global of that name")) {
            try factory.makeWasmService(roomId: "r", shard: 0, restoring: extra)
        }
    }

    @Test func everyNumericGlobalTypeRoundTrips() throws {
        let wat = minimalModule(
            recv: """
                (global.set $a (i32.add (global.get $a) (i32.const 1)))
                (global.set $b (i64.sub (global.get $b) (i64.const 1)))
                (global.set $c (f32.add (global.get $c) (f32.const 0.5)))
                (global.set $d (f64.mul (global.get $d) (f64.const -2)))
                """,
            extra: """
                (global $a (export "a") (mut i32) (i32.const 7))
                (global $b (export "b") (mut i64) (i64.const 0))
                (global $c (export "c") (mut f32) (f32.const 1))
                (global $d (export "d") (mut f64) (f64.const 1.5))
                (global (export "constant") i32 (i32.const 3))
                """)
        let factory = try makeFactory(wat: wat)
        let (room, ctx) = try makeRoom(factory)
        room.send("x", context: ctx)
        let snapshot = try room.snapshot()
        // Init and the message each ran the body once; the immutable export is not carried.
        #expect(snapshot.globals == [
            .init(name: "a", value: .i32(9)),
            .init(name: "b", value: .i64(UInt64(bitPattern: -2))),
            .init(name: "c", value: .f32(bitPattern: Float(2).bitPattern)),
            .init(name: "d", value: .f64(bitPattern: Double(6).bitPattern)),
        ])
        #expect(try WasmSnapshot(decoding: snapshot.encoded()) == snapshot)
        let restored = try factory.makeWasmService(roomId: "r", shard: 0, restoring: snapshot)
        #expect(try restored.snapshot() == snapshot)
    }

    @Test func referenceGlobalsCannotBeCaptured() throws {
        let wat = minimalModule(recv: "", extra: #"(global (export "handler") (mut funcref) (ref.null func))"#)
        let (room, _) = try makeRoom(makeFactory(wat: wat))
        #expect(throws: WasmSnapshotError.unsupportedGlobal(name: "handler", type: "ref")) {
            try room.snapshot()
        }
    }

    @Test func failedRoomCannotBeSnapshotted() throws {
        let (room, ctx) = try makeRoom(makeFactory(.trap), id: "broken")
        room.send("boom", context: ctx)
        #expect(room.isTerminated)
        let error = #expect(throws: WasmSnapshotError.self) { try room.snapshot() }
        #expect(error == .roomTerminated(roomId: "broken"))
        #expect(error?.description == "room broken cannot be snapshotted: its wasm guest failed and was discarded")
    }

    /// A context that asks its room for a snapshot while the guest is sending.
    final class SnapshottingContext: StateroomContext {
        var room: WasmService?
        var outcome: Result<WasmSnapshot, WasmSnapshotError>?

        func send(_ message: MessagePayload, to recipient: MessageRecipient) {
            guard let room else { return }
            do throws(WasmSnapshotError) {
                outcome = .success(try room.snapshot())
            } catch {
                outcome = .failure(error)
            }
        }

        func setTimer(milliseconds: UInt32) {}
        func closeRoom(reason: String) {}
    }

    @Test func snapshotInsideACallbackIsRefused() throws {
        let factory = try Self.snapshotFactory()
        let (room, _) = try Self.room(factory, after: [], id: "busy")
        let ctx = SnapshottingContext()
        ctx.room = room
        room.message(client: ClientId(1), message: .text("increment"), context: ctx)
        #expect(ctx.outcome == .failure(.insideCallback(roomId: "busy")))
        // Between callbacks it works, and the room went on.
        #expect(try room.snapshot().globals == [.init(name: "messages", value: .i64(1))])
    }

    @Test func memoryGrowerIsTheDocumentedModule() throws {
        let wat = #"""
            (module
              (import "env" "memory" (memory 0))
              (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
            """#
        #expect(try wat2wasm(wat) == MemoryGrower.bytes)
    }

    /// Examples/SharedCounter built with the Swift guest SDK, if it has been built
    /// (`stateroom build --release --path Examples/SharedCounter`, or `make examples`).
    static let swiftCounterPath = URL(filePath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appending(path: "Examples/SharedCounter/dist/counter.wasm").path

    @Test(.enabled(
        if: FileManager.default.fileExists(atPath: swiftCounterPath),
        "Examples/SharedCounter/dist/counter.wasm is not built (stateroom build --release --path Examples/SharedCounter)"))
    func swiftGuestContinuesAfterRestore() throws {
        let factory = try WasmServiceFactory(path: Self.swiftCounterPath, limits: testLimits, logger: Logger(label: "wasm-test"))
        let (room, ctx) = try makeRoom(factory)
        for _ in 0..<5 { room.send("increment", context: ctx) }
        room.send("decrement", context: ctx)
        #expect(ctx.texts.last == "new value: 4")
        let snapshot = try WasmSnapshot(decoding: room.snapshot().encoded())
        // No exported mutable global and one hidden, the shadow-stack pointer: the memory image
        // alone carries the room.
        #expect(snapshot.globals.isEmpty)
        #expect(factory.hiddenMutableGlobalCount == 1)
        let restored = try factory.makeWasmService(roomId: "restored", shard: 0, restoring: snapshot)
        let replies = Self.replies([(room, RecordingContext()), (restored, RecordingContext())], to: ["increment", "increment", "decrement"])
        #expect(replies[1] == ["new value: 5", "new value: 6", "new value: 5"])
        #expect(replies[0] == replies[1])
    }
}
