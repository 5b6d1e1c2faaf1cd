import WireProtocol

/// An owned copy of a `FrameEvent`, so tests can compare events after the views died.
enum Ev: Equatable, CustomStringConvertible {
    case message(Opcode, [UInt8])
    case compressed(Opcode, [UInt8])
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
        case let .close(c, r): return "close(\(c.map(String.init) ?? "nil"), \(r.count))"
        case let .error(c): return "error(\(c))"
        }
    }

    static func text(_ s: String) -> Ev { .message(.text, Array(s.utf8)) }
}

/// Feeds one buffer until `.needMore` or an error. The buffer is a fresh allocation that is scribbled over
/// and freed afterwards, so a parser that kept pointers into it would be caught.
/// Returns false once the parser reported an error.
@discardableResult
func feed(_ parser: inout FrameParser, _ chunk: ArraySlice<UInt8>, into events: inout [Ev]) -> Bool {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk.count, alignment: 1)
    defer {
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
        buffer.deallocate()
    }
    buffer.copyBytes(from: chunk)
    var offset = 0
    while true {
        let event = parser.next(buffer, offset: &offset)
        switch event {
        case .needMore:
            precondition(offset == buffer.count, "needMore must absorb every byte")
            return true
        case let .message(op, view): events.append(.message(op, Array(view)))
        case let .compressedMessage(op, view): events.append(.compressed(op, Array(view)))
        case let .ping(view): events.append(.ping(Array(view)))
        case let .pong(view): events.append(.pong(Array(view)))
        case let .close(code, reason): events.append(.close(code, Array(reason)))
        case let .protocolError(code):
            events.append(.error(code.rawValue))
            return false
        }
    }
}

/// Parses `stream` cut into chunks of the given sizes (the remainder is one last chunk).
func parse(_ stream: [UInt8], chunks sizes: [Int] = [], server: Bool = true, maxMessageSize: Int = 1 << 20,
           compression: Bool = false) -> [Ev] {
    var events: [Ev] = []
    var chunks: [ArraySlice<UInt8>] = []
    var start = 0
    for size in sizes {
        chunks.append(stream[start..<start + size])
        start += size
    }
    chunks.append(stream[start...])
    var parser = FrameParser(role: server ? .server : .client, maxMessageSize: maxMessageSize)
    parser.acceptsCompressed = compression
    for c in chunks where !feed(&parser, c, into: &events) { break }
    return events
}

/// Parses `stream` fed one byte at a time.
func parseBytewise(_ stream: [UInt8], server: Bool = true, maxMessageSize: Int = 1 << 20) -> [Ev] {
    parse(stream, chunks: Array(repeating: 1, count: stream.count), server: server, maxMessageSize: maxMessageSize)
}

let testKey: (UInt8, UInt8, UInt8, UInt8) = (0x37, 0xFA, 0x21, 0x3D)

/// A masked client frame built with the encoder under test.
func clientFrame(_ opcode: Opcode, _ payload: [UInt8], fin: Bool = true, key: (UInt8, UInt8, UInt8, UInt8) = testKey) -> [UInt8] {
    var out: [UInt8] = []
    payload.withUnsafeBytes { encodeClientFrame(opcode: opcode, fin: fin, payload: $0, maskKey: key, into: &out) }
    return out
}

func clientFrame(_ opcode: Opcode, _ text: String, fin: Bool = true) -> [UInt8] {
    clientFrame(opcode, Array(text.utf8), fin: fin)
}

/// An unmasked server frame built with the encoder under test.
func serverFrame(_ opcode: Opcode, _ payload: [UInt8], fin: Bool = true) -> [UInt8] {
    var out: [UInt8] = []
    payload.withUnsafeBytes { encodeServerFrame(opcode: opcode, fin: fin, payload: $0, into: &out) }
    return out
}

enum LengthForm { case minimal, sixteen, sixtyFour }

/// A raw frame with any first byte (RSV bits, reserved opcodes), any length form, masked or not.
func rawFrame(b0: UInt8, payload: [UInt8], masked: Bool = true, form: LengthForm = .minimal,
              declaredLength: UInt64? = nil, key: (UInt8, UInt8, UInt8, UInt8) = testKey) -> [UInt8] {
    let length = declaredLength ?? UInt64(payload.count)
    var form = form
    if form == .minimal { form = length <= 125 ? .minimal : (length <= 0xFFFF ? .sixteen : .sixtyFour) }
    let maskBit: UInt8 = masked ? 0x80 : 0
    var out: [UInt8] = [b0]
    switch form {
    case .minimal: out.append(maskBit | UInt8(length))
    case .sixteen: out += [maskBit | 126, UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
    case .sixtyFour:
        out.append(maskBit | 127)
        for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8(length >> UInt64(s) & 0xFF)) }
    }
    var body = payload
    if masked {
        out += [key.0, key.1, key.2, key.3]
        body.withUnsafeMutableBytes { unmask($0, key: key, phase: 0) }
    }
    return out + body
}

/// A tiny deterministic PRNG so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func randomBytes(_ count: Int, using rng: inout SplitMix64) -> [UInt8] {
    (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
}

/// Runs `body` with a parsed head of `request` (CRLF line endings expected in the string).
func withHead<T>(_ request: String, limit: Int = 8192, _ body: (HTTPHeadParse) throws -> T) rethrows -> T {
    let bytes = Array(request.utf8)
    return try bytes.withUnsafeBytes { try body(parseHTTPHead($0, limit: limit)) }
}

/// Each case of a parse result as an optional, so a test can `try #require` the one it expects
/// and fail (showing the result) instead of skipping its expectations.
extension HTTPHeadParse {
    /// The head, when complete; its views borrow the parsed buffer.
    var head: HTTPRequestHead? {
        if case let .complete(head) = self { return head }
        return nil
    }

    /// The error status, when the head was refused.
    var failureStatus: HTTPStatus? {
        if case let .failure(status) = self { return status }
        return nil
    }

    var needsMore: Bool {
        if case .needMore = self { return true }
        return false
    }
}

func string(_ view: UnsafeRawBufferPointer?) -> String? {
    view.map { String(decoding: $0, as: UTF8.self) }
}
