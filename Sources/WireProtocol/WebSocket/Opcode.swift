/// A WebSocket frame opcode (RFC 6455 §5.2). Unknown opcodes (3–7, 11–15) are a protocol error.
public enum Opcode: UInt8, Sendable {
    /// A continuation fragment of a text or binary message.
    case continuation = 0
    /// A UTF-8 text message (or its first fragment).
    case text = 1
    /// A binary message (or its first fragment).
    case binary = 2
    /// A close control frame.
    case close = 8
    /// A ping control frame.
    case ping = 9
    /// A pong control frame.
    case pong = 10

    /// True for close, ping and pong.
    @inlinable
    public var isControl: Bool { rawValue >= 8 }
}
