#if !STATEROOM_GUEST
import Stateroom
#endif

// The bincode 1.x codec of the Stateroom wasm ABI (shared/ABI.md) and of its identity extension
// (IDENTITY.md: `ClientIdentity`), the only one: the host (WasmHost) uses it natively, and
// `stateroom build` compiles this same file into a guest's wasm32 module `Stateroom` (Embedded
// Swift). Pure — bytes in, bytes out, no WasmKit, nothing
// Embedded Swift lacks.
//
// Little-endian fixed-width integers; an enum is its variant index as `u32` followed by its
// fields; `String`/`Vec<u8>` are a `u64` length followed by the bytes.
//
// Decoding borrows: a decoded payload is a view of the input (no copy), valid as long as the
// input is. Bytes after a complete message are ignored, as bincode 1.x's `deserialize` (used by
// Stateroom's own host and Rust SDK) ignores them. Encoding writes in place into a buffer the
// caller sized with `encodedCount`.

/// An event the host delivers to a guest: bincode `MessageToProcess`.
///
/// A `.message` built by the host may carry a borrowed payload (the server's receive buffer):
/// encode it before the callback that received it returns. One decoded by
/// ``decode(_:)`` borrows the decoded bytes.
public enum MessageToProcess {
    /// The room was created (`0`).
    case initialize
    /// A client joined (`1 client:u32`).
    case connect(ClientId)
    /// A client left (`2 client:u32`).
    case disconnect(ClientId)
    /// A client sent a message (`3 sender:u32 MessagePayload`).
    case message(sender: ClientId, payload: MessagePayload)
    /// The room's timer fired (`4`).
    case timer
}

/// What a guest asks of the host: bincode `MessageFromProcess`.
///
/// One decoded by ``decode(_:)`` borrows the decoded bytes (for the host: guest memory, valid
/// only during the `stateroom_send` call).
public enum MessageFromProcess {
    /// Send `payload` to `recipient` (`0 MessageRecipient MessagePayload`).
    case message(recipient: MessageRecipient, payload: MessagePayload)
    /// Replace the room's timer (`1 ms_delay:u32`).
    case setTimer(milliseconds: UInt32)
}

/// Why bytes could not be decoded as an ABI message. The description names the field at fault.
///
/// Names are static strings: a guest that fails to decode builds no `String` (Embedded Swift
/// would link the stdlib's UTF-8 machinery for that), and the host formats them only to log.
public enum ABIDecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The input ended in the middle of `field` (for `MessagePayload bytes`: the length says
    /// more bytes follow than there are).
    case truncated(field: StaticString)
    /// An enum variant tag that the ABI does not define for `type`.
    case unknownVariant(type: StaticString, tag: UInt32)

    /// What was wrong, naming the field or type.
    public var description: String {
        switch self {
        case .truncated(let field): return "truncated input: \(field) runs past the end"
        case .unknownVariant(let type, let tag): return "unknown \(type) variant \(tag)"
        }
    }

    /// Same case, same names (compared by their text) and tag.
    public static func == (a: ABIDecodeError, b: ABIDecodeError) -> Bool {
        func same(_ x: StaticString, _ y: StaticString) -> Bool {
            x.withUTF8Buffer { x in y.withUTF8Buffer { y in x.elementsEqual(y) } }
        }
        switch (a, b) {
        case (.truncated(let x), .truncated(let y)): return same(x, y)
        case (.unknownVariant(let x, let s), .unknownVariant(let y, let t)): return same(x, y) && s == t
        default: return false
        }
    }
}

// MARK: - MessageToProcess

extension MessageToProcess {
    /// The number of bytes ``encode(into:)`` writes.
    public var encodedCount: Int {
        switch self {
        case .initialize, .timer: return 4
        case .connect, .disconnect: return 8
        case .message(_, let payload): return 8 + 12 + payload.count
        }
    }

