import Stateroom
import StateroomWasm
import Testing
@testable import WasmHost

/// The host keeps one event buffer per instance (GuestInstance.deliver): events that fit are
/// delivered with `stateroom_recv` alone; a bigger one frees the buffer and allocates a bigger
/// one; one over the largest kept size gets a block of its own, freed after its call.
@Suite struct WasmBufferReuseTests {
    /// A guest that counts the host's `stateroom_malloc` and `stateroom_free` calls and answers
    /// every event with a 24-byte broadcast of what it knows (u32 each): mallocs, frees, the
    /// `ptr` and `len` it was handed, the size of the last malloc and of the last free. A text
    /// message starting with `!` traps (`unreachable`) in the middle of `stateroom_recv`.
    /// Bump allocator from 65536 with LIFO free; four pages of memory.
    static let countingModule = #"""
        (module
          (import "env" "stateroom_send" (func $send (param i32 i32)))
          (memory (export "memory") 4)
          (global $heap (mut i32) (i32.const 65536))
          (global (export "STATEROOM_API_VERSION") i32 (i32.const 16))
          (global (export "STATEROOM_API_PROTOCOL") i32 (i32.const 20))
          (data (i32.const 16) "\01\00\00\00\00\00\00\00")
          (func (export "stateroom_malloc") (param $size i32) (result i32)
            (local $p i32)
            (i32.store (i32.const 1024) (i32.add (i32.load (i32.const 1024)) (i32.const 1)))
            (i32.store (i32.const 1032) (local.get $size))
            (local.set $p (global.get $heap))
            (global.set $heap (i32.add (local.get $p) (local.get $size)))
            (local.get $p))
          (func (export "stateroom_free") (param $p i32) (param $size i32)
            (i32.store (i32.const 1028) (i32.add (i32.load (i32.const 1028)) (i32.const 1)))
            (i32.store (i32.const 1036) (local.get $size))
            (if (i32.eq (i32.add (local.get $p) (local.get $size)) (global.get $heap))
              (then (global.set $heap (local.get $p)))))
          (func (export "stateroom_recv") (param $ptr i32) (param $len i32)
            ;; Message { Text starting with "!" }: trap half-way through the callback.
            (if (i32.and (i32.eq (i32.load (local.get $ptr)) (i32.const 3))
                         (i32.and (i32.eq (i32.load offset=8 (local.get $ptr)) (i32.const 1))
                                  (i32.eq (i32.load8_u offset=20 (local.get $ptr)) (i32.const 33))))
              (then unreachable))
            (i32.store (i32.const 2048) (i32.const 0))
            (i32.store (i32.const 2052) (i32.const 0))
            (i32.store (i32.const 2056) (i32.const 0))
            (i64.store (i32.const 2060) (i64.const 24))
            (i32.store (i32.const 2068) (i32.load (i32.const 1024)))
            (i32.store (i32.const 2072) (i32.load (i32.const 1028)))
            (i32.store (i32.const 2076) (local.get $ptr))
            (i32.store (i32.const 2080) (local.get $len))
            (i32.store (i32.const 2084) (i32.load (i32.const 1032)))
            (i32.store (i32.const 2088) (i32.load (i32.const 1036)))
            (call $send (i32.const 2048) (i32.const 44)))
        )
        """#

    /// What the guest reported for one event.
    struct Report: Equatable {
        var mallocs: UInt32, frees: UInt32, ptr: UInt32, len: UInt32, lastMalloc: UInt32, lastFree: UInt32
    }

    static func reports(_ ctx: RecordingContext) -> [Report] {
        ctx.take().compactMap { event -> Report? in
            guard case .send(.broadcast, .binary, let b) = event, b.count == 24 else { return nil }
            func u32(_ i: Int) -> UInt32 {
                UInt32(b[i * 4]) | UInt32(b[i * 4 + 1]) << 8 | UInt32(b[i * 4 + 2]) << 16 | UInt32(b[i * 4 + 3]) << 24
            }
            return Report(mallocs: u32(0), frees: u32(1), ptr: u32(2), len: u32(3), lastMalloc: u32(4), lastFree: u32(5))
        }
    }

    /// `Message { sender, Text }` is 20 bytes plus the text.
    static func eventLength(text count: Int) -> UInt32 { UInt32(20 + count) }

    @Test func messagesOfSimilarSizeShareOneMalloc() throws {
        let factory = try makeFactory(wat: Self.countingModule)
        let (room, ctx) = try makeRoom(factory)
        let initReport = Self.reports(ctx)
        #expect(initReport == [Report(mallocs: 1, frees: 0, ptr: 65536, len: 4, lastMalloc: 256, lastFree: 0)])
        room.connect(client: ClientId(1), context: ctx)
        for i in 0..<100 {
            room.send(String(repeating: "m", count: 20 + i % 40), context: ctx)
        }
        room.timer(context: ctx)
        room.disconnect(client: ClientId(1), context: ctx)
        let reports = Self.reports(ctx)
        #expect(reports.count == 103)
        // One malloc in all (for Init), never a free, always the same block.
        #expect(reports.allSatisfy { $0.mallocs == 1 && $0.frees == 0 && $0.ptr == 65536 && $0.lastMalloc == 256 })
        #expect(reports[1].len == Self.eventLength(text: 20))
        #expect(reports[40].len == Self.eventLength(text: 59))
        #expect(reports[101].len == 4)  // Timer
        #expect(!room.isTerminated)
    }

    @Test func aBiggerEventFreesTheBufferAndAllocatesABiggerOne() throws {
        let (room, ctx) = try makeRoom(makeFactory(wat: Self.countingModule))
        _ = Self.reports(ctx)
        room.send("small", context: ctx)
        room.send(String(repeating: "b", count: 300), context: ctx)  // 320 bytes: 512
        room.send("small again", context: ctx)
        room.send(String(repeating: "c", count: 480), context: ctx)  // 500 bytes: still fits 512
        room.send(String(repeating: "d", count: 5000), context: ctx)  // 5020 bytes: 8192
        room.send("tiny", context: ctx)
        #expect(Self.reports(ctx) == [
            Report(mallocs: 1, frees: 0, ptr: 65536, len: 25, lastMalloc: 256, lastFree: 0),
            // LIFO bump allocator: the freed 256 bytes are the top of its heap, so the new block
            // starts where the old one did.
            Report(mallocs: 2, frees: 1, ptr: 65536, len: 320, lastMalloc: 512, lastFree: 256),
            Report(mallocs: 2, frees: 1, ptr: 65536, len: 31, lastMalloc: 512, lastFree: 256),
            Report(mallocs: 2, frees: 1, ptr: 65536, len: 500, lastMalloc: 512, lastFree: 256),
            Report(mallocs: 3, frees: 2, ptr: 65536, len: 5020, lastMalloc: 8192, lastFree: 512),
            Report(mallocs: 3, frees: 2, ptr: 65536, len: 24, lastMalloc: 8192, lastFree: 512),
        ])
    }

    @Test func anEventOverTheLargestBufferGetsABlockOfItsOwn() throws {
        let (room, ctx) = try makeRoom(makeFactory(wat: Self.countingModule))
        _ = Self.reports(ctx)
        let big = Int(GuestInstance.maximumBufferCapacity)  // event: 20 bytes more than that
        room.send(String(repeating: "h", count: big), context: ctx)
        room.send("after", context: ctx)
        #expect(Self.reports(ctx) == [
            // Its own exact-size block above the kept buffer, freed right after the call ...
            Report(mallocs: 2, frees: 0, ptr: 65536 + 256, len: UInt32(big + 20), lastMalloc: UInt32(big + 20), lastFree: 0),
            // ... while the kept buffer stays and serves the next event.
            Report(mallocs: 2, frees: 1, ptr: 65536, len: 25, lastMalloc: UInt32(big + 20), lastFree: UInt32(big + 20)),
        ])
    }

    @Test func eventsOfEverySizeArriveVerbatim() throws {
        // The relay fixture echoes each payload: growing, shrinking, and an own-block event in
        // between; a shorter event never shows the bytes a longer one left in the buffer.
        let (room, ctx) = try makeRoom(makeFactory(.relay))
        _ = ctx.take()
        let sizes = [5, 300, 3, 1000, 0, 70_000, 17, 255, 236, 237]
        for (i, size) in sizes.enumerated() {
            let text = String((0..<size).map { _ in Character(UnicodeScalar(UInt8(97 + i))) })
            room.send(text, context: ctx)
        }
        let texts = ctx.texts
        #expect(texts.count == sizes.count)
        for (i, size) in sizes.enumerated() where i < texts.count {
            #expect(texts[i] == String((0..<size).map { _ in Character(UnicodeScalar(UInt8(97 + i))) }))
        }
        #expect(!room.isTerminated)
    }

    @Test func aTrapMidRecvEndsOnlyThatRoom() throws {
        let factory = try makeFactory(wat: Self.countingModule)
        let (room, ctx) = try makeRoom(factory)
        let (other, octx) = try makeRoom(factory, id: "other")
        _ = (Self.reports(ctx), Self.reports(octx))
        room.send("before", context: ctx)
        other.send("before", context: octx)
        #expect(Self.reports(ctx).count == 1)
        room.send("!boom", context: ctx)
        #expect(ctx.events == [.closeRoom("wasm guest failed in message: stateroom_recv: trap: unreachable")])
        #expect(room.isTerminated)
        room.send("later", context: ctx)
        room.timer(context: ctx)
        #expect(ctx.events.count == 1)
        // The other room of the module goes on with its own buffer, still one malloc in all.
        other.send("after", context: octx)
        other.send(String(repeating: "x", count: 100), context: octx)
        #expect(Self.reports(octx) == [
            Report(mallocs: 1, frees: 0, ptr: 65536, len: 26, lastMalloc: 256, lastFree: 0),
            Report(mallocs: 1, frees: 0, ptr: 65536, len: 25, lastMalloc: 256, lastFree: 0),
            Report(mallocs: 1, frees: 0, ptr: 65536, len: 120, lastMalloc: 256, lastFree: 0),
        ])
        // A new room of the module starts afresh.
        let (again, actx) = try makeRoom(factory, id: "again")
        #expect(Self.reports(actx) == [Report(mallocs: 1, frees: 0, ptr: 65536, len: 4, lastMalloc: 256, lastFree: 0)])
        #expect(!again.isTerminated)
    }

    @Test func bufferCapacities() {
        #expect(GuestInstance.bufferCapacity(for: 4) == 256)
        #expect(GuestInstance.bufferCapacity(for: 256) == 256)
        #expect(GuestInstance.bufferCapacity(for: 257) == 512)
        #expect(GuestInstance.bufferCapacity(for: 5020) == 8192)
        #expect(GuestInstance.bufferCapacity(for: 65536) == 65536)
    }
}
