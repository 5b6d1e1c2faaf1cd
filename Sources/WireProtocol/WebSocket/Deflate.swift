// permessage-deflate's payload transformation (RFC 7692 §7.2): one-shot compression of a whole
// message with no context takeover, and a bounded streaming inflater per connection. The C side is
// Sources/CDeflate (zlib and libdeflate).

import CDeflate

/// One-shot compression of a whole message with no context takeover (RFC 7692 §7.2.1): raw deflate
/// ending so that the receiver's appended 0x00 0x00 0xff 0xff completes it. Writes into
/// `destination` (capacity from ``bound(_:)``), returns the length, or nil if it would not be smaller
/// than the input (send uncompressed then).
///
/// Two backends:
/// - ``Backend/libdeflate`` (the default): one call over the whole buffer, a block with BFINAL set
///   (RFC 7692 §7.2.3.4) followed by one 0x00 octet, as in the RFC's example there — the header
///   bits of the empty stored block the receiver's 0x00 0x00 0xff 0xff completes, so that decoders
///   that reset at the end of a stream and read on (Chromium's, Firefox's and WebKit's do) find a
///   whole empty block. Checked against Chromium 156, Firefox 153 ESR, Python websockets 17.4 and
///   node ws 8.11 (each keeping or resetting its inflater), and Python's zlib. Its window is
///   always 32 KiB: only for `windowBits` 15.
/// - ``Backend/zlib``: one `z_stream` reset per message (`deflateReset`), `Z_SYNC_FLUSH`, the
///   trailing 0x00 0x00 0xff 0xff removed. Any window from 2^9 to 2^15; used whatever is asked when
///   `windowBits` is below 15.
///
/// Allocation-free per message. Not thread-safe: one per thread (a shard's).
public final class DeflateCompressor {
    public enum Backend: Sendable, Equatable {
        case zlib
        case libdeflate
    }

    /// The LZ77 window (9...15) the output is valid for.
    public let windowBits: Int
    /// The level on the backend's scale (zlib 0...9, libdeflate 0...12).
    public let level: Int
    /// The backend in use (zlib whenever `windowBits` < 15).
    public let backend: Backend
    private let handle: OpaquePointer

    /// zlib's memLevel: its hash table (2^(memLevel+7) heads, cleared by every `deflateReset`) and
    /// symbol buffer (2^(memLevel+6)); 8 is zlib's default.
    static let zlibMemLevel: Int32 = 8

    /// A compressor for a window of 2^`windowBits` (9...15; an 8-bit window is declined at
    /// negotiation). libdeflate at level 1 by default, measured on JSON-like game-state messages
    /// (release build, this machine, ns per message / compressed to): 1 KiB libdeflate L1
    /// 6.8 µs / 44.3 %, L6 10.9 µs / 43.3 %; zlib L1 15.7 µs / 46.5 %, L6 17.9 µs / 43.4 %.
    /// 16 KiB: libdeflate L1 56 µs / 27.3 %, zlib L1 100 µs / 29.8 %. Below about 300 bytes zlib
    /// is slightly faster (libdeflate clears its hash tables on every call, ~4.6 µs), but such
    /// messages gain little from compression anyway. `DeflateTests.timings` prints these.
    public init(windowBits: Int = 15, level: Int = 1, backend: Backend = .libdeflate) {
        precondition((9...15).contains(windowBits), "windowBits must be 9...15")
        let effective: Backend = windowBits < 15 ? .zlib : backend
        let lvl = effective == .zlib ? min(max(level, 0), 9) : min(max(level, 0), 12)
        guard let h = cdeflate_compressor_new(effective == .zlib ? 1 : 0, Int32(lvl), Int32(windowBits), Self.zlibMemLevel)
        else { fatalError("deflate compressor: out of memory") }
        self.windowBits = windowBits
        self.level = lvl
        self.backend = effective
        self.handle = h
    }

    deinit { cdeflate_compressor_free(handle) }

    /// The destination capacity that lets ``compress(_:into:capacity:)`` find every result for a
    /// message of `count` bytes: it gives up on anything that would not be smaller than `count`,
    /// and libdeflate wants a few bytes of slack past what it writes (up to 9 in 1.14).
    @inline(__always)
    public static func bound(_ count: Int) -> Int { count + 16 }

    /// Compresses one whole message (from an empty window) into `destination`; the compressed
    /// payload's length, or nil when it would not be smaller than the input (empty input included)
    /// or does not fit in `capacity`.
    @inline(__always)
    public func compress(_ input: UnsafeRawBufferPointer, into destination: UnsafeMutableRawPointer, capacity: Int) -> Int? {
        guard let base = input.baseAddress, input.count > 0, capacity > 0 else { return nil }
        let n = cdeflate_compress(handle, base.assumingMemoryBound(to: UInt8.self), input.count,
                                  destination.assumingMemoryBound(to: UInt8.self), capacity)
        return n == 0 ? nil : n
    }

