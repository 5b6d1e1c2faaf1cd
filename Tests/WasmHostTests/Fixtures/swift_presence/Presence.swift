import Stateroom

/// A Swift guest (built by `stateroom build` in SwiftGuestSeatTests) that asks the host about
/// seats: every message is answered, to its sender, with the presence of clients 1 to 3, e.g.
/// `1:here 2:away 3:here` (`context.isConnected`, which the SDK asks through the host import
/// `env.stateroom_client_connected`).
struct Presence: StateroomService {
    mutating func connect(client: ClientId, context: some StateroomContext) {
        context.send(context.isConnected(client) ? "welcome" : "welcome, away", to: .client(client))
    }

    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        context.sendText(to: .client(client)) { text in
            var id: UInt32 = 1
            while id <= 3 {
                if id > 1 { text.append(" ") }
                text.append(id)
                text.append(context.isConnected(ClientId(id)) ? ":here" : ":away")
                id += 1
            }
        }
    }
}

typealias StateroomMain = Presence