    /// Writes the encoding to the start of `buffer`, which must hold at least ``encodedCount``
    /// bytes, and returns the number of bytes written.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= encodedCount, "buffer too small for the encoded message")
        return encodeUnchecked(at: buffer.baseAddress!)
    }

    /// ``encode(into:)`` at `base`, which the caller made room for ``encodedCount`` bytes at.
    func encodeUnchecked(at base: UnsafeMutableRawPointer) -> Int {
        var w = ABIWriter(base)
        switch self {
        case .initialize: w.u32(0)
        case .connect(let client): w.u32(1); w.u32(client.rawValue)
        case .disconnect(let client): w.u32(2); w.u32(client.rawValue)
        case .message(let sender, let payload): w.u32(3); w.u32(sender.rawValue); w.payload(payload)
        case .timer: w.u32(4)
        }
        return w.offset
    }

    /// The encoding as a new array (tests and tools; the host encodes in place).
    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedCount) { buffer, count in
            count = encode(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// Decodes the message at the start of `bytes`; a payload is a view of `bytes`, no copy.
    ///
    /// `Text` is not validated here: the host delivers only text it validated (a client's by the
    /// server's frame parser, a guest's where the host reads it in `stateroom_send`), and an
    /// interpreted guest would pay for a second pass on every message.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ABIDecodeError) -> MessageToProcess {
        var r = ABIReader(bytes)
        let tag = try r.u32("MessageToProcess tag")
        switch tag {
        case 0: return .initialize
        case 1: return .connect(ClientId(try r.u32("Connect.client")))
        case 2: return .disconnect(ClientId(try r.u32("Disconnect.client")))
        case 3:
            let sender = ClientId(try r.u32("Message.sender"))
            return .message(sender: sender, payload: try r.payload())
        case 4: return .timer
        default: throw .unknownVariant(type: "MessageToProcess", tag: tag)
        }
    }
}

// MARK: - MessageFromProcess

extension MessageFromProcess {
    /// The number of bytes ``encode(into:)`` writes.
    public var encodedCount: Int {
        switch self {
        case .setTimer: return 8
        case .message(let recipient, let payload):
            return (recipient == .broadcast ? 8 : 12) + 12 + payload.count
        }
    }

    /// Writes the encoding to the start of `buffer` (at least ``encodedCount`` bytes) and returns
    /// the number of bytes written: what a guest hands to `stateroom_send`.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= encodedCount, "buffer too small for the encoded message")
        return encodeUnchecked(at: buffer.baseAddress!)
    }

    /// ``encode(into:)`` at `base`, which the caller made room for ``encodedCount`` bytes at
    /// (the guest's context, which sizes its scratch buffer with it, skips counting twice).
    func encodeUnchecked(at base: UnsafeMutableRawPointer) -> Int {
        var w = ABIWriter(base)
        switch self {
        case .message(let recipient, let payload):
            w.u32(0)
            w.recipient(recipient)
            w.payload(payload)
        case .setTimer(let ms):
            w.u32(1); w.u32(ms)
        }
        return w.offset
    }

    /// The encoding as a new array (tests and tools).
    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedCount) { buffer, count in
            count = encode(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// The bytes before the text of `Message { recipient, Text }`: what a writer leaves free
    /// for ``encodeTextHeader(_:length:at:)``.
    static func textHeaderCount(_ recipient: MessageRecipient) -> Int {
        (recipient == .broadcast ? 8 : 12) + 12
    }

    /// Writes the header of `Message { recipient, Text }` whose `length` bytes of text follow
    /// it (``textHeaderCount(_:)`` bytes at `base`).
    static func encodeTextHeader(_ recipient: MessageRecipient, length: Int, at base: UnsafeMutableRawPointer) {
        var w = ABIWriter(base)
        w.u32(0)
        w.recipient(recipient)
        w.u32(1)
        w.u64(UInt64(length))
    }

    /// Decodes the message at the start of `bytes`; the payload is a view of `bytes`, no copy.
    /// `Text` is not validated here: the host checks a guest's text where it reads it
    /// (`stateroom_send`), with the standard library's validator.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ABIDecodeError) -> MessageFromProcess {
        var r = ABIReader(bytes)
        let tag = try r.u32("MessageFromProcess tag")
        switch tag {
        case 0:
            let rtag = try r.u32("MessageRecipient tag")
            let recipient: MessageRecipient
            switch rtag {
            case 0: recipient = .broadcast
            case 1: recipient = .client(ClientId(try r.u32("Client.client")))
            case 2: recipient = .everyoneExcept(ClientId(try r.u32("EveryoneExcept.client")))
            default: throw .unknownVariant(type: "MessageRecipient", tag: rtag)
            }
            return .message(recipient: recipient, payload: try r.payload())
        case 1:
            return .setTimer(milliseconds: try r.u32("SetTimer.ms_delay"))
        default:
            throw .unknownVariant(type: "MessageFromProcess", tag: tag)
        }
    }
}

