import IOCore
import Stateroom
import WireProtocol

// The shard's side of seats (Seats.swift, docs/seats.md): giving a seat, holding it when its
// connection drops, keeping what is sent to it, resuming it, and ending it.
//
// How the server knows what was missed: every connection counts the room's messages queued to
// it (``Connection/delivered``), and a room with seats keeps a short log of what it sent (one
// reference to each encoded frame, shared by every recipient: no copy per seat), bounded by the
// resume buffer. When a seat's connection drops, the log's messages for that seat are its last
// ones, numbered back from `delivered`: they cover frames that were in flight when the socket
// died. From then on, what the service sends the seat is kept in it (``HeldSeat``), in order. A
// resuming client names how many it received; the server sends it the rest.

extension Shard {
    // MARK: - Joining

    /// Resumes the seat `token` names in `room` for `conn`, when it can be: `conn` takes the
    /// seat's client id, then gets the seat message and every message after the client's
    /// `received`-th; the service is told nothing. False when it cannot (the caller gives a new
    /// seat): a token that is not this room's, another identity, a seat that ended, or a count
    /// the kept messages cannot continue from.
    func resumeSeat(_ conn: Connection, token: String, received: UInt64, identity: String?, in room: Room) -> Bool {
        guard config.resumeGrace > 0, let seats = room.seats, let id = seats.client(of: token, roomId: room.id),
              room.identity(of: id) == identity else {
            count(.resumesRefused)
            return false
        }
        var held = seats.held[id.rawValue]
        if held == nil, let old = room.member(id), old.seated, !old.seatEnds, received <= old.delivered {
            // A second connection for a seat in use: the first gives the seat up (4001).
            leaveQuietly(old, room)
            held = hold(id, delivered: old.delivered, in: room, seats)
            closeWebSocket(old, CloseCode(rawValue: 4001), reason: "seat resumed elsewhere")
        }
        guard let seat = held, !seat.overflowed, received <= seat.delivered else {
            count(.resumesRefused)
            return false
        }
        guard received &+ 1 >= seat.firstKept else {
            // Messages it did not receive are no longer kept: it comes back as a new client.
            count(.resumesRefused)
            pendingSeatEnds.append((room, seat))
            return false
        }
        seats.held[id.rawValue] = nil
        room.insert(conn, as: id)
        seats.seated += 1
        conn.seated = true
        count(.webSocketsOpen)
        queueSeatMessage(conn, id, seats, in: room, recovered: true)
        conn.delivered = received  // counted up again by each message sent below
        var number = seat.firstKept
        for frame in seat.kept {
            if number > received { enqueueMessage(conn, frame) }
            number &+= 1
        }
        letGo(seat)
        count(.resumesRecovered)
        return true
    }

    /// Gives `conn` (member `id` of `room`) a seat and queues the seat message (with
    /// `"seat": null` when seats are off).
    func giveSeat(_ conn: Connection, _ id: ClientId, in room: Room) {
        guard config.resumeGrace > 0 else {
            enqueue(conn, bytes: Self.seatMessage(token: nil, client: id, recovered: false, grace: 0))
            return
        }
        let seats: RoomSeats
        if let s = room.seats {
            seats = s
        } else {
            seats = RoomSeats(logCap: config.resumeBuffer)
            room.seats = seats
        }
        seats.seated += 1
        conn.seated = true
        queueSeatMessage(conn, id, seats, in: room, recovered: false)
    }

    private func queueSeatMessage(_ conn: Connection, _ id: ClientId, _ seats: RoomSeats, in room: Room, recovered: Bool) {
        enqueue(conn, bytes: Self.seatMessage(token: seats.token(for: id, roomId: room.id), client: id,
                                              recovered: recovered, grace: config.resumeGrace))
    }

