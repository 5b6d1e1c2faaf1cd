import IOCore
import Stateroom

/// What a room's context reaches while a service runs: the shard that owns the room.
protocol RoomHost: AnyObject {
    /// Encodes `message` once and queues it to the members `recipient` names.
    func send(_ message: MessagePayload, to recipient: MessageRecipient, in room: Room)
    /// Memory that services' ``StateroomContext/sendText(to:_:)`` texts are written in, reused.
    var textScratch: MessageBuffer { get }
    /// Replaces the room's timer.
    func setTimer(of room: Room, milliseconds: UInt32)
}

/// Why a room's service cannot go on (``StateroomContext/closeRoom(reason:)``): the room ends and
/// its clients are closed with 1011.
struct RoomFailure: Error, Equatable {
    let reason: String
}

/// One room: a service instance and its clients, living on one shard for its whole life.
///
/// Every callback into the service returns the failure it reported, if any, as a value (once:
/// after a failure the service is not called again): the caller decides what ending the room
/// means for the connections.
final class Room {
    let id: String
    private var service: any StateroomService
    /// Open members in client-id order (ids only grow, so joining appends).
    @exclusivity(unchecked) private(set) var members: [Connection] = []
    /// `members`' ids, for finding one by binary search.
    @exclusivity(unchecked) private var memberIds: [UInt32] = []
    /// The id the next member gets; kept in a durable room's snapshot, so ids are never reused
    /// across its saves and restores either.
    private(set) var nextClientId: UInt32 = 1
    /// A callback ran since the last snapshot (durable rooms save only rooms that changed).
    var changedSinceSnapshot = false
    /// A durable room's lease, waiting callbacks and output gate (nil: the room is not durable).
    var lease: RoomLease?
    /// Its seats and message log, while a client that opted in to seats is in it or away in its
    /// grace (nil: none; the send path then does nothing for seats).
    var seats: RoomSeats?
    /// The identities members joined with (only members that have one).
    private var identities: [UInt32: String] = [:]
    /// Members that agreed to permessage-deflate (a broadcast is compressed only if there are any).
    private(set) var deflateMembers = 0
    /// Bumped whenever the timer is set or the room ends; a timer entry with an older token is stale.
    var timerToken: UInt64 = 0
    private(set) var isClosed = false
    /// Set once the service reported a failure; later callbacks are skipped until the shard ends
    /// the room.
    private(set) var failure: RoomFailure?
    /// What the service reported through `closeRoom` during the current callback.
    fileprivate var reported: RoomFailure?

    init(id: String, service: any StateroomService, nextClientId: UInt32 = 1) {
        self.id = id
        self.service = service
        self.nextClientId = max(1, nextClientId)
    }

    /// The service's whole state through `factory` (nil: it cannot be saved); taken between callbacks.
    func snapshot(using factory: any StateroomServiceFactory) throws -> ServiceSnapshot? {
        try factory.snapshot(of: service)
    }

    // MARK: - Members

    /// Makes `conn` a member with the next client id, known as `identity` if it has one.
    func add(_ conn: Connection, identity: String? = nil) -> ClientId {
        let id = ClientId(nextClientId)
        nextClientId &+= 1
        if let identity { identities[id.rawValue] = identity }
        conn.room = self
        conn.clientId = id
        if conn.deflate != nil { deflateMembers += 1 }
        members.append(conn)
        memberIds.append(id.rawValue)
        return id
    }

