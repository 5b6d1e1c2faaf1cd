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
        w.write(version: Self.version)
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
}

extension SnapshotWriter {
    fileprivate mutating func write(version: UInt32) { write(version) }
}

/// What the store thread reports back to a shard (through its mailbox).
enum StoreEvent: Sendable {
    /// The stored room `room` (nil: none stored), or why it could not be read.
    case loaded(room: String, Result<[UInt8]?, StoreError>)
    /// The save of version `version` of `room` went through, or why not.
    case saved(room: String, version: UInt64, Result<Void, StoreError>)
}

/// One shard's side of durable rooms: clients waiting for their room to be read from the store,
/// and rooms saved but not yet confirmed stored.
///
/// A room is in memory (open), or stored, or — between its last save and the store's answer —
/// both dropped from the table and held in ``unsaved``: a client arriving then gets the room
/// from there, so nothing depends on Redis answering quickly, and a save that fails keeps its
/// snapshot here to be tried again (every snapshot interval and at shutdown) rather than lost.
final class DurableRooms {
    let store: RedisStore
    /// Upgrades waiting for their room to be read, by room id (the first started the read).
    var loads: [String: [Waiter]] = [:]
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

    init(store: RedisStore) { self.store = store }
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
            openStored(accepted.roomId, held.room)
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
        let room = accepted.roomId
        let mailbox = self.mailbox
        durable.store.command([Array("GET".utf8), StoredRoom.key(room)]) { result in
            mailbox.post(.store(.loaded(room: room, result.map { reply in reply.data })))
        }
        return true
    }

    /// The store answered a read: the room opens (restored, or new when nothing was stored) and
    /// its waiting clients join; when it could not be read they are refused with `503` — a room
    /// is never started afresh over a snapshot the store could not hand back.
    func storedRoomLoaded(_ id: String, _ result: Result<[UInt8]?, StoreError>) {
        guard let durable, let waiters = durable.loads.removeValue(forKey: id) else { return }
        var refusal: String?
        switch result {
        case .success(nil):
            durable.fresh.insert(id)  // a new room: the first join creates it
        case .success(let bytes?):
            do {
                openStored(id, try StoredRoom(decoding: bytes))
            } catch {
                refusal = "room \(id): its stored snapshot cannot be read: \(error)"
            }
        case .failure(let error):
            count(.storeErrors)
            refusal = "room \(id): the store could not be read: \(error)"
        }
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
        durable.fresh.remove(id)
        // Every waiter had gone: a restored room nobody joined goes back to sleep (it is stored).
        if let room = rooms[id], room.members.isEmpty, !room.changedSinceSnapshot { endRoom(room) }
    }

    /// Opens room `id` from its stored state (a failure to restore is logged, counted and the
    /// room then starts afresh only if the snapshot is of another kind — never silently).
    func openStored(_ id: String, _ stored: StoredRoom) {
        do {
            // A held (unsaved) copy stays held until the store confirms it or a newer save replaces it.
            _ = try rooms.restore(id, from: stored)
            count(.roomsRestored)
            count(.roomsActive)
        } catch {
            count(.storeErrors)
            logger.error("room \(id): cannot restore its snapshot (\(stored.service.kind)): \(error)")
        }
    }

    // MARK: - Saving

    /// Saves `room` now (its snapshot is taken here, between callbacks). With `dropping`, the room
    /// then ends — hibernation, or a shutdown. False when the room's service cannot be saved.
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
        send(stored, of: room.id, version: version)
        return true
    }

    private func send(_ stored: StoredRoom, of id: String, version: UInt64) {
        guard let durable else { return }
        durable.savesInFlight += 1
        let mailbox = self.mailbox
        durable.store.command([Array("SET".utf8), StoredRoom.key(id), stored.encoded()]) { result in
            mailbox.post(.store(.saved(room: id, version: version, result.map { _ in () })))
        }
    }

    /// The store answered a save: a confirmed snapshot no longer needs holding; a failed one
    /// stays held (and is counted) to be sent again.
    func storedRoomSaved(_ id: String, version: UInt64, _ result: Result<Void, StoreError>) {
        guard let durable else { return }
        durable.savesInFlight -= 1
        switch result {
        case .success:
            count(.roomsSaved)
            if durable.unsaved[id]?.version == version { durable.unsaved[id] = nil }
        case .failure(let error):
            count(.storeErrors)
            if let held = durable.unsaved[id], held.version == version {
                durable.unsaved[id]!.inFlight = false
                logger.error("room \(id): saving its snapshot failed (\(error)); held in memory, retrying")
            } else if rooms[id] != nil {
                // An open room's periodic save: the next interval saves it again.
                rooms[id]!.changedSinceSnapshot = true
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
            send(held.room, of: id, version: version)
        }
    }

    func refreshUnsavedGauge() {
        setCounter(.roomsUnsaved, durable?.unsaved.count ?? 0)
    }

    // MARK: - Shutdown

    /// A shutdown with durable rooms: every room is saved and ended (its clients stay connected,
    /// their messages go nowhere) and held snapshots are sent again; clients are closed with 1012
    /// once the store has answered every save (or at the drain deadline).
    func saveEverythingForShutdown() {
        guard let durable else { return }
        for room in rooms.all where !room.isClosed && room.failure == nil {
            if save(room, dropping: true) {
                endRoom(room)
            }
        }
        for (id, held) in durable.unsaved where !held.inFlight {
            send(held.room, of: id, version: held.version)
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
