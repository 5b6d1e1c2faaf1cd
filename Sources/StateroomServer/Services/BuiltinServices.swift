import Stateroom

/// The seed's SharedCounter: `increment` / `decrement` change the room's value and broadcast
/// `new value: N`; other messages are ignored.
public struct CounterService: StateroomService {
    var value = 0
    public init() {}

    public mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        if message.isText("increment") {
            value += 1
        } else if message.isText("decrement") {
            value -= 1
        } else {
            return
        }
        context.send("new value: \(value)", to: .broadcast)
    }
}

extension CounterService: SnapshottableService {
    public static let snapshotFormat = "stateroom.counter/1"

    public func snapshot() -> [UInt8] {
        var w = SnapshotWriter()
        w.write(value)
        return w.bytes
    }

    public init(snapshot: [UInt8]) throws(SnapshotError) {
        var r = SnapshotReader(snapshot)
        value = try r.int("value")
        try r.finish()
    }
}

/// The seed's EchoServer: greets a client, broadcasts what each says, and who left.
public struct EchoService: StateroomService {
    public init() {}

    public mutating func connect(client: ClientId, context: some StateroomContext) {
        context.send("User \(client) connected.", to: .client(client))
    }

    public mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard let text = message.text else { return }
        context.send("User \(client) sent '\(text)'", to: .broadcast)
    }

    public mutating func disconnect(client: ClientId, context: some StateroomContext) {
        context.send("User \(client) left.", to: .broadcast)
    }
}

/// Every message, text or binary, sent verbatim to everyone in the room, sender included.
public struct RelayService: StateroomService {
    public init() {}

    public mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        context.send(message, to: .broadcast)
    }
}

/// Stateroom's chat example: nicknames with `/nick NAME`, join and leave notices. A client that
/// authenticated is named by its identity (a token's `sub`), anyone else `client<N>`.
public struct ChatService: StateroomService {
    var nicknames: [ClientId: String] = [:]
    public init() {}

    public mutating func connect(client: ClientId, context: some StateroomContext) {
        let name = context.identity(of: client) ?? "client\(client.rawValue)"
        context.send("Welcome, \(name)!", to: .client(client))
        context.send("\(name) has joined the chat", to: .everyoneExcept(client))
        nicknames[client] = name
    }

    public mutating func disconnect(client: ClientId, context: some StateroomContext) {
        let name = nicknames.removeValue(forKey: client) ?? "client\(client.rawValue)"
        context.send("\(name) has left the chat", to: .broadcast)
    }

    public mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard let text = message.text else { return }
        let name = nicknames[client] ?? "client\(client.rawValue)"
        if text.hasPrefix("/nick ") {
            let newName = String(text.dropFirst(6))
            guard !newName.isEmpty else { return }
            nicknames[client] = newName
            context.send("\(name) is now known as \(newName)", to: .broadcast)
        } else {
            context.send("\(name): \(text)", to: .broadcast)
        }
    }
}

/// Stateless: its snapshot is empty, so a durable relay or echo room still has one owner and moves
/// between nodes like any other.
extension RelayService: SnapshottableService {
    public static let snapshotFormat = "stateroom.relay/1"
    public func snapshot() -> [UInt8] { [] }
    public init(snapshot: [UInt8]) throws(SnapshotError) {
        guard snapshot.isEmpty else { throw SnapshotError("a relay snapshot is empty, not \(snapshot.count) bytes") }
    }
}

extension EchoService: SnapshottableService {
    public static let snapshotFormat = "stateroom.echo/1"
    public func snapshot() -> [UInt8] { [] }
    public init(snapshot: [UInt8]) throws(SnapshotError) {
        guard snapshot.isEmpty else { throw SnapshotError("an echo snapshot is empty, not \(snapshot.count) bytes") }
    }
}

extension ChatService: SnapshottableService {
    public static let snapshotFormat = "stateroom.chat/1"

    /// The names of the clients in the room, by client id.
    public func snapshot() -> [UInt8] {
        var w = SnapshotWriter()
        w.write(nicknames.count)
        for (client, name) in nicknames.sorted(by: { $0.key < $1.key }) {
            w.write(client.rawValue)
            w.write(name)
        }
        return w.bytes
    }

    public init(snapshot: [UInt8]) throws(SnapshotError) {
        var r = SnapshotReader(snapshot)
        let count = try r.int("nickname count")
        // Each entry takes at least 12 bytes: a count beyond that is a lie, not an allocation.
        guard count >= 0, count <= r.remaining / 12 else { throw SnapshotError("nickname count \(count) does not fit the snapshot") }
        for _ in 0..<count {
            let client = ClientId(try r.uint32("client id"))
            nicknames[client] = try r.string("nickname")
        }
        try r.finish()
    }
}

/// The built-in services, by the name `--service` takes.
public enum BuiltinService: String, CaseIterable, Sendable {
    case counter, echo, relay, chat

    /// A factory making this service for every room.
    public var factory: ServiceFactory {
        switch self {
        case .counter: return ServiceFactory { _ in CounterService() }
        case .echo: return ServiceFactory { _ in EchoService() }
        case .relay: return ServiceFactory { _ in RelayService() }
        case .chat: return ServiceFactory { _ in ChatService() }
        }
    }
}
