#if !STATEROOM_GUEST
import Stateroom
#endif

/// An event from the host: the ABI's `MessageToProcess`.
public enum GuestEvent {
    /// `Init` (tag 0): the room was created.
    case initialize
    /// `Connect { client }` (tag 1).
    case connect(ClientId)
    /// `Disconnect { client }` (tag 2).
    case disconnect(ClientId)
    /// `Message { sender, message }` (tag 3); the payload borrows the decoded bytes.
    case message(ClientId, MessagePayload)
    /// `Timer` (tag 4).
    case timer

    /// Decodes one event. A `.message` payload is a view of `bytes`.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(BincodeError) {
        var r = BincodeReader(bytes)
        let tag = try r.readUInt32()
        switch tag {
        case 0: self = .initialize
        case 1: self = .connect(ClientId(try r.readUInt32()))
        case 2: self = .disconnect(ClientId(try r.readUInt32()))
        case 3:
            let sender = ClientId(try r.readUInt32())
            self = .message(sender, try r.readPayload())
        case 4: self = .timer
        default: throw .unknownVariant(type: "MessageToProcess", tag: tag)
        }
        try r.finish()
    }

    /// Appends this event's encoding (what a host sends; used by tests and tools).
    public func encode(into w: inout BincodeWriter) {
        switch self {
        case .initialize: w.write(0 as UInt32)
        case .connect(let c): w.write(1 as UInt32); w.write(c.rawValue)
        case .disconnect(let c): w.write(2 as UInt32); w.write(c.rawValue)
        case .message(let c, let p): w.write(3 as UInt32); w.write(c.rawValue); w.write(p)
        case .timer: w.write(4 as UInt32)
        }
    }
}

/// A request from the guest: the ABI's `MessageFromProcess`.
public enum GuestCommand {
    /// `Message { recipient, message }` (tag 0).
    case send(MessageRecipient, MessagePayload)
    /// `SetTimer { ms_delay }` (tag 1).
    case setTimer(milliseconds: UInt32)

    /// Decodes one command (what a host does; used by tests and tools). A payload borrows `bytes`.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(BincodeError) {
        var r = BincodeReader(bytes)
        let tag = try r.readUInt32()
        switch tag {
        case 0:
            let recipient = try r.readRecipient()
            self = .send(recipient, try r.readPayload())
        case 1: self = .setTimer(milliseconds: try r.readUInt32())
        default: throw .unknownVariant(type: "MessageFromProcess", tag: tag)
        }
        try r.finish()
    }

    /// Appends this command's encoding: what the guest hands to `stateroom_send`.
    public func encode(into w: inout BincodeWriter) {
        switch self {
        case .send(let recipient, let payload):
            w.write(0 as UInt32)
            w.write(recipient)
            w.write(payload)
        case .setTimer(let ms):
            w.write(1 as UInt32)
            w.write(ms)
        }
    }
}
