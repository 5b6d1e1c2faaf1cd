import CDeflate
import Testing
import WireProtocol

#if canImport(Glibc)
import Glibc
#endif

/// permessage-deflate's payload transformation (RFC 7692 §7.2): DeflateCompressor (zlib and
/// libdeflate) and DeflateDecompressor (zlib, bounded, with and without context takeover).
@Suite struct DeflateTests {
    // MARK: - Helpers

    /// Compresses `message` with `compressor`; nil when it would not shrink.
    static func compress(_ compressor: DeflateCompressor, _ message: [UInt8], capacity: Int? = nil) -> [UInt8]? {
        let cap = capacity ?? DeflateCompressor.bound(message.count)
        let out = UnsafeMutableRawPointer.allocate(byteCount: max(cap, 1), alignment: 16)
        defer { out.deallocate() }
        guard let n = message.withUnsafeBytes({ compressor.compress($0, into: out, capacity: cap) }) else { return nil }
        precondition(n <= cap)
        return Array(UnsafeRawBufferPointer(start: out, count: n))
    }

    static func inflate(_ d: DeflateDecompressor, _ payload: [UInt8], limit: Int = 1 << 24) -> (DeflateDecompressor.Result, [UInt8]) {
        var out: [UInt8] = []
        let r = payload.withUnsafeBytes { d.decompress($0, limit: limit, into: &out) }
        if case .ok(let n) = r { return (r, Array(out[0..<n])) }
        return (r, [])
    }

    /// Plain zlib (a fresh raw inflater, 32 KiB window) over `payload` + 0x00 0x00 0xff 0xff: what
    /// any receiver does (RFC 7692 §7.2.2). Nil when zlib rejects it.
    static func referenceInflate(_ payload: [UInt8], expecting count: Int) -> [UInt8]? {
        let input = payload + [0x00, 0x00, 0xFF, 0xFF]
        var out = [UInt8](repeating: 0, count: count + 64)
        var written = 0
        var end: Int32 = 0
        let ok = input.withUnsafeBufferPointer { i in
            out.withUnsafeMutableBufferPointer { o in
                cdeflate_reference_inflate(i.baseAddress, i.count, o.baseAddress, o.count, &written, &end)
            }
        }
        return ok == 1 ? Array(out[0..<written]) : nil
    }

