import Stateroom

/// Stateroom's chat: everyone starts as `clientN` — or, when the server authenticated them (a
/// token's `sub`, `stateroom-server --jwt-secret ...`), as who they are — renames with
/// `/nick NAME`, and the room hears who joins, who speaks and who leaves.
struct Chat: StateroomService {
    var nicknames: [ClientId: String] = [:]

    func name(of client: ClientId) -> String {
        nicknames[client] ?? "client\(client.rawValue)"
    }

    mutating func connect(client: ClientId, context: some StateroomContext) {
        // The identity is known from `connect` to `disconnect` (in a wasm module, because the
        // host delivered it first: the SDK declares STATEROOM_IDENTITY_VERSION).
        let name = context.identity(of: client) ?? "client\(client.rawValue)"
        context.send("Welcome, \(name)!", to: .client(client))
        context.send("\(name) has joined the chat", to: .everyoneExcept(client))
        nicknames[client] = name
    }

    mutating func disconnect(client: ClientId, context: some StateroomContext) {
        let name = nicknames.removeValue(forKey: client) ?? "client\(client.rawValue)"
        context.send("\(name) has left the chat", to: .broadcast)
    }

    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard message.isText else { return }
        let name = name(of: client)
        if message.hasTextPrefix("/nick ") {
            let newName = String(message.text!.dropFirst(6))
            guard !newName.isEmpty else { return }
            nicknames[client] = newName
            context.send("\(name) is now known as \(newName)", to: .broadcast)
        } else {
            // "\(name): \(text)", written in place around the borrowed message: no String built.
            context.sendText(to: .broadcast) { text in
                text.append(name)
                text.append(": ")
                text.append(message)
            }
        }
    }
}

typealias StateroomMain = Chat  // this module's service: what `stateroom build` serves
