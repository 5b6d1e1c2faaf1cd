// Compiled INTO the fuzzed WireProtocol module (with coverage instrumentation), not into the
// harness: out-of-line entry points for the module's `@inlinable` API. A harness that called
// the inlinable functions directly would inline their bodies into its own, uninstrumented
// module, and libFuzzer would see no coverage of them.

@inline(never) public func fuzzFeed(_ v: inout UTF8Validator, _ bytes: UnsafeRawBufferPointer) -> Bool { v.feed(bytes) }
@inline(never) public func fuzzIsComplete(_ v: UTF8Validator) -> Bool { v.isComplete }
@inline(never) public func fuzzReset(_ v: inout UTF8Validator) { v.reset() }

@inline(never) public func fuzzUnmask(_ bytes: UnsafeMutableRawBufferPointer, key: (UInt8, UInt8, UInt8, UInt8), phase: Int) {
    unmask(bytes, key: key, phase: phase)
}
@inline(never) public func fuzzFrameHeaderSize(payloadLength: Int) -> Int { frameHeaderSize(payloadLength: payloadLength) }
@inline(never) public func fuzzEncodeFrameHeader(opcode: Opcode, fin: Bool, payloadLength: Int, into: UnsafeMutableRawPointer) -> Int {
    encodeFrameHeader(opcode: opcode, fin: fin, payloadLength: payloadLength, into: into)
}
@inline(never) public func fuzzEncodeServerFrame(opcode: Opcode, fin: Bool, payload: UnsafeRawBufferPointer, into: inout [UInt8]) {
    encodeServerFrame(opcode: opcode, fin: fin, payload: payload, into: &into)
}

@inline(never) public func fuzzHeader(_ head: HTTPRequestHead, _ name: String) -> UnsafeRawBufferPointer? { head.header(name) }
@inline(never) public func fuzzHeaderHasToken(_ head: HTTPRequestHead, _ name: String, _ token: String) -> Bool {
    head.headerHasToken(name, token)
}
@inline(never) public func fuzzKeepAlive(_ head: HTTPRequestHead) -> Bool { head.keepAlive }
@inline(never) public func fuzzIsHeadMethod(_ head: HTTPRequestHead) -> Bool { head.isHeadMethod }
@inline(never) public func fuzzForEachHeader(_ head: HTTPRequestHead, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Bool) {
    head.forEachHeader(body)
}
