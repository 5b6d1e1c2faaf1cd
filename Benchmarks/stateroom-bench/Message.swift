/// `--message json`: a realistic game-state update of about `--size` bytes, the kind of message
/// permessage-deflate is for. Like a real one it repeats its keys and its players' ids, names and
/// teams from message to message while the numbers change (positions, health, scores, the tick),
/// so it compresses about as well as real JSON, not like padding or random bytes:
///
///     {"t":"TTTTTTTTTTTTTTTT","s":"SSSSSSSS","q":"QQQQQQQQ","type":"state","room":3,"tick":1234,
///      "players":[{"id":"p17-0","name":"ada","x":-123.45,"y":67.08,"hp":93,"score":1520,
///      "team":"red","alive":true,"item":"bow"},…],"events":[{"kind":"hit","by":"p17-2",
///      "on":"p17-5","dmg":12}],"chat":"gg"}
///
/// The first 54 bytes carry the bench's send time, sender and sequence as fixed-width hex at fixed
/// offsets (``Payload/parse(_:)`` reads both formats), so latency, order and loss are checked as
/// for the hex message. Written straight into a buffer: no allocation, no Foundation.
enum JSONMessage {
    /// Smallest `--size` for JSON (the header and one player).
    static let minimumSize = 256
    /// Offsets of the hex fields: `{"t":"` + 16 digits + `","s":"` + 8 + `","q":"` + 8.
    static let timeOffset = 6
    static let senderOffset = 29
    static let sequenceOffset = 44

    /// The most bytes ``write(to:size:time:sender:sequence:)`` writes for `size`.
    static func maxLength(_ size: Int) -> Int { size + 256 }

    static let names: [StaticString] = ["ada", "bob", "cyd", "dee", "eve", "fox", "gus", "hal",
                                        "ivy", "jon", "kim", "lea", "max", "ned", "oli", "pam"]
    static let teams: [StaticString] = ["red", "blue", "green", "gold"]
    static let items: [StaticString] = ["sword", "bow", "staff", "shield", "potion", "none"]
    static let events: [StaticString] = ["hit", "heal", "pickup", "respawn"]
    static let chats: [StaticString] = ["gg", "nice shot!", "on my way", "need healing over here",
                                        "who has the flag?", "lol", "brb", "push left, they are weak there"]

    /// Writes one message of about `size` bytes (at most ``maxLength(_:)``) at `out`; returns its length.
    @inline(__always)
    static func write(to out: UnsafeMutableRawPointer, size: Int, time: UInt64, sender: UInt32, sequence: UInt32,
                      room: Int) -> Int {
        var w = Writer(p: out)
        var rng = SplitMix(seed: UInt64(sender) << 32 | UInt64(sequence))
        w.lit("{\"t\":\"")
        w.hex(time, 16)
        w.lit("\",\"s\":\"")
        w.hex(UInt64(sender), 8)
        w.lit("\",\"q\":\"")
        w.hex(UInt64(sequence), 8)
        w.lit("\",\"type\":\"state\",\"room\":")
        w.uint(UInt64(room))
        w.lit(",\"tick\":")
        w.uint(UInt64(sequence))
        w.lit(",\"players\":[")
        var k = 0
        repeat {
            if k > 0 { w.byte(UInt8(ascii: ",")) }
            w.lit("{\"id\":\"p")
            w.uint(UInt64(sender))
            w.byte(UInt8(ascii: "-"))
            w.uint(UInt64(k))
            w.lit("\",\"name\":\"")
            w.lit(names[k & 15])
            w.lit("\",\"x\":")
            w.fixed2(Int64(rng.next() % 100_000) - 50_000)
            w.lit(",\"y\":")
            w.fixed2(Int64(rng.next() % 100_000) - 50_000)
            w.lit(",\"hp\":")
            w.uint(rng.next() % 101)
            w.lit(",\"score\":")
            w.uint(UInt64(sequence) &* 3 &+ UInt64(k) &* 100 &+ rng.next() % 50)
            w.lit(",\"team\":\"")
            w.lit(teams[k & 3])
            w.lit("\",\"alive\":")
            w.lit(rng.next() % 8 == 0 ? "false" : "true")
            w.lit(",\"item\":\"")
            w.lit(items[Int(rng.next() % 6)])
            w.lit("\"}")
            k += 1
        } while w.n < size - 220
        w.lit("],\"events\":[{\"kind\":\"")
        w.lit(events[Int(rng.next() % 4)])
        w.lit("\",\"by\":\"p")
        w.uint(UInt64(sender))
        w.byte(UInt8(ascii: "-"))
        w.uint(rng.next() % UInt64(k))
        w.lit("\",\"on\":\"p")
        w.uint(UInt64(sender))
        w.byte(UInt8(ascii: "-"))
        w.uint(rng.next() % UInt64(k))
        w.lit("\",\"dmg\":")
        w.uint(rng.next() % 40)
        w.lit("}],\"chat\":\"")
        w.lit(chats[Int(rng.next() % 8)])
        w.lit("\"}")
        return w.n
    }

    /// The fields of a JSON message, or nil if `payload` is not one.
    @inline(__always)
    static func parse(_ payload: UnsafeRawBufferPointer) -> (time: UInt64, sender: UInt32, sequence: UInt32)? {
        guard payload.count >= sequenceOffset + 8, let base = payload.baseAddress,
              base.load(fromByteOffset: 2, as: UInt8.self) == UInt8(ascii: "t"),
              let t = Payload.parseHex(base + timeOffset, 16), let s = Payload.parseHex(base + senderOffset, 8),
              let q = Payload.parseHex(base + sequenceOffset, 8)
        else { return nil }
        return (t, UInt32(truncatingIfNeeded: s), UInt32(truncatingIfNeeded: q))
    }

    /// splitmix64: the message's numbers, a function of (sender, sequence).
    struct SplitMix {
        var state: UInt64
        init(seed: UInt64) { state = seed ^ 0x9E37_79B9_7F4A_7C15 }
        @inline(__always)
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// Appends ASCII at a raw pointer.
    struct Writer {
        let p: UnsafeMutableRawPointer
        var n = 0

        @inline(__always)
        mutating func byte(_ b: UInt8) {
            p.storeBytes(of: b, toByteOffset: n, as: UInt8.self)
            n += 1
        }

        @inline(__always)
        mutating func lit(_ s: StaticString) {
            let count = s.utf8CodeUnitCount
            (p + n).copyMemory(from: s.utf8Start, byteCount: count)
            n += count
        }

        @inline(__always)
        mutating func hex(_ v: UInt64, _ digits: Int) {
            for i in 0..<digits { byte(Payload.hexDigit(v >> UInt64(4 * (digits - 1 - i)))) }
        }

        @inline(__always)
        mutating func uint(_ v: UInt64) {
            var digits = 1
            var x = v
            while x >= 10 { x /= 10; digits += 1 }
            x = v
            for i in stride(from: digits - 1, through: 0, by: -1) {
                p.storeBytes(of: UInt8(truncatingIfNeeded: x % 10) &+ 48, toByteOffset: n + i, as: UInt8.self)
                x /= 10
            }
            n += digits
        }

        /// `v` hundredths as a decimal with two places: -12345 → "-123.45".
        @inline(__always)
        mutating func fixed2(_ v: Int64) {
            if v < 0 { byte(UInt8(ascii: "-")) }
            let m = v.magnitude
            uint(m / 100)
            byte(UInt8(ascii: "."))
            byte(UInt8(truncatingIfNeeded: m % 100 / 10) &+ 48)
            byte(UInt8(truncatingIfNeeded: m % 10) &+ 48)
        }
    }
}
