/// Makes the service of each new room.
public protocol StateroomServiceFactory: Sendable {
    /// Creates the service for room `roomId`. Called on the thread of shard `shard`, which owns the
    /// room and makes every later call into the service. A thrown error refuses the room: its
    /// first client is closed with 1011 and the error is logged.
    func makeService(roomId: String, shard: Int) throws -> any StateroomService

    /// The whole state of `service` (one this factory made), taken between callbacks, or nil if
    /// its rooms cannot be saved. The default answers for ``SnapshottableService``s.
    func snapshot(of service: any StateroomService) throws -> ServiceSnapshot?

    /// A service for room `roomId` that continues from `snapshot` (its `initialize` is not
    /// called). Throws if the snapshot is not of a kind this factory makes. The default restores
    /// ``SnapshottableService``s of the snapshot's format.
    func restoreService(roomId: String, shard: Int, from snapshot: ServiceSnapshot) throws -> any StateroomService
}

/// A room's service saved whole: what durable rooms keep in their store.
public struct ServiceSnapshot: Sendable, Equatable {
    /// What wrote it, and what may read it: a native service's
    /// ``SnapshottableService/snapshotFormat``, or for a wasm room `wasm:` and its module's SHA-256.
    public var kind: String
    /// The state.
    public var bytes: [UInt8]

    public init(kind: String, bytes: [UInt8]) {
        self.kind = kind
        self.bytes = bytes
    }
}

extension StateroomServiceFactory {
    public func snapshot(of service: any StateroomService) throws -> ServiceSnapshot? {
        guard let s = service as? any SnapshottableService else { return nil }
        return ServiceSnapshot(kind: type(of: s).snapshotFormat, bytes: s.snapshot())
    }

    public func restoreService(roomId: String, shard: Int, from snapshot: ServiceSnapshot) throws -> any StateroomService {
        // The factory names no type: the type of a service it makes is the one restored.
        let fresh = try makeService(roomId: roomId, shard: shard)
        guard let s = fresh as? any SnapshottableService else {
            throw SnapshotError("room \(roomId): its service (\(type(of: fresh))) cannot restore a snapshot")
        }
        return try restore(like: s, from: snapshot)
    }
}

/// `S(snapshot:)` for the type of `service` (the existential is opened here).
private func restore<S: SnapshottableService>(like service: S, from snapshot: ServiceSnapshot) throws -> any StateroomService {
    guard snapshot.kind == S.snapshotFormat else {
        throw SnapshotError("a snapshot of \(snapshot.kind) cannot be restored into \(S.snapshotFormat)")
    }
    return try S(snapshot: snapshot.bytes)
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
