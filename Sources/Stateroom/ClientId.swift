/// Identifies one client of a room.
///
/// Ids start at 1 and are unique within a room for the room's whole life: a client that leaves
/// and comes back gets a new id.
public struct ClientId: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The numeric id, as carried by the wasm ABI (`u32`).
    public var rawValue: UInt32

    /// Wraps a numeric id.
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }

    /// `ClientId(7)`, the way Stateroom's Rust services print an id with `{:?}`.
    public var description: String { "ClientId(\(rawValue))" }

    public static func < (lhs: ClientId, rhs: ClientId) -> Bool { lhs.rawValue < rhs.rawValue }
}
