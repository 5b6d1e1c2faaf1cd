import Dispatch
import Logging
import Stateroom
import Synchronization
@_spi(Fuzzing) import WasmKit

/// Serves every room from one WebAssembly module built for the Stateroom ABI (shared/ABI.md).
///
/// The module is read, parsed and checked once, at start-up: required exports and their types,
/// imports (only `env.stateroom_send` and WASI preview 1 functions), and — on a probe instance —
/// `STATEROOM_API_VERSION == 1` and `STATEROOM_API_PROTOCOL == 0`, and, if the module exports
/// it, `STATEROOM_IDENTITY_VERSION == 1` (the optional identity extension,
/// StateroomWasm/IDENTITY.md; ``acceptsIdentities``). Any problem throws a
/// ``WasmLoadError`` naming it. Only Sendable things are shared across shards: the parsed
/// `Module`, the `Engine`s and the limits.
///
/// Each room gets its own instance in its own `Store` (so a room's memory is freed with the room,
/// and a failing guest can take down nothing but its own store). Creating a room normally takes
/// a *spare*: an instance the factory prepared on a background queue — instantiated, initialized,
/// version-checked and eagerly translated — so the shard pays neither instantiation nor WasmKit's
/// per-instance translation (≈2–3 ms on first call). When no spare is ready the room's instance
/// is made on the shard, lazily translated.
public final class WasmServiceFactory: StateroomServiceFactory {
    /// Where the module was loaded from (for logs).
    public let path: String
    /// The sandbox limits of every instance.
    public let limits: WasmLimits
    let module: Module
    let plan: ImportPlan
    /// Lazy translation: for instances made on a shard when no spare is ready.
    let lazyEngine: Engine
    /// Eager translation: for spares, made off the shards.
    let eagerEngine: Engine
    let logger: Logger
    let pool: SparePool
    /// Whether the module declared the identity extension (`STATEROOM_IDENTITY_VERSION` == 1):
    /// its rooms get `ClientIdentity { client, identity }` before the `Connect` of a client that
    /// has an identity. Without it, rooms get exactly ABI v1.
    public let acceptsIdentities: Bool

    /// Loads the module at `path`; throws a ``WasmLoadError`` if it cannot serve rooms.
    public convenience init(path: String, limits: WasmLimits = .init(), logger: Logger) throws {
        let module: Module
        do {
            module = try parseWasm(filePath: path)
        } catch {
            throw WasmLoadError.invalidModule(path: path, reason: "\(error)")
        }
        try self.init(module: module, path: path, limits: limits, logger: logger)
    }

    /// Loads a module from its bytes (`name` is used in logs and errors).
    public convenience init(bytes: [UInt8], name: String = "<bytes>", limits: WasmLimits = .init(), logger: Logger) throws {
        let module: Module
        do {
            module = try parseWasm(bytes: bytes)
        } catch {
            throw WasmLoadError.invalidModule(path: name, reason: "\(error)")
        }
        try self.init(module: module, path: name, limits: limits, logger: logger)
    }

    init(module: Module, path: String, limits: WasmLimits, logger: Logger) throws {
        self.path = path
        self.limits = limits
        self.module = module
        self.logger = logger
        self.plan = try ImportPlan(module: module)
        try GuestInstance.verifyExportKinds(of: module)
        self.lazyEngine = Engine(configuration: Self.engineConfiguration(compilationMode: .lazy))
        self.eagerEngine = Engine(configuration: Self.engineConfiguration(compilationMode: .eager))
        self.pool = SparePool(target: max(0, limits.spareInstances))

        // The probe: instantiated (and fully translated, which also validates every function
        // body) at start-up, so every error shows now. It becomes the first spare.
        let probe = try GuestInstance(module: module, engine: eagerEngine, plan: plan, limits: limits, logger: logger)
        try probe.verifySignatures()
        self.acceptsIdentities = probe.acceptsIdentities
        if pool.target > 0 {
            pool.put(probe)
        }
        scheduleRefill()
    }

    deinit {
        pool.stop()
    }

    static func engineConfiguration(compilationMode: EngineConfiguration.CompilationMode) -> EngineConfiguration {
        // Never `.mprotect`: it reserves 4 GiB of address space per instance (WASM.md).
        EngineConfiguration(
            compilationMode: compilationMode,
            memoryBoundsChecking: .software,
            fuelMetering: true
        )
    }

    /// Creates room `roomId`'s instance (a spare if one is ready). Called on `shard`'s thread; the
    /// service is then used only there. Throws if a fresh instance cannot be made.
    public func makeService(roomId: String, shard: Int) throws -> any StateroomService {
        try makeWasmService(roomId: roomId, shard: shard)
    }

    /// ``makeService(roomId:shard:)`` with the concrete type.
    public func makeWasmService(roomId: String, shard: Int) throws -> WasmService {
        var roomLogger = logger
        roomLogger[metadataKey: "room"] = "\(roomId)"
        let guest: GuestInstance
        if let spare = pool.take() {
            guest = spare
        } else {
            guest = try GuestInstance(module: module, engine: lazyEngine, plan: plan, limits: limits, logger: roomLogger)
        }
        scheduleRefill()
        guest.state.logger = roomLogger
        return WasmService(guest: guest, roomId: roomId, logger: roomLogger)
    }

    /// The number of spares ready now (tests and metrics).
    public var readySpareCount: Int { pool.count }

    private func scheduleRefill() {
        let module = module, engine = eagerEngine, plan = plan, limits = limits, logger = logger
        pool.scheduleRefill(logger: logger) {
            try GuestInstance(module: module, engine: engine, plan: plan, limits: limits, logger: logger)
        }
    }
}

/// Prepared instances, made on a background queue and handed to shards whole.
final class SparePool: Sendable {
    /// Ownership of a prepared instance in transit. Safe because the instance is touched by one
    /// thread at a time: the warmer until it is put in the pool, then the shard that took it; the
    /// pool's mutex orders the handover.
    private final class Spare: @unchecked Sendable {
        let guest: GuestInstance
        init(_ guest: GuestInstance) { self.guest = guest }
    }

    private struct State {
        var spares: [Spare] = []
        var refilling = false
        var stopped = false
    }

    let target: Int
    private let state = Mutex(State())
    private let queue = DispatchQueue(label: "stateroom.wasm.spares", qos: .utility)

    init(target: Int) { self.target = target }

    var count: Int { state.withLock { $0.spares.count } }

    func take() -> GuestInstance? {
        state.withLock { $0.spares.popLast() }?.guest
    }

    func put(_ guest: GuestInstance) {
        let spare = Spare(guest)
        state.withLock { $0.spares.append(spare) }
    }

    func stop() {
        state.withLock {
            $0.stopped = true
            $0.spares.removeAll()
        }
    }

    /// Starts a background job filling the pool up to `target`, unless one is running.
    func scheduleRefill(logger: Logger, _ make: @escaping @Sendable () throws -> GuestInstance) {
        let start = state.withLock { s -> Bool in
            guard !s.stopped, !s.refilling, s.spares.count < target else { return false }
            s.refilling = true
            return true
        }
        guard start else { return }
        queue.async { [self] in
            while true {
                let more = state.withLock { s -> Bool in
                    if s.stopped || s.spares.count >= target {
                        s.refilling = false
                        return false
                    }
                    return true
                }
                guard more else { return }
                do {
                    let spare = Spare(try make())
                    state.withLock { $0.spares.append(spare) }
                } catch {
                    logger.error("wasm: preparing a spare instance failed: \(error)")
                    state.withLock { $0.refilling = false }
                    return
                }
            }
        }
    }
}
