import IOCore
import Stateroom

/// A durable room as it is stored: its service's snapshot and the id its next client gets.
///
/// Layout (``encoded()``): the magic `SRROOM`, a format version (`u32`), the next client id
/// (`u32`), the snapshot's kind and its bytes (each an `i64` length and the bytes).
struct StoredRoom: Equatable, Sendable {
    var nextClientId: UInt32
    var service: ServiceSnapshot

    static let magic: [UInt8] = Array("SRROOM".utf8)
    static let version: UInt32 = 1

    func encoded() -> [UInt8] {
        var w = SnapshotWriter()
        w.write(Self.version)
        w.write(nextClientId)
        w.write(service.kind)
        w.write(bytes: service.bytes)
        return Self.magic + w.bytes
    }

    init(nextClientId: UInt32, service: ServiceSnapshot) {
        self.nextClientId = nextClientId
        self.service = service
    }

    /// Reads what ``encoded()`` wrote; anything else is refused, naming what is wrong.
    init(decoding bytes: [UInt8]) throws(SnapshotError) {
        guard bytes.count >= Self.magic.count, Array(bytes.prefix(Self.magic.count)) == Self.magic else {
            throw SnapshotError("not a stored room (no SRROOM header)")
        }
        var r = SnapshotReader(Array(bytes.dropFirst(Self.magic.count)))
        let version = try r.uint32("format version")
        guard version == Self.version else { throw SnapshotError("stored room format \(version) is not \(Self.version)") }
        nextClientId = try r.uint32("next client id")
        let kind = try r.string("snapshot kind")
        service = ServiceSnapshot(kind: kind, bytes: try r.bytes("snapshot"))
        try r.finish()
    }

    /// The store key of room `id`.
    static func key(_ id: String) -> [UInt8] { Array("stateroom:room:\(id)".utf8) }
    /// The key of room `id`'s lease: the id of the node that owns it, with a time to live.
    static func leaseKey(_ id: String) -> [UInt8] { Array("stateroom:lease:\(id)".utf8) }
    /// The channel node `node` listens on for rooms other nodes ask it to hand over.
    static func channel(of node: String) -> String { "stateroom:node:\(node)" }
}

