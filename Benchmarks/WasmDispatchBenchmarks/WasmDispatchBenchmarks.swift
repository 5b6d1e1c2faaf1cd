// One message through a wasm room (Tests/WasmHostTests/Fixtures/relay.wat) against the same relay
// in native Swift: encode the ABI message, call into the guest, decode its stateroom_send.
// (Benchmarks/WasmDispatch, the wasm host's own tool, also measures room creation and memory.)
import Benchmark
import Foundation
import Logging
import Stateroom
import WAT
import WasmHost

/// Counts what it is given; copies nothing.
final class NullContext: StateroomContext {
    var sends = 0
    func send(_ message: MessagePayload, to recipient: MessageRecipient) { sends += 1 }
    func setTimer(milliseconds: UInt32) {}
    func closeRoom(reason: String) { fatalError("room closed: \(reason)") }
}

struct NativeRelay: StateroomService {
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        context.send(message, to: .broadcast)
    }
}

func relayModule() throws -> [UInt8] {
    let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    let wat = here.appendingPathComponent("../../Tests/WasmHostTests/Fixtures/relay.wat").standardized
    return try wat2wasm(String(contentsOf: wat, encoding: .utf8))
}

let benchmarks: @Sendable () -> Void = {
    let config = Benchmark.Configuration(
        metrics: [.wallClock, .cpuTotal, .instructions, .mallocCountTotal, .throughput],
        scalingFactor: .kilo, maxDuration: .seconds(2), maxIterations: 10_000)
    let text = Array("0123456789abcdef0123456789abcdef".utf8)

    Benchmark("wasm dispatch: relay.wat, 32 B text", configuration: config) { benchmark in
        let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
        let factory = try WasmServiceFactory(bytes: relayModule(), name: "relay", limits: WasmLimits(spareInstances: 0), logger: logger)
        var room: any StateroomService = try factory.makeService(roomId: "bench", shard: 0)
        let ctx = NullContext()
        room.initialize(context: ctx)
        text.withUnsafeBytes { raw in
            let payload = MessagePayload(borrowing: raw, kind: .text)
            for _ in 0..<1000 { room.message(client: ClientId(1), message: payload, context: ctx) }  // translate first
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { room.message(client: ClientId(1), message: payload, context: ctx) }
            benchmark.stopMeasurement()
        }
        blackHole(ctx.sends)
    }

    Benchmark("native dispatch: Swift relay, 32 B text", configuration: config) { benchmark in
        var room: any StateroomService = NativeRelay()
        let ctx = NullContext()
        text.withUnsafeBytes { raw in
            let payload = MessagePayload(borrowing: raw, kind: .text)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { room.message(client: ClientId(1), message: payload, context: ctx) }
            benchmark.stopMeasurement()
        }
        blackHole(ctx.sends)
    }
}