    /// Makes `conn` a member under the id of the seat it resumed (ids are kept in order).
    func insert(_ conn: Connection, as id: ClientId) {
        conn.room = self
        conn.clientId = id
        if conn.deflate != nil { deflateMembers += 1 }
        var lo = 0
        var hi = memberIds.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if memberIds[mid] < id.rawValue { lo = mid + 1 } else { hi = mid }
        }
        members.insert(conn, at: lo)
        memberIds.insert(id.rawValue, at: lo)
    }

    /// Removes `conn` from the members (a no-op if it is not one).
    func remove(_ conn: Connection) {
        guard let i = index(of: conn.clientId), members[i] === conn else { return }
        if conn.deflate != nil { deflateMembers -= 1 }
        members.remove(at: i)
        memberIds.remove(at: i)
    }

    /// The member with client id `id`.
    func member(_ id: ClientId) -> Connection? {
        index(of: id).map { members[$0] }
    }

    /// The identity client `id` joined with (nil: anonymous, or not in the room). Kept after the
    /// client is removed from the members until ``forgetIdentity(of:)``, so the service's
    /// `disconnect` still sees it.
    func identity(of id: ClientId) -> String? {
        identities.isEmpty ? nil : identities[id.rawValue]
    }

    /// Records the identity of a client whose seat came with the room (a restored room).
    func remember(identity: String?, of id: ClientId) {
        if let identity { identities[id.rawValue] = identity }
    }

    /// Drops a departed client's identity (after its `disconnect` callback).
    func forgetIdentity(of id: ClientId) {
        if !identities.isEmpty { identities[id.rawValue] = nil }
    }

    private func index(of id: ClientId) -> Int? {
        var lo = 0
        var hi = memberIds.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if memberIds[mid] < id.rawValue { lo = mid + 1 } else { hi = mid }
        }
        return lo < memberIds.count && memberIds[lo] == id.rawValue ? lo : nil
    }

    /// Hands one reference of `frame` to each member `recipient` names (`frame` is retained for
    /// each; the caller's own reference is untouched), without retaining the members.
    @inline(__always)
    func fanOut(_ frame: FrameBuffer, to recipient: MessageRecipient, pool: FramePool,
                _ enqueue: (Connection, FrameBuffer) -> Void) {
        switch recipient {
        case .broadcast:
            pool.retain(frame, count: UInt32(members.count))
            forEachUnretained(members) { enqueue($0, frame) }
        case .everyoneExcept(let except):
            let skipped = member(except) == nil ? 0 : 1
            pool.retain(frame, count: UInt32(members.count - skipped))
            forEachUnretained(members) { m in if m.clientId != except { enqueue(m, frame) } }
        case .client(let id):
            if let m = member(id) {
                pool.retain(frame)
                enqueue(m, frame)
            }
        }
    }

    /// Calls `body` with each member `recipient` names (no references taken: the caller queues
    /// what it chooses per member).
    @inline(__always)
    func forEachRecipient(_ recipient: MessageRecipient, _ body: (Connection) -> Void) {
        switch recipient {
        case .broadcast:
            forEachUnretained(members, body)
        case .everyoneExcept(let except):
            forEachUnretained(members) { m in if m.clientId != except { body(m) } }
        case .client(let id):
            if let m = member(id) { body(m) }
        }
    }

    // MARK: - Service callbacks

    func initialize(_ host: RoomHost) -> RoomFailure? {
        call(host) { s, ctx in s.initialize(context: ctx) }
    }

    func connect(_ client: ClientId, _ host: RoomHost) -> RoomFailure? {
        call(host) { s, ctx in s.connect(client: client, context: ctx) }
    }

    func message(_ client: ClientId, _ payload: MessagePayload, _ host: RoomHost) -> RoomFailure? {
        call(host) { s, ctx in s.message(client: client, message: payload, context: ctx) }
    }

    func disconnect(_ client: ClientId, _ host: RoomHost) -> RoomFailure? {
        call(host) { s, ctx in s.disconnect(client: client, context: ctx) }
    }

    func timer(_ host: RoomHost) -> RoomFailure? {
        call(host) { s, ctx in s.timer(context: ctx) }
    }

    @inline(__always)
    private func call(_ host: RoomHost, _ body: (inout any StateroomService, RoomContext) -> Void) -> RoomFailure? {
        guard !isClosed, failure == nil else { return nil }
        changedSinceSnapshot = true
        body(&service, RoomContext(host: host, room: self))
        guard let reported else { return nil }
        self.reported = nil
        failure = reported
        return reported
    }

    /// Marks the room ended: later callbacks are no-ops and pending timers stale.
    func close() {
        isClosed = true
        timerToken &+= 1
    }
}

/// The context a room's service sees during one callback.
struct RoomContext: StateroomContext {
    unowned(unsafe) let host: RoomHost
    unowned(unsafe) let room: Room

    func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        host.send(message, to: recipient, in: room)
    }

    func sendText(to recipient: MessageRecipient, _ write: (inout TextWriter) -> Void) {
        host.textScratch.withText(write) { host.send($0, to: recipient, in: room) }
    }

    func setTimer(milliseconds: UInt32) {
        host.setTimer(of: room, milliseconds: milliseconds)
    }

    func closeRoom(reason: String) {
        if room.reported == nil { room.reported = RoomFailure(reason: reason) }
    }

    func identity(of client: ClientId) -> String? {
        room.identity(of: client)
    }

    func isConnected(_ client: ClientId) -> Bool {
        room.isConnected(client)
    }
}