// MARK: - The identity extension (IDENTITY.md, next to this file)
//
// One more event the host delivers, to modules that opted in only, so ABI v1 itself is
// unchanged.
//
// A module opts in by exporting `STATEROOM_IDENTITY_VERSION`, a global holding the address of a
// little-endian i32 equal to ``stateroomIdentityVersion`` (the convention of
// `STATEROOM_API_VERSION`). When a client that has an identity joins, such a module gets
// `ClientIdentity { client, identity }` immediately before `Connect { client }`:
//
//     05000000 client:u32 len:u64 utf8        -- ClientIdentity { client, identity }
//
// that is, variant 5 of `MessageToProcess` in bincode 1.x, the `String` as a `u64` byte length
// and UTF-8. A module without the export never sees variant 5. ``MessageToProcess`` stays
// exactly ABI v1 (its decoder still refuses tag 5), so the v1 codec, its fuzz reference and
// every Rust-SDK module are untouched.

/// The version of the identity extension this SDK and host speak: what the data at
/// `STATEROOM_IDENTITY_VERSION` must hold.
public let stateroomIdentityVersion: Int32 = 1

/// `ClientIdentity { client, identity }` (`5 client:u32 len:u64 utf8`): the identity `client`
/// joined with, delivered right before its `Connect` to modules that declared
/// `STATEROOM_IDENTITY_VERSION` (IDENTITY.md).
public struct ClientIdentity {
    /// The `MessageToProcess` variant index of this event.
    public static let variant: UInt32 = 5

    /// The client about to connect.
    public var client: ClientId
    /// Who it is: a verified token's `sub`, as the server's authentication established it.
    public var identity: String

    /// The event for `client`, known as `identity`.
    public init(client: ClientId, identity: String) {
        self.client = client
        self.identity = identity
    }

    /// The number of bytes ``encode(into:)`` writes: tag, client, length, the UTF-8 bytes.
    public var encodedCount: Int { 16 + identity.utf8.count }

