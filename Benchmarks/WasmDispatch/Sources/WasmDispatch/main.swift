// WasmDispatch: what a wasm room costs compared with native Swift.
//
//   cd Benchmarks/WasmDispatch && swift run -c release WasmDispatch [rounds]
//
// Prints medians over `rounds` (default 9) of:
//   - per message: WasmService(relay.wat) vs a native Swift relay, same borrowed 32-byte text
//     payload, same no-op context (encode, malloc, copy, recv, stateroom_send decode, free);
//   - the ABI codec alone (encode in place, decode borrowing);
//   - room creation for a ~150 KB module: from a ready spare (the normal path), and without
//     spares (instantiate on the shard + first call, i.e. WasmKit's lazy translation);
//   - the fuel rate of this machine (fuel per ms), which WasmLimits.fuelPerMillisecond encodes.
import Foundation
import Logging
import Stateroom
import StateroomWasm
import WAT
@_spi(Fuzzing) import WasmKit
import WasmHost

let usage = """
    usage: WasmDispatch [rounds]          full benchmark, medians over rounds (default 9)
           WasmDispatch snapshot          durable rooms: capture (snapshot + encode) and restore
                                          (decode + a fresh instance given the image) of a room
                                          with 1, 16, 64 and 256 non-zero 64 KiB pages
           WasmDispatch relay [messages]  only the wasm relay: Init, 1000 warm-up messages, then
                                          `messages` (default 100000) relay callbacks; prints the
                                          per-callback time. Made for `valgrind --tool=callgrind`
                                          (instructions) and `valgrind` (heap blocks): run it with
                                          two message counts and divide the difference.
    """
if CommandLine.arguments.contains("--help") || CommandLine.arguments.contains("-h") {
    print(usage)
    exit(0)
}
let relayOnly = CommandLine.arguments.count > 1 && CommandLine.arguments[1] == "relay"
let snapshotOnly = CommandLine.arguments.count > 1 && CommandLine.arguments[1] == "snapshot"
let rounds = !relayOnly && CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 9 : 9
let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
let here = URL(fileURLWithPath: #filePath)
let fixtures = here.deletingLastPathComponent().appendingPathComponent("../../../../Tests/WasmHostTests/Fixtures").standardized

func fixture(_ name: String) throws -> [UInt8] {
    try wat2wasm(String(contentsOf: fixtures.appendingPathComponent("\(name).wat"), encoding: .utf8))
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s[s.count / 2]
}

func format(_ ns: Double) -> String {
    ns >= 1_000_000 ? String(format: "%.2f ms", ns / 1e6) : ns >= 1000 ? String(format: "%.2f µs", ns / 1e3) : String(format: "%.0f ns", ns)
}

/// Counts what it is given; copies nothing.
final class NullContext: StateroomContext {
    var sends = 0
    var bytes = 0
    func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        sends += 1
        bytes += message.count
    }
    func setTimer(milliseconds: UInt32) {}
    func closeRoom(reason: String) { fatalError("room closed: \(reason)") }
}

/// The same relay in native Swift.
struct NativeRelay: StateroomService {
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        context.send(message, to: .broadcast)
    }
}

@inline(never)
func drive(_ service: inout some StateroomService, _ payload: MessagePayload, _ ctx: NullContext, _ n: Int) {
    for _ in 0..<n { service.message(client: ClientId(1), message: payload, context: ctx) }
}

// MARK: - Snapshots (durable rooms)

/// A room whose Init fills `pages` pages after the first with non-zero bytes (a stand-in for a
/// guest's heap): the memory a snapshot must carry.
func filledModule(pages: Int) -> String {
    """
    (module
      (memory (export "memory") \(pages + 1))
      (global (export "STATEROOM_API_VERSION") i32 (i32.const 16))
      (global (export "STATEROOM_API_PROTOCOL") i32 (i32.const 20))
      (data (i32.const 16) "\\01\\00\\00\\00\\00\\00\\00\\00")
      (global $heap (mut i32) (i32.const 1024))
      (func (export "stateroom_malloc") (param $n i32) (result i32)
        (local $p i32) (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n))) (local.get $p))
      (func (export "stateroom_free") (param i32 i32))
      (func (export "stateroom_recv") (param $p i32) (param $n i32)
        (local $a i32)
        ;; Init (tag 0): fill pages 1...\(pages) with a pattern, 8 bytes at a time.
        (if (i32.eqz (i32.load (local.get $p))) (then
          (local.set $a (i32.const 65536))
          (block $done (loop $fill
            (br_if $done (i32.ge_u (local.get $a) (i32.const \((pages + 1) * 65536))))
            (i64.store (local.get $a) (i64.const 0x5a5a5a5a5a5a5a5a))
            (local.set $a (i32.add (local.get $a) (i32.const 8)))
            (br $fill))))))
    )
    """
}