    /// A zlib stream that keeps its window across messages (context takeover): each message
    /// sync-flushed, its trailing 0x00 0x00 0xff 0xff removed.
    final class ContextTakeoverCompressor {
        let handle: OpaquePointer
        init(windowBits: Int = 15) { handle = cdeflate_compressor_new(1, 6, Int32(windowBits), 8)! }
        deinit { cdeflate_compressor_free(handle) }
        func compress(_ message: [UInt8]) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: message.count + message.count / 1000 + 32)
            let n = message.withUnsafeBufferPointer { i in
                out.withUnsafeMutableBufferPointer { o in
                    cdeflate_compress_keeping_context(handle, i.baseAddress, i.count, o.baseAddress, o.count)
                }
            }
            precondition(n > 0)
            return Array(out[0..<n])
        }
    }

    static let messages: [[UInt8]] = [
        chatMessage(seed: 1),
        stateMessage(bytes: 256, seed: 2),
        stateMessage(bytes: 1024, seed: 3),
        stateMessage(bytes: 4096, seed: 4),
        stateMessage(bytes: 16384, seed: 5),
        stateMessage(bytes: 100_000, seed: 6),
        Array("Hello".utf8),
        Array(repeating: 0x61, count: 3),
        Array(repeating: 0x61, count: 70_000),
        Array(String(repeating: "κόσμε ", count: 300).utf8),
    ]

    static let backends: [DeflateCompressor.Backend] = [.libdeflate, .zlib]

    // MARK: - Compression

    @Test(arguments: backends)
    func roundTripsThroughZlibWithTheTailRule(_ backend: DeflateCompressor.Backend) throws {
        for level in [0, 1, 6, 9] {
            let c = DeflateCompressor(level: level, backend: backend)
            #expect(c.backend == backend && c.windowBits == 15)
            for m in Self.messages {
                guard let z = Self.compress(c, m) else {
                    // Stored blocks (level 0) never shrink; a chat line may not either.
                    #expect(m.count < 128 || level == 0, "\(backend) L\(level) did not shrink \(m.count) bytes")
                    continue
                }
                #expect(z.count < m.count)
                // Plain zlib, fresh window, 0x00 0x00 0xff 0xff appended.
                #expect(Self.referenceInflate(z, expecting: m.count) == m)
                // Our decompressor, with and without context takeover.
                for reset in [true, false] {
                    let (r, out) = Self.inflate(DeflateDecompressor(windowBits: 15, noContextTakeover: reset), z)
                    #expect(r == .ok(m.count) && out == m)
                }
            }
        }
    }

    @Test func zlibOutputEndsAtAnEmptyStoredBlockHeader() throws {
        // The sync flush's 0x00 0x00 0xff 0xff is removed: nothing ends with it, and adding it back
        // makes a stream that stops between blocks (our decompressor checks that).
        let c = DeflateCompressor(backend: .zlib)
        let z = try #require(Self.compress(c, Self.messages[2]))
        #expect(Array(z.suffix(4)) != [0x00, 0x00, 0xFF, 0xFF])
    }

    @Test func libdeflateOutputIsAFinalBlockAndOneZeroOctet() throws {
        // RFC 7692 §7.2.3.4's form: BFINAL set, then 0x00 (the empty stored block's header bits).
        let c = DeflateCompressor(backend: .libdeflate)
        let m = Self.messages[2]
        let z = try #require(Self.compress(c, m))
        #expect(z.last == 0x00)
        #expect(z[0] & 1 == 1)  // BFINAL of the first (only) block
        // After the final block the receiver's bytes form a whole empty stored block: a decoder
        // that resets at the end of a stream and reads on (as Chromium's does) stays in step.
        var end: Int32 = 0
        var written = 0
        var out = [UInt8](repeating: 0, count: m.count + 16)
        let tail: [UInt8] = [0x00, 0x00, 0x00, 0xFF, 0xFF]
        let ok = tail.withUnsafeBufferPointer { i in
            out.withUnsafeMutableBufferPointer { o in cdeflate_reference_inflate(i.baseAddress, i.count, o.baseAddress, o.count, &written, &end) }
        }
        #expect(ok == 1 && written == 0 && end == 0)
    }

    @Test func persistentInflaterReadsManyLibdeflateMessagesInARow() {
        // A client inflater with context takeover (the server sent server_no_context_takeover, but
        // a client need not reset) meets one final block per message and must stay in step.
        let c = DeflateCompressor(backend: .libdeflate)
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: false)
        for (i, m) in (Self.messages + Self.messages).enumerated() {
            guard let z = Self.compress(c, m) else { continue }
            let (r, out) = Self.inflate(d, z)
            #expect(r == .ok(m.count) && out == m, "message \(i)")
        }
    }

    @Test func sameMessageCompressesToTheSameBytes() throws {
        // No context takeover: a broadcast is compressed once for every recipient.
        for backend in Self.backends {
            let c = DeflateCompressor(backend: backend)
            let m = Self.messages[3]
            let first = try #require(Self.compress(c, m))
            _ = Self.compress(c, Self.messages[4])
            #expect(Self.compress(c, m) == first)
            #expect(Self.compress(DeflateCompressor(backend: backend), m) == first)
        }
    }

    @Test(arguments: backends)
    func returnsNilWhenItWouldNotShrink(_ backend: DeflateCompressor.Backend) {
        let c = DeflateCompressor(backend: backend)
        #expect(Self.compress(c, []) == nil)
        #expect(Self.compress(c, [0x41]) == nil)
        #expect(Self.compress(c, [0x41, 0x42]) == nil)
        var g = SplitMix(s: 9)
        let random = (0..<4096).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        #expect(Self.compress(c, random) == nil)
        // Too small a destination: nil, and nothing written past it.
        let m = Self.messages[2]
        let full = Self.compress(c, m)!
        #expect(Self.compress(c, m, capacity: full.count / 2) == nil)
        for m in Self.messages {
            if let z = Self.compress(c, m) { #expect(z.count < m.count) }
        }
    }

    @Test func destinationPastCapacityIsUntouched() {
        for backend in Self.backends {
            let c = DeflateCompressor(backend: backend)
            for m in Self.messages + [Array(repeating: 0x20, count: 40)] {
                let cap = DeflateCompressor.bound(m.count)
                let out = UnsafeMutableRawPointer.allocate(byteCount: cap + 64, alignment: 16)
                defer { out.deallocate() }
                out.initializeMemory(as: UInt8.self, repeating: 0xA5, count: cap + 64)
                let n = m.withUnsafeBytes { c.compress($0, into: out, capacity: cap) }
                #expect(n.map { $0 < m.count } ?? true)
                let after = UnsafeRawBufferPointer(start: out + cap, count: 64)
                #expect(after.allSatisfy { $0 == 0xA5 })
            }
        }
    }

    @Test func smallWindowsUseZlibAndStayWithinTheirWindow() {
        for bits in 9...14 {
            let c = DeflateCompressor(windowBits: bits, backend: .libdeflate)
            #expect(c.backend == .zlib && c.windowBits == bits)
            #expect(c.memoryBytes > 0)
            for m in Self.messages {
                guard let z = Self.compress(c, m) else { continue }
                // An inflater with exactly that window accepts it.
                let (r, out) = Self.inflate(DeflateDecompressor(windowBits: bits, noContextTakeover: true), z)
                #expect(r == .ok(m.count) && out == m, "bits \(bits), \(m.count) bytes")
            }
        }
    }

    @Test func levelsAreClampedToTheBackendsScale() {
        #expect(DeflateCompressor(level: 12, backend: .libdeflate).level == 12)
        #expect(DeflateCompressor(level: 12, backend: .zlib).level == 9)
        #expect(DeflateCompressor(level: -3, backend: .zlib).level == 0)
        #expect(DeflateCompressor().backend == .libdeflate && DeflateCompressor().level == 1)
        #expect(DeflateCompressor().memoryBytes == 0)
        #expect(DeflateCompressor(backend: .zlib).memoryBytes > 200_000)
    }

    // MARK: - Decompression

    @Test func rfc7692Examples() {
        // RFC 7692 §7.2.3.1-7.2.3.5: "Hello" in each form.
        let hello = Array("Hello".utf8)
        let examples: [[UInt8]] = [
            [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00],                                   // one compressed block
            [0x00, 0x05, 0x00, 0xFA, 0xFF, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00],           // a stored block
            [0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00],                             // BFINAL set
            [0xF2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xCA, 0xC9, 0xC9, 0x07, 0x00], // two blocks
        ]
        for reset in [true, false] {
            let d = DeflateDecompressor(windowBits: 15, noContextTakeover: reset)
            for e in examples + examples {
                let (r, out) = Self.inflate(d, e)
                #expect(r == .ok(5) && out == hello, "\(e)")
            }
        }
        // §7.2.3.2: the second "Hello" with context takeover refers back to the first.
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: false)
        #expect(Self.inflate(d, [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]).1 == hello)
        #expect(Self.inflate(d, [0xF2, 0x00, 0x11, 0x00, 0x00]).1 == hello)
        // Without it the reference points before the start of the window.
        let fresh = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
        #expect(Self.inflate(fresh, [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]).1 == hello)
        #expect(Self.inflate(fresh, [0xF2, 0x00, 0x11, 0x00, 0x00]).0 == .corrupt)
    }

    @Test func contextTakeoverAcrossMessages() {
        let c = ContextTakeoverCompressor()
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: false)
        let sequence = (0..<40).map { i in Self.messages[[1, 2, 3, 6, 9][i % 5]] }
        var compressedTotal = 0
        for (i, m) in sequence.enumerated() {
            let z = c.compress(m)
            compressedTotal += z.count
            if i >= 5 {
                // Repeats of earlier messages compress to a few bytes per 258-byte match: they refer
                // to the window.
                #expect(z.count <= m.count / 258 * 3 + 12, "message \(i): \(z.count) bytes")
                // A fresh inflater cannot read them.
                #expect(Self.inflate(DeflateDecompressor(windowBits: 15, noContextTakeover: true), z).0 == .corrupt || m.count < 8)
            }
            let (r, out) = Self.inflate(d, z)
            #expect(r == .ok(m.count) && out == m, "message \(i)")
        }
        #expect(compressedTotal < sequence.reduce(0) { $0 + $1.count } / 10)
    }

    @Test func contextTakeoverWithASmallWindow() {
        let c = ContextTakeoverCompressor(windowBits: 10)
        let d = DeflateDecompressor(windowBits: 10, noContextTakeover: false)
        for i in 0..<20 {
            let m = Self.messages[[2, 3, 4][i % 3]]
            let (r, out) = Self.inflate(d, c.compress(m))
            #expect(r == .ok(m.count) && out == m)
        }
    }

    @Test func noContextTakeoverResetsEveryMessage() throws {
        let c = DeflateCompressor(backend: .zlib)
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
        for m in Self.messages + Self.messages.reversed() {
            guard let z = Self.compress(c, m) else { continue }
            let (r, out) = Self.inflate(d, z)
            #expect(r == .ok(m.count) && out == m)
        }
    }

    @Test func zipBombStopsAtTheLimit() throws {
        // ~20 KB that inflates to 20 MiB.
        let bomb = try #require(Self.compress(DeflateCompressor(level: 9, backend: .zlib), [UInt8](repeating: 0, count: 20 << 20)))
        #expect(bomb.count > 15_000 && bomb.count < 25_000)
        for reset in [true, false] {
            let d = DeflateDecompressor(windowBits: 15, noContextTakeover: reset)
            let limit = 1 << 20
            // A reused buffer larger than the limit: nothing is written past the limit.
            var out = [UInt8](repeating: 0xA5, count: limit + 4096)
            let r = bomb.withUnsafeBytes { d.decompress($0, limit: limit, into: &out) }
            #expect(r == .tooBig)
            #expect(out.count == limit + 4096)
            #expect(out[limit...].allSatisfy { $0 == 0xA5 })
            // A fresh buffer grows to the limit and no further.
            var grown: [UInt8] = []
            #expect(bomb.withUnsafeBytes { d.decompress($0, limit: limit, into: &grown) } == .tooBig)
            #expect(grown.count <= limit)
            // Memory: zlib's state and a 32 KiB window, whatever the bomb.
            #expect(d.memoryBytes < 48 << 10, "\(d.memoryBytes)")
            // The inflater goes on working after the failure.
            let m = Self.messages[2]
            let z = try #require(Self.compress(DeflateCompressor(), m))
            #expect(Self.inflate(d, z) == (.ok(m.count), m))
        }
    }

    @Test func limitIsExact() throws {
        let m = Self.messages[3]
        let z = try #require(Self.compress(DeflateCompressor(), m))
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
        var out: [UInt8] = []
        #expect(z.withUnsafeBytes { d.decompress($0, limit: m.count, into: &out) } == .ok(m.count))
        #expect(Array(out[0..<m.count]) == m)
        #expect(z.withUnsafeBytes { d.decompress($0, limit: m.count - 1, into: &out) } == .tooBig)
        #expect(z.withUnsafeBytes { d.decompress($0, limit: 0, into: &out) } == .tooBig)
        #expect(z.withUnsafeBytes { d.decompress($0, limit: m.count, into: &out) } == .ok(m.count))
        // An empty message within a limit of 0.
        #expect([UInt8]([0x00]).withUnsafeBytes { d.decompress($0, limit: 0, into: &out) } == .ok(0))
    }

    @Test func outputBufferIsReusedAndGrown() throws {
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
        var out: [UInt8] = []
        for m in Self.messages {
            guard let z = Self.compress(DeflateCompressor(), m) else { continue }
            let r = z.withUnsafeBytes { d.decompress($0, limit: 1 << 20, into: &out) }
            #expect(r == .ok(m.count))
            #expect(Array(out[0..<m.count]) == m)
        }
        #expect(out.count >= 100_000 && out.count <= 1 << 20)
    }

    /// A 19-byte stream whose matches reach further back than a 9-bit window (found by the
    /// deflate fuzz target, `Fuzz/corpus/deflate/regress-inflate-chunking-window-reach`). zlib checks
    /// a distance against the window only when it reaches past the current call's output, so
    /// the verdict used to follow the size of the buffer an earlier message left: a buffer of
    /// 690–877 bytes made it corrupt, any other size 878 bytes of output. It must follow the
    /// message alone.
    @Test func theVerdictDoesNotDependOnTheBufferAnEarlierMessageLeft() {
        let stream: [UInt8] = [0x6a, 0x4c, 0x4a, 0x4e, 0x1c, 0x45, 0x43, 0x03, 0x6a, 0x29,
                               0x4c, 0x4a, 0x1c, 0x45, 0x43, 0x39, 0x01, 0x00, 0x00]
        func verdict(leftover: Int, limit: Int) -> DeflateDecompressor.Result {
            let d = DeflateDecompressor(windowBits: 9, noContextTakeover: false)
            var out = [UInt8](repeating: 0xa5, count: leftover)
            return stream.withUnsafeBytes { d.decompress($0, limit: limit, into: &out) }
        }
        for limit in [100, 877, 878, 4096, 1 << 18] {
            let fresh = verdict(leftover: 0, limit: limit)
            for leftover in [1, 100, 690, 700, 877, 878, 4096, 9000] {
                #expect(verdict(leftover: leftover, limit: limit) == fresh, "limit \(limit), leftover \(leftover)")
            }
        }
        #expect(verdict(leftover: 0, limit: 1 << 18) == .ok(878))
    }

    @Test func corruptStreams() throws {
        let m = Self.messages[3]
        let z = try #require(Self.compress(DeflateCompressor(backend: .zlib), m))
        let cases: [(String, [UInt8])] = [
            ("reserved block type", [0xFF, 0xFF, 0xFF, 0xFF]),
            ("stored block with a bad length check", [0x00, 0x05, 0x00, 0x05, 0x00, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00]),
            ("distance before the start of the window", [0xF2, 0x00, 0x11, 0x00, 0x00]),
            ("truncated in the middle of a block", Array(z.prefix(z.count / 2))),
            ("ends after a block without the stored block's header", [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07]),
            ("garbage", Array("not deflate at all, just text".utf8)),
            ("a flipped bit in the Huffman tables", { var b = z; b[3] ^= 0x10; return b }()),
        ]
        for reset in [true, false] {
            let d = DeflateDecompressor(windowBits: 15, noContextTakeover: reset)
            for (name, bytes) in cases {
                let (r, out) = Self.inflate(d, bytes)
                // A flipped bit may still decode to something else; it must not decode to m. A
                // distance into the window is fine with context takeover (the last message is there).
                if name.hasPrefix("distance") && !reset {
                    #expect(r == .ok(5), "\(name)")
                } else if name.hasPrefix("a flipped bit") {
                    #expect(r == .corrupt || out != m, "\(name)")
                } else {
                    #expect(r == .corrupt, "\(name)")
                }
                // The next good message works (the window was reset).
                #expect(Self.inflate(d, z) == (.ok(m.count), m), "after \(name)")
            }
        }
    }

    @Test func emptyMessages() {
        for backend in Self.backends {
            #expect(Self.compress(DeflateCompressor(backend: backend), []) == nil)
        }
        for reset in [true, false] {
            let d = DeflateDecompressor(windowBits: 15, noContextTakeover: reset)
            // What zlib's sync flush of nothing leaves after the tail is removed: one 0x00.
            #expect(Self.inflate(d, [0x00]) == (.ok(0), []))
            // An empty payload: an empty message, window untouched.
            #expect(Self.inflate(d, []) == (.ok(0), []))
            // An empty block with BFINAL set (what a compressor that finishes every message sends).
            #expect(Self.inflate(d, [0x03, 0x00]) == (.ok(0), []))
        }
        let c = ContextTakeoverCompressor()
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: false)
        for m in [Self.messages[2], [], Self.messages[2], []] {
            #expect(Self.inflate(d, c.compress(m)) == (.ok(m.count), m))
        }
    }

    @Test func smallClientWindows() throws {
        // With context takeover a 10-bit inflater keeps 1 KiB of the previous message: a client
        // that refers 2 KiB back broke its window, one with 15 bits is fine. (Within one message
        // zlib reads back into its output, so it does not police the window there.)
        var g = SplitMix(s: 3)
        let block = (0..<2048).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        for (bits, fine) in [(10, false), (15, true)] {
            let c = ContextTakeoverCompressor(windowBits: 15)
            let d = DeflateDecompressor(windowBits: bits, noContextTakeover: false)
            #expect(Self.inflate(d, c.compress(block)) == (.ok(block.count), block))
            let again = c.compress(block)
            #expect(again.count < 32)
            #expect(Self.inflate(d, again).0 == (fine ? .ok(block.count) : .corrupt), "\(bits) bits")
        }
        // An 8-bit client window is inflated with 9 bits: old zlib compressed "8" that way.
        let d8 = DeflateDecompressor(windowBits: 8, noContextTakeover: true)
        #expect(d8.windowBits == 8)
        let z9 = try #require(Self.compress(DeflateCompressor(windowBits: 9), Self.messages[3]))
        #expect(Self.inflate(d8, z9) == (.ok(Self.messages[3].count), Self.messages[3]))
    }

    @Test func memoryIsReportedAndReleased() throws {
        let z = try #require(Self.compress(DeflateCompressor(), Self.messages[4]))
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
        let idle = d.memoryBytes
        #expect(idle > 0 && idle < 1024)  // the handle only: zlib allocates on the first message
        #expect(Self.inflate(d, z).0 == .ok(Self.messages[4].count))
        let busy = d.memoryBytes
        #expect(busy > 32 << 10 && busy < 48 << 10, "\(busy)")
        d.releaseMemory()
        #expect(d.memoryBytes == idle)
        #expect(Self.inflate(d, z).0 == .ok(Self.messages[4].count))
        #expect(d.memoryBytes == busy)

        // With context takeover the window is the connection's state: release does nothing.
        let kept = DeflateDecompressor(windowBits: 10, noContextTakeover: false)
        #expect(Self.inflate(kept, [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]).0 == .ok(5))
        let held = kept.memoryBytes
        #expect(held > 1024 && held < 12 << 10, "\(held)")  // zlib's state and a 1 KiB window
        kept.releaseMemory()
        #expect(kept.memoryBytes == held)
        #expect(Self.inflate(kept, [0xF2, 0x00, 0x11, 0x00, 0x00]).1 == Array("Hello".utf8))
    }

    @Test func randomAndMutatedInputsEndCleanly() throws {
        // Whatever the bytes: ok, corrupt or tooBig, never a crash or a hang, never past the limit.
        var g = SplitMix(s: 11)
        let good = try #require(Self.compress(DeflateCompressor(backend: .zlib), Self.messages[3]))
        for reset in [true, false] {
            let d = DeflateDecompressor(windowBits: 15, noContextTakeover: reset)
            var out: [UInt8] = []
            for i in 0..<3000 {
                var input: [UInt8]
                if i % 2 == 0 {
                    input = (0..<(1 + g.int(300))).map { _ in UInt8(truncatingIfNeeded: g.next()) }
                } else {
                    input = good
                    for _ in 0..<(1 + g.int(4)) { input[g.int(input.count)] ^= UInt8(1 << g.int(8)) }
                    if g.int(4) == 0 { input = Array(input.prefix(g.int(input.count) + 1)) }
                }
                let limit = 1 + g.int(8192)
                let r = input.withUnsafeBytes { d.decompress($0, limit: limit, into: &out) }
                if case .ok(let n) = r { #expect(n <= limit) }
                #expect(out.count <= max(limit, 8192))
            }
        }
    }

    @Test func fragmentedPayloadIsOneInput() throws {
        // A message sent in several frames is inflated from its payloads joined: any split of the
        // compressed bytes joins back to the same input.
        let m = Self.messages[3]
        let z = try #require(Self.compress(DeflateCompressor(), m))
        let d = DeflateDecompressor(windowBits: 15, noContextTakeover: true)
        let joined = Array(z[0..<7]) + Array(z[7...])
        #expect(Self.inflate(d, joined) == (.ok(m.count), m))
    }

    // MARK: - Timings (printed, not asserted)

    /// Set STATEROOM_DEFLATE_TIMINGS=1 to print ns per message and the ratio for each backend and
    /// size (a debug build measures the libraries, which are optimized either way).
    @Test func timings() {
        guard getenv("STATEROOM_DEFLATE_TIMINGS") != nil else { return }
        let sets: [(String, [[UInt8]])] = [
            ("64 B chat", (0..<32).map { chatMessage(seed: UInt64($0)) }),
            ("1 KiB state", (0..<32).map { stateMessage(bytes: 1024, seed: UInt64($0)) }),
            ("16 KiB state", (0..<8).map { stateMessage(bytes: 16384, seed: UInt64($0)) }),
        ]
        let out = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { out.deallocate() }
        for (name, msgs) in sets {
            for (backend, level) in [(DeflateCompressor.Backend.libdeflate, 1), (.libdeflate, 6), (.zlib, 1), (.zlib, 6)] {
                let c = DeflateCompressor(level: level, backend: backend)
                var inBytes = 0, outBytes = 0
                for m in msgs {
                    inBytes += m.count
                    outBytes += m.withUnsafeBytes { c.compress($0, into: out, capacity: 1 << 16) } ?? m.count
                }
                let iterations = max(200, 2_000_000 / inBytes * msgs.count)
                let start = ContinuousClock.now
                for i in 0..<iterations {
                    _ = msgs[i % msgs.count].withUnsafeBytes { c.compress($0, into: out, capacity: 1 << 16) }
                }
                let elapsed = (ContinuousClock.now - start).components
                let ns = (Double(elapsed.seconds) * 1e9 + Double(elapsed.attoseconds) / 1e9) / Double(iterations)
                print("deflate \(name) \(backend) L\(level): \(Int(ns)) ns/message, ratio \(Double(outBytes) / Double(inBytes))")
            }
        }
    }
}

