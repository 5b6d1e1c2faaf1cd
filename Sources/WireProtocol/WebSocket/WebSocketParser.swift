/// The server-side RFC 6455 frame parser: client frames must be masked. Pure: bytes in, events out.
///
/// Call ``next(_:offset:)`` repeatedly on each received buffer until it returns `.needMore` (the buffer is
/// then fully absorbed and may be released). A complete unfragmented frame wholly inside the buffer is
/// returned as a view INTO the buffer, unmasked in place (no copy, no allocation). Frames split across
/// buffers, fragmented messages and partial headers are assembled in the parser's own storage (allocated
/// lazily, grown as bytes arrive rather than by the declared length), which keeps its capacity for reuse up
/// to `retainedCapacity` and is released above that (or by ``releaseMemory()``). Every view is valid until
/// the next call to `next` and, for views into the buffer, until the caller reuses that buffer.
///
/// Enforced: masking, RSV bits (no extensions), known opcodes, control frames (FIN, ≤125 bytes), fragment
/// order, 63-bit lengths, `maxMessageSize` (1009 as soon as a header shows it, before any payload is
/// buffered), UTF-8 of text checked per fragment as it arrives and at FIN (1007), close payloads (1002
/// for 1 byte or an invalid code, 1007 for a non-UTF-8 reason). Control frames may interleave with
/// fragments. Non-minimal length encodings are accepted. After `.close` the connection should stop feeding.
public struct WebSocketParser {
    var core: FrameParserCore

    /// A parser accepting messages up to `maxMessageSize` bytes (the total of all fragments). The assembly
    /// buffer is allocated lazily and freed after delivering a message larger than `retainedCapacity`.
    public init(maxMessageSize: Int, retainedCapacity: Int = 16 * 1024) {
        core = FrameParserCore(maxMessageSize: maxMessageSize, retainedCapacity: retainedCapacity, requireMask: true)
    }

    /// Parses the next event from `buffer[offset...]`, unmasking in place, and advances `offset`.
    public mutating func next(_ buffer: UnsafeMutableRawBufferPointer, offset: inout Int) -> FrameEvent {
        core.next(buffer, offset: &offset)
    }

    /// True while a partial frame header, a partial frame or the fragments of a message are held.
    public var hasBufferedData: Bool { core.hasBufferedData }

    /// Frees the parser's storage if it holds no data (call when a connection goes idle). Invalidates views
    /// from the previous event.
    public mutating func releaseMemory() { core.releaseMemory() }

    /// The close code of the protocol error that killed this parser, if any.
    public var failure: CloseCode? { core.failure }
}

/// The client-side frame parser (for the load generator and test clients): server frames must NOT be
/// masked (a masked one is a 1002 protocol error). Same events, rules and view lifetimes as
/// ``WebSocketParser``.
public struct ServerFrameParser {
    var core: FrameParserCore

    /// A parser accepting messages up to `maxMessageSize` bytes.
    public init(maxMessageSize: Int, retainedCapacity: Int = 16 * 1024) {
        core = FrameParserCore(maxMessageSize: maxMessageSize, retainedCapacity: retainedCapacity, requireMask: false)
    }

    /// Parses the next event from `buffer[offset...]` and advances `offset`.
    public mutating func next(_ buffer: UnsafeMutableRawBufferPointer, offset: inout Int) -> FrameEvent {
        core.next(buffer, offset: &offset)
    }

    /// True while a partial frame header, a partial frame or the fragments of a message are held.
    public var hasBufferedData: Bool { core.hasBufferedData }

    /// Frees the parser's storage if it holds no data (call when a connection goes idle). Invalidates views
    /// from the previous event.
    public mutating func releaseMemory() { core.releaseMemory() }

    /// The close code of the protocol error that killed this parser, if any.
    public var failure: CloseCode? { core.failure }
}
