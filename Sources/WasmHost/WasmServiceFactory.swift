import Dispatch
import Glibc
import FoundationEssentials
import Logging
import Stateroom
import Synchronization
@_spi(Fuzzing) import WasmKit
import Locking

/// Serves every room from one WebAssembly module built for the Stateroom ABI (shared/ABI.md).
///
/// The module is read, parsed and checked once, at start-up: required exports and their types,
/// imports (only `env.stateroom_send`, the optional `env.stateroom_client_connected` and WASI
/// preview 1 functions), and — on a probe instance —
/// `STATEROOM_API_VERSION == 1` and `STATEROOM_API_PROTOCOL == 0`, and, if the module exports
/// it, `STATEROOM_IDENTITY_VERSION == 1` (the optional identity extension,
/// StateroomWasm/IDENTITY.md; ``acceptsIdentities``). Any problem throws a
/// ``WasmLoadError`` naming it. Only Sendable things are shared across shards: the parsed
/// `Module`, the `Engine`s and the limits.
///
/// Each room gets its own instance in its own `Store` (so a room's memory is freed with the room,
/// and a failing guest can take down nothing but its own store). Creating a room normally takes
/// a *spare*: an instance the factory prepared on a thread of its own — instantiated, initialized,
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
    /// Whether the module imports `env.stateroom_client_connected` (the seats extension,
    /// StateroomWasm/IDENTITY.md): its rooms can ask whether a client is connected or away in its
    /// seat's grace. A module without the import never sees it.
    public var importsClientConnected: Bool { plan.importsClientConnected }
    /// The module's hash and exported mutable globals: what its rooms' snapshots carry.
    let layout: SnapshotLayout
    /// ``MemoryGrower``, parsed once: restores grow a fresh instance's memory with it.
    let memoryGrower: Module

    /// SHA-256 of the module's bytes; every snapshot of its rooms carries it, and only a
    /// snapshot that does is restored (``makeWasmService(roomId:shard:restoring:)``).
    public var moduleHash: WasmModuleHash { layout.moduleHash }

    /// How many mutable globals the module keeps without exporting them: state no snapshot can
    /// carry (WebAssembly gives the host no way to read it). A module built by an LLVM toolchain
    /// (Stateroom's Rust SDK, the Swift guest SDK) has 1, its shadow-stack pointer, which is back
    /// at its initial value between callbacks; more means its rooms would lose state on restore,
    /// so a layer that persists rooms can refuse such a module.
    public var hiddenMutableGlobalCount: Int { layout.hiddenMutableGlobals }

    /// Loads the module at `path`; throws a ``WasmLoadError`` if it cannot serve rooms.
    /// The file is read once: its bytes are both parsed and hashed (``moduleHash``).
    public convenience init(path: String, limits: WasmLimits = .init(), logger: Logger) throws {
        let bytes: [UInt8]
        do {
            bytes = [UInt8](try Data(contentsOf: URL(filePath: path)))
        } catch {
            throw WasmLoadError.invalidModule(path: path, reason: "\(error)")
        }
        try self.init(bytes: bytes, name: path, limits: limits, logger: logger)
    }

    /// Loads a module from its bytes (`name` is used in logs and errors).
    public convenience init(bytes: [UInt8], name: String = "<bytes>", limits: WasmLimits = .init(), logger: Logger) throws {
        let module: Module
        do {
            module = try parseWasm(bytes: bytes)
        } catch {
            throw WasmLoadError.invalidModule(path: name, reason: "\(error)")
        }
        try self.init(module: module, bytes: bytes, path: name, limits: limits, logger: logger)
    }

    init(module: Module, bytes: [UInt8], path: String, limits: WasmLimits, logger: Logger) throws {
        self.path = path
        self.limits = limits
        self.module = module
        self.logger = logger
        self.plan = try ImportPlan(module: module)
        self.layout = try SnapshotLayout(moduleBytes: bytes, name: path)
        do {
            self.memoryGrower = try parseWasm(bytes: MemoryGrower.bytes)
        } catch {
            throw WasmLoadError.invalidModule(path: "<memory grower>", reason: "\(error)")
        }
        try GuestInstance.verifyExportKinds(of: module)
        if layout.hiddenMutableGlobals > 1 {
            logger.notice("\(path) keeps state in \(layout.hiddenMutableGlobals) mutable globals it does not export: its rooms cannot be snapshotted, so durable rooms (--store) keep them in memory only")
        }
        self.lazyEngine = Engine(configuration: Self.engineConfiguration(compilationMode: .lazy))
        self.eagerEngine = Engine(configuration: Self.engineConfiguration(compilationMode: .eager))

        // The probe: instantiated (and fully translated, which also validates every function
        // body) at start-up, so every error shows now. It becomes the first spare.
        let probe = try GuestInstance(module: module, engine: eagerEngine, plan: plan, limits: limits, logger: logger)
        try probe.verifySignatures()
        self.acceptsIdentities = probe.acceptsIdentities
        let engine = eagerEngine, plan = plan
        self.pool = SparePool(target: max(0, limits.spareInstances), initial: probe, logger: logger) {
            try GuestInstance(module: module, engine: engine, plan: plan, limits: limits, logger: logger)
        }
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
        let guest: GuestInstance
        if let spare = pool.take() {
            spare.state.roomId = roomId
            guest = spare
        } else {
            guest = try GuestInstance(module: module, engine: lazyEngine, plan: plan, limits: limits, logger: logger, roomId: roomId)
        }
        return WasmService(guest: guest, roomId: roomId, layout: layout)
    }

    /// Creates room `roomId`'s instance from `snapshot` (from ``WasmService/snapshot()``, here
    /// or on another node): a fresh instance (a spare if one is ready) whose memory, exported
    /// mutable globals and event buffer become the snapshot's. `Init` is not delivered, and the
    /// caller must not deliver it (``WasmService/initialize(context:)``): the room's state is
    /// already initialized, and its next event sees that state. Called on `shard`'s thread, like
    /// ``makeWasmService(roomId:shard:)``.
    ///
    /// Refused before an instance is taken: a snapshot of another module (both hashes named),
    /// a memory image over ``WasmLimits/maxMemoryBytes``, globals that do not match the
    /// module's exported mutable globals. Memory grows through `memory.grow`, so the cap and the
    /// module's declared maximum hold as for the guest's own growth.
    public func makeWasmService(
        roomId: String, shard: Int, restoring snapshot: WasmSnapshot
    ) throws(WasmSnapshotError) -> WasmService {
        try layout.check(snapshot, limits: limits)
        let service: WasmService
        do {
            service = try makeWasmService(roomId: roomId, shard: shard)
        } catch {
            throw .instanceFailed(reason: "\(error)")
        }
        try service.restore(snapshot, grower: memoryGrower)
        return service
    }

    /// The number of spares ready now (tests and metrics).
    public var readySpareCount: Int { pool.count }
}

