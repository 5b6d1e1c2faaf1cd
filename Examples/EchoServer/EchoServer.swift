import Stateroom

/// The seed's EchoServer: greets each client, broadcasts what everyone says, and who left.
struct EchoServer: StateroomService {
    mutating func connect(client: ClientId, context: some StateroomContext) {
        context.send("User \(client) connected.", to: .client(client))
    }

    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard let text = message.text else { return }
        context.send("User \(client) sent '\(text)'", to: .broadcast)
    }

    mutating func disconnect(client: ClientId, context: some StateroomContext) {
        context.send("User \(client) left.", to: .broadcast)
    }
}

typealias StateroomMain = EchoServer  // this module's service: what `stateroom build` serves
