import IOCore
import Stateroom
import WireProtocol

/// One client socket, owned by exactly one shard.
///
/// Life: `.http` (reading the request head) → `.open` (WebSocket, member of a room) →
/// `.closing` (close frame or error response queued; the write side is shut once the queue
/// drains, and the socket is read until EOF or the deadline) → `.dead` (shut down; the slot is
/// freed when no operation on it is in flight). An upgrade whose room another shard owns leaves
/// `.http` for `.parked` when a response to an earlier request is still on its way out: the
/// socket moves once that has drained, so no send of this shard's is in flight on it then.
///
/// Kept compact (one allocation of about 170 bytes): a server holds one per idle client. What
/// only a busy or unusual connection needs costs nothing while unused: a frame spanning buffers
/// sits in the parser's lazy storage, queued frames in a ring the ``Outbox`` lends the queue
/// only while it is not empty.
///
/// Every stored property is touched only by the owning shard's thread, one event at a time, so
/// the hot ones opt out of dynamic exclusivity checks (`@exclusivity(unchecked)`), which cost
/// about 40% of the shard's user-space time in a fan-out profile.
final class Connection {
    enum State: UInt8 { case http, parked, open, closing, dead }

    let slot: UInt32
    let generation: UInt32
    let fd: Int32
    /// The client's id in its room (valid while `room` is set).
    @exclusivity(unchecked) var clientId = ClientId(0)
    @exclusivity(unchecked) var state: State = .http
    /// A receive is armed on the socket.
    @exclusivity(unchecked) var recvArmed = false
    /// In the shard's list of sockets to send to at the end of the loop turn.
    @exclusivity(unchecked) var isDirty = false
    /// Shut the write side once everything queued has gone out.
    @exclusivity(unchecked) var closeAfterFlush = false
    @exclusivity(unchecked) var writeShut = false
    /// The client holds a seat (it opted in: Seats.swift).
    @exclusivity(unchecked) var seated = false
    /// Its leaving ends the seat (the client closed, or was closed for good).
    @exclusivity(unchecked) var seatEnds = false
    /// When the client last sent anything (monotonic nanoseconds).
    @exclusivity(unchecked) var lastHeard: UInt64
    @exclusivity(unchecked) var parser: FrameParser
    @exclusivity(unchecked) var room: Room?
    /// The room's messages queued to this connection (a seat's count: what a resume continues from).
    @exclusivity(unchecked) var delivered: UInt64 = 0
    /// permessage-deflate, when the client agreed to it (nil for most connections).
    @exclusivity(unchecked) var deflate: ConnectionDeflate?
    /// How bytes cross the wire (``Transport``); set with ``setTLS(_:)`` and ``setPlain()``,
    /// which keep the session's one retain.
    @exclusivity(unchecked) private(set) var transport = Transport.plain
    /// Outbound frames: at most one send in flight; later frames gather behind it.
    @exclusivity(unchecked) var queue = SendQueue()
    /// Send-coalescing state (``Coalescer``).
    @exclusivity(unchecked) var pacing = SendPacing()
    /// The connection's place in the server-wide connection counts (given back when the
    /// connection goes away); nil when no limit counts connections.
    var admission: AdmissionTicket?

    init(slot: UInt32, generation: UInt32, fd: Int32, maxMessageSize: Int, now: UInt64) {
        self.slot = slot
        self.generation = generation
        self.fd = fd
        self.parser = FrameParser(role: .server, maxMessageSize: maxMessageSize)
        self.lastHeard = now
    }

    deinit {
        if case .tls(let s) = transport { s.release() }
    }

    @inline(__always)
    func tag(_ op: OpKind) -> Tag { Tag(op: op, slot: slot, generation: generation) }

    /// Speaks TLS through `session` (retained until ``setPlain()`` or the connection goes).
    func setTLS(_ session: TLSSession) {
        setPlain()
        transport = .tls(Unmanaged.passRetained(session))
    }

    /// Speaks plain bytes; a TLS session is let go.
    func setPlain() {
        guard case .tls(let s) = transport else { return }
        transport = .plain
        s.release()
    }
}

extension Connection: Paced {}

/// The sockets of one shard, by slot: a completion's tag names a slot and a generation, and a
/// stale completion (for an earlier occupant of a reused slot) finds no connection.
struct ConnectionTable {
    private var slots: [Connection?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [UInt32] = []
    /// Connections in the table.
    private(set) var count = 0

    /// Gives `fd` a slot and a fresh ``Connection``.
    mutating func adopt(fd: Int32, maxMessageSize: Int, now: UInt64) -> Connection {
        let slot: UInt32
        if let s = freeSlots.popLast() {
            slot = s
        } else {
            slot = UInt32(slots.count)
            slots.append(nil)
            generations.append(0)
        }
        let conn = Connection(slot: slot, generation: generations[Int(slot)], fd: fd,
                              maxMessageSize: maxMessageSize, now: now)
        slots[Int(slot)] = conn
        count += 1
        return conn
    }

    /// The connection a tag names, unless its slot has been freed or reused since.
    @inline(__always)
    func lookup(slot: UInt32, generation: UInt32) -> Connection? {
        let i = Int(slot)
        guard i < slots.count, let c = slots[i], c.generation == generation else { return nil }
        return c
    }

    /// Frees `conn`'s slot (its generation moves on); false if it was not in the table.
    mutating func remove(_ conn: Connection) -> Bool {
        let i = Int(conn.slot)
        guard i < slots.count, slots[i] === conn else { return false }
        slots[i] = nil
        generations[i] = (generations[i] &+ 1) & Tag.generationMask
        freeSlots.append(conn.slot)
        count -= 1
        return true
    }

    /// Calls `body` with every connection (a snapshot: `body` may remove connections).
    func forEach(_ body: (Connection) -> Void) {
        for case let c? in slots { body(c) }
    }
}
