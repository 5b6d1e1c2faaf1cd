import Logging
import Stateroom
import StateroomWasm
@_spi(Fuzzing) import WasmKit
import enum WasmParser.ImportDescriptor
import enum WasmParser.ExportDescriptor

/// One instantiated guest: its own `Store` (so all of its memory goes away with the room), the
/// exports the ABI needs, the host state its imports reach, and the stack it runs on.
///
/// Thread-confined: created on one thread (a shard, or the factory's warmer, which then hands it
/// over whole), and afterwards used by exactly one thread at a time.
final class GuestInstance {
    /// Required function exports and their types.
    static let requiredFunctions: [(name: String, type: FunctionType)] = [
        ("stateroom_recv", FunctionType(parameters: [.i32, .i32], results: [])),
        ("stateroom_malloc", FunctionType(parameters: [.i32], results: [.i32])),
        ("stateroom_free", FunctionType(parameters: [.i32, .i32], results: [])),
    ]
    /// The ABI globals and the value each must point at.
    static let requiredGlobals: [(name: String, expected: Int32)] = [
        ("STATEROOM_API_VERSION", 1),
        ("STATEROOM_API_PROTOCOL", 0),
    ]
    /// The identity extension's global (StateroomWasm/IDENTITY.md): optional; when exported it
    /// must point at ``stateroomIdentityVersion``, and the module then gets `ClientIdentity`.
    static let identityGlobal = "STATEROOM_IDENTITY_VERSION"

    let store: Store
    let state: HostState
    /// The module declared the identity extension (`STATEROOM_IDENTITY_VERSION` == 1): a client
    /// with an identity is announced with `ClientIdentity` before its `Connect`.
    let acceptsIdentities: Bool
    /// The instance itself: snapshots read and assign its exported mutable globals.
    let instance: Instance
    /// The guest's linear memory (snapshots read and write it in place).
    let memory: Memory
    private let malloc: Function
    private let recv: Function
    private let free: Function
    /// Fuel each callback (and a restore's memory growth) gets.
    let fuel: UInt64
    private let budgetMilliseconds: Int
    private var stack: ExecutionStack
    // Reused argument arrays: mutated in place, so a call allocates no argument array.
    private var args1: [Value] = [.i32(0)]
    private var args2: [Value] = [.i32(0), .i32(0)]
    /// The event buffer this instance keeps in guest memory: a block of ``bufferCapacity`` bytes
    /// that `stateroom_malloc` gave, or 0 before the first event. Every event that fits is
    /// written there and delivered with one call (`stateroom_recv`) instead of three; a bigger
    /// one frees it (`stateroom_free(ptr, capacity)`) and allocates a bigger one. It is never
    /// freed otherwise: the instance, and its memory, go away with the room.
    private(set) var bufferPointer: UInt32 = 0
    /// Size of the block at ``bufferPointer`` (what it was allocated and will be freed with).
    private(set) var bufferCapacity: UInt32 = 0

    /// Smallest event buffer: every v1 event but a message fits, and so do short messages.
    static let minimumBufferCapacity: UInt32 = 256
    /// Largest event buffer kept between events. A bigger event gets a block of its own for the
    /// call, allocated and freed around `stateroom_recv` as ABI.md step 5 says, so one large
    /// message does not pin that much guest memory (which counts against the memory cap) for
    /// the rest of the room's life.
    static let maximumBufferCapacity: UInt32 = 64 << 10

    /// Checks export kinds without instantiating (signatures need an instance: see
    /// ``verifySignatures()``).
    static func verifyExportKinds(of module: Module) throws(WasmLoadError) {
        func find(_ name: String) -> ExportDescriptor? {
            module.exports.first { $0.name == name }?.descriptor
        }
        func kind(_ d: ExportDescriptor) -> String {
            switch d {
            case .function: return "function"
            case .table: return "table"
            case .memory: return "memory"
            case .global: return "global"
            case .tag: return "tag"
            }
        }
        guard let memory = find("memory") else { throw .missingExport(name: "memory", expected: "memory") }
        guard case .memory = memory else {
            throw .wrongExportKind(name: "memory", expected: "memory", actual: kind(memory))
        }
        for (name, type) in requiredFunctions {
            guard let d = find(name) else { throw .missingExport(name: name, expected: "function \(type.signature)") }
            guard case .function = d else { throw .wrongExportKind(name: name, expected: "function", actual: kind(d)) }
        }
        for (name, _) in requiredGlobals {
            guard let d = find(name) else { throw .missingExport(name: name, expected: "global i32") }
            guard case .global = d else { throw .wrongExportKind(name: name, expected: "global", actual: kind(d)) }
        }
        if let d = find(identityGlobal) {
            guard case .global = d else { throw .wrongExportKind(name: identityGlobal, expected: "global", actual: kind(d)) }
        }
        if let d = find("_initialize") {
            guard case .function = d else { throw .wrongExportKind(name: "_initialize", expected: "function", actual: kind(d)) }
        }
    }

