/// Makes the service of each new room.
public protocol StateroomServiceFactory: Sendable {
    /// Creates the service for room `roomId`. Called on the thread of shard `shard`, which owns the
    /// room and makes every later call into the service. A thrown error refuses the room: its
    /// first client is closed with 1011 and the error is logged.
    func makeService(roomId: String, shard: Int) throws -> any StateroomService
}

/// A factory from a closure: `ServiceFactory { _ in SharedCounter() }`.
public struct ServiceFactory: StateroomServiceFactory {
    let make: @Sendable (String) throws -> any StateroomService

    /// Wraps `make`, which receives the room id.
    public init(_ make: @escaping @Sendable (_ roomId: String) throws -> any StateroomService) {
        self.make = make
    }

    public func makeService(roomId: String, shard: Int) throws -> any StateroomService {
        try make(roomId)
    }
}
