/// A streaming UTF-8 validator (RFC 3629): feed a message in any number of pieces, split anywhere.
///
/// Rejects overlong encodings, UTF-16 surrogates (U+D800–U+DFFF), code points above U+10FFFF and stray
/// continuation bytes as soon as the offending byte is seen; ``isComplete`` tells whether the input so far
/// ends on a character boundary. ASCII runs are skipped 8 bytes at a time. No allocation.
public struct UTF8Validator: Sendable {
    /// Continuation bytes still expected for the current character (0 on a boundary).
    @usableFromInline var needed: UInt8 = 0
    /// Allowed range for the next continuation byte (narrowed after E0, ED, F0, F4).
    @usableFromInline var lower: UInt8 = 0x80
    @usableFromInline var upper: UInt8 = 0xBF
    @usableFromInline var failed = false

    /// A validator at the start of a message.
    @inlinable
    public init() {}

    /// True when everything fed so far is valid UTF-8 ending on a character boundary.
    @inlinable
    public var isComplete: Bool { needed == 0 && !failed }

    /// Starts over for a new message.
    @inlinable
    public mutating func reset() {
        needed = 0
        lower = 0x80
        upper = 0xBF
        failed = false
    }

    /// Validates the next piece; returns false (and stays failed until ``reset()``) on invalid UTF-8.
    /// A character split at the end of `bytes` is not an error: it is completed by the next piece.
    @inlinable
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if failed { return false }
        guard let base = bytes.baseAddress else { return true }
        let n = bytes.count
        var i = 0
        var needed = self.needed
        var lower = self.lower
        var upper = self.upper
        let high: UInt64 = 0x8080_8080_8080_8080
        while i < n {
            if needed == 0 {
                // ASCII fast path.
                while i &+ 32 <= n {
                    let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                        | base.loadUnaligned(fromByteOffset: i &+ 8, as: UInt64.self)
                        | base.loadUnaligned(fromByteOffset: i &+ 16, as: UInt64.self)
                        | base.loadUnaligned(fromByteOffset: i &+ 24, as: UInt64.self)
                    if w & high != 0 { break }
                    i &+= 32
                }
                while i &+ 8 <= n {
                    if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) & high != 0 { break }
                    i &+= 8
                }
                if i == n { break }
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                i &+= 1
                switch c {
                case 0x00...0x7F:
                    continue
                case 0xC2...0xDF:
                    needed = 1
                case 0xE0...0xEF:
                    needed = 2
                    if c == 0xE0 { lower = 0xA0 } else if c == 0xED { upper = 0x9F }
                case 0xF0...0xF4:
                    needed = 3
                    if c == 0xF0 { lower = 0x90 } else if c == 0xF4 { upper = 0x8F }
                default: // stray continuation, C0/C1 overlongs, F5–FF
                    self.failed = true
                    return false
                }
            } else {
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                i &+= 1
                if c < lower || c > upper {
                    self.failed = true
                    return false
                }
                needed &-= 1
                lower = 0x80
                upper = 0xBF
            }
        }
        self.needed = needed
        self.lower = lower
        self.upper = upper
        return true
    }
}
