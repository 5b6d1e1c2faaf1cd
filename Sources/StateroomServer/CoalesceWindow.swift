/// The send-coalescing window of one shard. It is `base` while the shard has time to spare and
/// grows, up to `limit`, while the shard is busy: a held send carries more frames the longer the
/// window, and the kernel's cost is mostly per send, so a longer window frees the core exactly
/// when it is short. It shrinks back once the load drops. A `base` of zero turns coalescing off,
/// whatever the limit.
///
/// `update(busy:)` is called about every `epoch` with the fraction of that time the shard's thread
/// spent on a CPU (its own work and the kernel work of its syscalls).
struct CoalesceWindow {
    let base: UInt64
    let limit: UInt64
    private(set) var current: UInt64

    /// Busier than this, the window grows by a quarter.
    static let growAbove = 0.6
    /// Less busy than this, it shrinks by a quarter (never below `base`).
    static let shrinkBelow = 0.35
    /// How often the load is measured.
    static let epoch: UInt64 = 50_000_000

    init(base: UInt64, limit: UInt64) {
        self.base = base
        self.limit = base == 0 ? 0 : max(base, limit)
        self.current = base
    }

    var adapts: Bool { limit > base }

    mutating func update(busy: Double) {
        if busy > CoalesceWindow.growAbove {
            current = min(limit, current + current / 4)
        } else if busy < CoalesceWindow.shrinkBelow {
            current = max(base, current - current / 4)
        }
    }
}
