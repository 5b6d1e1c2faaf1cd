import Glibc
import IOCore
import Stateroom
import WireProtocol

// The shard's side of seats (Seats.swift, docs/seats.md): giving a seat, holding it when its
// connection drops, keeping what is sent to it, resuming it, and ending it.

extension Shard {
    // MARK: - Joining

    /// Resumes the seat `token` names in `room` for `conn`, when it can be: `conn` takes the
    /// seat's client id, then gets the seat message and every message after the client's
    /// `received`-th; the service is told nothing. False when it cannot (the caller gives a new
    /// seat): unknown token, another identity, or a count the kept messages cannot continue.
    func resumeSeat(_ conn: Connection, token: String, received: UInt64, identity: String?, in room: Room) -> Bool {
        guard config.resumeGrace > 0, let seats = room.seats, let seat = seats.byToken[token],
              !seat.ended, !seat.endsOnLeave, seat.identity == identity, received <= seat.delivered else {
            count(.resumesRefused)
            return false
        }
        if !seat.held {
            // A second connection for a seat in use: the first gives the seat up (4001).
            guard let old = room.member(seat.clientId) else {
                count(.resumesRefused)
                return false
            }
            leaveQuietly(old, room)
            old.seat = nil
            hold(seat, in: room, seats)
            closeWebSocket(old, CloseCode(rawValue: 4001), reason: "seat resumed elsewhere")
        }
        guard received &+ 1 >= seat.firstKept else {
            // Messages it did not receive are no longer kept: it comes back as a new client.
            count(.resumesRefused)
            pendingSeatEnds.append((room, seat))
            return false
        }
        room.insert(conn, as: seat.clientId)
        conn.seat = seat
        count(.webSocketsOpen)
        queueSeatMessage(conn, seat, recovered: true)
        seat.delivered = received  // counted up again by each message sent below
        var number = seat.firstKept
        for frame in seat.kept {
            if number > received { enqueueMessage(conn, frame) }
            number &+= 1
        }
        unhold(seat, seats)
        count(.resumesRecovered)
        return true
    }

    /// Gives `conn` (member `id` of `room`) a new seat and queues the seat message (with
    /// `"seat": null` when seats are off).
    func giveSeat(_ conn: Connection, _ id: ClientId, identity: String?, in room: Room) {
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
        let seat = Seat(clientId: id, token: Seat.newToken(), identity: identity)
        seats.byToken[seat.token] = seat
        seats.byClient[id.rawValue] = seat
        conn.seat = seat
        queueSeatMessage(conn, seat, recovered: false)
    }

    private func queueSeatMessage(_ conn: Connection, _ seat: Seat, recovered: Bool) {
        enqueue(conn, bytes: Self.seatMessage(token: seat.token, client: seat.clientId, recovered: recovered,
                                              grace: config.resumeGrace))
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
        for seat in seats.held where !seat.ended && entry.applies(to: seat.clientId) {
            keep(frame, for: seat, in: room)
        }
    }

    private func keep(_ frame: FrameBuffer, for seat: Seat, in room: Room) {
        guard seat.keptSinceDrop <= config.resumeBuffer else { return }  // ending: nothing more kept
        seat.delivered &+= 1
        seat.keptSinceDrop += frame.count
        if seat.keptSinceDrop > config.resumeBuffer {
            // Past the bound: the seat ends (once the current callback is over).
            pendingSeatEnds.append((room, seat))
            return
        }
        pool.retain(frame)
        seat.kept.append(frame)
        seat.keptBytes += frame.count
        count(.seatBytesKept, frame.count)
    }

    // MARK: - Leaving

    /// The seat's connection left: the seat is held for the grace, unless the client closed it
    /// (or was closed for good). True when it is held (the service is not told).
    func seatLeft(_ conn: Connection, _ seat: Seat, in room: Room) -> Bool {
        conn.seat = nil
        guard let seats = room.seats, !seat.endsOnLeave, !seat.ended, config.resumeGrace > 0 else {
            if let seats = room.seats {
                forget(seat, seats)
                if seats.isEmpty { dropSeats(of: room) }
            }
            return false
        }
        hold(seat, in: room, seats)
        return true
    }

    /// Removes `conn` from its room without the service hearing of it (its seat lives on elsewhere).
    private func leaveQuietly(_ conn: Connection, _ room: Room) {
        conn.room = nil
        room.remove(conn)
        releaseCompression(conn)
        count(.webSocketsOpen, -1)
    }

    /// Holds `seat` (its connection gone): the log's messages for it become its first kept ones
    /// (numbered back from `delivered`: those a dying socket may not have delivered), and its
    /// grace starts.
    private func hold(_ seat: Seat, in room: Room, _ seats: RoomSeats) {
        var mine: [FrameBuffer] = []
        for entry in seats.log.reversed() where entry.applies(to: seat.clientId) {
            if UInt64(mine.count) == seat.delivered { break }
            mine.append(entry.frame)
        }
        seat.kept = []
        for frame in mine.reversed() {
            pool.retain(frame)
            seat.kept.append(frame)
            seat.keptBytes += frame.count
        }
        count(.seatBytesKept, seat.keptBytes)
        seat.firstKept = seat.delivered &- UInt64(mine.count) &+ 1
        seat.keptSinceDrop = 0
        seat.held = true
        seat.deadline = now &+ Shard.nanos(config.resumeGrace)
        seats.held.append(seat)
        count(.seatsHeld)
        timers.schedule(at: seat.deadline, .seatGrace(room))
    }

