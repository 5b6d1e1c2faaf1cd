// The RFC 6455 frame parser, one type for both ends of a connection: `role: .server` reads the masked frames
// a client sends, `role: .client` the unmasked frames a server sends. Unsafe code is fenced here: events hand
// out raw views either into the caller's buffer (zero-copy) or into `FrameStorage`, which owns the memory for
// data that spans buffers.

/// What the frame parser found next. Payload views are valid until the next call to `next()` on the same
/// parser, and — when they point into the caller's buffer — only while that buffer is not reused.
public enum FrameEvent {
    /// Every byte of the input was absorbed (`offset == buffer.count`); call again with the next buffer.
    case needMore
    /// A complete text or binary message; text is already UTF-8 validated.
    case message(Opcode, UnsafeRawBufferPointer)
    /// A complete message compressed with permessage-deflate (RFC 7692: RSV1 on its first frame),
    /// only from a parser that ``FrameParser/acceptsCompressed``: the payload as it came (all
    /// fragments joined), not UTF-8 validated — the receiver inflates it and validates text then.
    case compressedMessage(Opcode, UnsafeRawBufferPointer)
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

/// Pure RFC 6455 frame parsing: bytes in, events out.
///
/// Call ``next(_:offset:)`` repeatedly on each received buffer until it returns `.needMore` (the buffer is
/// then fully absorbed and may be released). A complete unfragmented frame wholly inside the buffer is
/// returned as a view INTO the buffer, unmasked in place (no copy, no allocation). Frames split across
/// buffers, fragmented messages and partial headers are assembled in the parser's own storage (allocated
/// lazily, grown as bytes arrive rather than by the declared length), which keeps its capacity for reuse up
/// to ``retainedCapacity`` and is released above that, or by ``releaseMemory()``. Every view is valid until
/// the next call to `next` and, for views into the buffer, until the caller reuses that buffer.
///
/// Enforced: masking by role (a server reads only masked frames, a client only unmasked ones), RSV bits (none,
/// or RSV1 on the first frame of a data message once permessage-deflate is agreed), known opcodes, control frames (FIN, ≤125 bytes), fragment order, 63-bit lengths,
/// `maxMessageSize` (1009 as soon as a header shows it, before any payload is buffered), UTF-8 of text
/// checked per fragment as it arrives and at FIN (1007), close payloads (1002 for 1 byte or an invalid code,
/// 1007 for a non-UTF-8 reason). Control frames may interleave with fragments. Non-minimal length encodings
/// are accepted. After `.close` the connection should stop feeding.
///
/// An idle parser (nothing held between buffers) is three words: all state about a frame or message that
/// spans buffers lives in the lazily allocated storage, so a server holding many quiet connections pays
/// for none of it.
public struct FrameParser {
    /// Which end of the connection the parser reads for.
    public enum Role: Sendable {
        /// The server reads client frames, which must be masked.
        case server
        /// A client reads server frames, which must not be masked.
        case client
    }

    /// The assembly buffer keeps up to this much capacity between messages; above it, it is freed after
    /// the message is delivered.
    public static let retainedCapacity = 16 * 1024

    /// Largest message accepted (the total of all fragments); larger ones are a 1009.
    public let maxMessageSize: Int
    @usableFromInline var storage: FrameStorage?
    /// Which frames the parser accepts.
    public let role: Role
    /// The close code of the protocol error that killed this parser, if any.
    public private(set) var failure: CloseCode?
    /// permessage-deflate was agreed: RSV1 on the first frame of a data message marks it compressed
    /// (``FrameEvent/compressedMessage(_:_:)``). Without it any RSV bit is a protocol error.
    public var acceptsCompressed = false

    /// A parser for `role` accepting messages up to `maxMessageSize` bytes.
    public init(role: Role, maxMessageSize: Int) {
        precondition(maxMessageSize >= 0)
        self.maxMessageSize = maxMessageSize
        self.role = role
    }

    /// True while a partial frame header, a partial frame or the fragments of a message are held.
    public var hasBufferedData: Bool { storage?.holdsData ?? false }

    /// True while the parser owns storage (held data, or capacity kept for reuse).
    public var holdsStorage: Bool { storage != nil }

    /// Frees the parser's storage if it holds no data (call when a connection goes quiet). Invalidates
    /// views from the previous event.
    public mutating func releaseMemory() {
        if !hasBufferedData { storage = nil }
    }

