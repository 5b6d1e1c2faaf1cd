import Stateroom

/// The open rooms of one shard, by id: creation from the service factory, ending, and a new
/// factory on reload. Membership is the ``Room``'s; what ending a room means for its clients
/// (close codes, logs, counters) is the shard's.
final class RoomTable {
    /// Makes the service of each new room.
    private(set) var factory: any StateroomServiceFactory
    private let shard: Int
    private var rooms: [String: Room] = [:]

    init(factory: any StateroomServiceFactory, shard: Int) {
        self.factory = factory
        self.shard = shard
    }

    /// Open rooms.
    var count: Int { rooms.count }

    /// Every open room.
    var all: [Room] { Array(rooms.values) }

    /// A room that was opened: whether it was created for this call, and the failure its
    /// service reported while initializing, if any.
    struct Opened {
        let room: Room
        let created: Bool
        let failure: RoomFailure?
    }

    /// The open room `id`; one is created from the factory (under `lease`, for a durable room) and
    /// initialized when there is none.
    /// Throws what the factory threw (the room is then not created).
    func open(_ id: String, host: RoomHost, lease: @autoclosure () -> RoomLease? = nil) throws -> Opened {
        if let room = rooms[id], !room.isClosed {
            return Opened(room: room, created: false, failure: nil)
        }
        let room = Room(id: id, service: try factory.makeService(roomId: id, shard: shard))
        room.lease = lease()
        rooms[id] = room
        return Opened(room: room, created: true, failure: room.initialize(host))
    }

    /// Opens room `id` continuing from `saved` (a durable room's snapshot, under `lease`): no `initialize`.
    /// Throws what the factory threw (the room is then not created).
    func restore(_ id: String, from saved: StoredRoom, lease: RoomLease? = nil) throws -> Room {
        if let room = rooms[id], !room.isClosed { return room }
        let service = try factory.restoreService(roomId: id, shard: shard, from: saved.service)
        let room = Room(id: id, service: service, nextClientId: saved.nextClientId)
        room.lease = lease
        rooms[id] = room
        return room
    }

    /// The open room `id`, if any.
    subscript(id: String) -> Room? { rooms[id] }

    /// Ends `room`: it leaves the table and takes no more callbacks. False if it had ended already.
    @discardableResult
    func end(_ room: Room) -> Bool {
        guard !room.isClosed else { return false }
        room.close()
        if rooms[room.id] === room { rooms[room.id] = nil }
        return true
    }

    /// Serves rooms created from now on from `factory`; returns the rooms open now, which the
    /// caller ends.
    func replaceFactory(_ factory: any StateroomServiceFactory) -> [Room] {
        self.factory = factory
        return all
    }
}
