import CTLS
import Glibc
import IOCore
import WireProtocol

// TLS (wss:// and https:// on the listening port) over OpenSSL with memory-only sessions: every
// socket read and write stays on the shard's ring; OpenSSL only opens and seals records. One of
// the files of this module that touch raw memory (with Inbound.swift and Frames.swift).
//
// Inbound, received ciphertext is lent to the session for one call and the plaintext it opens
// goes to the request-head reader or the frame parser, as plain bytes would. Outbound, frames
// (still encoded once per broadcast) wait as plaintext in the session's queue and are sealed at
// the end of the loop turn, when the socket's send is submitted: everything queued for a client
// since its last send goes out in as few records as possible (up to 16 KiB each), the same
// gathering as send coalescing. The sealed records are the only bytes the outbox sends.

/// The certificate chain and private key a server presents (PEM files; RSA or ECDSA).
public struct TLSFiles: Sendable, Equatable {
    public var certificateChain: String
    public var privateKey: String

    public init(certificateChain: String, privateKey: String) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
    }
}

/// A certificate and key that cannot be served, with the reason naming the file.
public struct TLSError: Error, CustomStringConvertible {
    public let description: String
}

/// An OpenSSL server context: the loaded pair and the settings every session shares (TLS 1.2
/// and 1.3, OpenSSL's default ciphers, no renegotiation, ALPN `http/1.1`, session tickets and
/// a session cache). Shared by all shards (OpenSSL's contexts are thread-safe); a session keeps
/// the context it was made from alive, so a reload never disturbs an open connection.
final class TLSContext: @unchecked Sendable {
    // @unchecked: the context is immutable once made; OpenSSL locks its shared parts (session
    // cache, ticket keys, reference counts) itself.
    let pointer: OpaquePointer
    /// Subject and expiry, for log lines.
    let summary: String

