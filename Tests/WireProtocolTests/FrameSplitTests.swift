import Testing
import WireProtocol

/// Splitting a stream anywhere must not change what the parser reports.
@Suite struct FrameSplitTests {
    /// A stream exercising every path: zero-copy frames, fragments with interleaved control frames,
    /// 16-bit lengths, empty frames, a 4-byte UTF-8 character split across fragments, and a close.
    static let mixedStream: [UInt8] = {
        var s: [UInt8] = []
        s += clientFrame(.text, "Hello")
        s += clientFrame(.text, "Hel", fin: false)
        s += clientFrame(.ping, "p")
        s += clientFrame(.continuation, "lo", fin: true)
        s += clientFrame(.binary, (0..<300).map { UInt8($0 & 0xFF) })
        s += clientFrame(.text, [])
        s += clientFrame(.pong, [])
        s += clientFrame(.text, [0x61, 0xF0, 0x9F], fin: false)
        s += clientFrame(.continuation, [], fin: false)
        s += clientFrame(.continuation, [0x98, 0x80, 0x62])
        s += clientFrame(.binary, [1, 2], fin: false)
        s += clientFrame(.continuation, (0..<130).map { UInt8($0) }, fin: false)
        s += clientFrame(.close, [0x03, 0xE8] + Array("done".utf8))
        s += clientFrame(.continuation, [3])
        return s
    }()

    static let mixedEvents: [Ev] = [
        .text("Hello"), .ping([0x70]), .text("Hello"), .message(.binary, (0..<300).map { UInt8($0 & 0xFF) }),
        .text(""), .pong([]), .message(.text, [0x61, 0xF0, 0x9F, 0x98, 0x80, 0x62]),
        .close(1000, Array("done".utf8)), .message(.binary, [1, 2] + (0..<130).map { UInt8($0) } + [3]),
    ]

    static let errorStreams: [(String, [UInt8])] = [
        ("bad UTF-8 in a fragment", clientFrame(.text, "ok") + clientFrame(.text, [0x61, 0xC3], fin: false) + clientFrame(.continuation, [0x28])),
        ("too big", clientFrame(.text, "ok") + clientFrame(.binary, [UInt8](repeating: 1, count: 200))),
        ("reserved opcode", clientFrame(.ping, "x") + rawFrame(b0: 0x83, payload: [1, 2, 3])),
        ("unmasked", clientFrame(.text, "ok") + rawFrame(b0: 0x81, payload: [0x61], masked: false)),
        ("bad close code", clientFrame(.text, "ok") + clientFrame(.close, [0x03, 0xED])),
        ("incomplete UTF-8 at FIN", clientFrame(.text, [0xE2, 0x82], fin: false) + clientFrame(.continuation, [])),
    ]

    @Test func mixedStreamYieldsTheExpectedEvents() {
        #expect(parse(Self.mixedStream) == Self.mixedEvents)
    }

    @Test func mixedStreamSplitAtEveryByteBoundaryYieldsIdenticalEvents() {
        let stream = Self.mixedStream
        for cut in 0...stream.count {
            let events = parse(stream, chunks: [cut])
            #expect(events == Self.mixedEvents, "split at \(cut)")
            if events != Self.mixedEvents { return }
        }
    }

    @Test func mixedStreamSplitIntoThreeAtManyBoundariesYieldsIdenticalEvents() {
        let stream = Self.mixedStream
        for a in stride(from: 0, through: stream.count, by: 7) {
            for b in stride(from: 0, through: stream.count - a, by: 11) {
                #expect(parse(stream, chunks: [a, b]) == Self.mixedEvents, "split at \(a), \(a + b)")
            }
        }
    }

    @Test func mixedStreamFedOneByteAtATimeYieldsIdenticalEvents() {
        #expect(parseBytewise(Self.mixedStream) == Self.mixedEvents)
    }

    @Test(arguments: errorStreams.map(\.0))
    func errorStreamSplitAnywhereYieldsIdenticalEvents(name: String) {
        let stream = Self.errorStreams.first { $0.0 == name }!.1
        let whole = parse(stream, maxMessageSize: 100)
        #expect(whole.last.map { if case .error = $0 { true } else { false } } == true)
        for cut in 0...stream.count {
            #expect(parse(stream, chunks: [cut], maxMessageSize: 100) == whole, "split at \(cut)")
        }
        #expect(parseBytewise(stream, maxMessageSize: 100) == whole)
    }

    @Test func serverFramesSplitAtEveryBoundaryYieldIdenticalEventsOnTheClientSide() {
        var stream: [UInt8] = []
        stream += serverFrame(.text, Array("héllo".utf8))
        stream += serverFrame(.binary, [9, 9], fin: false)
        stream += serverFrame(.ping, [1])
        stream += serverFrame(.continuation, (0..<200).map { UInt8($0) })
        stream += closeFrame(.goingAway, reason: "bye")
        let expected: [Ev] = [.text("héllo"), .ping([1]), .message(.binary, [9, 9] + (0..<200).map { UInt8($0) }),
                              .close(1001, Array("bye".utf8))]
        for cut in 0...stream.count {
            #expect(parse(stream, chunks: [cut], server: false) == expected, "split at \(cut)")
        }
        #expect(parseBytewise(stream, server: false) == expected)
    }

    @Test func randomStreamsWithRandomChunkingMatchTheWholeParse() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<300 {
            var stream: [UInt8] = []
            var expected: [Ev] = []
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let kind = Int.random(in: 0...3, using: &rng)
                let size = [0, 1, 5, 125, 126, 200, 1000, 70000].randomElement(using: &rng)!
                let key = (UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng),
                           UInt8.random(in: 0...255, using: &rng), UInt8.random(in: 0...255, using: &rng))
                switch kind {
                case 0:
                    let payload = randomBytes(size, using: &rng)
                    stream += clientFrame(.binary, payload, key: key)
                    expected.append(.message(.binary, payload))
                case 1:
                    let text = String(repeating: "aé€😀", count: size / 10 + 1)
                    let bytes = Array(text.utf8)
                    let cut = Int.random(in: 0...bytes.count, using: &rng)
                    stream += clientFrame(.text, Array(bytes[..<cut]), fin: false, key: key)
                    stream += clientFrame(.ping, [7], key: key)
                    stream += clientFrame(.continuation, Array(bytes[cut...]), key: key)
                    expected += [.ping([7]), .message(.text, bytes)]
                case 2:
                    let payload = randomBytes(min(size, 125), using: &rng)
                    stream += clientFrame(.pong, payload, key: key)
                    expected.append(.pong(payload))
                default:
                    let payload = randomBytes(size, using: &rng)
                    let cut = Int.random(in: 0...payload.count, using: &rng)
                    stream += clientFrame(.binary, Array(payload[..<cut]), fin: false, key: key)
                    stream += clientFrame(.continuation, Array(payload[cut...]), key: key)
                    expected.append(.message(.binary, payload))
                }
            }
            var chunks: [Int] = []
            var left = stream.count
            while left > 0 {
                let c = min(left, Int.random(in: 1...max(1, stream.count / 3), using: &rng))
                chunks.append(c)
                left -= c
            }
            let events = parse(stream, chunks: chunks)
            #expect(events == expected)
            if events != expected { return }
        }
    }
}