    /// A held seat is taken again (resumed) or ends: it gives back what it kept.
    private func unhold(_ seat: Seat, _ seats: RoomSeats) {
        guard seat.held else { return }
        seat.held = false
        if let i = seats.held.firstIndex(where: { $0 === seat }) { seats.held.remove(at: i) }
        count(.seatsHeld, -1)
        count(.seatBytesKept, -seat.keptBytes)
        for frame in seat.kept { pool.release(frame) }
        seat.kept = []
        seat.keptBytes = 0
        seat.keptSinceDrop = 0
    }

    /// The seat is gone: out of the room's tables (the tables and the log go with the last seat).
    private func forget(_ seat: Seat, _ seats: RoomSeats) {
        unhold(seat, seats)
        seat.ended = true
        seats.byToken[seat.token] = nil
        seats.byClient[seat.clientId.rawValue] = nil
    }

    /// Ends a held seat (its grace or bound is over, or its client came back as someone new):
    /// the service gets the `disconnect` it did not get at the drop.
    func endHeldSeat(_ seat: Seat, in room: Room) {
        guard let seats = room.seats, !seat.ended, seats.byToken[seat.token] === seat else { return }
        forget(seat, seats)
        if seats.isEmpty { dropSeats(of: room) }
        if room.isClosed { return }
        count(.seatsExpired)
        serviceLost(seat.clientId, in: room)
    }

    /// The grace of some of `room`'s held seats is over.
    func seatGraceOver(_ room: Room) {
        guard let seats = room.seats, !room.isClosed else { return }
        for seat in seats.held where seat.deadline <= now && !seat.ended {
            endHeldSeat(seat, in: room)
        }
    }

    /// Gives back everything `room`'s seats hold (the room ends, or its last seat did).
    func dropSeats(of room: Room) {
        guard let seats = room.seats else { return }
        room.seats = nil
        for seat in seats.held { unhold(seat, seats) }
        for entry in seats.log { pool.release(entry.frame) }
        seats.log = []
        seats.logBytes = 0
        for seat in seats.byToken.values { seat.ended = true }
        seats.byToken = [:]
        seats.byClient = [:]
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
        var out = StoredSeats()
        var index: [FrameBuffer: UInt32] = [:]
        func number(_ frame: FrameBuffer) -> UInt32 {
            if let i = index[frame] { return i }
            let i = UInt32(out.frames.count)
            out.frames.append(Array(UnsafeRawBufferPointer(start: frame.bytes, count: frame.count)))
            index[frame] = i
            return i
        }
        let wallNow = Self.wallMilliseconds()
        for seat in seats.byToken.values.sorted(by: { $0.clientId.rawValue < $1.clientId.rawValue }) where !seat.ended {
            var frames: [FrameBuffer] = []
            if seat.held {
                frames = Array(seat.kept)
            } else {
                for entry in seats.log.reversed() where entry.applies(to: seat.clientId) {
                    if UInt64(frames.count) == seat.delivered { break }
                    frames.append(entry.frame)
                }
                frames.reverse()
            }
            let firstKept = seat.delivered &- UInt64(frames.count) &+ 1
            for g in lease?.gated ?? [] {
                let entry = LoggedFrame(frame: g.frame, recipient: g.recipient, joinedBefore: g.joinedBefore)
                if entry.applies(to: seat.clientId) { frames.append(g.frame) }
            }
            let left = seat.held ? Int64((seat.deadline > now ? seat.deadline - now : 0) / 1_000_000)
                                 : Int64(config.resumeGrace * 1000)
            out.seats.append(StoredSeats.Seat(
                clientId: seat.clientId.rawValue, token: seat.token, identity: seat.identity,
                delivered: firstKept &+ UInt64(frames.count) &- 1, firstKept: firstKept,
                deadlineMilliseconds: wallNow + left, kept: frames.map(number)))
        }
        return out.seats.isEmpty ? nil : out
    }

    /// Gives a restored room the seats stored with it, all held (their clients reconnect and
    /// resume); each grace ends when it would have where the room was.
    func restoreSeats(_ stored: StoredSeats, in room: Room) {
        guard config.resumeGrace > 0, !stored.seats.isEmpty else { return }
        let seats = room.seats ?? RoomSeats(logCap: config.resumeBuffer)
        room.seats = seats
        let frames = stored.frames.map { pool.buffer(copying: $0) }
        let wallNow = Self.wallMilliseconds()
        for s in stored.seats {
            let seat = Seat(clientId: ClientId(s.clientId), token: s.token, identity: s.identity)
            seat.delivered = s.delivered
            seat.firstKept = s.firstKept
            for k in s.kept {
                let frame = frames[Int(k)]
                pool.retain(frame)
                seat.kept.append(frame)
                seat.keptBytes += frame.count
            }
            count(.seatBytesKept, seat.keptBytes)
            seat.held = true
            let left = max(0, s.deadlineMilliseconds - wallNow)
            seat.deadline = now &+ UInt64(left) * 1_000_000
            seats.byToken[seat.token] = seat
            seats.byClient[s.clientId] = seat
            room.remember(identity: s.identity, of: seat.clientId)
            seats.held.append(seat)
            count(.seatsHeld)
            timers.schedule(at: seat.deadline, .seatGrace(room))
        }
        for frame in frames { pool.release(frame) }
    }

    // MARK: - Wall clock

    /// Milliseconds since the Unix epoch (seat deadlines stored with a room).
    static func wallMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
