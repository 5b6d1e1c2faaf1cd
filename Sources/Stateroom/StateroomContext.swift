/// What a service can do to its room: send messages and set its timer.
///
/// A context is only valid during the callback it was passed to.
public protocol StateroomContext {
    /// Sends `message` to `recipient`. A broadcast is encoded once, however many clients receive it.
    func send(_ message: MessagePayload, to recipient: MessageRecipient)

    /// Sends a text message that `write` appends in place, piece by piece, instead of one built
    /// as a `String` first: the cheap way to send formatted text, notably from a wasm guest, where
    /// string interpolation costs several microseconds per message.
    ///
    ///     context.sendText(to: .broadcast) { text in
    ///         text.append("new value: ")
    ///         text.append(value)
    ///     }
    func sendText(to recipient: MessageRecipient, _ write: (inout TextWriter) -> Void)

    /// Sets the room's single timer: ``StateroomService/timer(context:)`` is called after
    /// `milliseconds`. A new call replaces a pending timer; `0` fires on the next loop turn.
    func setTimer(milliseconds: UInt32)

    /// Ends the room because the service cannot go on: every client is closed with 1011
    /// (internal error) and `reason` is logged. The next connect to the room id starts afresh.
    func closeRoom(reason: String)
    /// Who `client` is, as the server's authentication established it before the client joined
    /// (a verified token's `sub`, or the identity an ``UpgradePolicy`` accepted it with); nil for
    /// an anonymous client or one that is not in the room. Stable for the client's life in the room.
    func identity(of client: ClientId) -> String?
    /// Whether `client` has a connection now: false while it is away in its seat's grace (it
    /// dropped and may resume; the service has not had its `disconnect`), and for a client that
    /// is not in the room. A presence list shows the difference.
    func isConnected(_ client: ClientId) -> Bool
}

extension StateroomContext {
    /// No identities (contexts that have no authentication behind them).
    public func identity(of client: ClientId) -> String? { nil }

    /// Every client counts as connected (contexts without seats behind them).
    public func isConnected(_ client: ClientId) -> Bool { true }

    /// Sends a text message.
    public func send(_ text: String, to recipient: MessageRecipient) {
        send(.text(text), to: recipient)
    }

    /// Sends a binary message.
    public func send(binary bytes: [UInt8], to recipient: MessageRecipient) {
        send(.binary(bytes), to: recipient)
    }
}
