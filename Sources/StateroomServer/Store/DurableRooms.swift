import IOCore
import Stateroom

/// What the store thread reports back to a shard (through its mailbox). `issuedAt` is when the
/// shard issued the command (monotonic nanoseconds): a lease it set is counted on from then.
enum StoreEvent: Sendable {
    /// The lease and stored state of `room`, or why they could not be read.
    case loaded(room: String, issuedAt: UInt64, Result<LoadReply, StoreError>)
    /// The save of version `version` of `room` under `epoch` went through (false: refused, another
    /// epoch has the room), or why not.
    case saved(room: String, version: UInt64, epoch: UInt64, issuedAt: UInt64, Result<Bool, StoreError>)
    /// Whether `epoch` still has `room` (a lease renewal), or why that is not known.
    case renewed(room: String, epoch: UInt64, issuedAt: UInt64, Result<Bool, StoreError>)
    /// Another node has a client for `room`: hand it over.
    case handoverRequested(room: String)
}

/// One shard's side of durable rooms: clients waiting for their room to be read from the store,
/// rooms saved but not yet confirmed stored, and the rooms whose output waits for a save.
///
/// A room is in memory (open), or stored, or — between its last save and the store's answer —
/// both dropped from the table and held in ``unsaved``: a save that fails keeps its snapshot
/// here to be tried again (every snapshot interval and at shutdown) rather than lost, and a
/// client arriving meanwhile gets the room from it once this node has the lease again.
///
/// Every open durable room holds a lease in Redis (`"<epoch> <node>"`, ``leaseMilliseconds`` to
/// live, renewed a few times per lease): one owner per room across nodes, fenced by its epoch
/// (``LeaseScript``, ``RoomLease``). A node that gets a client for a room another node owns asks
/// that node to hand it over (pub/sub on the owner's channel), and takes the lease when the
/// owner has saved the room and let it go — or when the lease runs out because the owner died
/// or froze.
final class DurableRooms {
    let store: RedisStore
    /// This process's id in leases (shared by its shards).
    let node: String
    let leaseMilliseconds: Int
    /// How long after issuing the command that set a lease the lease is counted on: its time to
    /// live less a tenth (clocks of this host and Redis's may run at slightly different rates;
    /// the command may also reach Redis later than it was issued, which only makes this safer).
    let leaseTrust: UInt64
    /// Upgrades waiting for their room to be read, by room id (the first started the read).
    var loads: [String: [Waiter]] = [:]
    /// When a wait for another node's lease gives up, by room id.
    var leaseDeadlines: [String: UInt64] = [:]
    /// Saved rooms not yet confirmed stored, by room id, with the version of the save in flight.
    var unsaved: [String: (room: StoredRoom, version: UInt64, inFlight: Bool)] = [:]
    /// Versions number saves, so an old save's answer cannot clear a newer snapshot.
    var nextVersion: UInt64 = 1
    /// Saves whose answer has not come back (a shutdown waits for them).
    var savesInFlight = 0
    /// Set once a shutdown has saved every room: clients are closed when the saves are answered.
    var shutdownSaved = false
    /// Rooms whose lease was taken with nothing (usable) stored: their waiting clients' joins
    /// create them afresh, under that lease.
    var fresh: [String: (epoch: UInt64, issuedAt: UInt64)] = [:]
    /// Rooms that sent frames this loop turn: committed at its end (``Shard/commitGates()``).
    var toCommit: [Room] = []
    /// Rooms ended with their last save in flight (a hand-over, a shutdown), by that save's
    /// version: their held frames go out when it is confirmed, and then, for a hand-over, their
    /// clients are closed with 1012.
    var ending: [UInt64: (room: Room, closeClients: Bool)] = [:]

    struct Waiter {
        let slot: UInt32
        let generation: UInt32
        let upgrade: AcceptedUpgrade
        let rest: [UInt8]
    }

