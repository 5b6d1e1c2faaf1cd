/// A room's service: one instance per room, called from one thread only, one event at a time.
///
/// Every requirement has a default that does nothing, so a service implements just what it needs:
///
/// ```swift
/// struct SharedCounter: StateroomService {
///     var value = 0
///     mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
///         if message.isText("increment") { value += 1 }
///         else if message.isText("decrement") { value -= 1 }
///         else { return }
///         context.send("new value: \(value)", to: .broadcast)
///     }
/// }
/// ```
public protocol StateroomService {
    /// The room was created; called once, before any client connects.
    mutating func initialize(context: some StateroomContext)
    /// `client` joined the room.
    mutating func connect(client: ClientId, context: some StateroomContext)
    /// `client` left the room (closed, timed out, or was dropped).
    mutating func disconnect(client: ClientId, context: some StateroomContext)
    /// `client` sent `message`. The payload is a borrowed view, valid only during this call.
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext)
    /// The timer set with ``StateroomContext/setTimer(milliseconds:)`` fired.
    mutating func timer(context: some StateroomContext)
}

extension StateroomService {
    public mutating func initialize(context: some StateroomContext) {}
    public mutating func connect(client: ClientId, context: some StateroomContext) {}
    public mutating func disconnect(client: ClientId, context: some StateroomContext) {}
    public mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {}
    public mutating func timer(context: some StateroomContext) {}
}
