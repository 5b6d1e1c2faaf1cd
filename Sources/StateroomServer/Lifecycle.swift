import Glibc
import IOCore
import Logging
import Stateroom
import WireProtocol

/// Whether the shard's listener has a multishot accept armed, and whether accepting is paused
/// because the process ran out of descriptors.
struct AcceptState {
    var armed = false
    var paused = false
    var pauseLogged = false
}

// Connection and room lifecycles: accept, hand-off, joining and leaving rooms, closing, and
// freeing a socket's slot once nothing is in flight on it.

extension Shard {
    // MARK: - Accept

    func armAccept() {
        guard !accept.armed, !shuttingDown else { return }
        accept.armed = true
        loop.armAccept(fd: listenerFD, tag: Tag(op: .accept, slot: 0, generation: 0))
    }

    func handleAccept(_ c: Completion) {
        if !c.more { accept.armed = false }
        if c.result >= 0 {
            count(.connectionsAccepted)
            if accept.paused && admission?.belowSocketCap != false { accept.paused = false; accept.pauseLogged = false }
            if shuttingDown {
                Socket.close(c.result)
            } else {
                let conn = adopt(fd: c.result)
                if let admission, !admission.socketOpened() { pauseAcceptAtSocketCap(c) }
                if let context = tlsContext {
                    guard let session = TLSSession(context) else {
                        logger.error("cannot create a TLS session: \(TLSWorkspace.lastError())")
                        abort(conn)
                        return armAcceptIfNeeded(c)
                    }
                    conn.setTLS(session)
                }
                Socket.setNoDelay(conn.fd)
                armReceive(conn, multishot: false)
                // A connection gets this long from its accept to become a WebSocket.
                requestDeadlines.append((conn.slot, conn.generation, now + Shard.nanos(config.requestTimeout)))
                requestDeadlinesPeak = max(requestDeadlinesPeak, requestDeadlines.count)
            }
        } else {
            let e = -c.result
            if e != ECANCELED { count(.acceptErrors) }
            if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM {
                // Out of descriptors: stop accepting (a multishot accept that stayed armed would
                // only fail again at once), log once, and resume when a connection closes or in 1 s.
                if !accept.pauseLogged {
                    logger.warning("accept paused: \(errnoDescription(e)); resuming when a connection closes (or in 1 s)")
                    accept.pauseLogged = true
                }
                if !accept.paused {
                    accept.paused = true
                    timers.schedule(at: now + 1_000_000_000, .resumeAccept)
                }
                if c.more { loop.cancel(Tag(op: .accept, slot: 0, generation: 0)) }
                return
            }
            if e != ECANCELED { logger.error("accept failed: \(errnoDescription(e))") }
        }
        armAcceptIfNeeded(c)
    }

    /// The server holds as many sockets as ``AdmissionLimits/socketCap`` allows: stop accepting
    /// until a connection closes (or for 1 s), so the backlog waits instead of this process
    /// taking sockets it would only refuse. The socket just accepted is served (its upgrade
    /// gets `503` if WebSockets are at their limit).
    private func pauseAcceptAtSocketCap(_ c: Completion) {
        guard !accept.paused else { return }
        count(.acceptPauses)
        if !accept.pauseLogged {
            logger.warning("accept paused: \(config.limits.socketCap) sockets open (--max-connections \(config.limits.maxConnections)); resuming when a connection closes")
            accept.pauseLogged = true
        }
        accept.paused = true
        timers.schedule(at: now + 1_000_000_000, .resumeAccept)
        if c.more { loop.cancel(Tag(op: .accept, slot: 0, generation: 0)) }
    }

    private func armAcceptIfNeeded(_ c: Completion) {
        if !accept.armed && !accept.paused { armAccept() }
    }

    /// Gives a socket a slot on this shard (a fresh accept, or a hand-off from another shard).
    func adopt(fd: Int32) -> Connection {
        count(.connectionsOpen)
        return conns.adopt(fd: fd, maxMessageSize: config.maxMessageSize, now: now)
    }

    func armReceive(_ conn: Connection, multishot: Bool) {
        guard !conn.recvArmed else { return }
        conn.recvArmed = true
        loop.armReceive(fd: conn.fd, tag: conn.tag(.recv), multishot: multishot)
    }

    // MARK: - HTTP answers and hand-off

    func respond(_ conn: Connection, _ bytes: [UInt8], close: Bool) {
        enqueue(conn, bytes: bytes)
        if close {
            conn.state = .closing
            conn.closeAfterFlush = true
            scheduleDeadline(conn, after: config.closeTimeout)
        }
    }

    func httpError(_ conn: Connection, _ response: [UInt8]) {
        count(.httpErrors)
        respond(conn, response, close: true)
    }

    func scheduleDeadline(_ conn: Connection, after seconds: Double) {
        timers.schedule(at: now + Shard.nanos(seconds), .connectionDeadline(slot: conn.slot, generation: conn.generation))
    }

