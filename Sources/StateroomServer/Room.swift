import Stateroom

/// One room: a service instance and its clients, living on one shard for its whole life.
final class Room {
    let id: String
    var service: any StateroomService
    /// Open members, for fan-out. A member knows its index (swap-remove on leave).
    @exclusivity(unchecked) var members: [Connection] = []
    @exclusivity(unchecked) var byId: [ClientId: Connection] = [:]
    var nextClientId: UInt32 = 1
    /// Bumped whenever the timer is set or the room ends; a timer entry with an older token is stale.
    var timerToken: UInt64 = 0
    /// Set by `closeRoom(reason:)`; the shard then ends the room.
    var failure: String?
    var isClosed = false

    init(id: String, service: any StateroomService) {
        self.id = id
        self.service = service
    }

    func add(_ conn: Connection) -> ClientId {
        let id = ClientId(nextClientId)
        nextClientId &+= 1
        conn.room = self
        conn.clientId = id
        conn.memberIndex = members.count
        members.append(conn)
        byId[id] = conn
        return id
    }

    func remove(_ conn: Connection) {
        let i = conn.memberIndex
        guard i >= 0, i < members.count, members[i] === conn else { return }
        byId[conn.clientId] = nil
        let last = members.removeLast()
        if i < members.count {
            members[i] = last
            last.memberIndex = i
        }
        conn.memberIndex = -1
    }
}

/// The context a room's service sees during one callback.
struct RoomContext: StateroomContext {
    unowned(unsafe) let shard: Shard
    unowned(unsafe) let room: Room

    func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        shard.send(message, to: recipient, in: room)
    }

    func setTimer(milliseconds: UInt32) {
        shard.setRoomTimer(room, milliseconds: milliseconds)
    }

    func closeRoom(reason: String) {
        if room.failure == nil { room.failure = reason }
    }
}
