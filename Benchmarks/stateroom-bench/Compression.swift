import Glibc
import WireProtocol

// permessage-deflate (RFC 7692) on the bench's side: the answer to its offer, and a load thread's
// compressors, inflater and memo.

/// The server's answer to ``Connector/deflateOffer``: exactly one `permessage-deflate` element
/// with parameters a response may carry (RFC 7692 §7.1), each at most once; values may be quoted.
/// Anything else fails the connection: a bench must not talk to a server it misunderstood.
func parseDeflateAnswer(_ value: String) -> Result<DeflateParameters, BenchError> {
    let elements = value.split(separator: ",", omittingEmptySubsequences: true)
        .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    guard elements.count == 1 else { return .failure(BenchError("\(elements.count) extensions in the answer")) }
    let parts = elements[0].split(separator: ";", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    guard parts[0].lowercased() == "permessage-deflate" else { return .failure(BenchError("not permessage-deflate")) }
    var p = DeflateParameters(serverNoContextTakeover: false, clientNoContextTakeover: false,
                              serverMaxWindowBits: 15, clientMaxWindowBits: 15)
    var seen: Set<String> = []
    for part in parts.dropFirst() {
        let kv = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        let name = kv[0].lowercased()
        guard !name.isEmpty, seen.insert(name).inserted else { return .failure(BenchError("parameter '\(name)' empty or repeated")) }
        var v: String?
        if kv.count == 2 {
            var s = Substring(kv[1])
            if s.count >= 2 && s.hasPrefix("\"") && s.hasSuffix("\"") { s = s.dropFirst().dropLast() }
            v = String(s)
        }
        func bits() -> Int? {
            guard let v, let n = Int(v), (8...15).contains(n), v.first != "0" else { return nil }
            return n
        }
        switch name {
        case "server_no_context_takeover":
            guard v == nil else { return .failure(BenchError("a value on server_no_context_takeover")) }
            p.serverNoContextTakeover = true
        case "client_no_context_takeover":
            guard v == nil else { return .failure(BenchError("a value on client_no_context_takeover")) }
            p.clientNoContextTakeover = true
        case "server_max_window_bits":
            guard let n = bits() else { return .failure(BenchError("server_max_window_bits needs 8...15")) }
            p.serverMaxWindowBits = n
        case "client_max_window_bits":
            guard let n = bits() else { return .failure(BenchError("client_max_window_bits needs 8...15")) }
            p.clientMaxWindowBits = n
        default:
            return .failure(BenchError("unknown parameter '\(name)'"))
        }
    }
    return .success(p)
}

/// A load thread's permessage-deflate work: compressors for what its senders send (one per
/// window the server asked for), the inflater for what arrives without context takeover, and the
/// memo of recent compressed payloads.
///
/// Sending: every message is compressed on its own (zlib, from an empty window), which is valid
/// whether or not the server answered `client_no_context_takeover` (a client may always reset its
/// context). A message that would not get smaller, or a window of 8 bits (below what zlib makes),
/// goes uncompressed, as RFC 7692 allows per message.
///
/// Receiving: the server answered `server_no_context_takeover` (ours and uWebSockets always do),
/// so each compressed message inflates on its own with the thread's inflater; a server that keeps
/// its context gets an inflater per connection (``Conn/inflater``). The memo: a broadcast
/// compressed once reaches every client of the room as the same bytes; a thread that has just
/// inflated those bytes reuses the result after checking the whole compressed payload byte for
/// byte (inflation without context is a function of those bytes), so 1,000 simulated clients do
/// not cost the bench 1,000 inflations per broadcast (`--inflate-all` turns this off).
final class DeflateWork {
    private var compressors: [Int: DeflateCompressor] = [:]
    let inflater = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
    /// The inflated message of the last miss (reused, grows to the largest message).
    var inflated: [UInt8] = []
    /// Scratch for one plain message, and for its compressed form.
    let plain: UnsafeMutableRawPointer
    let plainCapacity: Int
    let packed: UnsafeMutableRawPointer
    let packedCapacity: Int
    let memo: [MemoSlot]
    let memoEnabled: Bool
    var memoHits = 0
    var memoMisses = 0

    static let memoSlots = 16
    static let inflateLimit = 64 << 20

    final class MemoSlot {
        var input: [UInt8] = []
        var output: [UInt8] = []
        var outputCount = 0
        var valid = false
        init(capacity: Int) {
            input.reserveCapacity(capacity)
            output.reserveCapacity(capacity * 4)
        }
    }

    init(maxPayload: Int, memo: Bool) {
        plainCapacity = maxPayload
        plain = .allocate(byteCount: max(plainCapacity, 64), alignment: 16)
        packedCapacity = DeflateCompressor.bound(maxPayload)
        packed = .allocate(byteCount: packedCapacity, alignment: 16)
        memoEnabled = memo
        self.memo = (0..<Self.memoSlots).map { _ in MemoSlot(capacity: maxPayload + 64) }
        inflated.reserveCapacity(maxPayload + 64)
    }

    deinit {
        plain.deallocate()
        packed.deallocate()
    }

    /// The compressor for a client window of `bits` (nil for 8: zlib cannot compress for it).
    /// Set-up only (not on the per-message path).
    ///
    /// zlib at its default level 6 with `Z_SYNC_FLUSH` and the tail stripped, as Chromium sends:
    /// not the libdeflate backend, whose BFINAL block followed by 0x00 (RFC 7692 §7.2.3.4) is
    /// valid but refused by uWebSockets' inflater (it closes the connection: inflate() returns
    /// Z_STREAM_END, which it does not expect).
    func compressor(windowBits bits: Int) -> DeflateCompressor? {
        guard (9...15).contains(bits) else { return nil }
        if let c = compressors[bits] { return c }
        let c = DeflateCompressor(windowBits: bits, level: 6, backend: .zlib)
        compressors[bits] = c
        return c
    }

    /// Inflates `payload` (no context takeover) and calls `body` with the message; false if it is
    /// not valid permessage-deflate data (or inflates past 64 MiB).
    @inline(__always)
    func inflate(_ payload: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        guard memoEnabled, payload.count > 0, let base = payload.baseAddress else {
            guard case .ok(let n) = inflater.decompress(payload, limit: Self.inflateLimit, into: &inflated) else { return false }
            inflated.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            return true
        }
        // FNV-1a over the length and the first 32 bytes (where the timestamps differ) picks the slot.
        var h: UInt32 = 2_166_136_261 ^ UInt32(truncatingIfNeeded: payload.count)
        let head = min(payload.count, 32)
        for i in 0..<head { h = (h ^ UInt32(base.load(fromByteOffset: i, as: UInt8.self))) &* 16_777_619 }
        let slot = memo[Int(h % UInt32(Self.memoSlots))]
        if slot.valid && slot.input.count == payload.count
            && slot.input.withUnsafeBytes({ memcmp($0.baseAddress!, base, payload.count) == 0 }) {
            memoHits += 1
            slot.output.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[0..<slot.outputCount])) }
            return true
        }
        memoMisses += 1
        slot.valid = false
        guard case .ok(let n) = inflater.decompress(payload, limit: Self.inflateLimit, into: &slot.output) else { return false }
        slot.input.removeAll(keepingCapacity: true)
        slot.input.append(contentsOf: payload)
        slot.outputCount = n
        slot.valid = true
        slot.output.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        return true
    }
}
