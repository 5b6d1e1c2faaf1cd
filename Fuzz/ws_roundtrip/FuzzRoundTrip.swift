// Fuzz target: frames built from the input by the project's encoder (FrameEncoder.swift,
// Masking.swift), then parsed back (FrameParser.swift).
//
// The input is a script: a config byte (role, message limit, whether non-minimal length
// encodings are used), then one op byte per frame or message — a whole or fragmented text or
// binary message (fragments split anywhere, UTF-8 characters included, control frames between
// them), a ping, a pong or a close — with sizes from every length class (7-bit, 16-bit, 64-bit)
// and payload bytes from the input. A server-role parser gets masked client frames
// (`encodeClientFrame`), a client-role parser unmasked server frames (`encodeServerFrame`,
// `closeFrame`). Properties:
// - The encoder's bytes are the RFC 6455 layout (checked against a plain reference encoder);
//   `frameHeaderSize` is what `encodeFrameHeader` writes.
// - Parsed whole and in random chunkings, the stream yields exactly the messages and control
//   frames that were encoded (and a 1009 where a message passes the limit), nothing held after.
// - The reference parser of ws_frames agrees.
// - `unmask` equals a byte-by-byte XOR with the key from any phase, and split anywhere it gives
//   the same bytes as in one call.

import WireProtocol

let roundTripLimits = [125, 1000, 70_000, 1 << 20]
let maxStreamBytes = 96 * 1024

/// A frame laid out by hand from RFC 6455 §5.2: `lengthForm` 0 for the shortest encoding, else
/// 16 or 64 (non-minimal, which parsers accept).
func referenceFrame(opcode: UInt8, fin: Bool, payload: [UInt8], mask: [UInt8]?, lengthForm: Int) -> [UInt8] {
    var out: [UInt8] = [(fin ? 0x80 : 0) | opcode]
    let m: UInt8 = mask == nil ? 0 : 0x80
    let n = payload.count
    if lengthForm == 64 || (lengthForm == 0 && n > 0xFFFF) {
        out.append(m | 127)
        out += (0..<8).reversed().map { UInt8(truncatingIfNeeded: UInt64(n) >> (8 * UInt64($0))) }
    } else if lengthForm == 16 || (lengthForm == 0 && n > 125) {
        out.append(m | 126)
        out += [UInt8(n >> 8), UInt8(n & 0xFF)]
    } else {
        out.append(m | UInt8(n))
    }
    if let mask {
        out += mask
        out += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    } else {
        out += payload
    }
    return out
}

/// Builds the stream and the events a parser must report for it.
struct StreamBuilder {
    let role: FrameParser.Role
    let limit: Int
    let nonMinimal: Bool
    var rng: SplitMix
    var stream: [UInt8] = []
    var expected: [Ev] = []
    var dead = false

    /// Encodes one frame with the project's encoder, checks it against the reference layout,
    /// and appends it (or, now and then when allowed, the reference's non-minimal form).
    mutating func frame(_ opcode: Opcode, fin: Bool = true, _ payload: [UInt8]) {
        let key = [UInt8(truncatingIfNeeded: rng.next()), UInt8(truncatingIfNeeded: rng.next()),
                   UInt8(truncatingIfNeeded: rng.next()), UInt8(truncatingIfNeeded: rng.next())]
        var encoded: [UInt8] = []
        payload.withUnsafeBytes { p in
            if role == .server {
                encodeClientFrame(opcode: opcode, fin: fin, payload: p, maskKey: (key[0], key[1], key[2], key[3]), into: &encoded)
            } else {
                fuzzEncodeServerFrame(opcode: opcode, fin: fin, payload: p, into: &encoded)
            }
        }
        let mask = role == .server ? key : nil
        let reference = referenceFrame(opcode: opcode.rawValue, fin: fin, payload: payload, mask: mask, lengthForm: 0)
        require(encoded == reference, "encoder output differs from the RFC layout for \(opcode) of \(payload.count) bytes")
        var header = [UInt8](repeating: 0, count: 10)
        let written = header.withUnsafeMutableBytes { fuzzEncodeFrameHeader(opcode: opcode, fin: fin, payloadLength: payload.count, into: $0.baseAddress!) }
        require(written == fuzzFrameHeaderSize(payloadLength: payload.count), "encodeFrameHeader wrote \(written) bytes")
        if nonMinimal && rng.below(3) == 0 {
            let form = payload.count <= 0xFFFF && rng.next() & 1 == 0 ? 16 : 64
            stream += referenceFrame(opcode: opcode.rawValue, fin: fin, payload: payload, mask: mask, lengthForm: form)
        } else {
            stream += encoded
        }
    }

