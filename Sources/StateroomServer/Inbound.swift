import Glibc
import IOCore
import Stateroom
import WireProtocol

// The receive path: a received buffer, through the connection's transport, to the request-head
// reader (front door) or the frame parser (room). One of the three files of this module that touch
// raw memory (with Frames.swift and TLS.swift): received bytes are borrowed views of the loop's
// provided buffer, valid until the buffer is recycled at the end of the completion.

/// How a connection's bytes cross the wire: the seam between the socket and the protocol.
///
/// Inbound, what the socket delivers passes through ``Shard/received(_:_:)`` before the request
/// head reader or the frame parser sees it; outbound, every frame passes through
/// ``Shard/enqueue(_:frame:force:)`` before the outbox queues it. Plain bytes are passed as they
/// are. TLS holds its session: records opened into plaintext on the way in, frames sealed into
/// records on the way out (at the end of the loop turn, see ``Shard/flushDirty()``).
enum Transport {
    /// Bytes as they are.
    case plain
    /// TLS (TLS.swift): records opened on the way in, frames sealed on the way out. The session
    /// is retained once by the connection holding this value (``Connection/setTLS(_:)``; released
    /// by ``Connection/setPlain()`` or when the connection goes): unmanaged, so the hot path
    /// (every frame queued) reaches it without a retain and a release.
    case tls(Unmanaged<TLSSession>)

    /// The session, as a strong reference (for paths that are not per frame).
    var session: TLSSession? {
        if case .tls(let u) = self { u.takeUnretainedValue() } else { nil }
    }
}

extension Shard {
    func handleRecv(_ c: Completion) {
        guard let conn = conns.lookup(slot: c.tag.slot, generation: c.tag.generation) else {
            if let id = c.bufferID { loop.recycle(id) }
            return
        }
        if !c.more { conn.recvArmed = false }
        if let id = c.bufferID {
            if c.result > 0 {
                conn.lastHeard = now
                received(conn, loop.buffer(id, count: Int(c.result)))
            }
            loop.recycle(id)
        }
        if conn.state == .dead {
            finishIfIdle(conn)
            return
        }
        if c.result > 0 || c.result == -ENOBUFS {
            // A receive can end while the socket lives: a multishot one when the buffer ring was
            // briefly empty, a single-shot one (request heads) after each read or on an empty ring.
            if !conn.recvArmed {
                switch conn.state {
                case .http: armReceive(conn, multishot: false)
                case .open, .closing: armReceive(conn, multishot: true)
                case .parked, .dead: break
                }
            }
            return
        }
        if conn.recvArmed { return }
        // EOF or error: the peer is gone (or we shut the socket down).
        if let s = conn.transport.session, !s.established, conn.state == .http { count(.tlsHandshakesAbandoned) }
        abort(conn)
    }

    /// The transport seam, inbound: bytes from the socket reach the request-head reader or the
    /// frame parser.
    @inline(__always)
    func received(_ conn: Connection, _ bytes: UnsafeMutableRawBufferPointer) {
        switch conn.transport {
        case .plain: deliver(conn, bytes)
        case .tls(let session): tlsReceived(conn, session.takeUnretainedValue(), bytes)
        }
    }

    /// Plain bytes (as received, or opened from records) to the request-head reader or the frame parser.
    @inline(__always)
    func deliver(_ conn: Connection, _ bytes: UnsafeMutableRawBufferPointer) {
        switch conn.state {
        case .http: onHTTPBytes(conn, bytes)
        case .open: onFrameBytes(conn, bytes)
        case .parked, .closing, .dead: break
        }
    }

    // MARK: - Request heads

    private func onHTTPBytes(_ conn: Connection, _ buf: UnsafeMutableRawBufferPointer) {
        if var pending = partialHeads.removeValue(forKey: conn.slot) {
            pending.append(contentsOf: UnsafeRawBufferPointer(buf))
            let consumed = pending.withUnsafeMutableBytes { processHTTP(conn, $0) }
            if consumed < pending.count, conn.state == .http {
                pending.removeFirst(consumed)
                partialHeads[conn.slot] = pending
            }
        } else {
            let consumed = processHTTP(conn, buf)
            if consumed < buf.count, conn.state == .http {
                partialHeads[conn.slot] = Array(UnsafeRawBufferPointer(rebasing: buf[consumed...]))
            }
        }
        if conn.state == .http { armReceive(conn, multishot: false) }
    }

