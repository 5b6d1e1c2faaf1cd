import IOCore
import Stateroom

// Saving durable rooms, keeping their leases, and giving them up: every write names the room's
// epoch, and a refusal (another epoch has the room) drops the room here at once.

extension Shard {
    // MARK: - Saving

    /// Saves `room` now (its snapshot is taken here, between callbacks). With `dropping`, the room
    /// then ends — hibernation, a shutdown, a hand-over — and its lease is released with the
    /// save. False when the room's service cannot be saved.
    @discardableResult
    func save(_ room: Room, dropping: Bool) -> Bool {
        guard let durable, let lease = room.lease, var stored = storedState(of: room, lease) else { return false }
        // Let go with clients that may come back: their seats go with the room.
        if dropping { stored.seats = storedSeats(of: room, lease) }
        let version = issueSave(room, lease, stored, release: dropping)
        if dropping {
            durable.unsaved[room.id] = (stored, version, true)
            refreshUnsavedGauge()
        } else if durable.unsaved[room.id] != nil {
            durable.unsaved[room.id] = (stored, version, true)
        }
        return true
    }

    /// Sends `stored` (the state of `room` now) to the store; the frames the room sent so far
    /// this turn wait for this save.
    @discardableResult
    func issueSave(_ room: Room, _ lease: RoomLease, _ stored: StoredRoom, release: Bool) -> UInt64 {
        guard let durable else { return 0 }
        let version = durable.nextVersion
        durable.nextVersion &+= 1
        lease.lastIssued = (stored, version)
        if !release { lease.inFlight = version }
        room.changedSinceSnapshot = false
        cover(lease, by: version)
        send(stored, of: room.id, version: version, release: release)
        return version
    }

    private func send(_ stored: StoredRoom, of id: String, version: UInt64, release: Bool) {
        guard let durable else { return }
        durable.savesInFlight += 1
        let mailbox = self.mailbox
        let epoch = stored.epoch
        let issuedAt = now
        let args = [Array(durable.node.utf8), Array(String(epoch).utf8), stored.encoded(),
                    Array((release ? "1" : "0").utf8), Array(String(durable.leaseMilliseconds).utf8)]
        let keys = [StoredRoom.leaseKey(id), StoredRoom.key(id), StoredRoom.epochKey(id)]
        durable.store.command(LeaseScript.command(LeaseScript.save, keys: keys, args)) { result in
            mailbox.post(.store(.saved(room: id, version: version, epoch: epoch, issuedAt: issuedAt, result.map { $0 == .integer(1) })))
        }
    }

    /// The store answered a save. Confirmed: the frames it covers go out, and the lease counts
    /// from when it was issued. Refused: another epoch has the room — it is dropped here with
    /// nothing it held shown to anyone (clients get 1012). Failed: a held snapshot stays held to be
    /// sent again; an open room is saved again shortly while frames wait, else next interval.
    func storedRoomSaved(_ id: String, version: UInt64, epoch: UInt64, issuedAt: UInt64, _ result: Result<Bool, StoreError>) {
        guard let durable else { return }
        durable.savesInFlight -= 1
        let held = durable.unsaved[id]?.version == version
        let ending = durable.ending.removeValue(forKey: version)
        let open = rooms[id].flatMap { $0.lease?.epoch == epoch && !$0.isClosed ? $0 : nil }
        switch result {
        case .success(true):
            count(.roomsSaved)
            if held { durable.unsaved[id] = nil }
            if let room = ending?.room ?? open, let lease = room.lease {
                lease.confirmed = max(lease.confirmed, version)
                if lease.inFlight == version { lease.inFlight = nil }
                if !room.isClosed { lease.validUntil = max(lease.validUntil, issuedAt &+ durable.leaseTrust) }
                release(gated: room, lease, through: version)
                if lease.saveWanted && lease.inFlight == nil && !room.isClosed {
                    lease.saveWanted = false
                    commit(room, lease)
                }
            }
        case .success(false):
            count(.roomsFenced)
            logger.error("room \(id): save refused: epoch \(epoch) is no longer the room's (another node took it over)")
            if held { durable.unsaved[id] = nil }
            if let ending { discardHeld(ending.room) }
            if let open { lostLease(open) }
        case .failure(let error):
            count(.storeErrors)
            if held {
                durable.unsaved[id]!.inFlight = false
                logger.error("room \(id): saving its snapshot failed (\(error)); held in memory, retrying")
            } else if let ending {
                discardHeld(ending.room)
                logger.error("room \(id): saving its snapshot failed (\(error))")
            } else if let open, let lease = open.lease {
                if lease.inFlight == version { lease.inFlight = nil }
                lease.lastIssued = nil  // not stored: the same state must be sent again
                open.changedSinceSnapshot = true
                if !lease.saveFailing { logger.error("room \(id): saving its snapshot failed (\(error)); its clients' answers wait, retrying") }
                lease.saveFailing = true
                if !lease.gated.isEmpty || lease.saveWanted { timers.schedule(at: now + 100_000_000, .saveRetry(open)) }
            }
        }
        if case .success(true) = result, let lease = open?.lease, lease.saveFailing {
            lease.saveFailing = false
            logger.info("room \(id): saved again")
        }
        if let ending, ending.closeClients {
            for m in ending.room.members { closeWebSocket(m, .serviceRestart, reason: "room moved to another node") }
        }
        refreshUnsavedGauge()
        if shuttingDown && durable.shutdownSaved && durable.savesInFlight == 0 { closeAfterShutdownSaves() }
    }

