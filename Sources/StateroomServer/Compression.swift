import IOCore
import Stateroom
import WireProtocol

// permessage-deflate (RFC 7692) on the shard: a broadcast compressed once for every recipient
// that agreed to it, and client messages inflated with a bound. One of the files of this module
// that touch raw memory (with Inbound.swift, Frames.swift and TLS.swift).
//
// The server always compresses without context takeover, so one message compresses to the same
// bytes for every recipient: the compressed frame is built once, like the plain one, and each
// recipient's queue gets whichever of the two it agreed to. Clients are asked not to take over
// context either (unless configured otherwise), so one inflater per shard serves them all and an
// idle or quiet connection holds no compression memory at all.

/// Compression settings of a server.
public struct CompressionConfiguration: Sendable {
    /// Agree to permessage-deflate when a client offers it.
    public var enabled = true
    /// Messages shorter than this go uncompressed (the frame header and deflate's own framing
    /// make small messages larger, and compressing them costs more than it saves).
    public var minimumBytes = 128
    /// Ask every client to compress each message on its own (`client_no_context_takeover`): one
    /// inflater per shard serves all of them, so a connection holds no inflate memory. Off:
    /// clients may keep their compression context, which compresses better and costs each
    /// connection that sends compressed messages an inflater of its own (about 7 KiB of zlib state
    /// plus a window of 2^`clientMaxWindowBits` bytes).
    public var clientNoContextTakeover = true
    /// The window clients that offer `client_max_window_bits` are asked to compress with (8...15).
    public var clientMaxWindowBits = 15
    /// zlib's level for outgoing messages (1...9). A broadcast is compressed once whatever the
    /// number of recipients, so a thorough level costs little per delivery: 6 (zlib's default)
    /// makes 1 KiB JSON messages about 10% smaller than 1, for about 15% more time per message.
    public var level = 6

    public init() {}

    var policy: DeflatePolicy {
        var p = DeflatePolicy()
        p.enabled = enabled
        p.clientMaxWindowBits = clientMaxWindowBits
        return p
    }
}

/// What one upgrade agreed on permessage-deflate.
enum CompressionAgreement {
    /// Answer without the extension.
    case none
    /// The parameters and the response header's value.
    case agreed(DeflateParameters, String)
    /// A malformed offer: the upgrade fails with 400.
    case malformed
}

/// Agrees on permessage-deflate for one upgrade.
func negotiateCompression(_ head: HTTPRequestHead, _ config: CompressionConfiguration) -> CompressionAgreement {
    guard config.enabled else { return .none }
    var offers: [String] = []
    head.forEachHeader { name, value in
        if name.count == 24 && String(decoding: name, as: UTF8.self).lowercased() == "sec-websocket-extensions" {
            offers.append(String(decoding: value, as: UTF8.self))
        }
        return true
    }
    guard !offers.isEmpty else { return .none }
    switch DeflateNegotiation.negotiate(offers, policy: config.policy) {
    case .declined:
        return .none
    case .malformed:
        return .malformed
    case .accepted(var params, let header):
        var response = header
        if config.clientNoContextTakeover && !params.clientNoContextTakeover {
            // RFC 7692 §7.1.1.2: a server may ask for it whether or not the offer had it.
            params.clientNoContextTakeover = true
            response += "; client_no_context_takeover"
        }
        return .agreed(params, response)
    }
}

/// A connection's side of permessage-deflate: what it agreed to, and its own inflater when the
/// client keeps its compression context across messages.
final class ConnectionDeflate {
    let parameters: DeflateParameters
    var inflater: DeflateDecompressor?
    /// Inflater memory last reported to the shard's gauge.
    var reportedBytes = 0

    init(_ parameters: DeflateParameters) { self.parameters = parameters }
}

/// A shard's compression scratch: the compressor every broadcast goes through, the inflater
/// shared by clients without context takeover, and the buffers they write into.
final class CompressionWorkspace {
    let level: Int

    /// By window bits (index bits - 8): 15 for nearly every client; a client that limited the
    /// server's window (server_max_window_bits) gets messages compressed within it.
    private var compressors = [DeflateCompressor?](repeating: nil, count: 8)

    func compressor(windowBits: Int) -> DeflateCompressor {
        if let c = compressors[windowBits - 8] { return c }
        // zlib, ending each message with a sync flush (the form every inflater expects), not
        // libdeflate's final block: RFC 7692 allows that too, and it is 2x faster at 1 KiB, but
        // inflaters that stop at the end of a stream (uWebSockets') reject it. A broadcast is
        // compressed once, so the difference is spread over its recipients.
        let c = DeflateCompressor(windowBits: windowBits, level: level, backend: .zlib)
        compressors[windowBits - 8] = c
        return c
    }

    let sharedInflater = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
    /// Inflated messages: reused while they stay at most ``keptInflateBytes``; a larger one (up
    /// to the largest message accepted, or a bomb cut off there) is let go after its message, so
    /// one client's big message does not leave the shard holding `--max-message-size` bytes.
    var inflated: [UInt8] = []
    static let keptInflateBytes = 256 << 10
    /// Compressed payloads before they are framed.
    private(set) var scratch: UnsafeMutableRawPointer
    private(set) var scratchCapacity: Int

    init(level: Int) {
        self.level = level
        scratchCapacity = 64 << 10
        scratch = .allocate(byteCount: scratchCapacity, alignment: 16)
    }

