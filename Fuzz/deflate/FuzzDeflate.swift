// Fuzz target: permessage-deflate (RFC 7692) — the bounded inflater (`DeflateDecompressor`, over
// Sources/CDeflate and zlib), the compressor it must read (`DeflateCompressor`, libdeflate and
// zlib), and the `Sec-WebSocket-Extensions` negotiation (`DeflateNegotiation.negotiate`).
//
// The first input byte picks the window (8–15 bits, bits 0–2), context takeover (bit 3 clear) and a
// mode (bits 4–5):
// - inflate: the next byte picks a limit, the rest is a client's compressed payload. The result under any limit is what one
//   inflate with a large limit predicts: `ok(n)` with the same bytes when n fits the limit,
//   `tooBig` when it does not (never more than `limit` bytes held), `corrupt` or `tooBig` where the
//   large inflate found corrupt data; a reused output buffer full of garbage changes nothing.
// - round trip: the rest is cut into messages; each, compressed by either backend with a window no
//   larger than the inflater's, inflates back to itself, message after message on one inflater
//   (with or without context takeover), and compressed output is smaller than its input and
//   within `bound`.
// - negotiate: the rest is split at NUL bytes into header values. An accepted offer has
//   parameters in range, and the response header, offered back, is accepted with the same
//   parameters; the outcome does not depend on anything but the values (asked twice, same answer).

import WireProtocol

let limits = [0, 1, 100, 4096, 65_536, 1 << 18]

enum Inflated: Equatable {
    case ok([UInt8])
    case tooBig
    case corrupt
}

func inflate(_ bytes: some Collection<UInt8>, windowBits: Int, noContextTakeover: Bool, limit: Int,
             reuse: [UInt8] = []) -> Inflated {
    let d = DeflateDecompressor(windowBits: windowBits, noContextTakeover: noContextTakeover)
    var output = reuse
    let r = withFreshCopy(bytes) { d.decompress(UnsafeRawBufferPointer($0), limit: limit, into: &output) }
    switch r {
    case .ok(let n):
        require(n <= limit, "ok(\(n)) over the limit \(limit)")
        require(n <= output.count, "ok(\(n)) with \(output.count) bytes of output")
        return .ok(Array(output[..<n]))
    case .tooBig: return .tooBig
    case .corrupt: return .corrupt
    }
}

