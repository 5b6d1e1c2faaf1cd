// Shared by the WebSocket frame targets: owned events and a driver that feeds a `FrameParser`
// a stream cut into chunks.

import WireProtocol

/// An owned copy of a `FrameEvent` (views die at the parser's next call).
enum Ev: Equatable, CustomStringConvertible {
    case message(UInt8, [UInt8])
    /// permessage-deflate: the payload as it came, not inflated.
    case compressed(UInt8, [UInt8])
    case ping([UInt8])
    case pong([UInt8])
    case close(UInt16?, [UInt8])
    case error(UInt16)

    var description: String {
        switch self {
        case let .message(op, b): return "message(\(op), \(b.count) bytes)"
        case let .compressed(op, b): return "compressed(\(op), \(b.count) bytes)"
        case let .ping(b): return "ping(\(b.count))"
        case let .pong(b): return "pong(\(b.count))"
        case let .close(c, r): return "close(\(c.map { String($0) } ?? "nil"), \(r.count))"
        case let .error(c): return "error(\(c))"
        }
    }
}

/// What a parser reported for a whole stream, and whether it still held a partial frame or
/// message at the end.
struct ParseRun: Equatable {
    var events: [Ev]
    var pending: Bool
}

/// Feeds `stream` to a new parser in chunks of the given sizes (their sum is the stream's length),
/// each chunk a fresh exact allocation freed after it is absorbed, as a server's receive buffers
/// are. With `release`, calls `releaseMemory()` after every chunk, as a server does when a
/// connection goes quiet. Checks the parser's contract on every call.
func runParser(_ stream: [UInt8], role: FrameParser.Role, maxMessageSize: Int, compression: Bool = false,
               chunks: [Int], release: Bool) -> ParseRun {
    var parser = FrameParser(role: role, maxMessageSize: maxMessageSize)
    #if FUZZ_DEFLATE
    parser.acceptsCompressed = compression
    #else
    require(!compression, "this FrameParser has no permessage-deflate")
    #endif
    var events: [Ev] = []
    var position = 0
    var dead = false
    for size in chunks where !dead {
        let chunk = stream[position..<position + size]
        position += size
        withFreshCopy(chunk) { buffer in
            var offset = 0
            while true {
                let before = offset
                let event = parser.next(buffer, offset: &offset)
                require(offset <= buffer.count && offset >= before, "offset moved from \(before) to \(offset) of \(buffer.count)")
                switch event {
                case .needMore:
                    require(offset == buffer.count, "needMore left \(buffer.count - offset) bytes unread")
                    return
                case let .message(op, view):
                    require(op == .text || op == .binary, "message with opcode \(op)")
                    require(view.count <= maxMessageSize, "message of \(view.count) bytes over the limit \(maxMessageSize)")
                    if op == .text { require(referenceIsValidUTF8(view), "text message that is not UTF-8") }
                    events.append(.message(op.rawValue, Array(view)))
                #if FUZZ_DEFLATE
                case let .compressedMessage(op, view):
                    require(compression, "a compressed message from a parser that did not agree to compression")
                    require(op == .text || op == .binary, "compressed message with opcode \(op)")
                    require(view.count <= maxMessageSize, "compressed message of \(view.count) bytes over the limit")
                    events.append(.compressed(op.rawValue, Array(view)))
                #endif
                case let .ping(view):
                    require(view.count <= 125, "ping of \(view.count) bytes")
                    events.append(.ping(Array(view)))
                case let .pong(view):
                    require(view.count <= 125, "pong of \(view.count) bytes")
                    events.append(.pong(Array(view)))
                case let .close(code, reason):
                    require(reason.count <= 123, "close reason of \(reason.count) bytes")
                    require(code != nil || reason.isEmpty, "close reason without a code")
                    if let code { require(CloseCode.isValidReceived(code), "close code \(code)") }
                    require(referenceIsValidUTF8(reason), "close reason that is not UTF-8")
                    events.append(.close(code, Array(reason)))
                case let .protocolError(code):
                    require(offset == buffer.count, "protocolError left bytes unread")
                    require(parser.failure == code, "failure is not the reported code")
                    require([1002, 1007, 1009].contains(code.rawValue), "protocol error \(code.rawValue)")
                    require(!parser.hasBufferedData && !parser.holdsStorage, "a dead parser holds memory")
                    var again = 0
                    if case .protocolError(let c2) = parser.next(buffer, offset: &again), c2 == code {} else {
                        fail("a dead parser did not repeat its error")
                    }
                    events.append(.error(code.rawValue))
                    dead = true
                    return
                }
                // Every event is made of bytes of this chunk: a parser that reports without
                // reading could loop forever.
                require(offset > before, "event without progress")
            }
        }
        if release && !dead {
            let held = parser.hasBufferedData
            parser.releaseMemory()
            require(held || !parser.holdsStorage, "releaseMemory kept storage of an idle parser")
            require(parser.hasBufferedData == held, "releaseMemory dropped buffered data")
        }
    }
    return ParseRun(events: events, pending: parser.hasBufferedData)
}

