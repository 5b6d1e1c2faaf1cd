import DequeModule
import IOCore
import Stateroom

/// A durable room's standing with the store, kept on its shard: the epoch of the lease it runs
/// under, how long that lease is certainly valid, the callbacks that wait for it to be confirmed,
/// and the output gate.
///
/// **Serving only on a valid lease.** ``validUntil`` is the monotonic time up to which no other
/// node can have taken the room: when the command that last set the lease was *issued* (an
/// acquire, renewal or save), plus the lease's time to live, less a margin for clock rates. Past
/// it — after a pause (`SIGSTOP`, a frozen VM), a stalled store, a shard that fell behind — no
/// callback runs: the room's events wait in ``deferred``, in order, while the lease is
/// re-validated. Confirmed, they run; refused, the room is dropped and they never run.
///
/// **The output gate.** What a durable room sends is held until the state it came from is
/// stored: at the end of each loop turn a room that sent something is snapshotted, and if that
/// state differs from the last one saved a save is issued (one per room in flight; changes made
/// meanwhile go with the next). Frames are released when the save that covers them is confirmed
/// by the store under this room's epoch. So a client never sees an answer that a crash, a pause
/// or another node's takeover could take back; and a node whose save is refused (fenced) drops
/// what it held without anyone having seen it. A room whose state did not change (a relay) sends
/// at the end of the turn, without waiting on the store.
final class RoomLease {
    /// The lease's epoch (``LeaseScript``): every save, renewal and release names it.
    let epoch: UInt64
    /// Monotonic nanoseconds until which the lease is certainly this node's.
    var validUntil: UInt64
    /// A renewal asked for because the lease may have run out; callbacks wait for its answer.
    var revalidating = false
    /// Callbacks that wait for the lease to be confirmed, oldest first.
    var deferred = Deque<DeferredCallback>()
    /// What the messages in ``deferred`` count against ``Shard/deferredBytesCap``: their bytes,
    /// at least 64 each (a flood of empty messages is bounded too).
    var deferredBytes = 0

    /// Frames sent by the room, waiting for the save that covers them (oldest first).
    var gated: [GatedFrame] = []
    /// Whether the room is in its shard's list of rooms to commit at the end of the turn.
    var inCommitList = false
    /// The version of the save in flight that covers the room's state (nil: none).
    var inFlight: UInt64?
    /// A save is wanted as soon as the one in flight is answered.
    var saveWanted = false
    /// The last state handed to the store (in flight or confirmed), and its save's version.
    var lastIssued: (room: StoredRoom, version: UInt64)?
    /// The latest version the store confirmed.
    var confirmed: UInt64 = 0
    /// The last save failed (logged once until one goes through).
    var saveFailing = false

    /// A frame's version before the end of its turn: covered by the turn's commit.
    static let uncommitted = UInt64.max

    /// What a waiting message counts against the cap.
    static func deferredCost(_ payload: MessagePayload) -> Int { max(payload.count, 64) }

    init(epoch: UInt64, validUntil: UInt64) {
        self.epoch = epoch
        self.validUntil = validUntil
    }
}

/// A callback that waits for its room's lease to be confirmed. Messages are copied (only then:
/// the usual path borrows the receive buffer).
enum DeferredCallback {
    case connect(ClientId)
    case message(ClientId, MessagePayload)
    case disconnect(ClientId)
    case timer
}

/// A frame a durable room sent, held by the output gate.
struct GatedFrame {
    /// One reference, the gate's.
    let frame: FrameBuffer
    let recipient: MessageRecipient
    /// The room's next client id when it was sent: a broadcast goes to members with lower ids only
    /// (a client that joined later was not there to be sent it).
    let joinedBefore: UInt32
    /// The save that covers it (``RoomLease/uncommitted`` during its turn).
    var version: UInt64
}

extension Shard {
    // MARK: - Serving on a valid lease

    /// Whether `room`'s callbacks may run now: always for a room that is not durable; for a
    /// durable one while its lease is certainly valid and nothing waits before. Otherwise the
    /// caller defers the callback (``deferCallback(_:_:)``) and the lease is re-validated.
    @inline(__always)
    func mayRun(_ room: Room) -> Bool {
        guard let lease = room.lease else { return true }
        if lease.deferred.isEmpty && now < lease.validUntil { return true }
        if !lease.revalidating { revalidate(room, lease) }
        return false
    }

    /// Queues a callback behind the room's lease check. A room holding more than
    /// ``deferredBytesCap`` of messages refuses the next with 1013 to its sender (try again later).
    func deferCallback(_ room: Room, _ callback: DeferredCallback, from conn: Connection? = nil) {
        guard let lease = room.lease else { return }
        if case .message(_, let payload) = callback {
            let cost = RoomLease.deferredCost(payload)
            if lease.deferredBytes + cost > deferredBytesCap {
                if let conn { closeWebSocket(conn, .tryAgainLater, reason: "room is waiting for its store") }
                return
            }
            lease.deferredBytes += cost
        }
        count(.callbacksDeferred)
        lease.deferred.append(callback)
    }

    /// Most message bytes a room holds while its lease is re-validated.
    /// (1 MiB, or one message of the largest size accepted if that is more.)
    var deferredBytesCap: Int { max(1 << 20, config.maxMessageSize) }

    /// Hands a client's message to its room's service, or queues it while the lease is checked.
    @inline(__always)
    func deliver(_ payload: MessagePayload, from conn: Connection, to room: Room) -> RoomFailure? {
        if room.lease != nil && !mayRun(room) {
            deferCallback(room, .message(conn.clientId, payload.copy()), from: conn)
            return nil
        }
        return room.message(conn.clientId, payload, self)
    }