    /// The seat message: a text frame, the first message on a connection that opted in.
    static func seatMessage(token: String?, client: ClientId, recovered: Bool, grace: Double) -> [UInt8] {
        let graceText = grace == grace.rounded() ? String(Int(grace)) : String(grace)
        let json = "{\"type\":\"seat\",\"seat\":\(token.map { "\"\($0)\"" } ?? "null"),\"client\":\(client.rawValue),"
            + "\"recovered\":\(recovered),\"grace\":\(graceText)}"
        let payload = Array(json.utf8)
        return [0x81, UInt8(payload.count)] + payload  // always under 126 bytes
    }

    /// Queues a message frame of the room's (the caller keeps its reference) to `conn`,
    /// compressed when the connection agreed to it.
    private func enqueueMessage(_ conn: Connection, _ frame: FrameBuffer) {
        if let deflate = conn.deflate {
            let compressed: FrameBuffer? = pool.withMessage(of: frame) { message in
                message.count >= config.compression.minimumBytes
                    ? compressedFrame(message, windowBits: deflate.parameters.serverMaxWindowBits) : nil
            }
            if let compressed { return enqueue(conn, frame: compressed) }
        }
        pool.retain(frame)
        enqueue(conn, frame: frame)
    }

    // MARK: - What the room sends

    /// Logs a message the room sent (one more reference of `frame`), and keeps it for each held
    /// seat it was for. Called where frames reach their recipients, in the order they do.
    func recordSent(_ frame: FrameBuffer, to recipient: MessageRecipient, joinedBefore: UInt32 = .max,
                    in room: Room, _ seats: RoomSeats) {
        let entry = LoggedFrame(frame: frame, recipient: recipient, joinedBefore: joinedBefore)
        pool.retain(frame)
        seats.log.append(entry)
        seats.logBytes += frame.count
        while seats.logBytes > seats.logCap && seats.log.count > 1 {
            let old = seats.log.removeFirst()
            seats.logBytes -= old.frame.count
            pool.release(old.frame)
        }
        if seats.held.isEmpty { return }
        for seat in seats.held.values where entry.applies(to: seat.clientId) {
            keep(frame, for: seat, in: room)
        }
    }

    private func keep(_ frame: FrameBuffer, for seat: HeldSeat, in room: Room) {
        guard !seat.overflowed else { return }
        seat.delivered &+= 1
        seat.keptSinceDrop += frame.count
        if seat.keptSinceDrop > config.resumeBuffer {
            // Past the bound: the seat ends (once the current callback is over).
            seat.overflowed = true
            pendingSeatEnds.append((room, seat))
            return
        }
        pool.retain(frame)
        seat.kept.append(frame)
        seat.keptBytes += frame.count
        count(.seatBytesKept, frame.count)
    }

    // MARK: - Leaving

    /// A seated connection left its room: the seat is held for the grace, unless the client
    /// closed it (or was closed for good). True when it is held (the service is not told).
    func seatLeft(_ conn: Connection, in room: Room) -> Bool {
        conn.seated = false
        guard let seats = room.seats else { return false }
        seats.seated -= 1
        // A server stopping without a store keeps nothing: its seats would die with it.
        if !conn.seatEnds && config.resumeGrace > 0 && !(shuttingDown && durable == nil) {
            _ = hold(conn.clientId, delivered: conn.delivered, in: room, seats)
            return true
        }
        if seats.isEmpty { dropSeats(of: room) }
        return false
    }

    /// Removes `conn` from its room without the service hearing of it (its seat lives on elsewhere).
    private func leaveQuietly(_ conn: Connection, _ room: Room) {
        conn.room = nil
        room.remove(conn)
        releaseCompression(conn)
        count(.webSocketsOpen, -1)
        conn.seated = false
        room.seats?.seated -= 1
    }

    /// Holds client `id`'s seat (its connection gone, `delivered` messages queued to it): the
    /// log's messages for it become its first kept ones (numbered back from `delivered`: those a
    /// dying socket may not have delivered), and its grace starts.
    private func hold(_ id: ClientId, delivered: UInt64, in room: Room, _ seats: RoomSeats) -> HeldSeat {
        let seat = HeldSeat(clientId: id, delivered: delivered, deadline: now &+ Shard.nanos(config.resumeGrace))
        var mine: [FrameBuffer] = []
        for entry in seats.log.reversed() where entry.applies(to: id) {
            if UInt64(mine.count) == delivered { break }
            mine.append(entry.frame)
        }
        for frame in mine.reversed() {
            pool.retain(frame)
            seat.kept.append(frame)
            seat.keptBytes += frame.count
        }
        count(.seatBytesKept, seat.keptBytes)
        seat.firstKept = delivered &- UInt64(mine.count) &+ 1
        seats.held[id.rawValue] = seat
        count(.seatsHeld)
        timers.schedule(at: seat.deadline, .seatGrace(room))
        return seat
    }

    /// A held seat is taken again (resumed) or ends: it gives back what it kept.
    private func letGo(_ seat: HeldSeat) {
        count(.seatsHeld, -1)
        count(.seatBytesKept, -seat.keptBytes)
        for frame in seat.kept { pool.release(frame) }
        seat.kept = []
        seat.keptBytes = 0
    }

    /// Ends a held seat (its grace or bound is over, or its client came back as someone new):
    /// the service gets the `disconnect` it did not get at the drop.
    func endHeldSeat(_ seat: HeldSeat, in room: Room) {
        guard let seats = room.seats, seats.held[seat.clientId.rawValue] === seat else { return }
        seats.held[seat.clientId.rawValue] = nil
        letGo(seat)
        if seats.isEmpty { dropSeats(of: room) }
        if room.isClosed { return }
        count(.seatsExpired)
        serviceLost(seat.clientId, in: room)
    }

    /// The grace of some of `room`'s held seats is over.
    func seatGraceOver(_ room: Room) {
        guard let seats = room.seats, !room.isClosed else { return }
        for seat in seats.held.values where seat.deadline <= now {
            endHeldSeat(seat, in: room)
        }
    }

    /// Gives back everything `room`'s seats hold (the room ends, or its last seat did).
    func dropSeats(of room: Room) {
        guard let seats = room.seats else { return }
        room.seats = nil
        for seat in seats.held.values { letGo(seat) }
        seats.held = [:]
        for entry in seats.log { pool.release(entry.frame) }
        seats.log = []
        seats.logBytes = 0
        for m in room.members { m.seated = false }
    }

    /// Whether `room` has seats held for clients who may come back (it stays open for them).
    func holdsSeats(_ room: Room) -> Bool {
        !(room.seats?.held.isEmpty ?? true)
    }

    // MARK: - Stored with the room

    /// `room`'s seats as they are to be stored with its last save before it is let go: a connected
    /// seat as if it dropped now, and each seat also keeps the frames the output gate still holds
    /// for it (the save covers them: they go out to connected clients before the room is let go).
    func storedSeats(of room: Room, _ lease: RoomLease?) -> StoredSeats? {
        guard let seats = room.seats, !seats.isEmpty, config.resumeGrace > 0 else { return nil }
        var out = StoredSeats(secret: seats.secret)
        var index: [FrameBuffer: UInt32] = [:]
        func number(_ frame: FrameBuffer) -> UInt32 {
            if let i = index[frame] { return i }
            let i = UInt32(out.frames.count)
            out.frames.append(Array(UnsafeRawBufferPointer(start: frame.bytes, count: frame.count)))
            index[frame] = i
            return i
        }
        let wallNow = Int64(TokenAuthenticator.wallClock() * 1000)
        var all: [(id: ClientId, delivered: UInt64, frames: [FrameBuffer], left: Int64)] = []
        for seat in seats.held.values where !seat.overflowed {
            let left = Int64((seat.deadline > now ? seat.deadline - now : 0) / 1_000_000)
            all.append((seat.clientId, seat.delivered, Array(seat.kept), left))
        }
        for m in room.members where m.seated && !m.seatEnds {
            var frames: [FrameBuffer] = []
            for entry in seats.log.reversed() where entry.applies(to: m.clientId) {
                if UInt64(frames.count) == m.delivered { break }
                frames.append(entry.frame)
            }
            all.append((m.clientId, m.delivered, frames.reversed(), Int64(config.resumeGrace * 1000)))
        }
        for seat in all.sorted(by: { $0.id.rawValue < $1.id.rawValue }) {
            var frames = seat.frames
            let firstKept = seat.delivered &- UInt64(frames.count) &+ 1
            for g in lease?.gated ?? [] {
                let entry = LoggedFrame(frame: g.frame, recipient: g.recipient, joinedBefore: g.joinedBefore)
                if entry.applies(to: seat.id) { frames.append(g.frame) }
            }
            out.seats.append(StoredSeats.Seat(
                clientId: seat.id.rawValue, identity: room.identity(of: seat.id), delivered: firstKept &+ UInt64(frames.count) &- 1, firstKept: firstKept,
                deadlineMilliseconds: wallNow + seat.left, kept: frames.map(number)))
        }
        return out.seats.isEmpty ? nil : out
    }

    /// Gives a restored room the seats stored with it, all held (their clients reconnect and
    /// resume); each grace ends when it would have where the room was.
    func restoreSeats(_ stored: StoredSeats, in room: Room) {
        guard config.resumeGrace > 0, !stored.seats.isEmpty else { return }
        let seats = RoomSeats(logCap: config.resumeBuffer, secret: stored.secret)
        room.seats = seats
        let frames = stored.frames.map { pool.buffer(copying: $0) }
        let wallNow = Int64(TokenAuthenticator.wallClock() * 1000)
        for s in stored.seats {
            let left = max(0, s.deadlineMilliseconds - wallNow)
            let seat = HeldSeat(clientId: ClientId(s.clientId), delivered: s.delivered, deadline: now &+ UInt64(left) * 1_000_000)
            seat.firstKept = s.firstKept
            for k in s.kept {
                let frame = frames[Int(k)]
                pool.retain(frame)
                seat.kept.append(frame)
                seat.keptBytes += frame.count
            }
            count(.seatBytesKept, seat.keptBytes)
            seats.held[s.clientId] = seat
            room.remember(identity: s.identity, of: seat.clientId)
            count(.seatsHeld)
            timers.schedule(at: seat.deadline, .seatGrace(room))
        }
        for frame in frames { pool.release(frame) }
    }
}