/// Prepared instances, made on a thread of the pool's own and handed to shards whole.
///
/// Taking a spare wakes the builder with a semaphore (a futex wake, 3–4 µs here) rather than
/// dispatching a block per room (about 10 µs with the closure it captured), and the builder is
/// told what to make once, at start.
final class SparePool: Sendable {
    /// Ownership of a prepared instance in transit. Safe because the instance is touched by one
    /// thread at a time: the builder until it is put in the pool, then the shard that took it;
    /// the pool's mutex orders the handover.
    private final class Spare: @unchecked Sendable {
        let guest: GuestInstance
        init(_ guest: GuestInstance) { self.guest = guest }
    }

    private struct State {
        var spares: [Spare] = []
        var stopped = false
        /// The last build failed: no more attempts until the next spare is taken.
        var failed = false
        var wanted: Bool { !stopped && !failed }
    }

    let target: Int
    private let state = Locked(State())
    private let wake = DispatchSemaphore(value: 0)

    /// Starts the builder (none if `target` is 0), which keeps `target` spares ready, `initial`
    /// counting as the first.
    init(
        target: Int, initial: GuestInstance?, logger: Logger,
        make: @escaping @Sendable () throws -> GuestInstance
    ) {
        self.target = target
        guard target > 0 else { return }
        if let initial { state.withLock { $0.spares.append(Spare(initial)) } }
        Self.startThread { [self] in build(logger: logger, make: make) }
        wake.signal()
    }