    /// Instantiates `module` in a new store, calls `_initialize` if exported, and checks the ABI
    /// version and protocol, and the identity extension's version if the module declares it.
    /// Start function and `_initialize` run under the callback budget. `roomId` names the room in
    /// log lines (a spare gets it when it is taken).
    init(
        module: Module, engine: Engine, plan: ImportPlan, limits: WasmLimits, logger: Logger, roomId: String? = nil
    ) throws(WasmLoadError) {
        let store = Store(engine: engine)
        store.resourceLimiter = MemoryCap(maxBytes: limits.maxMemoryBytes)
        store.fuel = Fuel(remaining: limits.fuelPerCallback)
        let state = HostState(logger: logger)
        state.roomId = roomId
        let instance: Instance
        do {
            instance = try module.instantiate(store: store, imports: plan.makeImports(store: store, state: state))
        } catch {
            throw .instantiationFailed(reason: Self.describe(error, budgetMilliseconds: limits.callbackBudgetMilliseconds))
        }
        let exports = instance.exports
        guard let memory = exports[memory: "memory"] else { throw .missingExport(name: "memory", expected: "memory") }
        guard let malloc = exports[function: "stateroom_malloc"] else {
            throw .missingExport(name: "stateroom_malloc", expected: "function")
        }
        guard let recv = exports[function: "stateroom_recv"] else {
            throw .missingExport(name: "stateroom_recv", expected: "function")
        }
        guard let free = exports[function: "stateroom_free"] else {
            throw .missingExport(name: "stateroom_free", expected: "function")
        }
        state.memory = memory
        self.store = store
        self.instance = instance
        self.state = state
        self.memory = memory
        self.malloc = malloc
        self.recv = recv
        self.free = free
        self.fuel = limits.fuelPerCallback
        self.budgetMilliseconds = limits.callbackBudgetMilliseconds
        self.stack = ExecutionStack(engine: engine)

        if let initialize = exports[function: "_initialize"] {
            guard initialize.type == FunctionType(parameters: [], results: []) else {
                throw .wrongExportType(name: "_initialize", expected: "() -> ()", actual: initialize.type.signature)
            }
            do {
                try initialize.invoke([], on: &stack)
            } catch {
                throw .instantiationFailed(reason: "_initialize: " + Self.describe(error, budgetMilliseconds: budgetMilliseconds))
            }
        }
        for (name, expected) in Self.requiredGlobals {
            guard let global = exports[global: name] else { throw .missingExport(name: name, expected: "global i32") }
            let value = try Self.versionValue(of: global, named: name, in: memory)
            guard value == expected else { throw .versionMismatch(global: name, expected: expected, actual: value) }
        }
        if let global = exports[global: Self.identityGlobal] {
            let value = try Self.versionValue(of: global, named: Self.identityGlobal, in: memory)
            guard value == stateroomIdentityVersion else {
                throw .versionMismatch(global: Self.identityGlobal, expected: stateroomIdentityVersion, actual: value)
            }
            self.acceptsIdentities = true
        } else {
            self.acceptsIdentities = false
        }
    }

    /// The little-endian i32 that version global `name` points at, bounds-checked.
    private static func versionValue(of global: Global, named name: String, in memory: Memory) throws(WasmLoadError) -> Int32 {
        guard case .i32(let address) = global.value else {
            throw .wrongExportType(name: name, expected: "i32", actual: "\(global.value)")
        }
        guard UInt64(address) + 4 <= UInt64(memory.byteCount) else {
            throw .badGlobalAddress(global: name, address: address, memoryBytes: memory.byteCount)
        }
        return memory.withUnsafeBufferPointer(offset: UInt(address), count: 4) {
            Int32(littleEndian: $0.loadUnaligned(as: Int32.self))
        }
    }

