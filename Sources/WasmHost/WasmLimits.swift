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
    /// Calibrated on the project's 2-core VM (release build, WasmKit 0.4.2 direct threading):
    /// a tight loop burns 10M fuel in 7–25 ms depending on load, i.e. 0.4–1.4M fuel/ms. The
    /// default, 500k/ms, is near the slow end so that a runaway guest is stopped within about the
    /// budget even on a loaded machine (100 ms → 50M fuel ≈ 35–125 ms of wall time); an
    /// uncontended machine gives a well-behaved guest less wall time than the budget, never more
    /// than ~1.25×. `Benchmarks/WasmDispatch` prints the rate measured on the current machine.
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
        fuelPerMillisecond: UInt64 = 500_000,
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
