// The hot path of every message, byte for byte: frame parse (with unmask and UTF-8 check), unmask,
// UTF-8 validation, frame encode, HTTP head parse. Each hot-path benchmark also fails loudly if it
// allocates: `make alloc-gates` (in CI) checks its `mallocCountTotal` p90 against
// Benchmarks/Thresholds/WireProtocolBenchmarks.<name>.p90.json (0) with no tolerance (below).
import Benchmark
import Foundation
import WireProtocol

/// `make alloc-gates` sets STATEROOM_ALLOC_GATE=1 and measures only `mallocCountTotal`: an
/// allocation per message shows in every iteration, so 100 iterations check what 10,000 would,
/// in a fraction of a second per benchmark instead of `maxDuration`.
let allocGate = ProcessInfo.processInfo.environment["STATEROOM_ALLOC_GATE"] == "1"
let maxIterations = allocGate ? 100 : 10_000

/// Registers a benchmark the gate checks, with the default configuration: its `mallocCountTotal`
/// p90 must equal Benchmarks/Thresholds/WireProtocolBenchmarks.<name>.p90.json (0 on the hot path).
/// `thresholds check` passes over a benchmark with no file there in silence: under the gate a
/// missing file (a new or renamed benchmark) stops the run.
func gated(_ name: String, _ body: @escaping Benchmark.BenchmarkClosure) {
    let file = "Thresholds/WireProtocolBenchmarks.\(name).p90.json"  // the gate runs in Benchmarks/
    if allocGate && !FileManager.default.fileExists(atPath: file) {
        fatalError("alloc-gates: no \(file) (content: {\"mallocCountTotal\" : 0})")
    }
    Benchmark(name, closure: body)
}

/// A masked client text frame of `size` ASCII bytes. The key's bytes are < 0x80, so the payload is
/// ASCII both masked and unmasked: parsing unmasks in place, and parsing the same buffer again
/// unmasks it back, so every iteration does the same work on valid text.
func maskedFrame(size: Int) -> [UInt8] {
    let payload = (0..<size).map { UInt8(ascii: "a") + UInt8($0 % 26) }
    var frame: [UInt8] = []
    payload.withUnsafeBytes { encodeClientFrame(opcode: .text, payload: $0, maskKey: (0x12, 0x34, 0x56, 0x78), into: &frame) }
    return frame
}

let benchmarks: @Sendable () -> Void = {
    // The tolerance around the static threshold in Benchmarks/Thresholds/ (0 mallocs): none.
    // Hot-path benchmarks are registered with `gated` (each needs its Thresholds file).
    let noAllocations: [BenchmarkMetric: BenchmarkThresholds] = [
        .mallocCountTotal: BenchmarkThresholds(absolute: [.p90: 0]),
    ]
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .instructions, .mallocCountTotal, .throughput],
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: maxIterations,
        thresholds: noAllocations)

    for size in [64, 16 * 1024] {
        gated("frame parse \(size == 64 ? "64 B" : "16 KiB") masked text") { benchmark in
            var frame = maskedFrame(size: size)
            var parser = FrameParser(role: .server, maxMessageSize: 1 << 20)
            benchmark.startMeasurement()
            frame.withUnsafeMutableBytes { buf in
                for _ in benchmark.scaledIterations {
                    var offset = 0
                    while true {
                        let event = parser.next(buf, offset: &offset)
                        if case .message(_, let view) = event { blackHole(view.count) }
                        if case .needMore = event { break }
                    }
                }
            }
        }
    }

    gated("unmask 16 KiB") { benchmark in
        var bytes = [UInt8](repeating: 0x61, count: 16 * 1024)
        benchmark.startMeasurement()
        bytes.withUnsafeMutableBytes { buf in
            for _ in benchmark.scaledIterations {
                unmask(buf, key: (0x12, 0x34, 0x56, 0x78), phase: 1)
                blackHole(buf[0])
            }
        }
    }

    for (name, text) in [("ASCII", String(repeating: "a", count: 16 * 1024)),
                         ("mixed 2-4 byte", String(repeating: "aé€😀", count: 16 * 1024 / 10))] {
        gated("UTF-8 validate 16 KiB \(name)") { benchmark in
            let bytes = Array(text.utf8)
            var validator = UTF8Validator()
            benchmark.startMeasurement()
            bytes.withUnsafeBytes { buf in
                for _ in benchmark.scaledIterations {
                    validator.reset()
                    blackHole(validator.feed(buf) && validator.isComplete)
                }
            }
        }
    }

    gated("frame encode 64 B (header + copy into a pooled buffer)") { benchmark in
        let payload = [UInt8](repeating: 0x61, count: 64)
        let out = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 16)
        defer { out.deallocate() }
        benchmark.startMeasurement()
        payload.withUnsafeBytes { p in
            for _ in benchmark.scaledIterations {
                let h = encodeFrameHeader(opcode: .text, payloadLength: p.count, into: out)
                (out + h).copyMemory(from: p.baseAddress!, byteCount: p.count)
                blackHole(out.load(as: UInt8.self))
            }
        }
    }

    gated("HTTP head parse (WebSocket upgrade)") { benchmark in
        let request = Array(("GET /ws/room-42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: stateroom-bench\r\n"
            + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + "Sec-WebSocket-Version: 13\r\nOrigin: http://localhost\r\n\r\n").utf8)
        benchmark.startMeasurement()
        request.withUnsafeBytes { buf in
            for _ in benchmark.scaledIterations {
                if case .complete(let head) = parseHTTPHead(buf) {
                    blackHole(head.header("sec-websocket-key")?.count)
                }
            }
        }
    }

    // Gate only, the proof that the count counts: one allocation per message, and its Thresholds
    // file says 1000 per iteration. Were the malloc interposer to stop counting (an ordo-one/benchmark
    // upgrade, a trait renamed), this would read 0, `thresholds check` would call it BETTER and fail,
    // rather than every zero above passing for nothing.
    if allocGate {
        gated("alloc-gates canary (one malloc per message)") { benchmark in
            for _ in benchmark.scaledIterations { blackHole([UInt8](repeating: 0, count: 64)) }
        }
    }

    // Routing makes the room id String and the accept key (SHA-1 + base64): it allocates, once per
    // connection, so no allocation threshold here.
    Benchmark("HTTP upgrade route (room id + Sec-WebSocket-Accept)",
              configuration: .init(metrics: [.wallClock, .cpuTotal, .instructions, .mallocCountTotal, .throughput],
                                   scalingFactor: .kilo, maxDuration: .seconds(2), maxIterations: maxIterations)) { benchmark in
        let request = Array(("GET /ws/room-42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
            + "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)
        benchmark.startMeasurement()
        request.withUnsafeBytes { buf in
            for _ in benchmark.scaledIterations {
                if case .complete(let head) = parseHTTPHead(buf) {
                    blackHole(route(head))
                }
            }
        }
    }
}
