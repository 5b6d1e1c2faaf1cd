/// Growable scratch memory that messages are written into in place, reused from one message to
/// the next (a wasm guest's context keeps one per room, a server shard one for its rooms, so
/// building a reply allocates nothing once the buffer is big enough). Used by one thread at a
/// time, so its fields skip the dynamic exclusivity checks (they dominated a native send).
public final class MessageBuffer {
    /// The start of the memory; it moves when the buffer grows.
    @exclusivity(unchecked) public private(set) var base: UnsafeMutableRawPointer
    /// The bytes the memory holds.
    @exclusivity(unchecked) public private(set) var capacity: Int
    /// Set by the owner while a message is being written into the memory (so a message sent
    /// meanwhile takes memory of its own).
    @exclusivity(unchecked) public var inUse = false

    /// Scratch memory of `capacity` bytes (at least 64).
    public init(capacity: Int = 256) {
        self.capacity = max(64, capacity)
        base = UnsafeMutableRawPointer.allocate(byteCount: self.capacity, alignment: 8)
    }

    deinit { base.deallocate() }

    /// Memory for at least `count` bytes, valid until the next call; what it held is not kept.
    public func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if count > capacity {
            base.deallocate()
            capacity = max(count, capacity * 2)
            base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        }
        return base
    }

    /// Writes a text message with `write` into this memory — or into memory of its own when
    /// this one is in use (a send from inside another text's `write`) — and passes it to `send`
    /// as a borrowed payload, valid during that call only. What a context that keeps scratch
    /// memory implements ``StateroomContext/sendText(to:_:)`` with.
    public func withText(_ write: (inout TextWriter) -> Void, _ send: (MessagePayload) -> Void) {
        let buffer = inUse ? MessageBuffer() : self
        buffer.inUse = true
        var writer = TextWriter(buffer: buffer)
        write(&writer)
        send(MessagePayload(borrowing: writer.bytes, kind: .text))
        buffer.inUse = false
    }

    /// Makes room for at least `count` bytes, keeping the first `used` bytes.
    @usableFromInline
    func grow(to count: Int, keeping used: Int) {
        guard count > capacity else { return }
        let bigger = max(count, capacity * 2)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: bigger, alignment: 8)
        if used > 0 { memory.copyMemory(from: base, byteCount: used) }
        base.deallocate()
        base = memory
        capacity = bigger
    }
}

/// Builds a text message in place: pieces are appended straight into the memory the message is
/// sent from, so no `String` is built (no interpolation, no intermediate copies). Get one from
/// ``StateroomContext/sendText(to:_:)``:
///
///     context.sendText(to: .broadcast) { text in
///         text.append("new value: ")
///         text.append(value)
///     }
///
/// Everything it appends is valid UTF-8 (static strings, strings, decimal integers, the text of
/// a text payload), so the result is a valid text message.
public struct TextWriter {
    @usableFromInline let buffer: MessageBuffer
    @usableFromInline let start: Int
    @usableFromInline var end: Int

    /// A writer appending to `buffer` from byte `start` (the bytes before it are kept: a context
    /// puts its message header there).
    public init(buffer: MessageBuffer, start: Int = 0) {
        self.buffer = buffer
        self.start = start
        self.end = start
    }

    /// The bytes written so far.
    public var count: Int { end - start }

    /// The text written so far; valid until the buffer is written again.
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: buffer.base + start, count: end - start)
    }

    /// Appends a literal, without copying it first.
    @inlinable
    public mutating func append(_ text: StaticString) {
        if text.hasPointerRepresentation {
            appendRaw(UnsafeRawPointer(text.utf8Start), text.utf8CodeUnitCount)
        } else {
            text.withUTF8Buffer { appendRaw(UnsafeRawPointer($0.baseAddress!), $0.count) }
        }
    }

    /// Appends `text`'s UTF-8.
    public mutating func append(_ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            if let p = utf8.baseAddress { appendRaw(UnsafeRawPointer(p), utf8.count) }
        }
    }

    /// Appends `value` in decimal (as `"\(value)"` would, without building a string).
    @inlinable
    public mutating func append<Integer: BinaryInteger>(_ value: Integer) {
        // Digits are written backwards into a small stack buffer, then copied in order.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 48) { scratch in
            var magnitude = value.magnitude
            var i = scratch.count
            repeat {
                precondition(i > 1, "TextWriter.append: integers wider than 128 bits are not supported")
                i -= 1
                scratch[i] = 48 &+ UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
            } while magnitude != 0
            if value < 0 {
                i -= 1
                scratch[i] = 45  // "-"
            }
            appendRaw(UnsafeRawPointer(scratch.baseAddress! + i), scratch.count - i)
        }
    }

    /// Appends `client` as `"\(client)"` would: `ClientId(7)`.
    public mutating func append(_ client: ClientId) {
        append("ClientId(")
        append(client.rawValue)
        append(")")
    }

    /// Appends the text of a text payload (such as a message a client sent). A binary payload is
    /// a programming error: its bytes need not be UTF-8.
    public mutating func append(_ payload: MessagePayload) {
        precondition(payload.isText, "TextWriter.append: a binary payload is not text")
        payload.withUnsafeBytes { bytes in
            if let p = bytes.baseAddress { appendRaw(p, bytes.count) }
        }
    }

    @usableFromInline
    mutating func reserve(_ count: Int) {
        if end + count > buffer.capacity { buffer.grow(to: end + count, keeping: end) }
    }

    @usableFromInline
    mutating func appendRaw(_ source: UnsafeRawPointer, _ count: Int) {
        reserve(count)
        (buffer.base + end).copyMemory(from: source, byteCount: count)
        end += count
    }
}

extension StateroomContext {
    /// Writes a text message with `write` and sends it to `recipient`. This default builds it
    /// in memory of its own, then sends it as a borrowed payload; contexts that keep scratch
    /// memory (the server's, the wasm guest's) write it there instead.
    public func sendText(to recipient: MessageRecipient, _ write: (inout TextWriter) -> Void) {
        MessageBuffer().withText(write) { send($0, to: recipient) }
    }

    /// Sends `bytes` as a binary message without copying them first (they need to stay valid only
    /// during the call: a send encodes the message before it returns).
    public func send(binary bytes: UnsafeRawBufferPointer, to recipient: MessageRecipient) {
        send(MessagePayload(borrowing: bytes, kind: .binary), to: recipient)
    }
}
