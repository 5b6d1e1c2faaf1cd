import Stateroom

/// The seed's EchoServer: greets each client, broadcasts what everyone says, and who left.
struct EchoServer: StateroomService {
    mutating func connect(client: ClientId, context: some StateroomContext) {
        context.send("User \(client) connected.", to: .client(client))
    }

    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard message.isText else { return }
        // "User \(client) sent '\(text)'", written in place around the borrowed message.
        context.sendText(to: .broadcast) { text in
            text.append("User ")
            text.append(client)
            text.append(" sent '")
            text.append(message)
            text.append("'")
        }
    }

    mutating func disconnect(client: ClientId, context: some StateroomContext) {
        context.send("User \(client) left.", to: .broadcast)
    }
}

typealias StateroomMain = EchoServer  // this module's service: what `stateroom build` serves
