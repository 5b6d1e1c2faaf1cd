import Stateroom

// The bincode 1.x codec of the Stateroom wasm ABI (see shared/ABI.md): pure, bytes in and bytes
// out, no WasmKit. Little-endian fixed-width integers; an enum is its variant index as `u32`
// followed by its fields; `String`/`Vec<u8>` are a `u64` length followed by the bytes.

/// An event the host delivers to a guest: bincode `MessageToProcess`.
///
/// A `.message` may carry a borrowed payload (the server's receive buffer): encode it before the
/// callback that received it returns.
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
public enum MessageFromProcess {
    /// Send `payload` to `recipient` (`0 MessageRecipient MessagePayload`).
    case message(recipient: MessageRecipient, payload: MessagePayload)
    /// Replace the room's timer (`1 ms_delay:u32`).
    case setTimer(milliseconds: UInt32)
}

/// Why bytes could not be decoded as an ABI message. The description names what was wrong.
public enum ABIDecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The input ended in the middle of `field`.
    case truncated(field: String)
    /// An enum variant tag that the ABI does not define.
    case unknownVariant(type: String, tag: UInt32)
    /// A `Text` payload whose bytes are not valid UTF-8.
    case invalidUTF8

    public var description: String {
        switch self {
        case .truncated(let field): return "truncated input: \(field) runs past the end"
        case .unknownVariant(let type, let tag): return "unknown \(type) variant \(tag)"
        case .invalidUTF8: return "Text payload is not valid UTF-8"
        }
    }
}

// MARK: - Encoding

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
        var w = ByteWriter(buffer)
        switch self {
        case .initialize: w.u32(0)
        case .connect(let client): w.u32(1); w.u32(client.rawValue)
        case .disconnect(let client): w.u32(2); w.u32(client.rawValue)
        case .message(let sender, let payload):
            w.u32(3); w.u32(sender.rawValue); w.payload(payload)
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

    /// Decodes one message from the start of `bytes`. Payloads are copied (owned).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ABIDecodeError) -> MessageToProcess {
        var r = ByteReader(bytes)
        let tag = try r.u32("MessageToProcess tag")
        let result: MessageToProcess
        switch tag {
        case 0: result = .initialize
        case 1: result = .connect(ClientId(try r.u32("Connect.client")))
        case 2: result = .disconnect(ClientId(try r.u32("Disconnect.client")))
        case 3:
            let sender = ClientId(try r.u32("Message.sender"))
            result = .message(sender: sender, payload: try r.payload())
        case 4: result = .timer
        default: throw .unknownVariant(type: "MessageToProcess", tag: tag)
        }
        return result
    }

    /// Decodes one message from the start of `bytes`.
    public static func decode(_ bytes: [UInt8]) throws(ABIDecodeError) -> MessageToProcess {
        let result = bytes.withUnsafeBytes { b in
            Result { () throws(ABIDecodeError) -> MessageToProcess in try decode(b) }
        }
        return try result.get()
    }
}

extension MessageFromProcess {
    /// The number of bytes ``encode(into:)`` writes.
    public var encodedCount: Int {
        switch self {
        case .setTimer: return 8
        case .message(let recipient, let payload):
            let recipientCount = recipient == .broadcast ? 4 : 8
            return 4 + recipientCount + 12 + payload.count
        }
    }

    /// Writes the encoding to the start of `buffer` (at least ``encodedCount`` bytes) and returns
    /// the number of bytes written. Guests do this; the host uses it in tests and benchmarks.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        precondition(buffer.count >= encodedCount, "buffer too small for the encoded message")
        var w = ByteWriter(buffer)
        switch self {
        case .message(let recipient, let payload):
            w.u32(0)
            switch recipient {
            case .broadcast: w.u32(0)
            case .client(let c): w.u32(1); w.u32(c.rawValue)
            case .everyoneExcept(let c): w.u32(2); w.u32(c.rawValue)
            }
            w.payload(payload)
        case .setTimer(let ms):
            w.u32(1); w.u32(ms)
        }
        return w.offset
    }

    /// The encoding as a new array.
    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedCount) { buffer, count in
            count = encode(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// Decodes one message from the start of `bytes`. The payload is copied out (owned), so the
    /// result stays valid after `bytes` goes away; `Text` must be valid UTF-8.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(ABIDecodeError) -> MessageFromProcess {
        var r = ByteReader(bytes)
        let tag = try r.u32("MessageFromProcess tag")
        let result: MessageFromProcess
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
            result = .message(recipient: recipient, payload: try r.payload())
        case 1:
            result = .setTimer(milliseconds: try r.u32("SetTimer.ms_delay"))
        default:
            throw .unknownVariant(type: "MessageFromProcess", tag: tag)
        }
        return result
    }

    /// Decodes one message from the start of `bytes`.
    public static func decode(_ bytes: [UInt8]) throws(ABIDecodeError) -> MessageFromProcess {
        let result = bytes.withUnsafeBytes { b in
            Result { () throws(ABIDecodeError) -> MessageFromProcess in try decode(b) }
        }
        return try result.get()
    }
}

// MARK: - Byte cursors

/// Writes little-endian fields into a buffer whose size the caller checked.
private struct ByteWriter {
    let buffer: UnsafeMutableRawBufferPointer
    var offset = 0

    init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }

    mutating func u32(_ v: UInt32) {
        buffer.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self)
        offset += 4
    }

    mutating func u64(_ v: UInt64) {
        buffer.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt64.self)
        offset += 8
    }

    mutating func payload(_ p: MessagePayload) {
        u32(p.kind == .text ? 1 : 0)
        p.withUnsafeBytes { bytes in
            u64(UInt64(bytes.count))
            if !bytes.isEmpty {
                UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + bytes.count])
                    .copyMemory(from: bytes)
            }
            offset += bytes.count
        }
    }
}

/// Reads little-endian fields, refusing to read past the end.
private struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    mutating func u32(_ field: String) throws(ABIDecodeError) -> UInt32 {
        guard remaining >= 4 else { throw .truncated(field: field) }
        defer { offset += 4 }
        return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    mutating func u64(_ field: String) throws(ABIDecodeError) -> UInt64 {
        guard remaining >= 8 else { throw .truncated(field: field) }
        defer { offset += 8 }
        return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// `MessagePayload`, copied into owned storage.
    mutating func payload() throws(ABIDecodeError) -> MessagePayload {
        let tag = try u32("MessagePayload tag")
        guard tag <= 1 else { throw .unknownVariant(type: "MessagePayload", tag: tag) }
        let length = try u64("MessagePayload length")
        guard length <= UInt64(remaining) else { throw .truncated(field: "MessagePayload bytes") }
        let body = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + Int(length)])
        offset += Int(length)
        if tag == 1 {
            guard let text = String(validating: body, as: UTF8.self) else { throw .invalidUTF8 }
            return .text(text)
        }
        return .binary([UInt8](body))
    }
}
