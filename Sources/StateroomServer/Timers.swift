import HeapModule

/// What a shard's timer does when it fires.
enum TimerKind {
    case room(Room, token: UInt64)
    case heartbeat
    /// A closing connection whose peer has not finished by now is cut (so is one still parked
    /// for its hand-off).
    case connectionDeadline(slot: UInt32, generation: UInt32)
    case resumeAccept
    /// The end of a shutdown's drain: whatever is still connected is cut.
    case drainDeadline
    /// Frees the parser storage of quiet connections.
    case sweep
    /// Saves durable rooms that changed, and retries saves that failed.
    case snapshots
    /// Renews the leases of this shard's open durable rooms.
    case leases
    /// Asks again for the lease of a room another node owns (clients are waiting for it).
    case leaseRetry(room: String)
    /// Sends a durable room's state again after a save failed while its frames wait.
    case saveRetry(Room)
    /// Asks again whether a room's lease is still this node's (its callbacks wait).
    case revalidateRetry(Room)
    /// A room's held seats whose grace is over end.
    case seatGrace(Room)
}

/// One pending timer; ordered by deadline, then by insertion.
struct TimerEntry: Comparable {
    var deadline: UInt64
    var sequence: UInt64
    var kind: TimerKind

    static func < (a: TimerEntry, b: TimerEntry) -> Bool {
        a.deadline != b.deadline ? a.deadline < b.deadline : a.sequence < b.sequence
    }
    static func == (a: TimerEntry, b: TimerEntry) -> Bool {
        a.deadline == b.deadline && a.sequence == b.sequence
    }
}

/// A shard's timers: one min-heap; the loop waits no longer than the earliest deadline.
struct TimerQueue {
    private var heap = Heap<TimerEntry>()
    private var sequence: UInt64 = 0

    mutating func schedule(at deadline: UInt64, _ kind: TimerKind) {
        sequence &+= 1
        heap.insert(TimerEntry(deadline: deadline, sequence: sequence, kind: kind))
    }

    var nextDeadline: UInt64? { heap.min?.deadline }
    var currentSequence: UInt64 { sequence }

    /// Pops the earliest entry due at `now` that was scheduled no later than `sequenceLimit`.
    mutating func popDue(now: UInt64, sequenceLimit: UInt64) -> TimerEntry? {
        guard let m = heap.min, m.deadline <= now, m.sequence <= sequenceLimit else { return nil }
        return heap.popMin()
    }
}