func checkInflate(_ payload: [UInt8], windowBits: Int, noContextTakeover: Bool, limit: Int, _ rng: inout SplitMix) {
    let big = limits.last!
    let model = inflate(payload, windowBits: windowBits, noContextTakeover: noContextTakeover, limit: big)
    let got = inflate(payload, windowBits: windowBits, noContextTakeover: noContextTakeover, limit: limit)
    switch model {
    case .ok(let bytes):
        let want: Inflated = bytes.count <= limit ? .ok(bytes) : .tooBig
        require(got == want, "limit \(limit): \(got), expected \(want) (\(bytes.count) bytes inflated)")
    case .tooBig:
        require(got == .tooBig, "limit \(limit) < \(big) gave \(got) for a message over \(big)")
    case .corrupt:
        require(got == .corrupt || got == .tooBig, "limit \(limit): \(got) for corrupt data")
    }
    // A reused buffer (garbage, any size) must not change the outcome.
    let garbage = (0..<rng.below(9000)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    let again = inflate(payload, windowBits: windowBits, noContextTakeover: noContextTakeover, limit: limit, reuse: garbage)
    require(again == got, "a reused output buffer changed the result: \(again) vs \(got)")
}

func checkRoundTrip(_ data: [UInt8], windowBits: Int, noContextTakeover: Bool, _ rng: inout SplitMix) {
    let inflater = DeflateDecompressor(windowBits: windowBits, noContextTakeover: noContextTakeover)
    // The server never compresses with an 8-bit window; the inflater reads 9 for 8.
    let compressorBits = max(9, rng.inRange(max(9, windowBits - 2)...max(9, windowBits)))
    let backend: DeflateCompressor.Backend = rng.next() & 1 == 0 ? .zlib : .libdeflate
    let compressor = DeflateCompressor(windowBits: compressorBits, level: rng.below(13), backend: backend)
    var at = 0
    var output: [UInt8] = []
    var index = 0
    while at < data.count {
        // Messages of 0–255 bytes from the input, or a longer repetitive one.
        var message = Array(data[at..<min(data.count, at + 1 + Int(data[at]))].dropFirst())
        at += 1 + message.count
        if rng.below(4) == 0 { message = Array(repeatElement(message, count: rng.inRange(1...200)).joined()) }
        let capacity = DeflateCompressor.bound(message.count)
        let compressed: [UInt8]? = withFreshCopy(message) { input in
            let out = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
            defer { out.deallocate() }
            guard let n = compressor.compress(UnsafeRawBufferPointer(input), into: out.baseAddress!, capacity: capacity) else { return nil }
            require(n > 0 && n < message.count && n <= message.count + 4, "compressed \(message.count) bytes to \(n)")
            return Array(out[..<n])
        }
        guard let compressed else { continue }  // sent uncompressed
        let limit = message.count + rng.below(2)
        let r = withFreshCopy(compressed) { inflater.decompress(UnsafeRawBufferPointer($0), limit: limit, into: &output) }
        guard case .ok(let n) = r, n == message.count, Array(output[..<n]) == message else {
            let fresh = inflate(compressed, windowBits: windowBits, noContextTakeover: true, limit: limit)
            fail("round trip of message \(index) of \(message.count) bytes, \(compressed.count) compressed "
                 + "(\(compressor.backend) level \(compressor.level), window \(compressorBits) → \(windowBits), "
                 + "takeover \(!noContextTakeover)): \(r), compressed bytes begin \(compressed.prefix(32).map { String($0, radix: 16) }.joined(separator: " ")); on a fresh inflater: \(fresh == .ok(message) ? "ok" : "\(fresh)")")
        }
        index += 1
        if rng.below(4) == 0 { inflater.releaseMemory() }
    }
}

func checkNegotiation(_ data: [UInt8], policyBits: Int) {
    let values = data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    let policy = DeflatePolicy(enabled: true, clientMaxWindowBits: policyBits)
    let first = DeflateNegotiation.negotiate(values, policy: policy)
    require(first == DeflateNegotiation.negotiate(values, policy: policy), "negotiate is not deterministic")
    require(DeflateNegotiation.negotiate(values, policy: DeflatePolicy(enabled: false)) == .declined, "a disabled policy accepted")
    guard case .accepted(let p, let response) = first else { return }
    require(p.serverNoContextTakeover, "accepted without server_no_context_takeover")
    require((9...15).contains(p.serverMaxWindowBits), "server window \(p.serverMaxWindowBits)")
    require((8...15).contains(p.clientMaxWindowBits), "client window \(p.clientMaxWindowBits)")
    guard case .accepted(let p2, _) = DeflateNegotiation.negotiate([response], policy: policy) else {
        fail("our response \(response) is not acceptable as an offer")
    }
    require(p2 == p, "our response \(response), offered back, gives \(p2) instead of \(p)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    var rng = SplitMix(hashing: UnsafeRawBufferPointer(start: data, count: size))
    let config = data[0]
    let windowBits = 8 + Int(config & 7)
    let noContextTakeover = config & 8 != 0
    let rest = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch config >> 4 & 3 {
    case 0, 1:
        // The next byte picks the limit.
        checkInflate(Array(rest.dropFirst()), windowBits: windowBits, noContextTakeover: noContextTakeover,
                     limit: limits[Int(rest.first ?? 0) % limits.count], &rng)
    case 2:
        checkRoundTrip(rest, windowBits: windowBits, noContextTakeover: noContextTakeover, &rng)
    default:
        checkNegotiation(rest, policyBits: windowBits)
    }
    return 0
}
