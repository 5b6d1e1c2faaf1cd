#if !STATEROOM_GUEST
import Stateroom
#endif

/// Why bytes could not be decoded as a message of the Stateroom ABI (shared/ABI.md).
public enum BincodeError: Error, Equatable {
    /// The input ended inside a field; `offset` is where the missing bytes start.
    case truncated(offset: Int)
    /// An enum tag outside the variants of `type`.
    case unknownVariant(type: String, tag: UInt32)
    /// The message was complete but bytes followed it.
    case trailingBytes(count: Int)
    /// A length that does not fit the platform's `Int`.
    case lengthTooLarge(UInt64)

}

/// Reads bincode 1.x (default options: little-endian, fixed-width integers, `u64` lengths) from
/// borrowed bytes. Slices it returns point into the input: no copies.
public struct BincodeReader {
    @usableFromInline let bytes: UnsafeRawBufferPointer
    /// The read position.
    public private(set) var offset = 0

    /// Reads `bytes`, which must stay valid while the reader and the slices it returns are used.
    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// `true` when every byte was read.
    public var isAtEnd: Bool { offset == bytes.count }

    /// Reads a little-endian `u32`.
    public mutating func readUInt32() throws(BincodeError) -> UInt32 {
        guard bytes.count - offset >= 4 else { throw .truncated(offset: offset) }
        let v = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        offset += 4
        return v
    }

    /// Reads a little-endian `u64`.
    public mutating func readUInt64() throws(BincodeError) -> UInt64 {
        guard bytes.count - offset >= 8 else { throw .truncated(offset: offset) }
        let v = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        offset += 8
        return v
    }

    /// Reads a `u64` length and that many bytes, returned as a view of the input.
    public mutating func readBytes() throws(BincodeError) -> UnsafeRawBufferPointer {
        let length = try readUInt64()
        guard length <= UInt64(Int.max) else { throw .lengthTooLarge(length) }
        let n = Int(length)
        guard bytes.count - offset >= n else { throw .truncated(offset: offset) }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
        offset += n
        return slice
    }

    /// Reads a `MessagePayload` (`0` = `Bytes`, `1` = `Text`) as a borrowed view of the input.
    /// Text is not validated: the host only delivers text it validated as UTF-8.
    public mutating func readPayload() throws(BincodeError) -> MessagePayload {
        let tag = try readUInt32()
        switch tag {
        case 0: return MessagePayload(borrowing: try readBytes(), kind: .binary)
        case 1: return MessagePayload(borrowing: try readBytes(), kind: .text)
        default: throw .unknownVariant(type: "MessagePayload", tag: tag)
        }
    }

    /// Reads a `MessageRecipient`.
    public mutating func readRecipient() throws(BincodeError) -> MessageRecipient {
        let tag = try readUInt32()
        switch tag {
        case 0: return .broadcast
        case 1: return .client(ClientId(try readUInt32()))
        case 2: return .everyoneExcept(ClientId(try readUInt32()))
        default: throw .unknownVariant(type: "MessageRecipient", tag: tag)
        }
    }

    /// Throws unless every byte was read.
    public func finish() throws(BincodeError) {
        guard isAtEnd else { throw .trailingBytes(count: bytes.count - offset) }
    }
}

/// Appends bincode 1.x to a byte array.
public struct BincodeWriter {
    /// The encoded bytes so far.
    public var bytes: [UInt8]

    /// An empty writer that can hold `capacity` bytes before it allocates.
    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Forgets the bytes, keeping the storage.
    public mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

    /// Appends a little-endian `u32`.
    public mutating func write(_ v: UInt32) {
        bytes.append(UInt8(truncatingIfNeeded: v))
        bytes.append(UInt8(truncatingIfNeeded: v >> 8))
        bytes.append(UInt8(truncatingIfNeeded: v >> 16))
        bytes.append(UInt8(truncatingIfNeeded: v >> 24))
    }

    /// Appends a little-endian `u64`.
    public mutating func write(_ v: UInt64) {
        write(UInt32(truncatingIfNeeded: v))
        write(UInt32(truncatingIfNeeded: v >> 32))
    }

    /// Appends a `u64` length and the bytes.
    public mutating func write(bytes b: UnsafeRawBufferPointer) {
        write(UInt64(b.count))
        bytes.append(contentsOf: b)
    }

    /// Appends a `MessagePayload` (`Bytes` or `Text`).
    public mutating func write(_ payload: MessagePayload) {
        write(payload.isText ? 1 as UInt32 : 0)
        payload.withUnsafeBytes { write(bytes: $0) }
    }

    /// Appends a `MessageRecipient`.
    public mutating func write(_ recipient: MessageRecipient) {
        switch recipient {
        case .broadcast: write(0 as UInt32)
        case .client(let c): write(1 as UInt32); write(c.rawValue)
        case .everyoneExcept(let c): write(2 as UInt32); write(c.rawValue)
        }
    }
}