    init(store: RedisStore, node: String, leaseMilliseconds: Int) {
        self.store = store
        self.node = node
        self.leaseMilliseconds = leaseMilliseconds
        self.leaseTrust = UInt64(leaseMilliseconds) * 900_000
    }

    /// A new room's lease from what its acquisition returned.
    func lease(epoch: UInt64, issuedAt: UInt64) -> RoomLease {
        RoomLease(epoch: epoch, validUntil: issuedAt &+ leaseTrust)
    }
}

extension Shard {
    // MARK: - Opening a durable room

    /// Whether `upgrade` must wait for its room to be read from the store (and it then waits):
    /// false when the room is open, its lease was just taken with nothing stored, or rooms are not
    /// durable.
    func awaitStoredRoom(_ conn: Connection, _ accepted: AcceptedUpgrade, rest: UnsafeMutableRawBufferPointer) -> Bool {
        guard let durable, rooms[accepted.roomId] == nil else { return false }
        if durable.fresh[accepted.roomId] != nil { return false }
        // Not read while it waits: the kernel holds what the client sends meanwhile.
        conn.state = .parked
        let waiter = DurableRooms.Waiter(slot: conn.slot, generation: conn.generation, upgrade: accepted, rest: Array(UnsafeRawBufferPointer(rest)))
        if durable.loads[accepted.roomId] != nil {
            durable.loads[accepted.roomId]!.append(waiter)
            return true
        }
        durable.loads[accepted.roomId] = [waiter]
        acquire(accepted.roomId)
        return true
    }

    /// Takes room `id`'s lease (the next epoch) and reads its snapshot, in one script.
    private func acquire(_ id: String) {
        guard let durable else { return }
        let mailbox = self.mailbox
        let issuedAt = now
        durable.store.command(LeaseScript.command(LeaseScript.acquire, keys: [StoredRoom.leaseKey(id), StoredRoom.key(id), StoredRoom.epochKey(id)],
                                                  [Array(durable.node.utf8), Array(String(durable.leaseMilliseconds).utf8)])) { result in
            mailbox.post(.store(.loaded(room: id, issuedAt: issuedAt, result.flatMap { reply in Result { () throws(StoreError) in try LoadReply(reply) } })))
        }
    }

    /// The store answered a read: the room opens (restored, or new when nothing was stored) and
    /// its waiting clients join. When another node owns it, that node is asked to hand it over
    /// and the lease is asked for again shortly. When it cannot be read, the clients are refused
    /// with `503` — a room is never started afresh over a snapshot the store could not hand back.
    func storedRoomLoaded(_ id: String, issuedAt: UInt64, _ result: Result<LoadReply, StoreError>) {
        guard let durable, durable.loads[id] != nil else {
            // Nobody waits any more: let the lease go at once rather than at its expiry.
            if case .success(.owned(let epoch, _)) = result, rooms[id] == nil { release(id, epoch: epoch) }
            return
        }
        var refusal: String?
        switch result {
        case .success(.owned(let epoch, let bytes)):
            do {
                var stored = try bytes.map { try StoredRoom(decoding: $0) }
                // A copy this node still holds unconfirmed is the room's latest state when nobody
                // took the room since that copy's lease (the epoch just before this one). Its own
                // save, under the old epoch, will be refused: it is saved again under this one.
                var fromHeld = false
                if let held = durable.unsaved[id], held.room.epoch &+ 1 == epoch, held.room.epoch >= stored?.epoch ?? 0 {
                    stored = held.room
                    fromHeld = true
                    durable.unsaved[id] = nil
                    refreshUnsavedGauge()
                }
                if let stored, openStored(id, stored, lease: durable.lease(epoch: epoch, issuedAt: issuedAt)) {
                    if fromHeld, let room = rooms[id] { save(room, dropping: false) }
                    break
                }
                durable.fresh[id] = (epoch, issuedAt)  // a new room: the first join creates it
            } catch {
                release(id, epoch: epoch)
                refusal = "room \(id): its stored snapshot cannot be read: \(error)"
            }
        case .success(.heldBy(let owner)):
            let deadline = durable.leaseDeadlines[id] ?? (now + UInt64(durable.leaseMilliseconds + 2_000) * 1_000_000)
            if now < deadline {
                if durable.leaseDeadlines[id] == nil {
                    logger.info("room \(id) is owned by node \(owner): asking it to hand the room over")
                }
                durable.leaseDeadlines[id] = deadline
                durable.store.command("PUBLISH", StoredRoom.channel(of: owner), id) { _ in }
                timers.schedule(at: now + 100_000_000, .leaseRetry(room: id))
                return
            }
            refusal = "room \(id): node \(owner) did not hand it over"
        case .failure(let error):
            count(.storeErrors)
            refusal = "room \(id): the store could not be read: \(error)"
        }
        durable.leaseDeadlines[id] = nil
        let waiters = durable.loads.removeValue(forKey: id) ?? []
        if let refusal { logger.error("\(refusal); refusing its clients with 503") }
        for w in waiters {
            guard let conn = conns.lookup(slot: w.slot, generation: w.generation), conn.state == .parked else { continue }
            if refusal != nil {
                count(.upgradesRefused)
                respond(conn, frontDoor.refusal(.serviceUnavailable, reason: "room store unavailable",
                                                headers: [("Retry-After", "2")]), close: true)
                continue
            }
            conn.state = .http  // as it was when the upgrade was decided
            upgrade(conn, w.upgrade, rest: w.rest)
        }
        if let f = durable.fresh.removeValue(forKey: id) {
            release(id, epoch: f.epoch)  // every waiter had gone before the room was made
        } else if let room = rooms[id], room.members.isEmpty {
            // Every waiter had gone: a restored room nobody joined goes back to sleep.
            hibernateIfEmpty(room)
        }
    }