    /// Gives the socket to the shard that owns its room, with the decided upgrade (the owner
    /// answers 101 without parsing the request again). No receive of ours is in flight on it (the
    /// head is read with single-shot receives); if a response to an earlier request is still
    /// queued or being sent, the socket is parked until that has drained.
    /// A TLS session moves with the socket (the handshake ran here, where the request was read);
    /// the move waits until this shard has finished opening the receive that held the request.
    func handOff(_ conn: Connection, to owner: Int, _ accepted: AcceptedUpgrade, rest: [UInt8]) {
        var session: TLSSession?
        session = conn.transport.session
        if conn.hasOutbound || conn.queue.sendInFlight || session?.busy == true {
            conn.state = .parked
            parked[conn.slot] = (owner, accepted, rest)
            scheduleDeadline(conn, after: config.closeTimeout)
            return
        }
        count(.handoffsOut)
        let fd = conn.fd
        loop.forget(fd: fd)
        release(conn, closeDescriptor: false)
        peers[owner].post(.handoff(fd: fd, accepted, rest: rest, tls: session))
    }

    /// A parked socket whose queue has drained moves on.
    func unparkIfDrained(_ conn: Connection) {
        if let s = conn.transport.session, s.busy { return }
        guard conn.state == .parked, !conn.hasOutbound, !conn.queue.sendInFlight,
              let p = parked.removeValue(forKey: conn.slot) else { return }
        handOff(conn, to: p.owner, p.upgrade, rest: p.rest)
    }

    // MARK: - Rooms

    /// Queues the 101 response and makes `conn` a member of its room, creating the room if there
    /// is none. False when the room cannot be served: the client is then closed with 1011.
    func join(_ conn: Connection, _ accepted: AcceptedUpgrade) -> Bool {
        let roomLimit = config.limits.maxClientsPerRoom
        if roomLimit > 0, let room = rooms[accepted.roomId], !room.isClosed, room.members.count >= roomLimit {
            // Refused before the 101: the client gets a plain answer and the room is untouched.
            count(.upgradesRefused)
            count(.upgradesRoomFull)
            respond(conn, frontDoor.refusal(.serviceUnavailable, reason: "room is full",
                                            headers: [("Retry-After", "5")]), close: true)
            return false
        }
        conn.admission = accepted.admission
        enqueue(conn, bytes: accepted.response)
        conn.state = .open
        if let deflate = accepted.deflate {
            conn.deflate = ConnectionDeflate(deflate)
            conn.parser.acceptsCompressed = true
            count(.deflateWebSockets)
        }
        let opened: RoomTable.Opened
        // A durable room is created under the lease its clients' wait took (DurableRooms.fresh).
        let fresh = rooms[accepted.roomId] == nil ? durable?.fresh.removeValue(forKey: accepted.roomId) : nil
        do {
            opened = try rooms.open(accepted.roomId, host: self, lease: fresh.flatMap { durable?.lease(epoch: $0.epoch, issuedAt: $0.issuedAt) })
        } catch {
            if let fresh { release(accepted.roomId, epoch: fresh.epoch) }
            logger.error("room \(accepted.roomId): cannot create its service: \(error)")
            closeWebSocket(conn, .internalError, reason: "service unavailable")
            return false
        }
        if opened.created {
            count(.roomsCreated)
            count(.roomsActive)
        }
        if let failure = opened.failure {
            roomFailed(opened.room, failure)
            closeWebSocket(conn, .internalError, reason: "service failed")
            return false
        }
        if case .resume(let token, let received) = accepted.seat,
           resumeSeat(conn, token: token, received: received, identity: accepted.identity, in: opened.room) {
            return true  // the service sees nothing: the client never left
        }
        count(.webSocketsOpen)
        let id = opened.room.add(conn, identity: accepted.identity)
        if accepted.seat != nil { giveSeat(conn, id, in: opened.room) }
        if !mayRun(opened.room) {
            deferCallback(opened.room, .connect(id))
        } else if let failure = opened.room.connect(id, self) {
            roomFailed(opened.room, failure)
        }
        return true
    }

    /// The room's service failed: it ends after the current completions (``drainPending()``).
    func roomFailed(_ room: Room, _ failure: RoomFailure) {
        failedRooms.append((room, failure))
    }

    /// Ends `room`; what a durable room held back (frames, waiting callbacks) is dropped unless
    /// `keepingHeld` (its last save's answer decides).
    func endRoom(_ room: Room, keepingHeld: Bool = false) {
        if !keepingHeld { discardHeld(room) }
        dropSeats(of: room)
        if rooms.end(room) { count(.roomsActive, -1) }
    }

