import WireProtocol

/// The bench's message: a text frame whose payload starts with three fixed-width hex fields,
///
///     TTTTTTTTTTTTTTTT SSSSSSSS QQQQQQQQ xxxx…
///     send time (ns)   sender   sequence  padding to --size
///
/// (no spaces). Text, so it passes every server's UTF-8 check, and ASCII hex, so any relay passes it
/// through unchanged. The send time is the *scheduled* time in open loop (coordinated omission
/// corrected) and the actual send time in closed loop.
enum Payload {
    static let headerLength = 32

    /// A masked client frame for one sender: header, mask key, masked payload of `size` bytes with
    /// the padding already masked. ``stamp(_:at:)`` writes the fields of one message.
    struct Template {
        let bytes: [UInt8]
        let payloadOffset: Int
        let key: (UInt8, UInt8, UInt8, UInt8)

        init(size: Int, key: (UInt8, UInt8, UInt8, UInt8)) {
            var payload = [UInt8](repeating: UInt8(ascii: "x"), count: size)
            for i in 0..<Payload.headerLength { payload[i] = UInt8(ascii: "0") }
            var frame: [UInt8] = []
            frame.reserveCapacity(size + 14)
            payload.withUnsafeBytes { encodeClientFrame(opcode: .text, payload: $0, maskKey: key, into: &frame) }
            bytes = frame
            payloadOffset = frame.count - size
            self.key = key
        }

        var count: Int { bytes.count }
    }


    @inline(__always)
    static func hexDigit(_ v: UInt64) -> UInt8 {
        let d = UInt8(truncatingIfNeeded: v & 15)
        return d < 10 ? d &+ 48 : d &+ 87
    }

    /// Copies `template` to `out` and writes the masked fields of one message; returns the bytes written.
    @inline(__always)
    static func write(_ template: Template, to out: UnsafeMutableRawPointer, time: UInt64, sender: UInt32, sequence: UInt32) -> Int {
        template.bytes.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let p = out + template.payloadOffset
        let k = template.key
        @inline(__always) func put(_ i: Int, _ c: UInt8) {
            let m: UInt8
            switch i & 3 { case 0: m = k.0; case 1: m = k.1; case 2: m = k.2; default: m = k.3 }
            p.storeBytes(of: c ^ m, toByteOffset: i, as: UInt8.self)
        }
        for i in 0..<16 { put(i, hexDigit(time >> UInt64(60 - 4 * i))) }
        let s = UInt64(sender), q = UInt64(sequence)
        for i in 0..<8 { put(16 + i, hexDigit(s >> UInt64(28 - 4 * i))) }
        for i in 0..<8 { put(24 + i, hexDigit(q >> UInt64(28 - 4 * i))) }
        return template.count
    }

    /// Writes the unmasked payload of one message (`size` bytes: the fields, then `x` padding) at
    /// `out`, for a sender whose frames are built per message (compressed ones).
    @inline(__always)
    static func writePlain(to out: UnsafeMutableRawPointer, size: Int, time: UInt64, sender: UInt32, sequence: UInt32) -> Int {
        for i in 0..<16 { out.storeBytes(of: hexDigit(time >> UInt64(60 - 4 * i)), toByteOffset: i, as: UInt8.self) }
        let s = UInt64(sender), q = UInt64(sequence)
        for i in 0..<8 { out.storeBytes(of: hexDigit(s >> UInt64(28 - 4 * i)), toByteOffset: 16 + i, as: UInt8.self) }
        for i in 0..<8 { out.storeBytes(of: hexDigit(q >> UInt64(28 - 4 * i)), toByteOffset: 24 + i, as: UInt8.self) }
        if size > headerLength { (out + headerLength).initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "x"), count: size - headerLength) }
        return size
    }

    /// Parses `count` hex digits at `p`; nil if any is not lowercase hex.
    @inline(__always)
    static func parseHex(_ p: UnsafeRawPointer, _ count: Int) -> UInt64? {
        var v: UInt64 = 0
        for i in 0..<count {
            let c = p.load(fromByteOffset: i, as: UInt8.self)
            let d: UInt8
            if c &- 48 < 10 { d = c &- 48 } else if c &- 97 < 6 { d = c &- 87 } else { return nil }
            v = v << 4 | UInt64(d)
        }
        return v
    }

    /// The fields of a received message (hex or ``JSONMessage``), or nil if it is not one of ours.
    @inline(__always)
    static func parse(_ payload: UnsafeRawBufferPointer) -> (time: UInt64, sender: UInt32, sequence: UInt32)? {
        guard payload.count >= headerLength, let base = payload.baseAddress else { return nil }
        if base.load(as: UInt8.self) == UInt8(ascii: "{") { return JSONMessage.parse(payload) }
        guard let t = parseHex(base, 16), let s = parseHex(base + 16, 8), let q = parseHex(base + 24, 8) else { return nil }
        return (t, UInt32(truncatingIfNeeded: s), UInt32(truncatingIfNeeded: q))
    }
}