// MARK: - Realistic messages

/// Deterministic pseudo-random numbers (SplitMix64).
fileprivate struct SplitMix {
    var s: UInt64
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

private let playerNames = ["Nova", "Ash", "Kestrel", "Mika", "Juno", "Rook", "Sable", "Tamsin", "Orin", "Wren", "Pax", "Lumen"]
private let chatWords = ["gg", "rematch?", "nice", "left flank", "push mid", "one more", "brb", "lag", "wp", "defend base", "on my way", "heal pls"]

private func fixed2(_ v: Int) -> String {
    let a = abs(v)
    return (v < 0 ? "-" : "") + "\(a / 100)." + (a % 100 < 10 ? "0" : "") + "\(a % 100)"
}

/// A game room's state as JSON, just under `bytes` long: players with the same keys, positions,
/// names, teams, and a chat event for every third player.
fileprivate func stateMessage(bytes target: Int, seed: UInt64) -> [UInt8] {
    var g = SplitMix(s: seed)
    let head = "{\"type\":\"state\",\"room\":\"arena-\(seed % 100)\",\"tick\":\(48213 + Int(seed)),\"players\":["
    let middle = "],\"events\":["
    let end = "]}"
    var players: [String] = []
    var events: [String] = []
    var size = head.utf8.count + middle.utf8.count + end.utf8.count
    for i in 0... {
        let id = String(g.next() & 0xFFFFFF, radix: 16)
        let player = "{\"id\":\"p-\(id)\",\"name\":\"\(playerNames[g.int(playerNames.count)])\",\"x\":\(fixed2(g.int(80000))),\"y\":\(fixed2(g.int(60000))),\"vx\":\(fixed2(g.int(800) - 400)),\"vy\":\(fixed2(g.int(800) - 400)),\"hp\":\(g.int(101)),\"score\":\(g.int(5000)),\"team\":\"\(i % 2 == 0 ? "red" : "blue")\",\"alive\":\(g.int(5) != 0)}"
        let event = "{\"kind\":\"chat\",\"from\":\"p-\(String(g.next() & 0xFFFFFF, radix: 16))\",\"text\":\"\(chatWords[g.int(chatWords.count)])\"}"
        var added = player.utf8.count + (players.isEmpty ? 0 : 1)
        if i % 3 == 2 { added += event.utf8.count + (events.isEmpty ? 0 : 1) }
        if size + added > target { break }
        size += added
        players.append(player)
        if i % 3 == 2 { events.append(event) }
    }
    let json = head + players.joined(separator: ",") + middle + events.joined(separator: ",") + end
    precondition(json.utf8.count == size)
    return Array(json.utf8)
}

/// A chat line as JSON, about 64 bytes.
fileprivate func chatMessage(seed: UInt64) -> [UInt8] {
    var g = SplitMix(s: seed)
    return Array("{\"type\":\"chat\",\"from\":\"u\(1000 + g.int(9000))\",\"text\":\"\(chatWords[g.int(chatWords.count)])\",\"ts\":\(17327912 + g.int(1000))}".utf8)
}
