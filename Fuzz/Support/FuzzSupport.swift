// Shared by every Swift fuzz target (compiled into each one; see Fuzz/run.sh).
//
// A property that fails prints what it expected and aborts: libFuzzer then saves the input as a
// crash artifact, and running the target on that file reproduces the failure.

#if canImport(Glibc)
import Glibc
#endif

/// Aborts with `message` when `condition` is false (kept in optimised builds, unlike `assert`).
@inline(__always)
func require(_ condition: Bool, _ message: @autoclosure () -> String,
             file: StaticString = #fileID, line: UInt = #line) {
    if !condition { propertyFailed(message(), file: file, line: line) }
}

/// Aborts with `message`: a property that failed.
func fail(_ message: String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    propertyFailed(message, file: file, line: line)
}

@inline(never)
func propertyFailed(_ message: String, file: StaticString, line: UInt) -> Never {
    var text = "PROPERTY FAILED (\(file):\(line)): \(message)\n"
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    abort()
}

/// SplitMix64: a small generator seeded from the input, so a failing run reproduces exactly.
struct SplitMix {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    /// Seeded with the FNV-1a hash of `bytes`.
    init(hashing bytes: UnsafeRawBufferPointer) {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        state = h
    }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// A number in `0..<n` (0 when `n` is 0).
    mutating func below(_ n: Int) -> Int {
        n <= 0 ? 0 : Int(next() % UInt64(n))
    }

    /// A number in `range`.
    mutating func inRange(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + below(range.upperBound - range.lowerBound + 1)
    }
}

/// Reads the fuzz input front to back; past the end every read gives zeros.
struct ByteCursor {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }
    var isAtEnd: Bool { offset >= bytes.count }

    mutating func u8() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() -> UInt16 { UInt16(u8()) << 8 | UInt16(u8()) }

    /// Up to `count` bytes (fewer at the end).
    mutating func take(_ count: Int) -> [UInt8] {
        let n = max(0, min(count, remaining))
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    /// Everything left.
    mutating func rest() -> [UInt8] { take(remaining) }
}

/// Calls `body` with a fresh heap copy of `bytes`, exactly sized (a read past its end is an ASan
/// report), then scribbles over it and frees it (a view kept past the call reads freed memory,
/// or garbage that a later comparison catches).
func withFreshCopy<R>(_ bytes: some Collection<UInt8>, _ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
    let n = bytes.count
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 1)
    buffer.copyBytes(from: bytes)
    defer {
        if n > 0 { buffer.initializeMemory(as: UInt8.self, repeating: 0xEE) }
        buffer.deallocate()
    }
    return body(buffer)
}

/// One-shot reference UTF-8 check: the standard library's validator.
func referenceIsValidUTF8(_ bytes: some Collection<UInt8>) -> Bool {
    String(validating: bytes, as: UTF8.self) != nil
}

/// Whether `bytes` can be extended into valid UTF-8 (it is valid, or valid up to a last character
/// that is cut short), decided with the standard library's validator: the cut tail is completed
/// with each possible second byte and then plain continuation bytes, and the result checked.
func referenceIsValidUTF8Prefix(_ bytes: [UInt8]) -> Bool {
    if referenceIsValidUTF8(bytes) { return true }
    let n = bytes.count
    for k in 1...3 where k <= n {
        let lead = bytes[n - k]
        let length: Int
        switch lead {
        case 0xC0...0xDF: length = 2
        case 0xE0...0xEF: length = 3
        case 0xF0...0xF7: length = 4
        default: continue
        }
        guard length > k, referenceIsValidUTF8(bytes[..<(n - k)]) else { continue }
        for second: UInt8 in [0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF] {
            var completed = Array(bytes[(n - k)...])
            if k == 1 { completed.append(second) }
            while completed.count < length { completed.append(0x80) }
            if referenceIsValidUTF8(completed) { return true }
        }
    }
    return false
}