    /// Answers every complete request head in `buf` through the front door; returns the bytes
    /// consumed. After an upgrade the remaining bytes are frames and are consumed here as well.
    private func processHTTP(_ conn: Connection, _ buf: UnsafeMutableRawBufferPointer) -> Int {
        var offset = 0
        while conn.state == .http && offset < buf.count {
            switch parseHTTPHead(UnsafeRawBufferPointer(rebasing: buf[offset...])) {
            case .needMore:
                return offset
            case .failure(let status):
                httpError(conn, httpErrorResponse(status))
                return buf.count
            case .complete(let head):
                let headLength = head.headLength
                switch frontDoor.answer(head, peer: { Socket.peerAddress(conn.fd) }) {
                case .respond(let response, let keepAlive):
                    respond(conn, response, close: !keepAlive)
                case .fail(let response):
                    httpError(conn, response)
                    return buf.count
                case .refuse(let response, let why):
                    count(.upgradesRefused)
                    if why != .policy { count(why.counter) }
                    respond(conn, response, close: true)
                    return buf.count
                case .upgrade(let accepted, let owner):
                    let rest = UnsafeMutableRawBufferPointer(rebasing: buf[(offset + headLength)...])
                    if owner != index {
                        handOff(conn, to: owner, accepted, rest: Array(UnsafeRawBufferPointer(rest)))
                    } else {
                        upgrade(conn, accepted, rest: rest)
                    }
                    return buf.count
                }
                offset += headLength
            }
        }
        return offset
    }

    // MARK: - WebSocket

    /// Answers 101, joins (or creates) the room, and parses `rest`, the bytes that followed the
    /// request head, as frames.
    func upgrade(_ conn: Connection, _ accepted: AcceptedUpgrade, rest: UnsafeMutableRawBufferPointer) {
        if awaitStoredRoom(conn, accepted, rest: rest) { return }
        guard join(conn, accepted) else { return }
        armReceive(conn, multishot: true)
        if rest.count > 0 { onFrameBytes(conn, rest) }
    }

    /// ``upgrade(_:_:rest:)`` for a socket handed over by another shard with the bytes it had read
    /// (plain bytes; with TLS, also ciphertext the session has not opened yet, which is opened now).
    func upgrade(_ conn: Connection, _ accepted: AcceptedUpgrade, rest: [UInt8]) {
        var rest = rest
        rest.withUnsafeMutableBytes { upgrade(conn, accepted, rest: $0) }
        if let session = conn.transport.session, !session.carry.isEmpty {
            tlsReceived(conn, session, UnsafeMutableRawBufferPointer(start: nil, count: 0))
        }
    }

    private func onFrameBytes(_ conn: Connection, _ buf: UnsafeMutableRawBufferPointer) {
        var offset = 0
        while conn.state == .open {
            switch conn.parser.next(buf, offset: &offset) {
            case .needMore:
                return
            case .message(let opcode, let view):
                count(.messagesReceived)
                guard let room = conn.room else { continue }
                let payload = MessagePayload(borrowing: view, kind: opcode == .text ? .text : .binary)
                if let failure = deliver(payload, from: conn, to: room) {
                    roomFailed(room, failure)
                    return
                }
            case .compressedMessage(let opcode, let view):
                count(.messagesReceived)
                guard let room = conn.room, let deflate = conn.deflate else { continue }
                if !receiveCompressed(conn, deflate, opcode, view, room: room) { return }
            case .ping(let view):
                enqueue(conn, frame: pool.frame(.pong, payload: view), force: true)
            case .pong:
                break
            case .close(let code, _):
                // The client left: its seat ends. Echo its code (an empty close is answered with
                // an empty close).
                conn.seatEnds = true
                closeWebSocket(conn, code.map { CloseCode(rawValue: $0) }, reason: "")
                return
            case .protocolError(let code):
                count(.protocolErrorCloses)
                closeWebSocket(conn, code, reason: Self.protocolReason(code))
                return
            }
        }
    }

    private static func protocolReason(_ code: CloseCode) -> String {
        switch code.rawValue {
        case 1002: return "protocol error"
        case 1007: return "invalid UTF-8"
        case 1009: return "message too big"
        default: return ""
        }
    }
}