/// Random chunk sizes summing to `total`: runs of small (1–16 byte) and large pieces.
func randomChunks(_ total: Int, _ rng: inout SplitMix) -> [Int] {
    var chunks: [Int] = []
    var left = total
    let big = max(1, total / 3)
    while left > 0 {
        let size = min(left, rng.next() & 1 == 0 ? rng.inRange(1...16) : rng.inRange(1...big))
        chunks.append(size)
        left -= size
    }
    return chunks
}

/// The reference: RFC 6455 §5 read literally over the whole stream, with RFC 7692's RSV1 when
/// `compression` was agreed (the payload of a compressed message is passed on as it came).
func referenceParse(_ s: [UInt8], role: FrameParser.Role, maxMessageSize: Int, compression: Bool = false) -> ParseRun {
    var events: [Ev] = []
    var i = 0
    var messageOpcode: UInt8 = 0
    var messageCompressed = false
    var message: [UInt8] = []
    func error(_ code: UInt16) -> ParseRun {
        events.append(.error(code))
        return ParseRun(events: events, pending: false)
    }
    while true {
        let left = s.count - i
        if left == 0 { return ParseRun(events: events, pending: messageOpcode != 0) }
        if left < 2 { return ParseRun(events: events, pending: true) }
        let b0 = s[i], b1 = s[i + 1]
        let fin = b0 & 0x80 != 0
        let opcode = b0 & 0x0F
        let masked = b1 & 0x80 != 0
        // RSV2/3 never; RSV1 only on the first frame of a data message, with permessage-deflate.
        if b0 & 0x70 != 0 && !(b0 & 0x70 == 0x40 && compression && (opcode == 1 || opcode == 2)) { return error(1002) }
        if masked != (role == .server) { return error(1002) }         // clients mask, servers do not
        switch opcode {
        case 0: if messageOpcode == 0 { return error(1002) }
        case 1, 2: if messageOpcode != 0 { return error(1002) }
        case 8, 9, 10: if !fin { return error(1002) }
        default: return error(1002)
        }
        let len7 = Int(b1 & 0x7F)
        let extended = len7 == 126 ? 2 : (len7 == 127 ? 8 : 0)
        let headerLength = 2 + extended + (masked ? 4 : 0)
        if left < headerLength { return ParseRun(events: events, pending: true) }
        var length: UInt64 = UInt64(len7)
        if extended > 0 {
            length = 0
            for k in 0..<extended { length = length << 8 | UInt64(s[i + 2 + k]) }
        }
        if length >> 63 != 0 { return error(1002) }
        if opcode >= 8 {
            if length > 125 { return error(1002) }
        } else if length > UInt64(maxMessageSize - message.count) {
            return error(1009)
        }
        let keyAt = i + 2 + extended
        let start = i + headerLength
        let available = Int(min(length, UInt64(s.count - start)))
        var payload = Array(s[start..<start + available])
        if masked {
            for k in 0..<payload.count { payload[k] ^= s[keyAt + k % 4] }
        }
        if opcode < 8 {
            let kind = opcode == 0 ? messageOpcode : opcode
            let compressed = opcode == 0 ? messageCompressed : b0 & 0x40 != 0
            // Text is judged as it arrives: bytes that no continuation can make valid end it now
            // (compressed text is judged after inflating, by the receiver).
            let checkText = kind == 1 && !compressed
            if checkText && !referenceIsValidUTF8Prefix(message + payload) { return error(1007) }
            if available < length { return ParseRun(events: events, pending: true) }
            messageOpcode = kind
            messageCompressed = compressed
            message += payload
            if fin {
                if checkText && !referenceIsValidUTF8(message) { return error(1007) }
                events.append(compressed ? .compressed(kind, message) : .message(kind, message))
                messageOpcode = 0
                messageCompressed = false
                message = []
            }
        } else {
            if available < length { return ParseRun(events: events, pending: true) }
            switch opcode {
            case 9: events.append(.ping(payload))
            case 10: events.append(.pong(payload))
            default:
                if payload.isEmpty {
                    events.append(.close(nil, []))
                } else if payload.count == 1 {
                    return error(1002)
                } else {
                    let code = UInt16(payload[0]) << 8 | UInt16(payload[1])
                    let valid = (1000...1003).contains(code) || (1007...1014).contains(code) || (3000...4999).contains(code)
                    if !valid { return error(1002) }
                    let reason = Array(payload[2...])
                    if !referenceIsValidUTF8(reason) { return error(1007) }
                    events.append(.close(code, reason))
                }
            }
        }
        i = start + available
    }
}
