// Client-to-server masking (RFC 6455 §5.3), applied in place a machine word at a time.

/// XORs `bytes` in place with the 4-byte masking `key`, starting at key index `phase % 4`
/// (the number of payload bytes of this frame already unmasked). Masking and unmasking are the same
/// operation. Works 32 then 8 bytes at a time with unaligned loads; no allocation.
@inlinable
public func unmask(_ bytes: UnsafeMutableRawBufferPointer, key: (UInt8, UInt8, UInt8, UInt8), phase: Int) {
    guard let base = bytes.baseAddress else { return }
    let n = bytes.count
    let k = UInt32(key.0) | UInt32(key.1) << 8 | UInt32(key.2) << 16 | UInt32(key.3) << 24
    let shift = UInt32(phase & 3) &* 8
    // Little-endian numeric value whose lowest byte is key[phase].
    let rotated = shift == 0 ? k : (k >> shift) | (k << (32 &- shift))
    let mask = UInt64(littleEndian: UInt64(rotated) | UInt64(rotated) << 32)
    var i = 0
    while i &+ 32 <= n {
        let a = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
        let b = base.loadUnaligned(fromByteOffset: i &+ 8, as: UInt64.self)
        let c = base.loadUnaligned(fromByteOffset: i &+ 16, as: UInt64.self)
        let d = base.loadUnaligned(fromByteOffset: i &+ 24, as: UInt64.self)
        base.storeBytes(of: a ^ mask, toByteOffset: i, as: UInt64.self)
        base.storeBytes(of: b ^ mask, toByteOffset: i &+ 8, as: UInt64.self)
        base.storeBytes(of: c ^ mask, toByteOffset: i &+ 16, as: UInt64.self)
        base.storeBytes(of: d ^ mask, toByteOffset: i &+ 24, as: UInt64.self)
        i &+= 32
    }
    while i &+ 8 <= n {
        let a = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
        base.storeBytes(of: a ^ mask, toByteOffset: i, as: UInt64.self)
        i &+= 8
    }
    // i is a multiple of 8 here, so byte i uses key byte (phase + i) % 4 == rotated byte i % 4.
    while i < n {
        let m = UInt8(truncatingIfNeeded: rotated >> (UInt32(i & 3) &* 8))
        let p = base + i
        p.storeBytes(of: p.load(as: UInt8.self) ^ m, as: UInt8.self)
        i &+= 1
    }
}