    @inline(__always)
    mutating func fail(_ code: CloseCode, _ offset: inout Int, _ count: Int) -> FrameEvent {
        failure = code
        offset = count
        storage = nil
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
    func checkStart(_ b0: UInt8, _ b1: UInt8, messageOpcode: UInt8) -> CloseCode? {
        if b0 & 0x70 != 0 {
            // RSV2/3 are never agreed; RSV1 only with permessage-deflate, and only on the first frame
            // of a data message (RFC 7692 §6.1; a continuation or a control frame with it is an error).
            let op = b0 & 0x0F
            if b0 & 0x70 != 0x40 || !acceptsCompressed || !(op == 1 || op == 2) { return .protocolError }
        }
        if (b1 & 0x80 != 0) != (role == .server) { return .protocolError }   // masking direction
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

    /// Parses the next event from `buffer[offset...]`, unmasking in place, and advances `offset`.
    public mutating func next(_ buffer: UnsafeMutableRawBufferPointer, offset: inout Int) -> FrameEvent {
        let count = buffer.count
        if let code = failure {
            offset = count
            return .protocolError(code)
        }
        if let st = storage, st.resetPending {
            st.resetPending = false
            st.messageCount = 0
            st.shrink(to: FrameParser.retainedCapacity)
        }
        guard let base = buffer.baseAddress, offset < count else {
            offset = count
            return .needMore
        }
        while true {
            if let st = storage, st.inPayload {
                // Copy what this buffer holds of a frame that started in an earlier buffer.
                let take = min(count - offset, st.frameRemaining)
                let isControl = st.frameOpcode >= 8
                if take > 0 {
                    // Grow with the bytes that actually arrived (not the declared length), so a peer that
                    // announces big frames and sends nothing costs no memory.
                    if !isControl {
                        st.reserveMessage(st.messageCount + take, keeping: st.messageCount,
                                          limit: st.messageCount + st.frameRemaining)
                    }
                    let dest = isControl ? st.control + st.frameFilled : st.message.unsafelyUnwrapped + st.messageCount
                    dest.copyMemory(from: base + offset, byteCount: take)
                    let chunk = UnsafeMutableRawBufferPointer(start: dest, count: take)
                    if st.frameMasked { unmask(chunk, key: st.maskKey, phase: st.frameFilled) }
                    if !isControl {
                        if st.messageOpcode == 1 && !st.messageCompressed && !st.utf8.feed(UnsafeRawBufferPointer(chunk)) {
                            return fail(.invalidPayload, &offset, count)
                        }
                        st.messageCount += take
                    }
                    st.frameFilled += take
                    st.frameRemaining -= take
                    offset += take
                }
                if st.frameRemaining > 0 { return .needMore }
                st.inPayload = false
                if isControl {
                    return controlEvent(st.frameOpcode, UnsafeRawBufferPointer(start: st.control, count: st.frameFilled),
                                        &offset, count)
                }
                if st.frameFin { return finishMessage(st, &offset, count) }
                if offset == count { return .needMore }
                continue
            }

            // A frame header, read directly from the buffer when it is all there, else carried.
            let available = count - offset
            if available == 0 { return .needMore }
            let messageOpcode = storage?.messageOpcode ?? 0
            let header: UnsafeRawPointer
            if (storage?.headerCount ?? 0) == 0, available >= 2 {
                let b0 = base.load(fromByteOffset: offset, as: UInt8.self)
                let b1 = base.load(fromByteOffset: offset + 1, as: UInt8.self)
                if let code = checkStart(b0, b1, messageOpcode: messageOpcode) { return fail(code, &offset, count) }
                let need = headerLength(b1)
                if available >= need {
                    header = UnsafeRawPointer(base + offset)
                    offset += need
                } else {
                    carryHeader(base, &offset, count)
                    return .needMore
                }
            } else {
                let st = ensureStorage()
                let h = st.small
                while st.headerCount < 2 && offset < count {
                    h.storeBytes(of: base.load(fromByteOffset: offset, as: UInt8.self), toByteOffset: st.headerCount, as: UInt8.self)
                    st.headerCount += 1
                    offset += 1
                }
                if st.headerCount < 2 { return .needMore }
                let b0 = h.load(as: UInt8.self)
                let b1 = h.load(fromByteOffset: 1, as: UInt8.self)
                if let code = checkStart(b0, b1, messageOpcode: messageOpcode) { return fail(code, &offset, count) }
                let need = headerLength(b1)
                let take = min(need - st.headerCount, count - offset)
                (h + st.headerCount).copyMemory(from: base + offset, byteCount: take)
                st.headerCount += take
                offset += take
                if st.headerCount < need { return .needMore }
                st.headerCount = 0
                header = UnsafeRawPointer(h)
            }

            // Decode the rest of the header.
            let b0 = header.load(as: UInt8.self)
            let b1 = header.load(fromByteOffset: 1, as: UInt8.self)
            let opcode = b0 & 0x0F
            let fin = b0 & 0x80 != 0
            let compressed = b0 & 0x40 != 0
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
            } else if length > maxMessageSize - (messageOpcode != 0 ? storage.unsafelyUnwrapped.messageCount : 0) {
                return fail(.messageTooBig, &offset, count)
            }
            var key: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
            if masked {
                key = (header.load(fromByteOffset: keyOffset, as: UInt8.self),
                       header.load(fromByteOffset: keyOffset + 1, as: UInt8.self),
                       header.load(fromByteOffset: keyOffset + 2, as: UInt8.self),
                       header.load(fromByteOffset: keyOffset + 3, as: UInt8.self))
            }

            if length <= count - offset {
                // The whole payload is in this buffer: unmask it in place.
                let payload = UnsafeMutableRawBufferPointer(start: base + offset, count: length)
                if masked { unmask(payload, key: key, phase: 0) }
                offset += length
                if opcode >= 8 {
                    return controlEvent(opcode, UnsafeRawBufferPointer(payload), &offset, count)
                }
                if fin && messageOpcode == 0 {
                    // Zero-copy: an unfragmented message wholly inside the caller's buffer.
                    if compressed {
                        return .compressedMessage(Opcode(rawValue: opcode).unsafelyUnwrapped, UnsafeRawBufferPointer(payload))
                    }
                    if opcode == 1 {
                        var v = UTF8Validator()
                        if !(v.feed(UnsafeRawBufferPointer(payload)) && v.isComplete) {
                            return fail(.invalidPayload, &offset, count)
                        }
                    }
                    return .message(Opcode(rawValue: opcode).unsafelyUnwrapped, UnsafeRawBufferPointer(payload))
                }
                // A fragment: append to the message being assembled.
                let st = ensureStorage()
                if st.messageOpcode == 0 {
                    st.messageOpcode = opcode
                    st.messageCompressed = compressed
                    st.utf8.reset()
                }
                if st.messageOpcode == 1 && !st.messageCompressed && !st.utf8.feed(UnsafeRawBufferPointer(payload)) {
                    return fail(.invalidPayload, &offset, count)
                }
                if length > 0 {
                    st.reserveMessage(st.messageCount + length, keeping: st.messageCount, limit: maxMessageSize)
                    (st.message.unsafelyUnwrapped + st.messageCount).copyMemory(from: payload.baseAddress!, byteCount: length)
                    st.messageCount += length
                }
                if fin { return finishMessage(st, &offset, count) }
                continue
            }

            // The payload continues past this buffer: assemble it in storage.
            let st = ensureStorage()
            if opcode < 8 && st.messageOpcode == 0 {
                st.messageOpcode = opcode
                st.messageCompressed = compressed
                st.utf8.reset()
            }
            st.inPayload = true
            st.frameOpcode = opcode
            st.frameFin = fin
            st.frameMasked = masked
            st.maskKey = key
            st.frameRemaining = length
            st.frameFilled = 0
        }
    }

    /// Copies the start of a header that ends past this buffer into storage (always absorbs the rest).
    @inline(__always)
    mutating func carryHeader(_ base: UnsafeMutableRawPointer, _ offset: inout Int, _ count: Int) {
        let st = ensureStorage()
        let take = count - offset
        st.small.copyMemory(from: base + offset, byteCount: take)
        st.headerCount = take
        offset = count
    }

    /// Delivers the assembled message after its final fragment.
    mutating func finishMessage(_ st: FrameStorage, _ offset: inout Int, _ count: Int) -> FrameEvent {
        if st.messageOpcode == 1 && !st.messageCompressed && !st.utf8.isComplete {
            return fail(.invalidPayload, &offset, count)
        }
        let opcode = Opcode(rawValue: st.messageOpcode).unsafelyUnwrapped
        st.messageOpcode = 0
        st.resetPending = true
        let view = UnsafeRawBufferPointer(start: st.message, count: st.message == nil ? 0 : st.messageCount)
        return st.messageCompressed ? .compressedMessage(opcode, view) : .message(opcode, view)
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

/// What a parser holds between buffers: a carried partial header, a carried control payload, the frame
/// whose payload spans buffers, and the message being assembled. A class so its addresses are stable, it
/// frees itself, and an idle parser without one stays small.
@usableFromInline
final class FrameStorage {
    /// 16 bytes for a partial header (at most 14), then 128 for a control payload (at most 125).
    let small: UnsafeMutableRawPointer
    static let controlOffset = 16
    var message: UnsafeMutableRawPointer?
    var messageCapacity = 0

    /// Bytes of a partial header held in `small`.
    var headerCount = 0
    // The frame whose payload is being buffered (split across buffers).
    var inPayload = false
    var frameOpcode: UInt8 = 0
    var frameFin = false
    var frameMasked = false
    var maskKey: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
    var frameRemaining = 0
    var frameFilled = 0
    /// Opcode (1 or 2) of the data message being assembled; 0 when none.
    var messageOpcode: UInt8 = 0
    /// That message is compressed (RSV1 on its first frame).
    var messageCompressed = false
    /// Bytes of that message assembled so far.
    var messageCount = 0
    /// UTF-8 state across the fragments of a text message.
    var utf8 = UTF8Validator()
    /// The last event was a view into `message`: clear it at the next call.
    var resetPending = false

    init() {
        small = .allocate(byteCount: 144, alignment: 16)
    }

    deinit {
        small.deallocate()
        message?.deallocate()
    }

    var holdsData: Bool { headerCount > 0 || inPayload || messageOpcode != 0 }

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