    init(_ files: TLSFiles) throws {
        var err = [CChar](repeating: 0, count: 512)
        guard let ctx = ctls_server_ctx_new(files.certificateChain, files.privateKey, &err, err.count) else {
            throw TLSError(description: String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        pointer = ctx
        var info = [CChar](repeating: 0, count: 512)
        ctls_ctx_describe(ctx, &info, info.count)
        summary = String(decoding: info.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { ctls_ctx_free(pointer) }
}

/// One connection's TLS session. Owned by one shard at a time: it moves with the socket when the
/// socket is handed to the shard owning its room (after the accepting shard has finished with it).
final class TLSSession: @unchecked Sendable {
    // @unchecked: touched by one shard thread at a time; the hand-off message is the only way
    // it crosses threads, posted after the sending shard's last use. Its fields opt out of
    // dynamic exclusivity checks for the same reason as Connection's (one event at a time).
    let conn: OpaquePointer
    /// Frames waiting to be sealed (plaintext), in the owning shard's outbox rings.
    @exclusivity(unchecked) var pending = SendQueue()
    /// Ciphertext received but not yet opened: what followed the request head in the same
    /// receive when the socket was parked for a hand-off. Empty otherwise.
    @exclusivity(unchecked) var carry: [UInt8] = []
    @exclusivity(unchecked) var established = false
    /// The first byte has been checked (a TLS handshake record, or something else).
    @exclusivity(unchecked) var sawFirstByte = false
    /// close_notify is queued, or must not be sent (the handshake failed).
    @exclusivity(unchecked) var closeNotifyDone = false
    /// A receive is being opened: a hand-off waits until it is over.
    @exclusivity(unchecked) var busy = false

    init?(_ context: TLSContext) {
        guard let c = ctls_conn_new(context.pointer, nil) else { return nil }
        conn = c
    }

    deinit { ctls_conn_free(conn) }
}

/// A shard's TLS scratch: the ciphertext output buffer every session of the shard appends to
/// during a call, and the plaintext buffers records are opened into and gathered from.
final class TLSWorkspace {
    let io: UnsafeMutablePointer<ctls_io>
    /// Opened records (one at a time: a record holds at most 16 KiB).
    let opened: UnsafeMutableRawPointer
    static let openedCapacity = 16 << 10
    /// Queued frames copied together before sealing, one record's worth.
    let gather: UnsafeMutableRawPointer
    static let recordPayload = 16 << 10
    /// Most plaintext sealed for one socket per send: a slow client's backlog stays plaintext
    /// in its queue (and is dropped with it) instead of becoming a large run of records.
    static let sealBudget = 256 << 10

    init() {
        io = .allocate(capacity: 1)
        io.initialize(to: ctls_io())
        opened = .allocate(byteCount: Self.openedCapacity, alignment: 16)
        gather = .allocate(byteCount: Self.recordPayload, alignment: 16)
    }

    deinit {
        ctls_io_free(io)
        io.deallocate()
        opened.deallocate()
        gather.deallocate()
    }

    /// OpenSSL's reason for the last failure on this thread.
    static func lastError() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        ctls_last_error(&buf, buf.count)
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension Shard {
    // MARK: - Inbound

    /// Opens the records in `input` (after any ciphertext carried over) and passes the plaintext on.
    func tlsReceived(_ conn: Connection, _ session: TLSSession, _ input: UnsafeMutableRawBufferPointer) {
        guard conn.state == .http || conn.state == .open else { return }
        if session.carry.isEmpty {
            tlsOpen(conn, session, UnsafeRawBufferPointer(input))
        } else {
            var joined = session.carry
            session.carry = []
            joined.append(contentsOf: UnsafeRawBufferPointer(input))
            joined.withUnsafeBytes { tlsOpen(conn, session, $0) }
        }
    }

    private func tlsOpen(_ conn: Connection, _ session: TLSSession, _ input: UnsafeRawBufferPointer) {
        let work = tlsWorkspace
        let io = work.io
        io.pointee.in = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
        io.pointee.in_len = input.count
        session.busy = true
        defer {
            io.pointee.in = nil
            io.pointee.in_len = 0
            session.busy = false
            if conn.state == .parked { unparkIfDrained(conn) }
        }
        if !session.established {
            if !session.sawFirstByte, let first = input.first {
                session.sawFirstByte = true
                // Every TLS connection opens with a handshake record (content type 22).
                if first != 0x16 {
                    notTLS(conn, plainText: (0x41...0x5A).contains(first))
                    return
                }
            }
            let r = ctls_handshake(session.conn, io)
            queueSealed(conn)
            if r == CTLS_FAILED {
                count(.tlsHandshakeFailures)
                logger.debug("TLS handshake failed: \(TLSWorkspace.lastError())")
                closeAfterAlert(conn, session)
                return
            }
            if r != 1 { return }
            session.established = true
            count(.tlsHandshakes)
            if ctls_resumed(session.conn) == 1 { count(.tlsResumptions) }
        }
        while conn.state == .http || conn.state == .open {
            let n = ctls_read(session.conn, io, work.opened, Int32(TLSWorkspace.openedCapacity))
            if n > 0 {
                deliver(conn, UnsafeMutableRawBufferPointer(start: work.opened, count: Int(n)))
                continue
            }
            if n == CTLS_WANT_INPUT { break }
            queueSealed(conn)
            if n == CTLS_CLOSED {
                // close_notify: the peer has finished sending, as an EOF would say.
                session.closeNotifyDone = true
                abort(conn)
            } else {
                count(.tlsRecordErrors)
                logger.debug("TLS record rejected: \(TLSWorkspace.lastError())")
                closeAfterAlert(conn, session)
            }
            return
        }
        // Tickets after a handshake, answers to key updates.
        queueSealed(conn)
        if conn.state == .parked && io.pointee.in_len > 0, let rest = io.pointee.in {
            session.carry = Array(UnsafeRawBufferPointer(start: rest, count: io.pointee.in_len))
        }
    }

    /// Bytes that are not a TLS handshake on the TLS port: a plain HTTP request is answered in
    /// plain text (400, saying to use https:// or wss://), anything else is closed.
    private func notTLS(_ conn: Connection, plainText: Bool) {
        if let s = conn.transport.session { s.closeNotifyDone = true }
        if plainText {
            count(.tlsPlaintextRejected)
            conn.setPlain()
            let body = Array("400 Bad Request: this port speaks TLS; use https:// or wss://\n".utf8)
            respond(conn, httpResponse(.badRequest, headers: [("Content-Type", "text/plain; charset=utf-8")],
                                       body: body, keepAlive: false), close: true)
        } else {
            count(.tlsHandshakeFailures)
            abort(conn)
        }
    }

    /// After a fatal alert: the alert goes out, then the socket closes (a client in a room leaves
    /// it; frames waiting to be sealed are dropped, the session can seal nothing more).
    private func closeAfterAlert(_ conn: Connection, _ session: TLSSession) {
        session.closeNotifyDone = true
        outbox.releaseAll(&session.pending)
        guard conn.state == .http || conn.state == .open else { return }
        if conn.state == .open { scheduleLeave(conn) }
        conn.state = .closing
        conn.closeAfterFlush = true
        scheduleDeadline(conn, after: config.closeTimeout)
        markDirty(conn)
    }

    // MARK: - Outbound

    /// Moves the records the last call sealed (handshake messages, alerts, tickets, sealed
    /// frames) from the shard's output buffer to the connection's send queue.
    func queueSealed(_ conn: Connection, markDirty mark: Bool = true) {
        let io = tlsWorkspace.io
        let n = io.pointee.out_len
        guard n > 0, let out = io.pointee.out else { return }
        io.pointee.out_len = 0
        guard conn.state != .dead else { return }
        let buffer = pool.allocate(capacity: n)
        buffer.bytes.copyMemory(from: out, byteCount: n)
        buffer.count = n
        outbox.append(buffer, to: &conn.queue)
        if mark { markDirty(conn) }
    }

    /// Seals the frames waiting in `session`'s queue into records, up to ``TLSWorkspace/sealBudget``
    /// bytes: queued frames are copied together into one record's worth of plaintext at a time.
    /// False if the session failed (the connection is then aborted).
    func seal(_ conn: Connection, _ session: TLSSession) -> Bool {
        let work = tlsWorkspace
        var sealed = 0
        while !session.pending.isEmpty && sealed < TLSWorkspace.sealBudget {
            let n = outbox.gather(&session.pending, into: work.gather, capacity: TLSWorkspace.recordPayload)
            if ctls_write(session.conn, work.io, work.gather, Int32(n)) != Int32(n) {
                work.io.pointee.out_len = 0
                logger.debug("TLS seal failed: \(TLSWorkspace.lastError())")
                abort(conn)
                return false
            }
            sealed += n
        }
        queueSealed(conn, markDirty: false)
        return true
    }

    /// Queues close_notify once everything else has gone out of a closing TLS connection.
    /// False when there is nothing to send (plain, already sent, or no session established).
    func queueCloseNotify(_ conn: Connection) -> Bool {
        guard let s = conn.transport.session, !s.closeNotifyDone else { return false }
        s.closeNotifyDone = true
        guard s.established else { return false }
        ctls_close_notify(s.conn, tlsWorkspace.io)
        queueSealed(conn, markDirty: false)
        return !conn.queue.isEmpty
    }
}

extension Connection {
    /// Outbound bytes not yet reported sent: queued records or frames, and frames waiting to be sealed.
    @inline(__always)
    var outboundBytes: Int {
        switch transport {
        case .plain: queue.bytes
        case .tls(let s): queue.bytes + s._withUnsafeGuaranteedRef { $0.pending.bytes }
        }
    }

    /// Queued chunks, sealed or waiting to be.
    @inline(__always)
    var outboundChunks: Int32 {
        switch transport {
        case .plain: queue.chunks
        case .tls(let s): queue.chunks + s._withUnsafeGuaranteedRef { $0.pending.chunks }
        }
    }

    /// Something is queued to go out (sent or not).
    @inline(__always)
    var hasOutbound: Bool {
        switch transport {
        case .plain: !queue.isEmpty
        case .tls(let s): !queue.isEmpty || s._withUnsafeGuaranteedRef { !$0.pending.isEmpty }
        }
    }
}
