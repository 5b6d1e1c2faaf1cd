import Logging
import Stateroom
import StateroomWasm
import struct WasmKit.Module

/// A room served by a WebAssembly guest: one instance of the factory's module, on the room's shard.
///
/// Every event goes to the guest through the ABI (`stateroom_recv`, with the event written into
/// an event buffer the instance keeps from `stateroom_malloc` and grows when an event does not
/// fit: ``GuestInstance/deliver(_:)``) — for a module that declared the identity extension, also `ClientIdentity`
/// before an identified client's `Connect` — and what the guest sends back with `stateroom_send`
/// goes to the context while the callback runs (its payload a view of guest memory, so the
/// context encodes the frame from the guest's bytes); a module that imports
/// `stateroom_client_connected` asks the same context ``StateroomContext/isConnected(_:)``. A
/// trap, an exhausted budget, `proc_exit`, a `stateroom_malloc` that returns 0 or a block outside
/// guest memory, a pointer outside guest memory or an undecodable message ends the instance: the
/// room is closed with ``StateroomContext/closeRoom(reason:)`` (its clients get 1011), the
/// instance is released, and every later call is a no-op.
public final class WasmService: StateroomService {
    private var guest: GuestInstance?
    /// The room this instance serves.
    public let roomId: String
    /// The module's hash and exported mutable globals, for ``snapshot()``.
    private let layout: SnapshotLayout

    init(guest: GuestInstance, roomId: String, layout: SnapshotLayout) {
        self.guest = guest
        self.roomId = roomId
        self.layout = layout
    }

    /// Captures the room's state: the guest's memory (only its non-zero pages), its exported
    /// mutable globals and the event buffer the host keeps in guest memory, tagged with the
    /// module's hash. Call between callbacks (on the room's shard, never from inside one); the
    /// room goes on unchanged. A room whose guest failed has nothing to capture.
    /// ``WasmServiceFactory/makeWasmService(roomId:shard:restoring:)`` continues the room.
    public func snapshot() throws(WasmSnapshotError) -> WasmSnapshot {
        guard let guest else { throw .roomTerminated(roomId: roomId) }
        return try guest.snapshot(layout: layout, roomId: roomId)
    }

    /// Makes this fresh room the snapshot's (see ``GuestInstance/restore(_:grower:)``); a
    /// failure leaves a half-written instance, which the caller discards with this service.
    func restore(_ snapshot: WasmSnapshot, grower: Module) throws(WasmSnapshotError) {
        guard let guest else { throw .roomTerminated(roomId: roomId) }
        try guest.restore(snapshot, grower: grower)
    }

    /// `true` once the guest failed and was discarded.
    public var isTerminated: Bool { guest == nil }

    /// Whether the module declared the identity extension (`STATEROOM_IDENTITY_VERSION`), so that
    /// clients' identities reach it (StateroomWasm/IDENTITY.md). `false` once terminated.
    public var acceptsIdentities: Bool { guest?.acceptsIdentities ?? false }

    /// Delivers `Init`.
    public func initialize(context: some StateroomContext) {
        deliver(.initialize, callback: "initialize", context: context)
    }

    /// Delivers `Connect { client }`. A module that declared the identity extension
    /// (``acceptsIdentities``) first gets `ClientIdentity { client, identity }` if the context
    /// knows who `client` is (``StateroomContext/identity(of:)``); an anonymous client, or a
    /// module without the extension, gets `Connect` alone, exactly as in ABI v1.
    public func connect(client: ClientId, context: some StateroomContext) {
        if let guest, guest.acceptsIdentities, let identity = context.identity(of: client) {
            deliver(ClientIdentity(client: client, identity: identity), callback: "connect", context: context)
        }
        deliver(.connect(client), callback: "connect", context: context)
    }

    /// Delivers `Disconnect { client }`.
    public func disconnect(client: ClientId, context: some StateroomContext) {
        deliver(.disconnect(client), callback: "disconnect", context: context)
    }

    /// Delivers `Message { sender, message }`; the payload is copied into guest memory.
    public func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        deliver(.message(sender: client, payload: message), callback: "message", context: context)
    }

    /// Delivers `Timer`.
    public func timer(context: some StateroomContext) {
        deliver(.timer, callback: "timer", context: context)
    }

    private func deliver(_ event: MessageToProcess, callback: String, context: some StateroomContext) {
        guard let guest else { return }
        run(guest, callback: callback, context: context) { () throws(GuestFailure) in try guest.deliver(event) }
    }

    /// The identity extension's event, delivered like the others (same limits, same failure).
    private func deliver(_ event: ClientIdentity, callback: String, context: some StateroomContext) {
        guard let guest else { return }
        run(guest, callback: callback, context: context) { () throws(GuestFailure) in try guest.deliver(event) }
    }

    /// Runs `body` (one delivery) with the context as `stateroom_send`'s destination and
    /// `stateroom_client_connected`'s answer (``StateroomContext/isConnected(_:)``); a failure
    /// discards the instance and closes the room. Inlined into each `deliver`, so the v1 path is
    /// the concrete code it always was.
    @inline(__always)
    private func run(
        _ guest: GuestInstance, callback: String, context: some StateroomContext,
        _ body: () throws(GuestFailure) -> Void
    ) {
        do {
            try guest.withSink({ output in
                switch output {
                case .message(let recipient, let payload): context.send(payload, to: recipient)
                case .setTimer(let milliseconds): context.setTimer(milliseconds: milliseconds)
                }
            }, isConnected: { context.isConnected($0) }, body)
        } catch {
            self.guest = nil
            guest.state.flushLogs()
            let reason = "wasm guest failed in \(callback): \(error.description)"
            guest.state.logger.error("\(reason); closing the room")
            context.closeRoom(reason: reason)
        }
    }
}