    /// Bytes the zlib backend holds (≈ 262 KiB for a 15-bit window at memLevel 8); 0 for libdeflate,
    /// which does not report it (one allocation: 200 KiB at level 1, 652 KiB at levels 2...9,
    /// 8.6 MiB at 10...12, measured with libdeflate 1.14).
    public var memoryBytes: Int { cdeflate_compressor_memory(handle) }
}

/// A connection's inflater: raw inflate of messages compressed by the client, appending 0x00 0x00
/// 0xff 0xff per RFC 7692 §7.2.2; with context takeover the window persists across messages.
/// Bounded: stops as soon as the output would pass `limit` (never inflates first and checks later).
///
/// zlib, streaming. A message must end where the appended bytes complete an empty stored block (a
/// payload that stops inside a block is ``Result/corrupt``); a block with BFINAL set (RFC 7692
/// §7.2.3.4) ends the sender's stream, and whatever follows it in the message is read as a new one.
/// An empty payload inflates to an empty message without touching the window.
///
/// Memory: nothing of zlib's until the first message, then its state (≈ 7 KiB) and, from the first
/// output, the window (2^windowBits bytes). ``releaseMemory()`` gives both back between messages
/// when there is no context takeover. Not thread-safe.
public final class DeflateDecompressor {
    public enum Result: Equatable, Sendable {
        /// The message inflated to this many bytes, at the start of `output`.
        case ok(Int)
        /// It inflates to more than `limit` bytes: stopped there (close with 1009).
        case tooBig
        /// Not valid deflate data, or a message that stops inside a block (close with 1007). Also
        /// returned if zlib could not allocate its state.
        case corrupt
    }

    /// The window the client compresses with (8...15).
    public let windowBits: Int
    /// The window starts empty for every message.
    public let noContextTakeover: Bool
    private let handle: OpaquePointer

    /// An inflater for a client window of 2^`windowBits` (8...15). It inflates with at least a
    /// 9-bit window: zlib before 1.2.9 compressed "8" with 9 bits, and a larger window accepts
    /// every stream a smaller one does.
    public init(windowBits: Int, noContextTakeover: Bool) {
        precondition((8...15).contains(windowBits), "windowBits must be 8...15")
        guard let h = cdeflate_inflater_new(Int32(max(windowBits, 9)), noContextTakeover ? 1 : 0)
        else { fatalError("deflate decompressor: out of memory") }
        self.windowBits = windowBits
        self.noContextTakeover = noContextTakeover
        self.handle = h
    }

    deinit { cdeflate_inflater_free(handle) }

    /// Inflates one whole message (`input` = the concatenated payload of its frames) into `output`
    /// (grown as needed, never past `limit` bytes; reused across calls by the caller, whose bytes
    /// past the result are unspecified). After ``Result/tooBig`` or ``Result/corrupt`` the window
    /// is reset (the connection is being closed anyway).
    ///
    /// zlib is handed the output in steps that depend on the input's size and `limit` only, never
    /// on what `output` held before: zlib checks a match's distance against the window only when
    /// it reaches back past the output of the current call, so a stream that reaches further than
    /// the client's window would otherwise be accepted or refused depending on the size of a
    /// buffer an earlier message (perhaps another client's) left behind.
    public func decompress(_ input: UnsafeRawBufferPointer, limit: Int, into output: inout [UInt8]) -> Result {
        guard let base = input.baseAddress, input.count > 0 else { return .ok(0) }
        let limit = max(limit, 0)
        cdeflate_inflate_begin(handle, base.assumingMemoryBound(to: UInt8.self), input.count)
        var written = 0
        var space = min(limit, max(input.count * 4, 4096))
        while true {
            if output.count < space { output.append(contentsOf: repeatElement(0, count: space - output.count)) }
            if written == space {
                if space == limit {
                    // At the limit: the message is done only if inflate has not one byte more.
                    var probe: UInt8 = 0
                    var produced = 0
                    let status = cdeflate_inflate_continue(handle, &probe, 1, &produced)
                    if produced > 0 {
                        cdeflate_inflate_abandon(handle)
                        return .tooBig
                    }
                    return status == Int32(CDEFLATE_DONE) ? .ok(written) : .corrupt
                }
                space = min(limit, space * 2)
                continue
            }
            var produced = 0
            let status = output.withUnsafeMutableBytes { buffer in
                cdeflate_inflate_continue(handle, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self) + written,
                                          space - written, &produced)
            }
            written += produced
            switch status {
            case Int32(CDEFLATE_DONE): return .ok(written)
            case Int32(CDEFLATE_MORE): continue
            default: return .corrupt
            }
        }
    }

    /// Memory this decompressor holds now (zlib's state and window, and the handle), for reporting.
    public var memoryBytes: Int { cdeflate_inflater_memory(handle) }

    /// Gives zlib's state and window back (the next message allocates them again, ≈ 40 KiB for a
    /// 15-bit window): for an idle connection. Without context takeover only — with it the window
    /// is the connection's state, and this does nothing.
    public func releaseMemory() {
        guard noContextTakeover else { return }
        cdeflate_inflater_release(handle)
    }
}