    /// Takes over the event buffer of a restored memory image (``WasmSnapshot``): the guest's
    /// allocator, inside that image, still counts the block as allocated, so allocating another
    /// would leak it. The snapshot was checked to hold the block inside the image.
    func adoptEventBuffer(pointer: UInt32, capacity: UInt32) {
        (bufferPointer, bufferCapacity) = (pointer, capacity)
    }

    /// Checks the exported functions' signatures (done once, on the probe instance).
    func verifySignatures() throws(WasmLoadError) {
        for (function, (name, expected)) in zip([recv, malloc, free], Self.requiredFunctions) {
            guard function.type == expected else {
                throw .wrongExportType(name: name, expected: expected.signature, actual: function.type.signature)
            }
        }
    }

    /// Delivers one event: the encoding is written into the instance's event buffer in guest
    /// memory and handed to `stateroom_recv(ptr, len)`; all under one fuel budget.
    ///
    /// ABI.md step 5 frames every event as `stateroom_malloc(len)`, copy, `stateroom_recv`,
    /// `stateroom_free(ptr, len)`. The guest owns the block only between malloc and free and
    /// never keeps a pointer into it past `stateroom_recv`, so the host may keep one block and
    /// reuse it: the guest sees the same calls, only fewer of them (one `stateroom_malloc` per
    /// buffer size rather than per event). An event that does not fit grows the buffer
    /// (`stateroom_free(ptr, capacity)`, then `stateroom_malloc` of the next power of two);
    /// one over ``maximumBufferCapacity`` is delivered in a block of its own, exactly as step 5.
    /// Every block the guest returns is checked before the host writes there.
    /// Throws a description of what went wrong, naming the export that was running.
    func deliver(_ event: MessageToProcess) throws(GuestFailure) {
        try deliver(length: event.encodedCount) { event.encode(into: $0) }
    }

    /// Delivers the identity extension's `ClientIdentity` the same way, under the same limits
    /// (only to a module that declared it: the caller checks ``acceptsIdentities``).
    func deliver(_ event: ClientIdentity) throws(GuestFailure) {
        try deliver(length: event.encodedCount) { event.encode(into: $0) }
    }

    /// The body of both `deliver`s, inlined into each so that the v1 path stays concrete (no
    /// generic or protocol dispatch per message): `encode` writes the `length`-byte event.
    @inline(__always)
    private func deliver(
        length: Int, _ encode: (UnsafeMutableRawBufferPointer) -> Int
    ) throws(GuestFailure) {
        store.fuel = Fuel(remaining: fuel)
        state.beginCallback()
        defer { state.endCallback() }
        guard length <= Int(Int32.max) else { throw GuestFailure("event of \(length) bytes is too large for wasm32") }
        let len = UInt32(length)

        let ptr: UInt32
        let ownBlock = len > Self.maximumBufferCapacity
        if ownBlock {
            ptr = try allocate(len, forEventOf: len)
        } else {
            if len > bufferCapacity { try growBuffer(toFit: len) }
            ptr = bufferPointer
        }
        // Checked on every event, not only when the block was allocated: cheap, and the host
        // never writes where WasmKit's bounds `precondition` could stop the process.
        let size = memory.byteCount
        guard UInt64(ptr) + UInt64(len) <= UInt64(size) else {
            throw GuestFailure("event buffer \(ptr)+\(len) is outside guest memory (\(size) bytes)")
        }
        _ = memory.withUnsafeMutableBufferPointer(offset: UInt(ptr), count: length, encode)

        args2[0] = .i32(ptr)
        args2[1] = .i32(len)
        do {
            try recv.invoke(args2, on: &stack)
        } catch {
            throw GuestFailure("stateroom_recv: " + Self.describe(error, budgetMilliseconds: budgetMilliseconds))
        }
        if ownBlock { try release(ptr, len) }
    }

    /// Replaces the event buffer by one that holds `len` bytes: frees the current one (if any),
    /// then allocates the next power of two, at least ``minimumBufferCapacity``.
    @inline(never)
    private func growBuffer(toFit len: UInt32) throws(GuestFailure) {
        if bufferPointer != 0 {
            let (old, capacity) = (bufferPointer, bufferCapacity)
            (bufferPointer, bufferCapacity) = (0, 0)
            try release(old, capacity)
        }
        let capacity = Self.bufferCapacity(for: len)
        let ptr = try allocate(capacity, forEventOf: len)
        (bufferPointer, bufferCapacity) = (ptr, capacity)
    }

