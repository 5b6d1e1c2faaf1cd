/// Sandbox limits for every room instance a ``WasmServiceFactory`` creates.
public struct WasmLimits: Sendable, Equatable {
    /// How much guest execution one callback (one event: malloc + recv + free, and every
    /// `stateroom_send` inside it) may use, in milliseconds. Enforced with WasmKit fuel:
    /// ``fuelPerCallback`` = this × ``fuelPerMillisecond``. A guest that runs out is ended.
    public var callbackBudgetMilliseconds: Int
    /// The most linear memory one instance may have, in bytes. `memory.grow` past it returns -1
    /// to the guest; a module whose initial memory is larger is refused at load.
    public var maxMemoryBytes: Int
    /// Fuel (≈ executed wasm operators) per millisecond of budget.
    ///
    /// Calibrated on the project's 2-core VM (release build, WasmKit 0.4.2, direct threading;
    /// `Benchmarks/WasmDispatch` prints the rate of the current machine): a tight loop burns
    /// 1.4–3.5M fuel/ms on an idle machine, and WASM.md measured 10M fuel in 7–25 ms (0.4–1.4M
    /// fuel/ms) under load. The default, 1M/ms, stops the `loop.wat` fixture after ~60 ms of a
    /// 100 ms budget when idle and after roughly the budget (100–250 ms) when the machine is
    /// 2–2.5× contended; a well-behaved guest gets at least ~60% of its budget in wall time.
    public var fuelPerMillisecond: UInt64
    /// How many ready-to-use instances the factory keeps prepared off the shards' threads
    /// (instantiated, `_initialize`d, version-checked and fully translated), so that creating a
    /// room does not pay WasmKit's per-instance translation. `0` disables the pool: every room
    /// is instantiated on its shard, lazily translated.
    public var spareInstances: Int

    /// Limits with the server's defaults: 100 ms per callback, 64 MiB of memory.
    public init(
        callbackBudgetMilliseconds: Int = 100,
        maxMemoryBytes: Int = 64 << 20,
        fuelPerMillisecond: UInt64 = 1_000_000,
        spareInstances: Int = 2
    ) {
        self.callbackBudgetMilliseconds = callbackBudgetMilliseconds
        self.maxMemoryBytes = maxMemoryBytes
        self.fuelPerMillisecond = fuelPerMillisecond
        self.spareInstances = spareInstances
    }

    /// The fuel each callback gets.
    public var fuelPerCallback: UInt64 {
        let ms = UInt64(max(1, callbackBudgetMilliseconds))
        let (product, overflow) = ms.multipliedReportingOverflow(by: max(1, fuelPerMillisecond))
        return overflow ? .max - 1 : product
    }
}
