// The RFC 6455 frame parser core, shared by the server side (masked client frames) and the client side
// (unmasked server frames). Unsafe code is fenced here: events hand out raw views either into the caller's
// buffer (zero-copy) or into `FrameStorage`, which owns the memory for data that spans buffers.

/// What the frame parser found next. Payload views are valid until the next call to `next()` on the same
/// parser, and — when they point into the caller's buffer — only while that buffer is not reused.
public enum FrameEvent {
    /// Every byte of the input was absorbed (`offset == buffer.count`); call again with the next buffer.
    case needMore
    /// A complete text or binary message; text is already UTF-8 validated.
    case message(Opcode, UnsafeRawBufferPointer)
    /// A ping with its application data (≤ 125 bytes); answer with a pong carrying the same bytes.
    case ping(UnsafeRawBufferPointer)
    /// A pong.
    case pong(UnsafeRawBufferPointer)
    /// A close frame with a validated code (nil when the payload was empty) and a UTF-8 reason.
    case close(code: UInt16?, reason: UnsafeRawBufferPointer)
    /// The peer broke the protocol: `.protocolError` (1002), `.invalidPayload` (1007) or `.messageTooBig`
    /// (1009). Send a close frame with this code and close; the parser is dead and returns this again.
    case protocolError(CloseCode)
}

/// Memory owned by a parser for bytes that span buffers: a carried partial header, a carried control
/// payload, and the message being assembled. A class so its addresses are stable and it frees itself.
final class FrameStorage {
    /// 16 bytes for a partial header (at most 14), then 128 for a control payload (at most 125).
    let small: UnsafeMutableRawPointer
    static let controlOffset = 16
    var message: UnsafeMutableRawPointer?
    var messageCapacity = 0

    init() {
        small = .allocate(byteCount: 144, alignment: 16)
    }

    deinit {
        small.deallocate()
        message?.deallocate()
    }

    var control: UnsafeMutableRawPointer { small + FrameStorage.controlOffset }

    /// Makes room for `required` message bytes, keeping the first `keeping`; grows geometrically but not
    /// past `limit` (the largest size known to be needed) unless `required` is larger.
    func reserveMessage(_ required: Int, keeping: Int, limit: Int) {
        if required <= messageCapacity { return }
        let grown = min(max(limit, required), messageCapacity * 2)
        let capacity = max(required, grown, 256)
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        if let old = message {
            if keeping > 0 { fresh.copyMemory(from: old, byteCount: keeping) }
            old.deallocate()
        }
        message = fresh
        messageCapacity = capacity
    }

    /// Frees the message buffer when it grew past `retained` bytes.
    func shrink(to retained: Int) {
        if messageCapacity > retained, let old = message {
            old.deallocate()
            message = nil
            messageCapacity = 0
        }
    }
}

/// The parser state machine. `requireMask` is true on the server (client frames must be masked) and false
/// on the client (server frames must not be).
struct FrameParserCore {
    let maxMessageSize: Int
    let retainedCapacity: Int
    let requireMask: Bool

    var storage: FrameStorage?
    /// Bytes of a partial header held in `storage.small`.
    var headerCount = 0

    // The frame whose payload is being buffered into storage (split across buffers).
    var inPayload = false
    var frameOpcode: UInt8 = 0
    var frameFin = false
    var frameRemaining = 0
    var frameFilled = 0
    var maskKey: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
    var frameMasked = false

    /// Opcode (1 or 2) of the data message being assembled in storage; 0 when none.
    var messageOpcode: UInt8 = 0
    /// Bytes of that message assembled so far.
    var messageCount = 0
    /// UTF-8 state across the fragments of a text message.
    var utf8 = UTF8Validator()
    /// The last event was a view into `storage.message`: clear it at the next call.
    var resetPending = false
    /// Set once the peer broke the protocol.
    var failure: CloseCode?

    init(maxMessageSize: Int, retainedCapacity: Int, requireMask: Bool) {
        precondition(maxMessageSize >= 0)
        self.maxMessageSize = maxMessageSize
        self.retainedCapacity = retainedCapacity
        self.requireMask = requireMask
    }

    var hasBufferedData: Bool { headerCount > 0 || inPayload || messageOpcode != 0 }

    mutating func releaseMemory() {
        if !hasBufferedData {
            storage = nil
            messageCount = 0
            resetPending = false
        }
    }

    @inline(__always)
    mutating func fail(_ code: CloseCode, _ offset: inout Int, _ count: Int) -> FrameEvent {
        failure = code
        offset = count
        storage = nil
        headerCount = 0
        inPayload = false
        messageOpcode = 0
        messageCount = 0
        return .protocolError(code)
    }

    @inline(__always)
    mutating func ensureStorage() -> FrameStorage {
        if let s = storage { return s }
        let s = FrameStorage()
        storage = s
        return s
    }