if snapshotOnly {
    print("snapshot: capture = WasmService.snapshot() + encoded(); restore = WasmSnapshot(decoding:) +")
    print("makeWasmService(restoring:) with no spare ready (instantiate, grow, copy); medians of 9")
    for pages in [1, 16, 64, 256] {
        let factory = try WasmServiceFactory(bytes: wat2wasm(filledModule(pages: pages)), name: "filled",
                                             limits: WasmLimits(spareInstances: 0), logger: logger)
        let room = try factory.makeWasmService(roomId: "r", shard: 0)
        room.initialize(context: NullContext())
        var capture: [Double] = [], restore: [Double] = []
        var encoded: [UInt8] = []
        for _ in 0..<9 {
            let t = now()
            encoded = try room.snapshot().encoded()
            capture.append(Double(now() - t))
        }
        for _ in 0..<9 {
            let t = now()
            let restored = try factory.makeWasmService(roomId: "r2", shard: 0, restoring: try WasmSnapshot(decoding: encoded))
            restore.append(Double(now() - t))
            let again = try restored.snapshot().encoded()
            precondition(again == encoded, "a restored room snapshots the same")
        }
        let kib = Double(pages * 64)
        print(String(format: "  %4d KiB non-zero (%d pages of %d): capture %@ (%@/KiB), restore %@ (%@/KiB), encoded %d KiB",
                     pages * 64, pages, pages + 1, format(median(capture)), format(median(capture) / kib),
                     format(median(restore)), format(median(restore) / kib), encoded.count / 1024))
    }
    exit(0)
}

// MARK: - Per message

let text = Array("0123456789abcdef0123456789abcdef".utf8)  // 32 bytes

if relayOnly {
    let count = CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 100_000 : 100_000
    let factory = try WasmServiceFactory(bytes: fixture("relay"), name: "relay", limits: WasmLimits(spareInstances: 0), logger: logger)
    var relay: any StateroomService = try factory.makeService(roomId: "bench", shard: 0)
    let ctx = NullContext()
    text.withUnsafeBytes { raw in
        let payload = MessagePayload(borrowing: raw, kind: .text)
        relay.initialize(context: ctx)
        drive(&relay, payload, ctx, 1_000)  // warm-up (translation)
        let t = now()
        drive(&relay, payload, ctx, count)
        let elapsed = Double(now() - t)
        print("relay: \(count) messages of 32 bytes, \(count > 0 ? format(elapsed / Double(count)) : "-") per callback")
    }
    precondition(ctx.sends == 1_000 + count)
    exit(0)
}
let messages = 200_000
print("WasmDispatch: \(rounds) rounds, medians; \(messages) messages of 32 bytes per round")