    /// Asks for the lease of a room another node owns again (it may have handed it over by now).
    func retryLease(_ id: String) {
        guard let durable, durable.loads[id] != nil else { return }
        acquire(id)
    }

    /// Opens room `id` from its stored state under `lease`. False when it cannot be restored (a
    /// snapshot of another module or service, after a deploy): that is logged and counted, and
    /// the room's clients then start it afresh — its next save replaces the snapshot that could
    /// not be used.
    func openStored(_ id: String, _ stored: StoredRoom, lease: RoomLease) -> Bool {
        do {
            let room = try rooms.restore(id, from: stored, lease: lease)
            if let seats = stored.seats { restoreSeats(seats, in: room) }
            count(.roomsRestored)
            count(.roomsActive)
            return true
        } catch {
            count(.storeErrors)
            logger.error("room \(id): cannot restore its snapshot (\(stored.service.kind)): \(error); starting it afresh")
            return false
        }
    }

    /// Lets go of room `id`'s lease if `epoch` still holds it.
    func release(_ id: String, epoch: UInt64) {
        guard let durable else { return }
        durable.store.command(LeaseScript.command(LeaseScript.release, keys: [StoredRoom.leaseKey(id)],
                                                  [Array(durable.node.utf8), Array(String(epoch).utf8)])) { _ in }
    }

    /// An empty room ends: a durable one is saved with its lease let go (hibernation: it comes back
    /// on its next client), or just lets go when nothing is new. A room whose callbacks wait for
    /// its lease ends once they have run.
    func hibernateIfEmpty(_ room: Room) {
        // Clients away in their seats' grace keep it open: they may come back, or their
        // disconnect is due when the grace ends.
        guard room.members.isEmpty, room.failure == nil, !room.isClosed, !holdsSeats(room) else { return }
        if let lease = room.lease {
            if !lease.deferred.isEmpty { return }
            let unconfirmed = lease.inFlight != nil || (lease.lastIssued.map { $0.version > lease.confirmed } ?? false)
            if (room.changedSinceSnapshot || unconfirmed) && save(room, dropping: true) {
                count(.roomsHibernated)
            } else {
                release(room.id, epoch: lease.epoch)
            }
        }
        endRoom(room)
    }
}