    /// Checks the first two header bytes against the protocol state; returns the error, if any.
    @inline(__always)
    func checkStart(_ b0: UInt8, _ b1: UInt8) -> CloseCode? {
        if b0 & 0x70 != 0 { return .protocolError }                    // RSV1-3 without extensions
        if (b1 & 0x80 != 0) != requireMask { return .protocolError }   // masking direction
        let fin = b0 & 0x80 != 0
        switch b0 & 0x0F {
        case 0:
            if messageOpcode == 0 { return .protocolError }          // continuation without a message
        case 1, 2:
            if messageOpcode != 0 { return .protocolError }          // new message inside a fragmented one
        case 8, 9, 10:
            if !fin { return .protocolError }                        // control frames: FIN (length checked later)
        default:
            return .protocolError                                    // reserved opcodes
        }
        return nil
    }

    @inline(__always)
    func headerLength(_ b1: UInt8) -> Int {
        let len7 = b1 & 0x7F
        return 2 + (len7 == 126 ? 2 : (len7 == 127 ? 8 : 0)) + (b1 & 0x80 != 0 ? 4 : 0)
    }

    mutating func next(_ buffer: UnsafeMutableRawBufferPointer, offset: inout Int) -> FrameEvent {
        let count = buffer.count
        if let code = failure {
            offset = count
            return .protocolError(code)
        }
        if resetPending {
            resetPending = false
            messageCount = 0
            storage?.shrink(to: retainedCapacity)
        }
        guard let base = buffer.baseAddress, offset < count else {
            offset = count
            return .needMore
        }
        while true {
            if inPayload {
                // Copy what this buffer holds of a frame that started in an earlier buffer.
                let take = min(count - offset, frameRemaining)
                let store = storage.unsafelyUnwrapped
                let isControl = frameOpcode >= 8
                if take > 0 {
                    // Grow with the bytes that actually arrived (not the declared length), so a peer that
                    // announces big frames and sends nothing costs no memory.
                    if !isControl {
                        store.reserveMessage(messageCount + take, keeping: messageCount, limit: messageCount + frameRemaining)
                    }
                    let dest = isControl ? store.control + frameFilled : store.message.unsafelyUnwrapped + messageCount
                    dest.copyMemory(from: base + offset, byteCount: take)
                    let chunk = UnsafeMutableRawBufferPointer(start: dest, count: take)
                    if frameMasked { unmask(chunk, key: maskKey, phase: frameFilled) }
                    if !isControl {
                        if messageOpcode == 1 && !utf8.feed(UnsafeRawBufferPointer(chunk)) {
                            return fail(.invalidPayload, &offset, count)
                        }
                        messageCount += take
                    }
                    frameFilled += take
                    frameRemaining -= take
                    offset += take
                }
                if frameRemaining > 0 { return .needMore }
                inPayload = false
                if isControl {
                    return controlEvent(frameOpcode, UnsafeRawBufferPointer(start: store.control, count: frameFilled),
                                        &offset, count)
                }
                if frameFin { return finishMessage(&offset, count) }
                if offset == count { return .needMore }
                continue
            }

            // A frame header, read directly from the buffer when it is all there, else carried.
            let available = count - offset
            if available == 0 { return .needMore }
            let header: UnsafeRawPointer
            if headerCount == 0, available >= 2 {
                let b0 = base.load(fromByteOffset: offset, as: UInt8.self)
                let b1 = base.load(fromByteOffset: offset + 1, as: UInt8.self)
                if let code = checkStart(b0, b1) { return fail(code, &offset, count) }
                let need = headerLength(b1)
                if available >= need {
                    header = UnsafeRawPointer(base + offset)
                    offset += need
                } else {
                    carryHeader(base, &offset, count)
                    return .needMore
                }
            } else {
                let h = ensureStorage().small
                while headerCount < 2 && offset < count {
                    h.storeBytes(of: base.load(fromByteOffset: offset, as: UInt8.self), toByteOffset: headerCount, as: UInt8.self)
                    headerCount += 1
                    offset += 1
                }
                if headerCount < 2 { return .needMore }
                let b0 = h.load(as: UInt8.self)
                let b1 = h.load(fromByteOffset: 1, as: UInt8.self)
                if let code = checkStart(b0, b1) { return fail(code, &offset, count) }
                let need = headerLength(b1)
                let take = min(need - headerCount, count - offset)
                (h + headerCount).copyMemory(from: base + offset, byteCount: take)
                headerCount += take
                offset += take
                if headerCount < need { return .needMore }
                headerCount = 0
                header = UnsafeRawPointer(h)
            }

            // Decode the rest of the header.
            let b0 = header.load(as: UInt8.self)
            let b1 = header.load(fromByteOffset: 1, as: UInt8.self)
            let opcode = b0 & 0x0F
            let fin = b0 & 0x80 != 0
            let masked = b1 & 0x80 != 0
            var length = Int(b1 & 0x7F)
            var keyOffset = 2
            if length == 126 {
                length = Int(UInt16(bigEndian: header.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
                keyOffset = 4
            } else if length == 127 {
                let l64 = UInt64(bigEndian: header.loadUnaligned(fromByteOffset: 2, as: UInt64.self))
                if l64 & (1 << 63) != 0 { return fail(.protocolError, &offset, count) }
                length = Int(l64)
                keyOffset = 10
            }
            if opcode >= 8 {
                // Control frames carry ≤ 125 bytes (a non-minimal 16/64-bit encoding of a small length is fine).
                if length > 125 { return fail(.protocolError, &offset, count) }
            } else if length > maxMessageSize - (messageOpcode != 0 ? messageCount : 0) {
                return fail(.messageTooBig, &offset, count)
            }
            if masked {
                maskKey = (header.load(fromByteOffset: keyOffset, as: UInt8.self),
                           header.load(fromByteOffset: keyOffset + 1, as: UInt8.self),
                           header.load(fromByteOffset: keyOffset + 2, as: UInt8.self),
                           header.load(fromByteOffset: keyOffset + 3, as: UInt8.self))
            }

            if length <= count - offset {
                // The whole payload is in this buffer: unmask it in place.
                let payload = UnsafeMutableRawBufferPointer(start: base + offset, count: length)
                if masked { unmask(payload, key: maskKey, phase: 0) }
                offset += length
                if opcode >= 8 {
                    return controlEvent(opcode, UnsafeRawBufferPointer(payload), &offset, count)
                }
                if fin && messageOpcode == 0 {
                    // Zero-copy: an unfragmented message wholly inside the caller's buffer.
                    if opcode == 1 {
                        var v = UTF8Validator()
                        if !(v.feed(UnsafeRawBufferPointer(payload)) && v.isComplete) {
                            return fail(.invalidPayload, &offset, count)
                        }
                    }
                    return .message(Opcode(rawValue: opcode).unsafelyUnwrapped, UnsafeRawBufferPointer(payload))
                }
                // A fragment: append to the message being assembled.
                if messageOpcode == 0 {
                    messageOpcode = opcode
                    utf8.reset()
                }
                if messageOpcode == 1 && !utf8.feed(UnsafeRawBufferPointer(payload)) {
                    return fail(.invalidPayload, &offset, count)
                }
                if length > 0 {
                    let store = ensureStorage()
                    store.reserveMessage(messageCount + length, keeping: messageCount, limit: maxMessageSize)
                    (store.message.unsafelyUnwrapped + messageCount).copyMemory(from: payload.baseAddress!, byteCount: length)
                    messageCount += length
                }
                if fin { return finishMessage(&offset, count) }
                continue
            }

            // The payload continues past this buffer: assemble it in storage.
            _ = ensureStorage()
            if opcode < 8 && messageOpcode == 0 {
                messageOpcode = opcode
                utf8.reset()
            }
            inPayload = true
            frameOpcode = opcode
            frameFin = fin
            frameMasked = masked
            frameRemaining = length
            frameFilled = 0
        }
    }

    /// Copies the start of a header that ends past this buffer into storage (always absorbs the rest).
    @inline(__always)
    mutating func carryHeader(_ base: UnsafeMutableRawPointer, _ offset: inout Int, _ count: Int) {
        let h = ensureStorage().small
        let take = count - offset
        h.copyMemory(from: base + offset, byteCount: take)
        headerCount = take
        offset = count
    }

    /// Delivers the assembled message after its final fragment.
    mutating func finishMessage(_ offset: inout Int, _ count: Int) -> FrameEvent {
        if messageOpcode == 1 && !utf8.isComplete {
            return fail(.invalidPayload, &offset, count)
        }
        let opcode = Opcode(rawValue: messageOpcode).unsafelyUnwrapped
        messageOpcode = 0
        resetPending = true
        let view = UnsafeRawBufferPointer(start: storage?.message, count: storage?.message == nil ? 0 : messageCount)
        return .message(opcode, view)
    }

    /// Validates a complete control frame and turns it into its event.
    mutating func controlEvent(_ opcode: UInt8, _ payload: UnsafeRawBufferPointer, _ offset: inout Int, _ count: Int) -> FrameEvent {
        switch opcode {
        case 9:
            return .ping(payload)
        case 10:
            return .pong(payload)
        default:
            if payload.count == 0 {
                return .close(code: nil, reason: payload)
            }
            if payload.count == 1 {
                return fail(.protocolError, &offset, count)
            }
            let code = UInt16(payload[0]) << 8 | UInt16(payload[1])
            if !CloseCode.isValidReceived(code) {
                return fail(.protocolError, &offset, count)
            }
            let reason = UnsafeRawBufferPointer(rebasing: payload[2...])
            var v = UTF8Validator()
            if !(v.feed(reason) && v.isComplete) {
                return fail(.invalidPayload, &offset, count)
            }
            return .close(code: code, reason: reason)
        }
    }
}