    /// Asks the store whether this node still holds `room`'s lease (a renewal); its callbacks
    /// wait for the answer.
    func revalidate(_ room: Room, _ lease: RoomLease) {
        lease.revalidating = true
        count(.leaseRevalidations)
        renew(room)
    }

    /// The lease was confirmed: the callbacks that waited run, in order (until one finds the
    /// lease uncertain again, or the room ends).
    func runDeferred(_ room: Room) {
        guard let lease = room.lease else { return }
        lease.revalidating = false
        while !lease.deferred.isEmpty && !room.isClosed && room.failure == nil && now < lease.validUntil {
            let next = lease.deferred.removeFirst()
            let failure: RoomFailure?
            switch next {
            case .connect(let id): failure = room.connect(id, self)
            case .message(let id, let payload):
                lease.deferredBytes -= RoomLease.deferredCost(payload)
                failure = room.message(id, payload, self)
            case .disconnect(let id):
                failure = room.disconnect(id, self)
                room.forgetIdentity(of: id)
            case .timer: failure = room.timer(self)
            }
            if let failure { roomFailed(room, failure) }
        }
        if lease.deferred.isEmpty { lease.deferredBytes = 0 }
        if !lease.deferred.isEmpty && !room.isClosed && room.failure == nil && !lease.revalidating {
            revalidate(room, lease)
        }
        hibernateIfEmpty(room)
    }

    // MARK: - The output gate

    /// Holds a frame `room` sent (the gate takes the caller's reference) until its state is stored.
    func gate(_ frame: FrameBuffer, to recipient: MessageRecipient, in room: Room, _ lease: RoomLease) {
        lease.gated.append(GatedFrame(frame: frame, recipient: recipient, joinedBefore: room.nextClientId,
                                      version: RoomLease.uncommitted))
        count(.framesGated)
        if !lease.inCommitList {
            lease.inCommitList = true
            durable?.toCommit.append(room)
        }
    }

    /// End of a loop turn: every room that sent something is committed (saved, or its frames
    /// released when nothing changed).
    func commitGates() {
        guard let durable else { return }
        while let room = durable.toCommit.popLast() {
            guard let lease = room.lease else { continue }
            lease.inCommitList = false
            commit(room, lease)
        }
    }

    /// Covers the frames of this turn by a save: the one in flight when the state has not changed
    /// since it was taken, else a new one (issued now, or when the one in flight is answered).
    func commit(_ room: Room, _ lease: RoomLease) {
        guard !room.isClosed else { return }
        if lease.inFlight != nil {
            lease.saveWanted = true
            return
        }
        guard let stored = storedState(of: room, lease) else {
            // Cannot be saved: nothing to wait for.
            release(gated: room, lease, through: RoomLease.uncommitted)
            return
        }
        if let last = lease.lastIssued, last.room.sameState(as: stored) {
            cover(lease, by: last.version)
            room.changedSinceSnapshot = false
            if last.version <= lease.confirmed { release(gated: room, lease, through: last.version) }
            return
        }
        issueSave(room, lease, stored, release: false)
    }

    /// Gives this turn's frames their save's version.
    func cover(_ lease: RoomLease, by version: UInt64) {
        var i = lease.gated.count - 1
        while i >= 0 && lease.gated[i].version == RoomLease.uncommitted {
            lease.gated[i].version = version
            i -= 1
        }
    }

    /// Sends the frames covered by saves up to `version`, in order.
    func release(gated room: Room, _ lease: RoomLease, through version: UInt64) {
        var n = 0
        while n < lease.gated.count && lease.gated[n].version <= version {
            let g = lease.gated[n]
            if !room.members.isEmpty { deliverGated(g, in: room) }
            if let seats = room.seats, !room.isClosed {
                recordSent(g.frame, to: g.recipient, joinedBefore: g.joinedBefore, in: room, seats)
            }
            pool.release(g.frame)
            n += 1
        }
        if n == lease.gated.count {
            lease.gated.removeAll(keepingCapacity: lease.gated.count <= 64)
        } else if n > 0 {
            lease.gated.removeFirst(n)
        }
    }

    /// Drops every held frame and waiting callback (the room's state is not this node's to show).
    func discardHeld(_ room: Room) {
        guard let lease = room.lease else { return }
        for g in lease.gated { pool.release(g.frame) }
        lease.gated = []
        lease.deferred = []
        lease.deferredBytes = 0
    }

    private func deliverGated(_ g: GatedFrame, in room: Room) {
        // Usually nobody joined since: the recipients are those of the moment it was sent.
        if case .client = g.recipient { return fanOutNow(g.frame, to: g.recipient, in: room) }
        if let last = room.members.last, last.clientId.rawValue < g.joinedBefore {
            return fanOutNow(g.frame, to: g.recipient, in: room)
        }
        for m in room.members where m.clientId.rawValue < g.joinedBefore {
            if case .everyoneExcept(let except) = g.recipient, except == m.clientId { continue }
            fanOutNow(g.frame, to: .client(m.clientId), in: room)
        }
    }

    /// The state a save of `room` would store now (nil: its service cannot be saved; logged).
    func storedState(of room: Room, _ lease: RoomLease) -> StoredRoom? {
        do {
            guard let snapshot = try room.snapshot(using: rooms.factory) else { return nil }
            return StoredRoom(nextClientId: room.nextClientId, service: snapshot, epoch: lease.epoch)
        } catch {
            count(.storeErrors)
            logger.error("room \(room.id): snapshot failed: \(error)")
            return nil
        }
    }
}
