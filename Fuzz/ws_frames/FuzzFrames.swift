// Fuzz target: the RFC 6455 frame parser (`FrameParser`) in both roles on arbitrary bytes.
//
// The first input byte picks the role, `maxMessageSize` and whether permessage-deflate was
// agreed (`acceptsCompressed`: RSV1 marks a compressed message); the rest is the stream.
// Properties:
// - The parser agrees with a plain reference parser (below: whole stream in memory, one frame at
//   a time, UTF-8 judged by the standard library) on every event, on the error that ends the
//   stream and on whether a partial frame or message is still held at the end.
// - The same bytes fed whole, one byte at a time (short inputs) and in random chunkings, with and
//   without `releaseMemory()` between chunks, give the same events (chunks are separate
//   allocations, freed after use: a view that outlives its buffer is an ASan report).
// - The parser's contract on every call (see `runParser`): `needMore` absorbs every byte, each
//   event consumes bytes, messages within the limit, text and close reasons are UTF-8, control
//   payloads ≤ 125 bytes, a dead parser repeats its error and holds no memory.

import WireProtocol

let messageLimits = [0, 1, 2, 125, 126, 200, 1000, 65_536]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let config = data[0]
    let role: FrameParser.Role = config & 1 == 0 ? .server : .client
    let limit = messageLimits[Int(config >> 1) & 7]
    #if FUZZ_DEFLATE
    let compression = config & 0x10 != 0
    #else
    let compression = false
    #endif
    let stream = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    var rng = SplitMix(hashing: UnsafeRawBufferPointer(start: data, count: size))

    let expected = referenceParse(stream, role: role, maxMessageSize: limit, compression: compression)
    let whole = runParser(stream, role: role, maxMessageSize: limit, compression: compression, chunks: stream.isEmpty ? [] : [stream.count], release: false)
    require(whole == expected, "whole stream: \(whole.events) pending \(whole.pending); reference: \(expected.events) pending \(expected.pending)")

    if stream.count <= 512 {
        let bytewise = runParser(stream, role: role, maxMessageSize: limit, compression: compression, chunks: Array(repeating: 1, count: stream.count), release: true)
        require(bytewise == expected, "byte by byte: \(bytewise.events); reference: \(expected.events)")
    }
    for round in 0..<3 {
        let chunks = randomChunks(stream.count, &rng)
        let run = runParser(stream, role: role, maxMessageSize: limit, compression: compression, chunks: chunks, release: round == 1)
        require(run == expected, "chunks \(chunks): \(run.events) pending \(run.pending); reference: \(expected.events)")
    }
    return 0
}