    /// A save that failed while frames wait is sent again.
    func retrySave(_ room: Room) {
        guard let lease = room.lease, !room.isClosed, lease.inFlight == nil, !shuttingDown else { return }
        lease.saveWanted = false
        if !lease.gated.isEmpty || room.changedSinceSnapshot { commit(room, lease) }
    }

    /// Every snapshot interval: saves the open rooms that changed and sends again what failed.
    func saveChangedRooms() {
        guard let durable else { return }
        for room in rooms.all where room.changedSinceSnapshot && !room.isClosed && room.failure == nil && room.lease?.inFlight == nil {
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
        for room in rooms.all where !room.isClosed && room.lease != nil { renew(room) }
    }

    /// Renews `room`'s lease under its epoch.
    func renew(_ room: Room) {
        guard let durable, let lease = room.lease else { return }
        let mailbox = self.mailbox
        let id = room.id
        let epoch = lease.epoch
        let issuedAt = now
        let keys = [StoredRoom.leaseKey(id), StoredRoom.key(id), StoredRoom.epochKey(id)]
        durable.store.command(LeaseScript.command(LeaseScript.renew, keys: keys,
                                                  [Array(durable.node.utf8), Array(String(epoch).utf8), Array(String(durable.leaseMilliseconds).utf8)])) { result in
            mailbox.post(.store(.renewed(room: id, epoch: epoch, issuedAt: issuedAt, result.map { $0 == .integer(1) })))
        }
    }

    /// A renewal's answer: confirmed, the lease counts from when it was issued and callbacks that
    /// waited for it run; refused (another epoch has the room), the room is dropped here and its
    /// clients get 1012. An unreachable store changes nothing while the lease is valid; past it,
    /// the room's callbacks keep waiting and the renewal is tried again.
    func leaseRenewed(_ id: String, epoch: UInt64, issuedAt: UInt64, _ result: Result<Bool, StoreError>) {
        guard let durable, let room = rooms[id], !room.isClosed, let lease = room.lease, lease.epoch == epoch else { return }
        switch result {
        case .success(true):
            lease.validUntil = max(lease.validUntil, issuedAt &+ durable.leaseTrust)
            if lease.revalidating { runDeferred(room) }
        case .success(false):
            count(.roomsFenced)
            lostLease(room)
        case .failure:
            count(.storeErrors)
            if lease.revalidating { timers.schedule(at: now + 200_000_000, .revalidateRetry(room)) }
        }
    }

    /// A re-validation whose renewal failed is tried again.
    func retryRevalidation(_ room: Room) {
        guard let lease = room.lease, !room.isClosed, lease.revalidating else { return }
        renew(room)
    }

    /// After the loop did not turn for a while (the process was paused, or starved): every room
    /// whose lease may have run out meanwhile is re-validated before anything else happens to it.
    func checkLeasesAfterPause() {
        guard durable != nil else { return }
        for room in rooms.all where !room.isClosed {
            if let lease = room.lease, now >= lease.validUntil, !lease.revalidating { revalidate(room, lease) }
        }
    }

    /// Another epoch has the room: it ends here, with nothing it held sent, and its clients get
    /// 1012 (they reconnect and meet the room where it is now).
    func lostLease(_ room: Room) {
        logger.error("room \(room.id): its lease (epoch \(room.lease?.epoch ?? 0)) is no longer this node's; dropping it here, clients get 1012")
        let members = room.members
        discardHeld(room)
        endRoom(room)
        for m in members { closeWebSocket(m, .serviceRestart, reason: "room moved to another node") }
    }

    /// Another node has a client for room `id`: save it with the lease let go, and once the
    /// store has answered send what it held and close its clients with 1012 so they reconnect
    /// (and meet the room on that node).
    func handOverRoom(_ id: String) {
        guard let durable else { return }
        if let room = rooms[id], !room.isClosed {
            logger.info("room \(id): handing it over to another node")
            end(room, savingFor: true)
        } else if let held = durable.unsaved[id], !held.inFlight {
            send(held.room, of: id, version: held.version, release: true)
            durable.unsaved[id]!.inFlight = true
        }
    }

    /// Ends `room` with a last save (its lease let go); what it held goes out when the save is
    /// confirmed, then (`closeClients`) its clients get 1012. A room that cannot be saved lets its
    /// lease go and closes its clients at once.
    private func end(_ room: Room, savingFor closeClients: Bool) {
        guard let durable else { return }
        if save(room, dropping: true), let version = room.lease?.lastIssued?.version {
            durable.ending[version] = (room, closeClients)
            endRoom(room, keepingHeld: true)
            return
        }
        if let lease = room.lease { release(room.id, epoch: lease.epoch) }
        let members = room.members
        endRoom(room)
        if closeClients {
            for m in members { closeWebSocket(m, .serviceRestart, reason: "room moved to another node") }
        }
    }

    // MARK: - Shutdown

    /// A shutdown with durable rooms: every room is saved and ended (its clients stay connected,
    /// their messages go nowhere) and held snapshots are sent again; clients are closed with 1012
    /// once the store has answered every save (or at the drain deadline).
    func saveEverythingForShutdown() {
        guard let durable else { return }
        for room in rooms.all where !room.isClosed && room.failure == nil {
            end(room, savingFor: false)
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
