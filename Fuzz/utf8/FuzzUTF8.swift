// Fuzz target: the streaming UTF-8 validator (`UTF8Validator`) against one-shot references.
//
// The references are the standard library's validators (`String(validating:)`, and `UTF8Span`,
// which the wasm host uses for guest text): the project's validator must agree with them
// - on the whole input, fed in one piece;
// - on every split point (short inputs; random ones for long inputs) and on random chunkings;
// - byte by byte: `feed` fails exactly at the first byte no continuation can make valid, stays
//   failed afterwards, and `isComplete` is true exactly on the character boundaries of the valid
//   part;
// - after `reset()`, whatever came before.

import WireProtocol

/// Feeds `bytes` cut at `cuts` (increasing offsets), each piece a fresh exact allocation.
func validate(_ bytes: [UInt8], cuts: [Int], into v: inout UTF8Validator) -> Bool {
    var ok = true
    var start = 0
    for end in cuts + [bytes.count] {
        let piece = withFreshCopy(bytes[start..<end]) { fuzzFeed(&v, UnsafeRawBufferPointer($0)) }
        if !piece { ok = false }
        start = end
    }
    return ok && fuzzIsComplete(v)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var rng = SplitMix(hashing: UnsafeRawBufferPointer(start: data, count: size))

    let valid = referenceIsValidUTF8(bytes)
    let spanValid = bytes.withUnsafeBufferPointer { (try? UTF8Span(validating: $0.span)) != nil }
    require(valid == spanValid, "String(validating:) and UTF8Span disagree")

    // The longest prefix that can still be completed (a monotone property: bisect it).
    var lo = 0, hi = size
    while lo < hi {
        let mid = (lo + hi + 1) / 2
        if referenceIsValidUTF8Prefix(Array(bytes[..<mid])) { lo = mid } else { hi = mid - 1 }
    }
    let longest = lo
    require(valid == (longest == size && referenceIsValidUTF8(bytes)), "bisection is inconsistent")

    // One piece.
    var whole = UTF8Validator()
    require(validate(bytes, cuts: [], into: &whole) == valid, "one piece: validator says \(!valid), reference \(valid)")

    // Byte by byte (views into one exact copy: the last byte's view ends where the copy does).
    withFreshCopy(bytes) { buffer in
        var v = UTF8Validator()
        for i in 0..<size {
            let ok = fuzzFeed(&v, UnsafeRawBufferPointer(rebasing: buffer[i...i]))
            require(ok == (i < longest), "byte \(i): feed says \(ok), first bad byte is \(longest)")
            if ok {
                let boundary = i + 1 < longest ? bytes[i + 1] & 0xC0 != 0x80 : referenceIsValidUTF8(bytes[...i])
                require(fuzzIsComplete(v) == boundary, "byte \(i): isComplete \(fuzzIsComplete(v)), expected \(boundary)")
            } else {
                require(!fuzzIsComplete(v), "isComplete after a failure")
            }
        }
    }

    // Every split point of short inputs (views into one copy), and random ones with each piece
    // in its own exact allocation.
    func checkSplit(_ s: Int, _ first: Bool, _ rest: Bool, _ w: UTF8Validator) {
        require(first == (s <= longest), "split \(s): first piece \(first), first bad byte is \(longest)")
        require((first && rest && fuzzIsComplete(w)) == valid, "split at \(s) disagrees with the reference")
    }
    if size <= 512 {
        withFreshCopy(bytes) { buffer in
            for s in 0...size {
                var w = UTF8Validator()
                let first = fuzzFeed(&w, UnsafeRawBufferPointer(rebasing: buffer[..<s]))
                let rest = fuzzFeed(&w, UnsafeRawBufferPointer(rebasing: buffer[s...]))
                checkSplit(s, first, rest, w)
            }
        }
    }
    for _ in 0..<16 {
        let s = rng.below(size + 1)
        var w = UTF8Validator()
        let first = withFreshCopy(bytes[..<s]) { fuzzFeed(&w, UnsafeRawBufferPointer($0)) }
        let rest = withFreshCopy(bytes[s...]) { fuzzFeed(&w, UnsafeRawBufferPointer($0)) }
        checkSplit(s, first, rest, w)
    }

    // Random chunkings, then reuse after reset().
    for _ in 0..<4 {
        var cuts: [Int] = []
        var at = 0
        while true {
            at += rng.inRange(0...max(1, size / 4))
            if at >= size { break }
            cuts.append(at)
        }
        var w = UTF8Validator()
        require(validate(bytes, cuts: cuts, into: &w) == valid, "cuts \(cuts) disagree with the reference")
        fuzzReset(&w)
        require(fuzzIsComplete(w), "isComplete after reset")
        require(validate(bytes, cuts: [], into: &w) == valid, "after reset: disagrees with the reference")
    }
    return 0
}
