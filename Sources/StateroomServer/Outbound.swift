import IOCore
import Logging
import Stateroom
import WireProtocol

// The send path: a service's message is encoded once, a reference of it queued to each
// recipient (the outbox), and at the end of the loop turn every socket with frames gets one
// gathered send, unless the coalescer holds it a little.

extension Shard: RoomHost {
    /// Sends from a service: encodes the frame once, queues it to every recipient.
    func send(_ message: MessagePayload, to recipient: MessageRecipient, in room: Room) {
        assertOnShard()
        guard !room.isClosed else { return }
        let frame = pool.frame(message)
        // A durable room's frames wait for its state to be stored (the gate takes the reference).
        if let lease = room.lease { return gate(frame, to: recipient, in: room, lease) }
        if room.deflateMembers > 0 {
            fanOutCompressing(message, plain: frame, to: recipient, in: room)
        } else {
            room.fanOut(frame, to: recipient, pool: pool) { conn, frame in enqueue(conn, frame: frame) }
        }
        if let seats = room.seats { recordSent(frame, to: recipient, in: room, seats) }
        pool.release(frame)
    }

    /// Queues `frame` (a message frame; the caller keeps its reference) to the members
    /// `recipient` names, compressed for those that agreed to it. Inlined, so the per-recipient
    /// enqueue is specialized here as it is in ``send(_:to:in:)``.
    @inline(__always)
    func fanOutNow(_ frame: FrameBuffer, to recipient: MessageRecipient, in room: Room) {
        if room.deflateMembers > 0 {
            pool.withMessage(of: frame) { fanOutCompressing($0, plain: frame, to: recipient, in: room) }
        } else {
            room.fanOut(frame, to: recipient, pool: pool) { conn, frame in enqueue(conn, frame: frame) }
        }
    }

    func setTimer(of room: Room, milliseconds: UInt32) {
        guard !room.isClosed else { return }
        room.timerToken &+= 1
        timers.schedule(at: monotonicNanos() + UInt64(milliseconds) * 1_000_000, .room(room, token: room.timerToken))
    }
}

extension Shard {
    /// Queues a copy of `bytes` (a response, a close frame) to `conn`, whatever its queue holds.
    func enqueue(_ conn: Connection, bytes: [UInt8]) {
        enqueue(conn, frame: pool.buffer(copying: bytes), force: true)
    }

    /// Queues one reference of `frame` (already retained for this recipient) to `conn`: the
    /// transport seam, outbound. A client whose queue would pass the cap is closed with 1008
    /// instead; `force` (responses, control frames) skips the cap and a pending close.
    func enqueue(_ conn: Connection, frame: FrameBuffer, force: Bool = false) {
        // Messages queued to the connection are counted (also when the socket is gone: a seat's
        // room log then has what it missed).
        if !force { conn.delivered &+= 1 }
        if conn.state == .dead || (conn.closeAfterFlush && !force) || conn.writeShut {
            pool.release(frame)
            return
        }
        let len = frame.count
        // A single frame larger than the cap still goes to a client that has drained its queue;
        // the cap is about a backlog building up behind a client that does not read.
        let queued = conn.outboundBytes
        if !force && queued > 0 && queued + len > config.maxPendingBytes {
            pool.release(frame)
            slowClient(conn)
            return
        }
        switch conn.transport {
        case .plain: outbox.append(frame, to: &conn.queue)
        // Sealed with whatever else is queued by then, when the send is submitted (flushDirty).
        case .tls(let session): session._withUnsafeGuaranteedRef { outbox.append(frame, to: &$0.pending) }
        }
        count(.framesQueued)
        count(.bytesQueued, len)
        _ = coalescer.queueGrew(conn, queuedBytes: queued + len)
        markDirty(conn)
    }

    @inline(__always)
    func markDirty(_ conn: Connection) {
        if !conn.isDirty && !conn.queue.sendInFlight && !conn.pacing.isHeld {
            conn.isDirty = true
            dirty.append(conn)
        }
    }

    /// Over the outbound cap: drop what has not been handed to the kernel yet, queue a 1008
    /// close behind what is in flight, and cut the connection if it has not drained by the grace.
    func slowClient(_ conn: Connection) {
        guard conn.state == .open else { return }
        count(.slowClientCloses)
        logger.info("closing slow client \(conn.clientId) of room \(conn.room?.id ?? "?"): more than \(config.maxPendingBytes) bytes queued")
        dropUnsent(conn)
        closeWebSocket(conn, .policyViolation, reason: "too slow: outbound queue full", grace: config.slowClientGrace)
    }

    /// Drops what has not been handed to the kernel yet. With TLS only frames not yet sealed:
    /// sealed records are part of the stream (a record left out would break every later one).
    func dropUnsent(_ conn: Connection) {
        switch conn.transport {
        case .plain: outbox.dropUnsent(&conn.queue)
        case .tls(let session): outbox.releaseAll(&session.takeUnretainedValue().pending)
        }
    }

    /// Submits one gathered send per socket with frames queued this turn (the outbox gathers
    /// them), except those the coalescer holds; held sockets whose time has come are sent to.
    func flushDirty() {
        coalescer.releaseDue(now: now) { markDirty($0) }
        var i = 0
        while i < dirty.count {
            let conn = dirty[i]
            i += 1
            conn.isDirty = false
            guard !conn.queue.sendInFlight, conn.state != .dead else { continue }
            if !conn.hasOutbound {
                // A closing TLS connection says close_notify before its FIN.
                guard conn.closeAfterFlush && !conn.writeShut else { continue }
                if !queueCloseNotify(conn) {
                    shutWrite(conn)
                    continue
                }
            }
            if coalescer.hold(conn, queuedFrames: conn.outboundChunks, queuedBytes: conn.outboundBytes,
                              lastHeard: conn.lastHeard, closing: conn.closeAfterFlush, now: now) {
                count(.sendsHeld)
                continue
            }
            // With TLS the frames go out sealed together (a few records in one buffer): the
            // coalescer hears how many frames that was, as it would from a plain send.
            var sealedFrames: Int32 = 0
            if let session = conn.transport.session, !session.pending.isEmpty {
                sealedFrames = session.pending.chunks
                guard seal(conn, session) else { continue }
                sealedFrames -= session.pending.chunks
            }
            guard !conn.queue.isEmpty else { continue }
            let frames = outbox.submit(&conn.queue, fd: conn.fd, tag: conn.tag(.send), on: loop)
            coalescer.sent(conn, frames: max(frames, Int(sealedFrames)), now: now)
            count(.sendsSubmitted)
        }
        dirty.removeAll(keepingCapacity: true)
    }

    func handleSend(_ c: Completion) {
        guard let conn = conns.lookup(slot: c.tag.slot, generation: c.tag.generation) else { return }
        guard outbox.complete(&conn.queue, result: c.result) else {
            // The peer is gone (EPIPE, ECONNRESET) or we shut the socket down.
            if conn.state != .dead { abort(conn) } else { finishIfIdle(conn) }
            return
        }
        if conn.state == .dead {
            outbox.releaseAll(&conn.queue)
            finishIfIdle(conn)
            return
        }
        if conn.hasOutbound || conn.closeAfterFlush {
            markDirty(conn)
        } else if conn.state == .parked {
            unparkIfDrained(conn)
        }
    }

    /// Everything queued has gone out of a closing connection: send FIN and read until the peer's EOF.
    func shutWrite(_ conn: Connection) {
        conn.writeShut = true
        Socket.shutdown(conn.fd, write: true, read: false)
        if !conn.recvArmed { armReceive(conn, multishot: true) }
    }
}
