import IOCore
import Stateroom
import WireProtocol

// Outbound frames, encoded once into pooled buffers. One of the three files of this module that
// touch raw memory (with Inbound.swift and TLS.swift): the payload is copied once, behind the header,
// into a buffer every recipient's queue then references.

extension FramePool {
    /// A complete unfragmented frame — header and payload — in a new buffer (reference count 1).
    func frame(_ opcode: Opcode, payload: UnsafeRawBufferPointer) -> FrameBuffer {
        let header = frameHeaderSize(payloadLength: payload.count)
        let frame = allocate(capacity: header + payload.count)
        let h = encodeFrameHeader(opcode: opcode, fin: true, payloadLength: payload.count, into: frame.bytes)
        if let base = payload.baseAddress, payload.count > 0 {
            (frame.bytes + h).copyMemory(from: base, byteCount: payload.count)
        }
        frame.count = h + payload.count
        return frame
    }

    /// A text or binary frame carrying `message`.
    @inline(__always)
    func frame(_ message: MessagePayload) -> FrameBuffer {
        message.withUnsafeBytes { frame(message.kind == .text ? .text : .binary, payload: $0) }
    }

    /// The message a text or binary frame made by ``frame(_:)-(MessagePayload)`` carries,
    /// borrowed for the duration of `body`.
    func withMessage<R>(of frame: FrameBuffer, _ body: (MessagePayload) -> R) -> R {
        let first = frame.bytes.load(as: UInt8.self)
        let short = frame.bytes.load(fromByteOffset: 1, as: UInt8.self) & 0x7F
        let header = short < 126 ? 2 : (short == 126 ? 4 : 10)
        let payload = UnsafeRawBufferPointer(start: frame.bytes + header, count: frame.count - header)
        return body(MessagePayload(borrowing: payload, kind: first & 0x0F == Opcode.text.rawValue ? .text : .binary))
    }

    /// An empty control frame (a ping).
    func emptyFrame(_ opcode: Opcode) -> FrameBuffer {
        frame(opcode, payload: UnsafeRawBufferPointer(start: nil, count: 0))
    }
}