    var count: Int { state.withLock { $0.spares.count } }

    /// A ready spare, if any; the builder makes the next one.
    func take() -> GuestInstance? {
        guard target > 0 else { return nil }
        let spare = state.withLock { s -> Spare? in
            s.failed = false
            return s.spares.popLast()
        }
        wake.signal()
        return spare?.guest
    }

    /// Stops the builder (after the spare it may be making) and drops the spares.
    func stop() {
        state.withLock {
            $0.stopped = true
            $0.spares.removeAll()
        }
        wake.signal()
    }

    /// The builder's nice value: background work, below the shards it must not slow down (a
    /// shard shares a core with it whenever every core is busy).
    static let builderNice: Int32 = 5
    /// Linux's SCHED_BATCH (<sched.h> declares it only with _GNU_SOURCE).
    static let schedBatch: Int32 = 3

    private func build(logger: Logger, make: @Sendable () throws -> GuestInstance) {
        // SCHED_BATCH: a waking builder does not preempt the shard that woke it (on a shared core
        // it runs at the scheduler's next turn), yet it gets its share when every core is busy. On
        // Linux a nice value is a thread's own: PRIO_PROCESS with 0 is the calling thread.
        var param = sched_param(sched_priority: 0)
        pthread_setschedparam(pthread_self(), Self.schedBatch, &param)
        setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, Self.builderNice)
        while true {
            wake.wait()
            while true {
                let go = state.withLock { $0.wanted && $0.spares.count < target }
                if !go { break }
                do {
                    let spare = Spare(try make())
                    state.withLock { if !$0.stopped { $0.spares.append(spare) } }
                } catch {
                    logger.error("wasm: preparing a spare instance failed: \(error)")
                    state.withLock { $0.failed = true }
                }
            }
            if state.withLock({ $0.stopped }) { return }
        }
    }

    private final class Start {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// A detached POSIX thread running `body`.
    private static func startThread(_ body: @escaping @Sendable () -> Void) {
        let start = Unmanaged.passRetained(Start(body))
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            Unmanaged<Start>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, start.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(tid)
    }
}

// MARK: - Durable rooms

extension WasmServiceFactory {
    /// What this module's room snapshots are called: `wasm:` and the module's SHA-256, so a
    /// snapshot is only ever restored into the module that wrote it.
    public var snapshotKind: String { "wasm:\(moduleHash)" }

    /// The room's memory image (``WasmService/snapshot()``), or nil for a module that keeps state
    /// in mutable globals it does not export (more than the LLVM shadow-stack pointer), which no
    /// snapshot can carry.
    public func snapshot(of service: any StateroomService) throws -> ServiceSnapshot? {
        guard layout.hiddenMutableGlobals <= 1, let room = service as? WasmService else { return nil }
        return ServiceSnapshot(kind: snapshotKind, bytes: try room.snapshot().encoded())
    }

    /// A room restored from a snapshot of this module (``makeWasmService(roomId:shard:restoring:)``).
    public func restoreService(roomId: String, shard: Int, from snapshot: ServiceSnapshot) throws -> any StateroomService {
        guard snapshot.kind == snapshotKind else {
            throw SnapshotError("a snapshot of \(snapshot.kind) cannot be restored into \(snapshotKind)")
        }
        return try makeWasmService(roomId: roomId, shard: shard, restoring: try WasmSnapshot(decoding: snapshot.bytes))
    }
}