    mutating func control() {
        let payload = (0..<rng.below(126)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        if rng.next() & 1 == 0 {
            frame(.ping, payload)
            expected.append(.ping(payload))
        } else {
            frame(.pong, payload)
            expected.append(.pong(payload))
        }
    }

    /// A whole message in `fragments` frames split at random points, maybe with control frames
    /// between them; a fragment that takes the message past the limit ends the stream with 1009.
    mutating func message(text: Bool, _ body: [UInt8], fragments: Int) {
        var cuts = (0..<fragments - 1).map { _ in rng.below(body.count + 1) }.sorted()
        cuts.append(body.count)
        var start = 0
        for (i, end) in cuts.enumerated() {
            let piece = Array(body[start..<end])
            if end > limit {
                frame(i == 0 ? (text ? .text : .binary) : .continuation, fin: i == cuts.count - 1, piece)
                expected.append(.error(1009))
                dead = true
                return
            }
            frame(i == 0 ? (text ? .text : .binary) : .continuation, fin: i == cuts.count - 1, piece)
            start = end
            if i < cuts.count - 1 && rng.below(3) == 0 { control() }
        }
        expected.append(.message(text ? 1 : 2, body))
    }

    mutating func close(code: UInt16, reason: String) {
        let whole = closeFrame(CloseCode(rawValue: code), reason: reason)
        let payload = Array(whole[2...])
        let r = Array(reason.utf8)
        let kept = Array(payload[2...])
        require(whole[0] == 0x88 && Int(whole[1]) == payload.count && payload.count <= 125, "closeFrame header")
        require(r.starts(with: kept) && (kept.count == r.count || r.count > 123), "closeFrame cut a reason that fit")
        require(referenceIsValidUTF8(kept), "closeFrame cut inside a character")
        require(kept.count >= 120 || kept.count == r.count, "closeFrame cut more than a character: kept \(kept.count) of \(r.count)")
        if role == .client {
            stream += whole
        } else {
            frame(.close, payload)
        }
        expected.append(.close(code, kept))
    }
}

/// A payload size from the length class `c` (0–7), covering every header form and its edges.
func payloadSize(class c: UInt8, _ rng: inout SplitMix) -> Int {
    switch c & 7 {
    case 0: return 0
    case 1: return rng.inRange(1...16)
    case 2: return rng.inRange(17...125)
    case 3: return 126
    case 4: return rng.inRange(127...400)
    case 5: return 0xFFFF
    case 6: return 0x10000
    default: return rng.inRange(0x10001...0x10100)
    }
}

/// `count` bytes: the input's next bytes, then a pattern.
func body(_ cursor: inout ByteCursor, _ count: Int) -> [UInt8] {
    var b = cursor.take(min(count, 512))
    var x = UInt8(truncatingIfNeeded: count)
    while b.count < count {
        b.append(x)
        x = x &* 31 &+ 7
    }
    return b
}

func checkMasking(_ cursor: inout ByteCursor, _ rng: inout SplitMix) {
    let key = (cursor.u8(), cursor.u8(), cursor.u8(), cursor.u8())
    let k = [key.0, key.1, key.2, key.3]
    let plain = (0..<rng.below(300)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    let phase = rng.below(8)
    let naive = plain.enumerated().map { $0.element ^ k[($0.offset + phase) % 4] }
    let once = withFreshCopy(plain) { b -> [UInt8] in fuzzUnmask(b, key: key, phase: phase); return Array(b) }
    require(once == naive, "unmask differs from a byte-by-byte XOR (phase \(phase), \(plain.count) bytes)")
    let cut = rng.below(plain.count + 1)
    let first = withFreshCopy(plain[..<cut]) { b -> [UInt8] in fuzzUnmask(b, key: key, phase: phase); return Array(b) }
    let second = withFreshCopy(plain[cut...]) { b -> [UInt8] in fuzzUnmask(b, key: key, phase: phase + cut); return Array(b) }
    require(first + second == naive, "unmask split at \(cut) differs")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    var cursor = ByteCursor(input)
    var rng = SplitMix(hashing: input)
    let config = cursor.u8()
    checkMasking(&cursor, &rng)

    let role: FrameParser.Role = config & 1 == 0 ? .server : .client
    let limit = roundTripLimits[Int(config >> 1) & 3]
    var b = StreamBuilder(role: role, limit: limit, nonMinimal: config & 8 != 0, rng: SplitMix(seed: rng.next()))
    var ops = 0
    while !cursor.isAtEnd && !b.dead && ops < 48 && b.stream.count < maxStreamBytes {
        ops += 1
        let op = cursor.u8()
        switch op & 3 {
        case 0, 1:
            var bytes = body(&cursor, payloadSize(class: op >> 3, &rng))
            let text = op & 4 != 0
            if text { bytes = Array(String(decoding: bytes, as: UTF8.self).utf8) }
            b.message(text: text, bytes, fragments: op & 3 == 0 ? 1 : 2 + Int(op >> 6))
        case 2:
            b.control()
        default:
            let codes: [ClosedRange<UInt16>] = [1000...1003, 1007...1014, 3000...4999]
            let range = codes[Int(op >> 2) % 3]
            let code = range.lowerBound + UInt16(Int(cursor.u16()) % range.count)
            let reason = String(decoding: body(&cursor, rng.below(200)), as: UTF8.self)
            b.close(code: code, reason: reason)
        }
    }

    let want = ParseRun(events: b.expected, pending: false)
    let reference = referenceParse(b.stream, role: role, maxMessageSize: limit)
    require(reference == want, "reference parser: \(reference.events); built: \(want.events)")
    let whole = runParser(b.stream, role: role, maxMessageSize: limit, chunks: b.stream.isEmpty ? [] : [b.stream.count], release: false)
    require(whole == want, "whole stream: \(whole.events) pending \(whole.pending); built: \(want.events)")
    for round in 0..<2 {
        let chunks = randomChunks(b.stream.count, &rng)
        let run = runParser(b.stream, role: role, maxMessageSize: limit, chunks: chunks, release: round == 1)
        require(run == want, "chunks \(chunks.prefix(20))…: \(run.events) pending \(run.pending); built: \(want.events)")
    }
    return 0
}
