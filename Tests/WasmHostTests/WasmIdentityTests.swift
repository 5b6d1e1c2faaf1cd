import Stateroom
import StateroomWasm
import Testing
@testable import WasmHost

/// The identity extension (StateroomWasm/IDENTITY.md): a module that exports
/// `STATEROOM_IDENTITY_VERSION` (pointing at 1) gets `ClientIdentity { client, identity }`
/// (`05000000 client:u32 len:u64 utf8`) right before an identified client's `Connect`; every
/// other module gets exactly the ABI v1 bytes.
@Suite struct WasmIdentityTests {
    /// The identity global at address 24 (after version and protocol), pointing at `value`.
    static func identityExport(value: String = #"\01\00\00\00"#, address: Int = 24) -> String {
        """
        (global (export "STATEROOM_IDENTITY_VERSION") i32 (i32.const \(address)))
        (data (i32.const 24) "\(value)")
        """
    }

    /// A guest that echoes every delivered buffer as a binary broadcast, so the host's bytes show.
    static func echoModule(extra: String = "") -> String {
        minimalModule(recv: "(call $sendBytes (local.get $ptr) (local.get $len))", extra: extra)
    }

    /// The raw buffers the echo guest was handed, in order (Init's included).
    static func delivered(_ ctx: RecordingContext) -> [[UInt8]] {
        ctx.events.map { event -> [UInt8] in
            if case .send(.broadcast, .binary, let b) = event { return b }
            return [0xEE]  // anything else (a closeRoom) shows as a marker
        }
    }

