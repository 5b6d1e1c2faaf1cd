import DequeModule
import Glibc
import IOCore
import Stateroom
import WireProtocol

/// One queued piece of outbound bytes: a slice of a pooled frame buffer.
struct OutChunk {
    var buffer: FrameBuffer
    var offset: Int32
    var length: Int32
}

/// One client socket, owned by exactly one shard.
///
/// Life: `.http` (reading the request head) → `.open` (WebSocket, member of a room) →
/// `.closing` (close frame or error response queued; the write side is shut once the queue
/// drains, and the socket is read until EOF or the deadline) → `.dead` (shut down; the slot is
/// freed when no operation on it is in flight).
///
/// Every stored property is touched only by the owning shard's thread, one event at a time, so
/// the hot ones opt out of dynamic exclusivity checks (`@exclusivity(unchecked)`), which cost
/// about 40% of the shard's user-space time in a fan-out profile.
final class Connection {
    enum State { case http, open, closing, dead }

    let slot: UInt32
    let generation: UInt32
    let fd: Int32
    @exclusivity(unchecked) var state: State = .http

    // Inbound.
    @exclusivity(unchecked) var recvArmed = false
    /// Bytes of a request head that arrived in pieces (empty on the fast path).
    @exclusivity(unchecked) var httpBuffer: [UInt8] = []
    @exclusivity(unchecked) var parser: FrameParser
    @exclusivity(unchecked) var lastHeard: UInt64

    // Room membership.
    @exclusivity(unchecked) var room: Room?
    @exclusivity(unchecked) var clientId = ClientId(0)
    @exclusivity(unchecked) var memberIndex = -1

    // Outbound: at most one send in flight; later frames gather behind it.
    @exclusivity(unchecked) var queue = Deque<OutChunk>()
    @exclusivity(unchecked) var queuedBytes = 0
    @exclusivity(unchecked) var sendInFlight = false
    @exclusivity(unchecked) var inFlightChunks = 0
    @exclusivity(unchecked) var isDirty = false
    /// While held in the shard's hold queue so more frames leave together (send coalescing): the
    /// moment it is due to be sent to, which its hold-queue entry carries too. 0 when not held.
    @exclusivity(unchecked) var heldUntil: UInt64 = 0
    var isHeld: Bool { heldUntil != 0 }
    /// When the last send was submitted, and how many frames it carried.
    @exclusivity(unchecked) var lastSendAt: UInt64 = 0
    @exclusivity(unchecked) var lastSendFrames = 0
    /// Shut the write side once everything queued has gone out.
    @exclusivity(unchecked) var closeAfterFlush = false
    @exclusivity(unchecked) var writeShut = false
    /// `msghdr` + iovecs for the send in flight; borrowed from the shard's pool while sending.
    @exclusivity(unchecked) var sendSpace: UnsafeMutableRawPointer?

    init(slot: UInt32, generation: UInt32, fd: Int32, maxMessageSize: Int, now: UInt64) {
        self.slot = slot
        self.generation = generation
        self.fd = fd
        self.parser = FrameParser(role: .server, maxMessageSize: maxMessageSize)
        self.lastHeard = now
    }

    @inline(__always)
    func tag(_ op: OpKind) -> Tag { Tag(op: op, slot: slot, generation: generation) }
}
