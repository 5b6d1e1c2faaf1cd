/// Who receives a message sent through ``StateroomContext/send(_:to:)``.
public enum MessageRecipient: Hashable, Sendable {
    /// Every client in the room, the sender included.
    case broadcast
    /// One client.
    case client(ClientId)
    /// Every client in the room except one (usually the sender).
    case everyoneExcept(ClientId)
}