let relayFactory = try WasmServiceFactory(bytes: fixture("relay"), name: "relay", limits: WasmLimits(spareInstances: 0), logger: logger)
var wasmRelay: any StateroomService = try relayFactory.makeService(roomId: "bench", shard: 0)
var nativeRelay: any StateroomService = NativeRelay()
var wasmTimes: [Double] = [], nativeTimes: [Double] = [], codecTimes: [Double] = []
var codecBytes = 0
try text.withUnsafeBytes { raw in
    let payload = MessagePayload(borrowing: raw, kind: .text)
    let ctx = NullContext()
    wasmRelay.initialize(context: ctx)
    drive(&wasmRelay, payload, ctx, 10_000)  // warm-up (translation)
    drive(&nativeRelay, payload, ctx, 10_000)
    var scratch = [UInt8](repeating: 0, count: 256)
    for _ in 0..<rounds {
        var t = now()
        drive(&wasmRelay, payload, ctx, messages)
        wasmTimes.append(Double(now() - t) / Double(messages))
        t = now()
        drive(&nativeRelay, payload, ctx, messages)
        nativeTimes.append(Double(now() - t) / Double(messages))
        // Codec alone: encode MessageToProcess in place + decode the guest's MessageFromProcess.
        let out = MessageFromProcess.message(recipient: .broadcast, payload: payload).encoded()
        t = now()
        try out.withUnsafeBytes { outBytes in
            try scratch.withUnsafeMutableBytes { buf in
                for _ in 0..<messages {
                    MessageToProcess.message(sender: ClientId(1), payload: payload).encode(into: buf)
                    guard case .message(_, let p) = try MessageFromProcess.decode(outBytes) else { fatalError() }
                    codecBytes += p.count
                }
            }
        }
        codecTimes.append(Double(now() - t) / Double(messages))
    }
    precondition(ctx.sends == (10_000 + messages * rounds) * 2)
    precondition(codecBytes == 32 * messages * rounds)
}
let wasmMsg = median(wasmTimes), nativeMsg = median(nativeTimes)
print("per message  wasm relay   \(format(wasmMsg))   (\(Int(1e9 / wasmMsg)) msg/s on one core)")
print("per message  native relay \(format(nativeMsg))")
print("per message  ABI codec (encode in place + decode borrowing, UTF-8 checked) \(format(median(codecTimes)))")

// MARK: - Room creation, ~150 KB module

/// The counter fixture plus `count` filler functions, all of which Init calls once, so the
/// first call into a fresh, lazily translated instance translates the whole module (worst case).
func bigModule(fillers count: Int) throws -> [UInt8] {
    var wat = try String(contentsOf: fixtures.appendingPathComponent("counter.wat"), encoding: .utf8)
    var fillers = ""
    var calls = ""
    for i in 0..<count {
        fillers += """
              (func $fill\(i) (param $x i32) (result i32) (local $i i32) (local $acc i32)
                (local.set $acc (i32.const \(i)))
                (block $done (loop $next
                  (br_if $done (i32.ge_u (local.get $i) (i32.const 2)))
                  (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31)) (i32.xor (local.get $x) (local.get $i))))
                  (local.set $acc (i32.rotl (local.get $acc) (i32.and (local.get $i) (i32.const 7))))
                  (i32.store (i32.add (i32.const 2048) (i32.and (local.get $acc) (i32.const 1020))) (local.get $acc))
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br $next)))
                (i32.add (local.get $acc) (i32.load (i32.const 2048))))

            """
        calls += "(drop (call $fill\(i) (i32.const \(i))))\n"
    }
    let hook = #"(func (export "stateroom_recv") (param $ptr i32) (param $len i32)"# + "\n    (local $n i32)"
    wat = wat.replacingOccurrences(of: hook, with: hook + """

            (if (i32.eqz (i32.load (local.get $ptr))) (then \(calls) (return)))
        """)
    let last = wat.range(of: ")", options: .backwards)!
    wat.replaceSubrange(last, with: fillers + ")")
    return try wat2wasm(wat)
}

var fillers = 1400
let probeSize = try bigModule(fillers: fillers).count
fillers = Int(Double(fillers) * 150_000 / Double(probeSize))
let big = try bigModule(fillers: fillers)
print("room creation: module \(big.count / 1000) KB (\(fillers) functions, all reached by Init)")

nonisolated(unsafe) var splitMake: [Double] = []
nonisolated(unsafe) var splitInit: [Double] = []
func creation(_ big: [UInt8], spares: Int, count: Int) throws -> (create: [Double], firstMessage: [Double], prepare: Double) {
    let factory = try WasmServiceFactory(bytes: big, name: "big", limits: WasmLimits(spareInstances: spares), logger: logger)
    var create: [Double] = [], first: [Double] = []
    var rooms: [any StateroomService] = []
    let ctx = NullContext()
    for i in 0..<count {
        if spares > 0 {
            while factory.readySpareCount < spares { usleep(1000) }  // off the measured path
        }
        var t = now()
        var room = try factory.makeService(roomId: "r\(i)", shard: 0)
        let made = now()
        room.initialize(context: ctx)
        create.append(Double(now() - t))
        if spares > 0 { splitMake.append(Double(made - t)); splitInit.append(Double(now() - made)) }
        t = now()
        text.withUnsafeBytes { room.message(client: ClientId(1), message: MessagePayload(borrowing: $0, kind: .text), context: ctx) }
        first.append(Double(now() - t))
        rooms.append(room)
    }
    // Background preparation of one spare (instantiate + _initialize + eager translation).
    let engine = Engine(configuration: EngineConfiguration(compilationMode: .eager, memoryBoundsChecking: .software, fuelMetering: true))
    let module = try parseWasm(bytes: big)
    var prep: [Double] = []
    for _ in 0..<max(3, rounds / 2) {
        let t = now()
        let store = Store(engine: engine)
        _ = try module.instantiate(store: store, imports: ["env": ["stateroom_send": Function(store: store, parameters: [.i32, .i32]) { _, _ in [] }]])
        prep.append(Double(now() - t))
    }
    return (create, first, median(prep))
}

