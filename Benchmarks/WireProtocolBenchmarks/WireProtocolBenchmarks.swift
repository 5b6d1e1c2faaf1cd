// The hot path of every message, byte for byte: frame parse (with unmask and UTF-8 check), unmask,
// UTF-8 validation, frame encode, HTTP head parse. Each hot-path benchmark also fails loudly if it
// allocates: `mallocCountTotal` has an absolute threshold of 0 (checked by
// `swift package benchmark thresholds check`).
import Benchmark
import WireProtocol

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
    let noAllocations: [BenchmarkMetric: BenchmarkThresholds] = [
        .mallocCountTotal: BenchmarkThresholds(absolute: [.p90: 0]),
    ]
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .instructions, .mallocCountTotal, .throughput],
        scalingFactor: .kilo,
        maxDuration: .seconds(2),
        maxIterations: 10_000,
        thresholds: noAllocations)

    for size in [64, 16 * 1024] {
        Benchmark("frame parse \(size == 64 ? "64 B" : "16 KiB") masked text") { benchmark in
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

    Benchmark("unmask 16 KiB") { benchmark in
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
        Benchmark("UTF-8 validate 16 KiB \(name)") { benchmark in
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

    Benchmark("frame encode 64 B (header + copy into a pooled buffer)") { benchmark in
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

    Benchmark("HTTP head parse (WebSocket upgrade)") { benchmark in
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

    // Routing makes the room id String and the accept key (SHA-1 + base64): it allocates, once per
    // connection, so no allocation threshold here.
    Benchmark("HTTP upgrade route (room id + Sec-WebSocket-Accept)",
              configuration: .init(metrics: [.wallClock, .cpuTotal, .instructions, .mallocCountTotal, .throughput],
                                   scalingFactor: .kilo, maxDuration: .seconds(2), maxIterations: 10_000)) { benchmark in
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