    @Test func anIdentifiedClientIsAnnouncedRightBeforeItsConnect() throws {
        let factory = try makeFactory(wat: Self.echoModule(extra: Self.identityExport()))
        #expect(factory.acceptsIdentities)
        let (room, ctx) = try makeRoom(factory)
        #expect(room.acceptsIdentities)
        ctx.identities[ClientId(7)] = "bob"
        room.connect(client: ClientId(7), context: ctx)
        room.send("hi", from: 7, context: ctx)
        room.disconnect(client: ClientId(7), context: ctx)
        #expect(Self.delivered(ctx) == [
            hex("00000000"),
            hex("05000000 07000000 0300000000000000 626f62"),  // ClientIdentity { 7, "bob" }
            hex("01000000 07000000"),                          // Connect { 7 }
            hex("03000000 07000000 01000000 0200000000000000 6869"),
            hex("02000000 07000000"),                          // Disconnect: v1, no identity
        ])
        #expect(!room.isTerminated)
    }

    @Test func anAnonymousClientGetsOnlyConnect() throws {
        let (room, ctx) = try makeRoom(makeFactory(wat: Self.echoModule(extra: Self.identityExport())))
        ctx.identities[ClientId(3)] = "someone else"
        room.connect(client: ClientId(4), context: ctx)
        room.disconnect(client: ClientId(4), context: ctx)
        #expect(Self.delivered(ctx) == [hex("00000000"), hex("01000000 04000000"), hex("02000000 04000000")])
    }

    @Test func aModuleWithoutTheExportGetsExactlyV1Bytes() throws {
        let factory = try makeFactory(wat: Self.echoModule())
        #expect(!factory.acceptsIdentities)
        let (room, ctx) = try makeRoom(factory)
        #expect(!room.acceptsIdentities)
        ctx.identities[ClientId(7)] = "bob"
        ctx.identities[ClientId(8)] = "alice"
        room.connect(client: ClientId(7), context: ctx)
        room.connect(client: ClientId(8), context: ctx)
        room.send("hi", from: 7, context: ctx)
        room.disconnect(client: ClientId(7), context: ctx)
        #expect(Self.delivered(ctx) == [
            hex("00000000"), hex("01000000 07000000"), hex("01000000 08000000"),
            hex("03000000 07000000 01000000 0200000000000000 6869"), hex("02000000 07000000"),
        ])
        // Not a byte of variant 5, from any of the v1 fixtures either.
        let (counter, cctx) = try makeRoom(makeFactory(.counter))
        cctx.identities[ClientId(1)] = "bob"
        counter.connect(client: ClientId(1), context: cctx)
        counter.send("increment", from: 1, context: cctx)
        #expect(cctx.texts == ["new value: 1"])
        #expect(!counter.acceptsIdentities)
    }

    @Test func identitiesAreUTF8WithAByteLength() throws {
        let (room, ctx) = try makeRoom(makeFactory(wat: Self.echoModule(extra: Self.identityExport())))
        ctx.identities[ClientId(1)] = "zoë ✓ 🐙"
        ctx.identities[ClientId(2)] = ""
        let long = String(repeating: "x", count: 1024)  // the server's cap on `sub`
        ctx.identities[ClientId(3)] = long
        for c: UInt32 in 1...3 { room.connect(client: ClientId(c), context: ctx) }
        let utf8 = Array("zoë ✓ 🐙".utf8)
        #expect(utf8.count == 13)
        #expect(Self.delivered(ctx) == [
            hex("00000000"),
            hex("05000000 01000000 0d00000000000000") + utf8, hex("01000000 01000000"),
            hex("05000000 02000000 0000000000000000"), hex("01000000 02000000"),  // "" is an identity
            hex("05000000 03000000 0004000000000000") + Array(long.utf8), hex("01000000 03000000"),
        ])
    }

    @Test func anIdentityThatDoesNotFitEndsOnlyThatRoomWithoutACrash() throws {
        // The minimal guest's allocator cannot grow its one page: the host refuses the block the
        // guest returns (outside its memory) and closes the room, as for any oversized event.
        let factory = try makeFactory(wat: Self.echoModule(extra: Self.identityExport()))
        let (room, ctx) = try makeRoom(factory)
        ctx.identities[ClientId(1)] = String(repeating: "y", count: 200_000)
        room.connect(client: ClientId(1), context: ctx)
        #expect(room.isTerminated)
        #expect(ctx.closeReason?.hasPrefix("wasm guest failed in connect: stateroom_malloc(200016) returned") == true)
        #expect(Self.delivered(ctx) == [hex("00000000"), [0xEE]])  // no Connect after the failure
        // Another room of the same module is untouched.
        let (other, octx) = try makeRoom(factory, id: "other")
        octx.identities[ClientId(1)] = "bob"
        other.connect(client: ClientId(1), context: octx)
        #expect(Self.delivered(octx).count == 3 && !other.isTerminated)
    }

    @Test func aGuestMaySendWhileHandlingClientIdentity() throws {
        // A guest that answers every buffer with its first byte (the tag): the host keeps its
        // sink for the identity event, so requests made then reach the context.
        let wat = minimalModule(recv: "(call $sendBytes (local.get $ptr) (i32.const 1))", extra: Self.identityExport())
        let (room, ctx) = try makeRoom(makeFactory(wat: wat))
        ctx.identities[ClientId(2)] = "carol"
        room.connect(client: ClientId(2), context: ctx)
        #expect(Self.delivered(ctx) == [[0], [5], [1]])
    }

    @Test func aWrongIdentityVersionIsALoadErrorNamingIt() throws {
        let wat = Self.echoModule(extra: Self.identityExport(value: #"\02\00\00\00"#))
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .versionMismatch(global: "STATEROOM_IDENTITY_VERSION", expected: 1, actual: 2))
        #expect(error?.description == "wasm module's STATEROOM_IDENTITY_VERSION is 2, this host supports 1")
        let zero = Self.echoModule(extra: Self.identityExport(value: #"\00\00\00\00"#))
        #expect(throws: WasmLoadError.versionMismatch(global: "STATEROOM_IDENTITY_VERSION", expected: 1, actual: 0)) {
            try makeFactory(wat: zero)
        }
    }

    @Test func anIdentityExportOfTheWrongKindOrOutsideMemoryIsRefused() throws {
        let function = Self.echoModule(extra: #"(func (export "STATEROOM_IDENTITY_VERSION"))"#)
        let kind = #expect(throws: WasmLoadError.self) { try makeFactory(wat: function) }
        #expect(kind == .wrongExportKind(name: "STATEROOM_IDENTITY_VERSION", expected: "global", actual: "function"))

        let outside = Self.echoModule(extra: Self.identityExport(address: 65534))
        let bounds = #expect(throws: WasmLoadError.self) { try makeFactory(wat: outside) }
        #expect(bounds == .badGlobalAddress(global: "STATEROOM_IDENTITY_VERSION", address: 65534, memoryBytes: 65536))

        let i64 = Self.echoModule(extra: #"(global (export "STATEROOM_IDENTITY_VERSION") i64 (i64.const 24))"#)
        let type = #expect(throws: WasmLoadError.self) { try makeFactory(wat: i64) }
        guard case .wrongExportType(name: "STATEROOM_IDENTITY_VERSION", expected: "i32", actual: _) = type else {
            Issue.record("got \(String(describing: type))"); return
        }
    }

    @Test func everyRoomOfAnOptedInModuleGetsIdentities() throws {
        // The probe becomes the first spare; later rooms come from the warmer or the shard.
        let limits = WasmLimits(callbackBudgetMilliseconds: 100, maxMemoryBytes: 8 << 20, spareInstances: 0)
        let factory = try makeFactory(wat: Self.echoModule(extra: Self.identityExport()), limits: limits)
        for room in 0..<3 {
            let (service, ctx) = try makeRoom(factory, id: "r\(room)")
            ctx.identities[ClientId(1)] = "bob"
            service.connect(client: ClientId(1), context: ctx)
            #expect(Self.delivered(ctx).count == 3, "room \(room)")
        }
    }
}