let withSpare = try creation(big, spares: 1, count: rounds)
let withoutSpare = try creation(big, spares: 0, count: rounds)
print("split (spare): makeService \(format(median(splitMake))), Init \(format(median(splitInit)))")
print("room creation from a spare   (makeService + Init): \(format(median(withSpare.create)))   first message after: \(format(median(withSpare.firstMessage)))")
print("room creation without spares (makeService + Init): \(format(median(withoutSpare.create)))   first message after: \(format(median(withoutSpare.firstMessage)))")
print("spare preparation off the shard (instantiate + eager translation): \(format(withSpare.prepare))")
var parseTimes: [Double] = []
for _ in 0..<rounds {
    let t = now()
    _ = try parseWasm(bytes: big)
    parseTimes.append(Double(now() - t))
}
print("parse (once per server start): \(format(median(parseTimes)))")

// MARK: - Memory per room

func residentBytes() -> Int {
    let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "0 0"
    return (Int(statm.split(separator: " ")[1]) ?? 0) * Int(getpagesize())
}

for spares in [0, 1] {
    let factory = try WasmServiceFactory(bytes: big, name: "big", limits: WasmLimits(spareInstances: spares), logger: logger)
    let before = residentBytes()
    var rooms: [any StateroomService] = []
    let ctx = NullContext()
    for i in 0..<100 {
        if spares > 0 { while factory.readySpareCount < spares { usleep(1000) } }
        var room = try factory.makeService(roomId: "m\(i)", shard: 0)
        room.initialize(context: ctx)
        rooms.append(room)
    }
    print("resident memory per room (\(spares > 0 ? "eager spares" : "lazy, no spares")): \((residentBytes() - before) / 100 / 1024) KiB")
}

// MARK: - Fuel rate

let loopModule = try parseWasm(bytes: wat2wasm("""
    (module (func (export "spin") (param $n i32) (local $i i32) (local $acc i32)
      (loop $l
        (local.set $acc (i32.add (local.get $acc) (i32.xor (local.get $i) (i32.const 7))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (local.get $n))))))
    """))
let fuelEngine = Engine(configuration: EngineConfiguration(memoryBoundsChecking: .software, fuelMetering: true))
let fuelStore = Store(engine: fuelEngine)
let spin = try loopModule.instantiate(store: fuelStore).exports[function: "spin"]!
var rates: [Double] = []
for _ in 0..<rounds {
    fuelStore.fuel = Fuel(remaining: 10_000_000)
    let t = now()
    _ = try? spin([.i32(UInt32.max)])
    rates.append(10_000_000 / (Double(now() - t) / 1e6))
}
print("fuel rate: \(Int(median(rates))) fuel/ms (min \(Int(rates.min()!)), max \(Int(rates.max()!))); WasmLimits default 1000000")
var loopTimes: [Double] = []
let loopFactory = try WasmServiceFactory(bytes: fixture("loop"), name: "loop", limits: WasmLimits(spareInstances: 0), logger: logger)
final class CloseContext: StateroomContext {
    var reason: String?
    func send(_ message: MessagePayload, to recipient: MessageRecipient) {}
    func setTimer(milliseconds: UInt32) {}
    func closeRoom(reason: String) { self.reason = reason }
}
for _ in 0..<max(3, rounds / 2) {
    var room = try loopFactory.makeService(roomId: "loop", shard: 0)
    let ctx = CloseContext()
    room.initialize(context: ctx)
    let t = now()
    room.message(client: ClientId(1), message: .text("spin"), context: ctx)
    loopTimes.append(Double(now() - t))
    precondition(ctx.reason?.contains("out of fuel") == true)
}
print("infinite loop stopped after (budget 100 ms): \(format(median(loopTimes)))")
