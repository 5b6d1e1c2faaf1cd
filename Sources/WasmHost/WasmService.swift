import Logging
import Stateroom
import StateroomWasm

/// A room served by a WebAssembly guest: one instance of the factory's module, on the room's shard.
///
/// Every event goes to the guest through the ABI (`stateroom_malloc` / `stateroom_recv` /
/// `stateroom_free`), and what the guest sends back with `stateroom_send` goes to the context
/// while the callback runs (its payload a view of guest memory, so the context encodes the frame
/// from the guest's bytes). A trap, an exhausted budget, `proc_exit`, a `stateroom_malloc` that
/// returns 0 or a block outside guest memory, a pointer outside guest memory or an undecodable
/// message ends the instance: the room is closed with
/// ``StateroomContext/closeRoom(reason:)`` (its clients get 1011), the instance is released, and
/// every later call is a no-op.
public final class WasmService: StateroomService {
    private var guest: GuestInstance?
    /// The room this instance serves.
    public let roomId: String
    private let logger: Logger

    init(guest: GuestInstance, roomId: String, logger: Logger) {
        self.guest = guest
        self.roomId = roomId
        self.logger = logger
    }

    /// `true` once the guest failed and was discarded.
    public var isTerminated: Bool { guest == nil }

    /// Delivers `Init`.
    public func initialize(context: some StateroomContext) {
        deliver(.initialize, callback: "initialize", context: context)
    }

    /// Delivers `Connect { client }`.
    public func connect(client: ClientId, context: some StateroomContext) {
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
        do {
            try guest.withSink({ output in
                switch output {
                case .message(let recipient, let payload): context.send(payload, to: recipient)
                case .setTimer(let milliseconds): context.setTimer(milliseconds: milliseconds)
                }
            }) { () throws(GuestFailure) in
                try guest.deliver(event)
            }
        } catch {
            self.guest = nil
            guest.state.flushLogs()
            let reason = "wasm guest failed in \(callback): \(error.description)"
            logger.error("\(reason); closing the room")
            context.closeRoom(reason: reason)
        }
    }
}