/// The scripts that keep a room's lease and its snapshot consistent: each runs atomically in
/// Redis, so a node never writes a snapshot of a room another node owns.
enum LeaseScript {
    /// KEYS: lease, snapshot; ARGV: node, ttl ms. Takes the lease unless another node holds it:
    /// `{1, snapshot}` / `{1}` (nothing stored) when taken, `{0, owner}` when held elsewhere.
    static let acquire = """
        local owner = redis.call('GET', KEYS[1])
        if owner and owner ~= ARGV[1] then return {0, owner} end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        local snapshot = redis.call('GET', KEYS[2])
        if snapshot then return {1, snapshot} end
        return {1}
        """
    /// KEYS: lease, snapshot; ARGV: node, snapshot, release ("1" or "0"), ttl ms. Stores the
    /// snapshot unless another node holds the lease (then 0), and releases or renews the lease.
    static let save = """
        local owner = redis.call('GET', KEYS[1])
        if owner and owner ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[2], ARGV[2])
        if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4]) end
        return 1
        """
    /// KEYS: lease; ARGV: node, ttl ms. Renews this node's lease (taking it again if it lapsed
    /// and nobody took it): 1, or 0 when another node holds it.
    static let renew = """
        local owner = redis.call('GET', KEYS[1])
        if owner and owner ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 1
        """
    /// KEYS: lease; ARGV: node. Releases this node's lease (a no-op if it is not this node's).
    static let release = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 1
        """
}

/// What a read of a room's lease and snapshot found.
enum LoadReply: Sendable {
    /// This node owns the room now; its snapshot, if one is stored.
    case owned([UInt8]?)
    /// Another node (this id) owns it.
    case heldBy(String)

    init(_ reply: RedisReply) throws(StoreError) {
        guard case .array(let items) = reply, let first = items.first, case .integer(let taken) = first else {
            throw StoreError("unexpected lease reply \(reply)")
        }
        if taken == 1 {
            self = .owned(items.count > 1 ? items[1].data : nil)
        } else {
            guard items.count > 1, let owner = items[1].data else { throw StoreError("lease held by no one") }
            self = .heldBy(String(decoding: owner, as: UTF8.self))
        }
    }
}

/// What the store thread reports back to a shard (through its mailbox).
enum StoreEvent: Sendable {
    /// The lease and stored state of `room`, or why they could not be read.
    case loaded(room: String, Result<LoadReply, StoreError>)
    /// The save of version `version` of `room` went through (false: another node owns the
    /// room), or why not.
    case saved(room: String, version: UInt64, Result<Bool, StoreError>)
    /// Whether this node still owns `room` (a lease renewal), or why that is not known.
    case renewed(room: String, Result<Bool, StoreError>)
    /// Another node has a client for `room`: hand it over.
    case handoverRequested(room: String)
}

/// One shard's side of durable rooms: clients waiting for their room to be read from the store,
/// and rooms saved but not yet confirmed stored.
///
/// A room is in memory (open), or stored, or — between its last save and the store's answer —
/// both dropped from the table and held in ``unsaved``: a client arriving then gets the room
/// from there, so nothing depends on Redis answering quickly, and a save that fails keeps its
/// snapshot here to be tried again (every snapshot interval and at shutdown) rather than lost.
///
/// Every open durable room holds a lease in Redis (this node's id, ``leaseMilliseconds`` to
/// live, renewed a few times per lease): one owner per room across nodes. A node that gets a
/// client for a room another node owns asks that node to hand it over (pub/sub on the owner's
/// channel), and takes the lease when the owner has saved the room and let it go — or when the
/// lease runs out because the owner died.
final class DurableRooms {
    let store: RedisStore
    /// This process's id in leases (shared by its shards).
    let node: String
    let leaseMilliseconds: Int
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
    /// Rooms the store had nothing for: their waiting clients' joins create them afresh.
    var fresh: Set<String> = []

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
    }
}

extension Shard {
    // MARK: - Opening a durable room

    /// Whether `upgrade` must wait for its room to be read from the store (and it then waits):
    /// false when the room is open, held unsaved here (then restored from that at once), or
    /// rooms are not durable.
    func awaitStoredRoom(_ conn: Connection, _ accepted: AcceptedUpgrade, rest: UnsafeMutableRawBufferPointer) -> Bool {
        guard let durable, rooms[accepted.roomId] == nil else { return false }
        if durable.fresh.remove(accepted.roomId) != nil { return false }
        if let held = durable.unsaved[accepted.roomId] {
            _ = openStored(accepted.roomId, held.room)  // if it cannot be restored, the join starts it afresh
            return false
        }
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

    /// Takes room `id`'s lease and reads its snapshot, in one script.
    private func acquire(_ id: String) {
        guard let durable else { return }
        let mailbox = self.mailbox
        durable.store.command(script(LeaseScript.acquire, keys: [StoredRoom.leaseKey(id), StoredRoom.key(id)],
                                     [Array(durable.node.utf8), Array(String(durable.leaseMilliseconds).utf8)])) { result in
            mailbox.post(.store(.loaded(room: id, result.flatMap { reply in Result { () throws(StoreError) in try LoadReply(reply) } })))
        }
    }

    private func script(_ source: String, keys: [[UInt8]], _ args: [[UInt8]]) -> [[UInt8]] {
        [Array("EVAL".utf8), Array(source.utf8), Array(String(keys.count).utf8)] + keys + args
    }

    /// The store answered a read: the room opens (restored, or new when nothing was stored) and
    /// its waiting clients join. When another node owns it, that node is asked to hand it over
    /// and the lease is asked for again shortly. When it cannot be read, the clients are refused
    /// with `503` — a room is never started afresh over a snapshot the store could not hand back.
    func storedRoomLoaded(_ id: String, _ result: Result<LoadReply, StoreError>) {
        guard let durable, durable.loads[id] != nil else { return }
        var refusal: String?
        switch result {
        case .success(.owned(nil)):
            durable.fresh.insert(id)  // a new room: the first join creates it
        case .success(.owned(let bytes?)):
            do {
                if !openStored(id, try StoredRoom(decoding: bytes)) { durable.fresh.insert(id) }
            } catch {
                release(id)
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
        if durable.fresh.remove(id) != nil {
            release(id)  // every waiter had gone before the room was made
        } else if let room = rooms[id], room.members.isEmpty, !room.changedSinceSnapshot {
            // Every waiter had gone: a restored room nobody joined goes back to sleep (it is stored).
            endRoom(room)
            release(id)
        }
    }

    /// Asks for the lease of a room another node owns again (it may have handed it over by now).
    func retryLease(_ id: String) {
        guard let durable, durable.loads[id] != nil else { return }
        acquire(id)
    }

    /// Opens room `id` from its stored state. False when it cannot be restored (a snapshot of
    /// another module or service, after a deploy): that is logged and counted, and the room's
    /// clients then start it afresh — its next save replaces the snapshot that could not be used.
    func openStored(_ id: String, _ stored: StoredRoom) -> Bool {
        do {
            // A held (unsaved) copy stays held until the store confirms it or a newer save replaces it.
            _ = try rooms.restore(id, from: stored)
            count(.roomsRestored)
            count(.roomsActive)
            return true
        } catch {
            count(.storeErrors)
            logger.error("room \(id): cannot restore its snapshot (\(stored.service.kind)): \(error); starting it afresh")
            return false
        }
    }

    /// Lets go of room `id`'s lease (if this node holds it).
    func release(_ id: String) {
        guard let durable else { return }
        durable.store.command(script(LeaseScript.release, keys: [StoredRoom.leaseKey(id)], [Array(durable.node.utf8)])) { _ in }
    }

    // MARK: - Saving

    /// Saves `room` now (its snapshot is taken here, between callbacks). With `dropping`, the room
    /// then ends — hibernation, a shutdown, a hand-over — and its lease is released with the
    /// save. False when the room's service cannot be saved.
    @discardableResult
    func save(_ room: Room, dropping: Bool) -> Bool {
        guard let durable else { return false }
        let snapshot: ServiceSnapshot?
        do {
            snapshot = try room.snapshot(using: rooms.factory)
        } catch {
            count(.storeErrors)
            logger.error("room \(room.id): snapshot failed: \(error)")
            return false
        }
        guard let snapshot else { return false }
        room.changedSinceSnapshot = false
        let stored = StoredRoom(nextClientId: room.nextClientId, service: snapshot)
        let version = durable.nextVersion
        durable.nextVersion &+= 1
        if dropping {
            durable.unsaved[room.id] = (stored, version, true)
            refreshUnsavedGauge()
        } else if durable.unsaved[room.id] != nil {
            durable.unsaved[room.id] = (stored, version, true)
        }
        send(stored, of: room.id, version: version, release: dropping)
        return true
    }

    private func send(_ stored: StoredRoom, of id: String, version: UInt64, release: Bool) {
        guard let durable else { return }
        durable.savesInFlight += 1
        let mailbox = self.mailbox
        let args = [Array(durable.node.utf8), stored.encoded(), Array((release ? "1" : "0").utf8),
                    Array(String(durable.leaseMilliseconds).utf8)]
        durable.store.command(script(LeaseScript.save, keys: [StoredRoom.leaseKey(id), StoredRoom.key(id)], args)) { result in
            mailbox.post(.store(.saved(room: id, version: version, result.map { $0 == .integer(1) })))
        }
    }

    /// The store answered a save: a confirmed snapshot no longer needs holding; a failed one
    /// stays held (and is counted) to be sent again. A save refused because another node owns the
    /// room is dropped with an error: that node's state is the room's now.
    func storedRoomSaved(_ id: String, version: UInt64, _ result: Result<Bool, StoreError>) {
        guard let durable else { return }
        durable.savesInFlight -= 1
        switch result {
        case .success(true):
            count(.roomsSaved)
            if durable.unsaved[id]?.version == version { durable.unsaved[id] = nil }
        case .success(false):
            count(.storeErrors)
            logger.error("room \(id): not saved: another node owns it now")
            if durable.unsaved[id]?.version == version { durable.unsaved[id] = nil }
            if let room = rooms[id] { lostLease(room) }
        case .failure(let error):
            count(.storeErrors)
            if let held = durable.unsaved[id], held.version == version {
                durable.unsaved[id]!.inFlight = false
                logger.error("room \(id): saving its snapshot failed (\(error)); held in memory, retrying")
            } else if let room = rooms[id] {
                // An open room's periodic save: the next interval saves it again.
                room.changedSinceSnapshot = true
                logger.error("room \(id): saving its snapshot failed (\(error)); retrying next interval")
            }
        }
        refreshUnsavedGauge()
        if shuttingDown && durable.shutdownSaved && durable.savesInFlight == 0 { closeAfterShutdownSaves() }
    }

    /// Every snapshot interval: saves the open rooms that changed and sends again what failed.
    func saveChangedRooms() {
        guard let durable else { return }
        for room in rooms.all where room.changedSinceSnapshot && !room.isClosed && room.failure == nil {
            save(room, dropping: false)
        }
        for (id, held) in durable.unsaved where !held.inFlight {
            let version = durable.nextVersion
            durable.nextVersion &+= 1
            durable.unsaved[id] = (held.room, version, true)
            send(held.room, of: id, version: version, release: true)
        }
    }

    func refreshUnsavedGauge() {
        setCounter(.roomsUnsaved, durable?.unsaved.count ?? 0)
    }

    // MARK: - Leases

    /// A few times per lease: every open room's lease is renewed.
    func renewLeases() {
        guard let durable else { return }
        let mailbox = self.mailbox
        for room in rooms.all where !room.isClosed {
            let id = room.id
            durable.store.command(script(LeaseScript.renew, keys: [StoredRoom.leaseKey(id)],
                                         [Array(durable.node.utf8), Array(String(durable.leaseMilliseconds).utf8)])) { result in
                mailbox.post(.store(.renewed(room: id, result.map { $0 == .integer(1) })))
            }
        }
    }

    /// A renewal's answer: a room whose lease another node holds now stops here (its clients get
    /// 1012 and reconnect to the owner). An unreachable store changes nothing: rooms keep serving.
    func leaseRenewed(_ id: String, _ result: Result<Bool, StoreError>) {
        switch result {
        case .success(true): break
        case .success(false):
            if let room = rooms[id] { lostLease(room) }
        case .failure:
            count(.storeErrors)
        }
    }

    private func lostLease(_ room: Room) {
        logger.error("room \(room.id): another node owns it now; closing its clients here with 1012")
        let members = room.members
        endRoom(room)
        for m in members { closeWebSocket(m, .serviceRestart, reason: "room moved to another node") }
    }

    /// Another node has a client for room `id`: save it, let the lease go with the save, and
    /// close its clients with 1012 so they reconnect (and meet the room on that node).
    func handOverRoom(_ id: String) {
        guard let durable else { return }
        if let room = rooms[id], !room.isClosed {
            logger.info("room \(id): handing it over to another node")
            let members = room.members
            if !save(room, dropping: true) { release(id) }
            endRoom(room)
            for m in members { closeWebSocket(m, .serviceRestart, reason: "room moved to another node") }
        } else if let held = durable.unsaved[id], !held.inFlight {
            send(held.room, of: id, version: held.version, release: true)
            durable.unsaved[id]!.inFlight = true
        } else if durable.unsaved[id] == nil {
            release(id)
        }
    }

    // MARK: - Shutdown

    /// A shutdown with durable rooms: every room is saved and ended (its clients stay connected,
    /// their messages go nowhere) and held snapshots are sent again; clients are closed with 1012
    /// once the store has answered every save (or at the drain deadline).
    func saveEverythingForShutdown() {
        guard let durable else { return }
        for room in rooms.all where !room.isClosed && room.failure == nil {
            if !save(room, dropping: true) { release(room.id) }
            endRoom(room)
        }
        for (id, held) in durable.unsaved where !held.inFlight {
            send(held.room, of: id, version: held.version, release: true)
            durable.unsaved[id]!.inFlight = true
        }
        durable.shutdownSaved = true
        if durable.savesInFlight == 0 { closeAfterShutdownSaves() }
    }

    /// Closes every open client with 1012 (service restart: reconnect, the room is stored) and
    /// logs what could not be stored.
    func closeAfterShutdownSaves() {
        if let durable, !durable.unsaved.isEmpty {
            logger.error("shutdown: \(durable.unsaved.count) room snapshot(s) could not be stored: \(durable.unsaved.keys.sorted().joined(separator: ", "))")
        }
        conns.forEach { conn in
            if conn.state == .open { closeWebSocket(conn, .serviceRestart, reason: "server restarting; room saved") }
        }
    }
}