    /// The buffer size for an event of `len` bytes (at most ``maximumBufferCapacity``): the next
    /// power of two, at least ``minimumBufferCapacity``, so that events of similar sizes share
    /// one allocation.
    static func bufferCapacity(for len: UInt32) -> UInt32 {
        guard len > minimumBufferCapacity else { return minimumBufferCapacity }
        return min(maximumBufferCapacity, 1 << (32 - (len - 1).leadingZeroBitCount))
    }

    /// `stateroom_malloc(size)`, with the guest's answer checked before the host writes there:
    /// 0 is its "no memory" (the ABI gives 0 only for size 0, and every event has at least 4
    /// bytes), and a block that does not fit its memory would make WasmKit's bounds
    /// `precondition` kill the process.
    @inline(never)
    private func allocate(_ size: UInt32, forEventOf len: UInt32) throws(GuestFailure) -> UInt32 {
        args1[0] = .i32(size)
        let results: [Value]
        do {
            results = try malloc.invoke(args1, on: &stack)
        } catch {
            throw GuestFailure("stateroom_malloc: " + Self.describe(error, budgetMilliseconds: budgetMilliseconds))
        }
        guard results.count == 1, case .i32(let ptr) = results[0] else {
            throw GuestFailure("stateroom_malloc returned \(results)")
        }
        guard ptr != 0 else {
            throw GuestFailure("stateroom_malloc(\(size)) returned 0 (no memory for the \(len)-byte event)")
        }
        let memorySize = memory.byteCount
        guard UInt64(ptr) + UInt64(size) <= UInt64(memorySize) else {
            throw GuestFailure("stateroom_malloc(\(size)) returned \(ptr), outside guest memory (\(memorySize) bytes)")
        }
        return ptr
    }

    /// `stateroom_free(ptr, size)`.
    @inline(never)
    private func release(_ ptr: UInt32, _ size: UInt32) throws(GuestFailure) {
        args2[0] = .i32(ptr)
        args2[1] = .i32(size)
        do {
            try free.invoke(args2, on: &stack)
        } catch {
            throw GuestFailure("stateroom_free: " + Self.describe(error, budgetMilliseconds: budgetMilliseconds))
        }
    }

    /// Makes `sink` the destination of `stateroom_send`, and `isConnected` the answer of
    /// `stateroom_client_connected`, while `body` runs.
    ///
    /// Both stay non-escaping (no allocation for the context they capture): they are stored in
    /// ``HostState/sink`` and ``HostState/isConnected`` only for the duration of `body` and
    /// cleared before returning, which `withoutActuallyEscaping` verifies.
    func withSink<R, E: Error>(
        _ sink: (MessageFromProcess) -> Void,
        isConnected: (ClientId) -> Bool = { _ in true },
        _ body: () throws(E) -> R
    ) throws(E) -> R {
        let result: Result<R, E> = withoutActuallyEscaping(sink) { escapableSink in
            withoutActuallyEscaping(isConnected) { escapableIsConnected in
                state.sink = escapableSink
                state.isConnected = escapableIsConnected
                defer {
                    state.sink = nil
                    state.isConnected = nil
                }
                do throws(E) {
                    return .success(try body())
                } catch {
                    return .failure(error)
                }
            }
        }
        return try result.get()
    }

    /// A readable reason for an error thrown out of guest code.
    static func describe(_ error: any Error, budgetMilliseconds: Int) -> String {
        if let exit = error as? GuestExit {
            switch exit {
            case .procExit(let code): return "guest called proc_exit(\(code))"
            case .fault(let reason): return reason
            }
        }
        if let trap = error as? Trap {
            // A trap's description may carry a backtrace after the first line.
            var text = String(trap.description.split(separator: "\n", maxSplits: 1).first ?? "trap")
            if text.hasPrefix("Trap: ") { text = "trap: " + text.dropFirst(6) }
            if text == "trap: out of fuel" {
                return "exceeded its \(budgetMilliseconds) ms budget (trap: out of fuel)"
            }
            return text
        }
        return "\(error)"
    }
}

/// Why a guest callback failed: the instance must be discarded.
struct GuestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The memory cap, through WasmKit's `Store.resourceLimiter` (an SPI in 0.4.2, pinned by a test).
final class MemoryCap: ResourceLimiter {
    let maxBytes: Int
    init(maxBytes: Int) { self.maxBytes = maxBytes }

    func limitMemoryGrowth(to desired: Int) throws -> Bool { desired <= maxBytes }
    func limitTableGrowth(to desired: Int) throws -> Bool { desired <= 1 << 20 }
}