    /// Removes departed clients from their rooms and tells the services; ends empty and failed rooms.
    func drainPending() {
        while !pendingLeaves.isEmpty || !failedRooms.isEmpty || !pendingSeatEnds.isEmpty {
            while let conn = pendingLeaves.popLast() {
                guard let room = conn.room else { continue }
                conn.room = nil
                room.remove(conn)
                releaseCompression(conn)
                count(.webSocketsOpen, -1)
                if room.isClosed { conn.seated = false; continue }
                // A seat dropped without a close handshake is held: the service is not told.
                if conn.seated && seatLeft(conn, in: room) { continue }
                serviceLost(conn.clientId, in: room)
            }
            while let (room, seat) = pendingSeatEnds.popLast() {
                endHeldSeat(seat, in: room)
            }
            while let (room, failure) = failedRooms.popLast() {
                guard !room.isClosed else { continue }
                count(.roomFailures)
                logger.error("room \(room.id) ended: \(failure.reason); closing its clients with 1011")
                let members = room.members
                endRoom(room)
                for m in members { closeWebSocket(m, .internalError, reason: "room ended") }
            }
        }
    }

    /// Tells `room`'s service that `client` left (or queues that while its lease is checked); an
    /// empty room then ends (a durable one is saved first: it hibernates until its next client).
    func serviceLost(_ client: ClientId, in room: Room) {
        if !mayRun(room) {
            // Told once its lease is confirmed; the room ends after that if it is empty.
            deferCallback(room, .disconnect(client))
            return
        }
        let failure = room.disconnect(client, self)
        room.forgetIdentity(of: client)
        if let failure {
            // Ended by drainPending, with its log line.
            roomFailed(room, failure)
            return
        }
        hibernateIfEmpty(room)
    }

    /// Serves new rooms from `factory` and ends every open room (clients are closed with 1012
    /// "service restart"); the next connect to a room id creates it afresh.
    func restartRooms(_ factory: any StateroomServiceFactory) {
        let open = rooms.replaceFactory(factory)
        for room in open {
            let members = room.members
            endRoom(room)
            for m in members { closeWebSocket(m, .serviceRestart, reason: "service restart") }
        }
        logger.info("service reloaded: \(open.count) room(s) restarted")
    }

    // MARK: - Closing

    /// Queues a close frame, leaves the room, and shuts the socket once the frame is out.
    func closeWebSocket(_ conn: Connection, _ code: CloseCode?, reason: String, grace: Double? = nil) {
        guard conn.state == .open else { return }
        // The server's closes that ask the client to come back keep its seat; the others end it.
        if conn.seated && !Self.keepsSeat(code) { conn.seatEnds = true }
        conn.state = .closing
        enqueue(conn, bytes: code.map { closeFrame($0, reason: reason) } ?? [0x88, 0x00])
        conn.closeAfterFlush = true
        scheduleLeave(conn)
        scheduleDeadline(conn, after: grace ?? config.closeTimeout)
    }

    /// Close codes after which a client is expected to reconnect: its seat is held. (1001 is
    /// also a heartbeat timeout: a client that went silent.)
    static func keepsSeat(_ code: CloseCode?) -> Bool {
        guard let code else { return false }
        return code == .goingAway || code == .serviceRestart || code == .tryAgainLater
    }

    func scheduleLeave(_ conn: Connection) {
        if conn.room != nil { pendingLeaves.append(conn) }
    }

    /// Ends a connection now: leaves its room, shuts the socket (which completes any receive or
    /// send in flight), and frees the slot once nothing is in flight.
    func abort(_ conn: Connection) {
        if conn.state == .dead { finishIfIdle(conn); return }
        if conn.state == .open { scheduleLeave(conn) }
        if conn.state == .parked { parked[conn.slot] = nil }
        conn.state = .dead
        Socket.shutdown(conn.fd, write: true, read: true)
        if conn.recvArmed { loop.cancel(conn.tag(.recv)) }
        if !conn.queue.sendInFlight { outbox.releaseAll(&conn.queue) }
        if let s = conn.transport.session {
            s.closeNotifyDone = true
            outbox.releaseAll(&s.pending)
        }
        finishIfIdle(conn)
    }

    func finishIfIdle(_ conn: Connection) {
        guard conn.state == .dead, !conn.recvArmed, !conn.queue.sendInFlight else { return }
        release(conn, closeDescriptor: true)
    }

    /// Frees the connection's slot; with `closeDescriptor`, closes its socket (else it was
    /// handed to another shard). Nothing of it may be in flight.
    private func release(_ conn: Connection, closeDescriptor: Bool) {
        guard conns.remove(conn) else { return }
        if !partialHeads.isEmpty { partialHeads[conn.slot] = nil }
        outbox.releaseAll(&conn.queue)
        // Still a member until the leave is handled (its room counts it by `deflate`): released then.
        if conn.room == nil { releaseCompression(conn) }
        if let s = conn.transport.session {
            // Handed off, the session goes with the socket (its queue is empty then).
            outbox.releaseAll(&s.pending)
            if closeDescriptor { conn.setPlain() }
        }
        if conn.room != nil { scheduleLeave(conn) }
        count(.connectionsOpen, -1)
        if closeDescriptor {
            loop.forget(fd: conn.fd)
            Socket.close(conn.fd)
            admission?.socketClosed()
            if accept.paused && admission?.belowSocketCap != false {
                accept.paused = false
                armAccept()
            }
        }
        conn.state = .dead
    }
}
