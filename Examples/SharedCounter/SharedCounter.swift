import Stateroom

/// The seed's shared counter: `increment` and `decrement` change the room's value, which is then
/// broadcast to every client as `new value: N`. Other messages are ignored.
struct SharedCounter: StateroomService {
    var value = 0

    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        if message.isText("increment") {
            value += 1
        } else if message.isText("decrement") {
            value -= 1
        } else {
            return
        }
        // Written in place: interpolating a String would cost more than the rest of the message.
        context.sendText(to: .broadcast) { text in
            text.append("new value: ")
            text.append(value)
        }
    }
}

typealias StateroomMain = SharedCounter  // this module's service: what `stateroom build` serves