    /// Writes the encoding to the start of `buffer`, which must hold at least ``encodedCount``
    /// bytes, and returns the number of bytes written.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= encodedCount, "buffer too small for the encoded message")
        return encodeUnchecked(at: buffer.baseAddress!)
    }

    /// ``encode(into:)`` at `base`, which the caller made room for ``encodedCount`` bytes at.
    func encodeUnchecked(at base: UnsafeMutableRawPointer) -> Int {
        var w = ABIWriter(base)
        w.u32(Self.variant)
        w.u32(client.rawValue)
        w.u64(UInt64(identity.utf8.count))
        for byte in identity.utf8 {
            base.storeBytes(of: byte, toByteOffset: w.offset, as: UInt8.self)
            w.offset += 1
        }
        return w.offset
    }

    /// The encoding as a new array (tests and tools; the host encodes in place).
    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedCount) { buffer, count in
            count = encode(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// Whether `bytes` start with this event's tag (`05000000`): how a runtime that accepts the
    /// extension tells it from a v1 `MessageToProcess`.
    public static func isEncoded(in bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 4 && UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self)) == variant
    }

    /// Decodes the event at the start of `bytes` (bytes after it are ignored, as bincode's are).
    /// The identity is copied into a `String`; bytes that are not UTF-8 are repaired (the host
    /// sends only valid UTF-8). Tags other than 5 are refused as an unknown variant.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ABIDecodeError) -> ClientIdentity {
        var r = ABIReader(bytes)
        let tag = try r.u32("MessageToProcess tag")
        guard tag == variant else { throw .unknownVariant(type: "ClientIdentity", tag: tag) }
        let client = ClientId(try r.u32("ClientIdentity.client"))
        let length = try r.u64("ClientIdentity.identity length")
        // Compared as u64: a length past Int.max (or wasm32's Int32.max) is just too long.
        guard length <= UInt64(r.remaining) else { throw .truncated(field: "ClientIdentity.identity bytes") }
        let start = r.bytes.baseAddress.map { $0 + r.offset }
        let utf8 = UnsafeBufferPointer(start: start?.assumingMemoryBound(to: UInt8.self), count: Int(length))
        return ClientIdentity(client: client, identity: String(decoding: utf8, as: UTF8.self))
    }
}

// MARK: - Byte cursors

/// Writes little-endian fields into memory whose size the caller checked.
struct ABIWriter {
    let base: UnsafeMutableRawPointer
    var offset = 0

    init(_ base: UnsafeMutableRawPointer) { self.base = base }

    mutating func u32(_ v: UInt32) {
        base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self)
        offset += 4
    }

    mutating func u64(_ v: UInt64) {
        base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt64.self)
        offset += 8
    }

    /// `MessageRecipient`: `0` Broadcast, `1 client:u32` Client, `2 client:u32` EveryoneExcept.
    mutating func recipient(_ r: MessageRecipient) {
        switch r {
        case .broadcast: u32(0)
        case .client(let c): u32(1); u32(c.rawValue)
        case .everyoneExcept(let c): u32(2); u32(c.rawValue)
        }
    }

    /// `MessagePayload`: kind (`0` Bytes, `1` Text), `u64` length, the bytes.
    mutating func payload(_ p: MessagePayload) {
        u32(p.isText ? 1 : 0)
        p.withUnsafeBytes { bytes in
            u64(UInt64(bytes.count))
            if let source = bytes.baseAddress, !bytes.isEmpty {
                (base + offset).copyMemory(from: source, byteCount: bytes.count)
            }
            offset += bytes.count
        }
    }
}

/// Reads little-endian fields, refusing to read past the end; slices it returns are views of
/// the input.
struct ABIReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    mutating func u32(_ field: StaticString) throws(ABIDecodeError) -> UInt32 {
        guard remaining >= 4 else { throw .truncated(field: field) }
        defer { offset += 4 }
        return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    mutating func u64(_ field: StaticString) throws(ABIDecodeError) -> UInt64 {
        guard remaining >= 8 else { throw .truncated(field: field) }
        defer { offset += 8 }
        return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// `MessagePayload` as a view of the input; `Text` is not validated here.
    mutating func payload() throws(ABIDecodeError) -> MessagePayload {
        let tag = try u32("MessagePayload tag")
        guard tag <= 1 else { throw .unknownVariant(type: "MessagePayload", tag: tag) }
        let length = try u64("MessagePayload length")
        // Compared as u64: a length past Int.max (or wasm32's Int32.max) is just too long.
        guard length <= UInt64(remaining) else { throw .truncated(field: "MessagePayload bytes") }
        let body = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + Int(length)])
        offset += Int(length)
        return MessagePayload(borrowing: body, kind: tag == 1 ? .text : .binary)
    }
}
