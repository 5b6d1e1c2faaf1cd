/// One WebSocket message: text or binary.
///
/// A payload handed to ``StateroomService/message(client:message:context:)`` is a *borrowed view*
/// of the server's receive buffer: reading it costs no copy, and it is valid only during that call.
/// Keep what you need with ``text``, ``bytes`` or ``copy()``. Payloads you build to send
/// (``text(_:)``, ``binary(_:)``) own their storage.
public struct MessagePayload {
    /// Text (valid UTF-8) or binary.
    public enum Kind: Sendable, Hashable {
        case text
        case binary
    }

    @usableFromInline
    enum Storage {
        case borrowed(UnsafeRawBufferPointer)
        case string(String)
        case bytes([UInt8])
    }

    /// Whether this is a text or a binary message.
    public let kind: Kind
    @usableFromInline let storage: Storage

    /// A text message that owns its string.
    public static func text(_ string: String) -> MessagePayload {
        MessagePayload(kind: .text, storage: .string(string))
    }

    /// A binary message that owns its bytes.
    public static func binary(_ bytes: [UInt8]) -> MessagePayload {
        MessagePayload(kind: .binary, storage: .bytes(bytes))
    }

    /// A view of bytes someone else owns. The caller guarantees `bytes` stays valid and unchanged
    /// while the payload is used, and, for `.text`, that they are valid UTF-8.
    public init(borrowing bytes: UnsafeRawBufferPointer, kind: Kind) {
        self.kind = kind
        self.storage = .borrowed(bytes)
    }

    init(kind: Kind, storage: Storage) {
        self.kind = kind
        self.storage = storage
    }

    /// `true` for a text message.
    public var isText: Bool { kind == .text }

    /// The payload's length in bytes.
    public var count: Int {
        switch storage {
        case .borrowed(let b): return b.count
        case .string(let s): return s.utf8.count
        case .bytes(let b): return b.count
        }
    }

    /// The message as a `String` if it is a text message, else `nil`.
    public var text: String? {
        guard kind == .text else { return nil }
        switch storage {
        case .borrowed(let b): return String(decoding: b, as: UTF8.self)
        case .string(let s): return s
        case .bytes(let b): return String(decoding: b, as: UTF8.self)
        }
    }

    /// A copy of the payload's bytes (UTF-8 for text).
    public var bytes: [UInt8] {
        withUnsafeBytes { Array($0) }
    }

    /// An owned copy, safe to keep after the callback returns.
    public func copy() -> MessagePayload {
        switch storage {
        case .borrowed(let b):
            return kind == .text
                ? .text(String(decoding: b, as: UTF8.self)) : .binary(Array(b))
        default:
            return self
        }
    }

    /// `true` if this is a text message whose content equals `string`, compared without copying.
    public func isText(_ string: String) -> Bool {
        guard kind == .text else { return false }
        var s = string
        return s.withUTF8 { expected in
            withUnsafeBytes { actual in
                actual.count == expected.count && actual.elementsEqual(UnsafeRawBufferPointer(expected))
            }
        }
    }

    /// `true` if this is a text message that starts with `prefix`, compared without copying.
    public func hasTextPrefix(_ prefix: String) -> Bool {
        guard kind == .text else { return false }
        var p = prefix
        return p.withUTF8 { expected in
            withUnsafeBytes { actual in
                actual.count >= expected.count
                    && UnsafeRawBufferPointer(rebasing: actual[..<expected.count]).elementsEqual(UnsafeRawBufferPointer(expected))
            }
        }
    }

    /// Calls `body` with the payload's bytes; the pointer is valid only inside `body`.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .borrowed(let b):
            return try body(b)
        case .string(let s):
            var s = s
            return try s.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
        case .bytes(let b):
            return try b.withUnsafeBytes { try body($0) }
        }
    }
}
