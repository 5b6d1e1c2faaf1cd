import DequeModule
import IOCore

/// Clocks a shard reads: monotonic time and the CPU time of the calling thread, in nanoseconds.
/// Injected so the coalescer's rules can be tested with time that only moves when told to.
protocol ShardClock {
    func monotonicNanos() -> UInt64
    func threadCPUNanos() -> UInt64
}

/// The system's clocks.
struct SystemClock: ShardClock {
    @inline(__always) func monotonicNanos() -> UInt64 { IOCore.monotonicNanos() }
    @inline(__always) func threadCPUNanos() -> UInt64 { IOCore.threadCPUNanos() }
}

/// A socket's send-coalescing state, kept inline by its connection.
struct SendPacing {
    /// When the last send to it was submitted, and how many queued frames it set out to carry.
    var lastSendAt: UInt64 = 0
    var lastSendFrames: Int32 = 0
    /// While held: the moment it is due to be sent to, which its hold-queue entry carries too.
    /// 0 when not held.
    var heldUntil: UInt64 = 0
    var isHeld: Bool { heldUntil != 0 }
}

/// Something the coalescer can hold: a socket with its pacing state.
protocol Paced: AnyObject {
    var pacing: SendPacing { get set }
}

/// Send coalescing: which sockets wait so that their frames leave together.
///
/// The kernel charges mostly per send, not per frame (loopback: ~3.5 µs for a send of one small
/// frame, ~4 µs for a send of sixteen). A socket whose previous send carried several frames
/// (``holdMinFrames``) is receiving faster than the loop sends; its new frames wait until one
/// window after that send, then leave together. A socket that got fewer frames per send is sent to
/// at once, so a quiet room never waits; so is one whose client sent something within the window,
/// since it may be waiting for an answer (a sender waiting for its own message to come back must
/// not be slowed), one that is closing, and one with a full send's worth queued (``maxFrames``
/// frames or `holdBytesCap` bytes). Without this, a loaded shard spends all of its core sending a
/// few frames at a time however light the load.
///
/// The window is a ``CoalesceWindow``: it grows while the shard is busy and shrinks back when the
/// load drops; ``measureLoad(now:)`` feeds it once per epoch.
struct Coalescer<Member: Paced, Clock: ShardClock> {
    /// Frames the previous send must have carried for a socket to count as busy.
    static var holdMinFrames: Int32 { 4 }
    /// A socket with this many frames queued is sent to without waiting.
    let maxFrames: Int32
    /// A socket with this much queued is sent to without waiting (and a held one is let go).
    let holdBytesCap: Int
    private(set) var window: CoalesceWindow
    let clock: Clock
    /// Held sockets in hold order, each with the deadline it was held until.
    private var held = Deque<(member: Member, until: UInt64)>()
    /// Start of the current load epoch (monotonic) and the thread's CPU time then.
    private var epochStart: UInt64 = 0
    private var epochCPU: UInt64 = 0
    /// The share of the last epoch the thread spent on a CPU.
    private(set) var busy: Double = 0

    init(window: CoalesceWindow, holdBytesCap: Int, maxFrames: Int32, clock: Clock) {
        self.window = window
        self.holdBytesCap = holdBytesCap
        self.maxFrames = maxFrames
        self.clock = clock
        startEpoch()
    }

    /// Starts a load epoch now. Call it on the thread whose CPU time is measured, before its
    /// first turn (the coalescer may be made on another thread).
    mutating func startEpoch() {
        epochStart = clock.monotonicNanos()
        epochCPU = clock.threadCPUNanos()
    }

    /// The current window, in nanoseconds.
    var current: UInt64 { window.current }

    /// Decides for a socket with frames to send at `now`: `true` holds it (it is queued here and
    /// comes back from ``releaseDue(now:_:)``), `false` means send now.
    mutating func hold(_ m: Member, queuedFrames: Int32, queuedBytes: Int, lastHeard: UInt64,
                       closing: Bool, now: UInt64) -> Bool {
        let w = window.current
        let p = m.pacing
        guard p.lastSendFrames >= Self.holdMinFrames, now &- p.lastSendAt < w, now &- lastHeard >= w,
              !closing, queuedFrames < maxFrames, queuedBytes < holdBytesCap else { return false }
        let until = p.lastSendAt &+ w
        m.pacing.heldUntil = until
        held.append((m, until))
        return true
    }

    /// Records a send submitted at `now` carrying `frames` queued frames.
    @inline(__always)
    func sent(_ m: Member, frames: Int, now: UInt64) {
        m.pacing.lastSendAt = now
        m.pacing.lastSendFrames = Int32(frames)
    }

    /// Called when more is queued to `m`: a held socket whose queue has reached `holdBytesCap`
    /// is let go at once. Returns true if it was let go (its hold-queue entry no longer matches
    /// and is dropped when it reaches the front).
    @inline(__always)
    func queueGrew(_ m: Member, queuedBytes: Int) -> Bool {
        guard m.pacing.isHeld && queuedBytes >= holdBytesCap else { return false }
        m.pacing.heldUntil = 0
        return true
    }

    /// Lets go of every held socket whose deadline has passed, oldest first, calling `release`
    /// with each. The queue is in hold order, not deadline order; popping while the front is due
    /// still releases every socket at most one window after it was held. An entry whose deadline
    /// is no longer its socket's (let go early, and perhaps held again since with a newer entry)
    /// is dropped as it reaches the front, so it holds up nobody behind it.
    mutating func releaseDue(now: UInt64, _ release: (Member) -> Void) {
        while let (m, until) = held.first, m.pacing.heldUntil != until || until <= now {
            held.removeFirst()
            guard m.pacing.heldUntil == until else { continue }
            m.pacing.heldUntil = 0
            release(m)
        }
    }

    /// When the loop must wake to let the oldest held socket go.
    var nextDeadline: UInt64? { held.first?.until }

    /// Sockets in the hold queue (stale entries included).
    var heldCount: Int { held.count }

    /// The loop must wake at the end of the epoch: the window is above its base or the busy
    /// share not yet back to zero, so neither stays stale through an idle spell.
    var needsEpochWake: Bool { window.current > window.base || busy > 0 }
    var epochEnd: UInt64 { epochStart &+ CoalesceWindow.epoch }

    /// Ends a load epoch if one has passed at `now`: the share of it the thread spent on a CPU
    /// sets the window. An idle loop sleeps through epochs; the first turn after counts the whole
    /// gap as one. Returns true if an epoch ended.
    @discardableResult
    mutating func measureLoad(now: UInt64) -> Bool {
        guard now &- epochStart >= CoalesceWindow.epoch else { return false }
        let cpu = clock.threadCPUNanos()
        busy = min(Double(cpu &- epochCPU) / Double(now &- epochStart), 1)
        epochStart = now
        epochCPU = cpu
        if window.adapts { window.update(busy: busy) }
        return true
    }
}