    deinit { scratch.deallocate() }

    func reserve(_ capacity: Int) {
        guard capacity > scratchCapacity else { return }
        scratch.deallocate()
        scratchCapacity = max(capacity, scratchCapacity * 2)
        scratch = .allocate(byteCount: scratchCapacity, alignment: 16)
    }
}

extension Shard {
    // MARK: - Outbound

    /// `message` compressed (within a window of 2^`windowBits`) into a frame with RSV1 set
    /// (reference count 1), or nil when compressing would not make it smaller.
    func compressedFrame(_ message: MessagePayload, windowBits: Int) -> FrameBuffer? {
        let work = compression
        let compressor = work.compressor(windowBits: windowBits)
        return message.withUnsafeBytes { payload -> FrameBuffer? in
            work.reserve(DeflateCompressor.bound(payload.count))
            guard let n = compressor.compress(payload, into: work.scratch, capacity: work.scratchCapacity) else {
                count(.compressionsSkipped)
                return nil
            }
            count(.messagesCompressed)
            let frame = pool.frame(message.kind == .text ? .text : .binary,
                                   payload: UnsafeRawBufferPointer(start: work.scratch, count: n))
            frame.bytes.storeBytes(of: frame.bytes.load(as: UInt8.self) | 0x40, as: UInt8.self)  // RSV1: compressed
            return frame
        }
    }

    /// Queues `message` to each recipient in `room`, compressed (once) for those that agreed to
    /// permessage-deflate when it is long enough, as `plain` to the others.
    func fanOutCompressing(_ message: MessagePayload, plain: FrameBuffer, to recipient: MessageRecipient, in room: Room) {
        guard message.count >= config.compression.minimumBytes else {
            room.fanOut(plain, to: recipient, pool: pool) { conn, frame in enqueue(conn, frame: frame) }
            return
        }
        // One compressed frame per window size in use (in practice one: 15 bits), made on first need.
        var compressed: FrameBuffer?
        var tried = false
        var other: [Int: FrameBuffer?] = [:]
        room.forEachRecipient(recipient) { conn in
            var frame = plain
            if let deflate = conn.deflate {
                let bits = deflate.parameters.serverMaxWindowBits
                if bits == 15 {
                    if !tried {
                        tried = true
                        compressed = compressedFrame(message, windowBits: 15)
                    }
                    if let c = compressed { frame = c }
                } else {
                    if other[bits] == nil { other[bits] = .some(compressedFrame(message, windowBits: bits)) }
                    if let c = other[bits] ?? nil { frame = c }
                }
            }
            pool.retain(frame)
            enqueue(conn, frame: frame)
        }
        if let compressed { pool.release(compressed) }
        for case let c?? in other.values { pool.release(c) }
    }

    // MARK: - Inbound

    /// Inflates a client's compressed message (never past the largest message accepted) and hands
    /// it to the room; closes with 1009 when it inflates past that, 1007 for a corrupt stream or
    /// text that is not UTF-8. False when the connection was closed.
    func receiveCompressed(_ conn: Connection, _ deflate: ConnectionDeflate, _ opcode: Opcode,
                           _ payload: UnsafeRawBufferPointer, room: Room) -> Bool {
        let work = compression
        let inflater: DeflateDecompressor
        if deflate.parameters.clientNoContextTakeover {
            inflater = work.sharedInflater
        } else if let own = deflate.inflater {
            inflater = own
        } else {
            inflater = DeflateDecompressor(windowBits: deflate.parameters.clientMaxWindowBits, noContextTakeover: false)
            deflate.inflater = inflater
        }
        let result = inflater.decompress(payload, limit: config.maxMessageSize, into: &work.inflated)
        defer { if work.inflated.count > CompressionWorkspace.keptInflateBytes { work.inflated = [] } }
        if deflate.inflater != nil {
            let held = inflater.memoryBytes
            count(.inflateMemoryBytes, held - deflate.reportedBytes)
            deflate.reportedBytes = held
        }
        switch result {
        case .tooBig:
            count(.inflateLimitCloses)
            closeWebSocket(conn, .messageTooBig, reason: "message too big")
            return false
        case .corrupt:
            count(.inflateErrors)
            closeWebSocket(conn, .invalidPayload, reason: "invalid compressed data")
            return false
        case .ok(let n):
            count(.messagesInflated)
            return work.inflated.withUnsafeBytes { all -> Bool in
                let view = UnsafeRawBufferPointer(rebasing: all[0..<n])
                if opcode == .text {
                    var v = UTF8Validator()
                    guard v.feed(view) && v.isComplete else {
                        count(.protocolErrorCloses)
                        closeWebSocket(conn, .invalidPayload, reason: "invalid UTF-8")
                        return false
                    }
                }
                if let failure = deliver(MessagePayload(borrowing: view, kind: opcode == .text ? .text : .binary), from: conn, to: room) {
                    roomFailed(room, failure)
                    return false
                }
                return true
            }
        }
    }

    /// A connection out of its room (or never in one) drops its compression state, and leaves
    /// the gauges.
    func releaseCompression(_ conn: Connection) {
        guard let d = conn.deflate else { return }
        count(.deflateWebSockets, -1)
        if d.reportedBytes != 0 { count(.inflateMemoryBytes, -d.reportedBytes) }
        d.reportedBytes = 0
        d.inflater = nil
        conn.deflate = nil
    }
}
