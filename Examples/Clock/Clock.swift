import Stateroom

/// A clock: the room's timer fires every `interval` milliseconds and each tick is broadcast as
/// `Timer @ N`. A client changes the pace with `interval MS` (10...60000).
struct Clock: StateroomService {
    var ticks = 0
    var interval: UInt32 = 1000

    mutating func initialize(context: some StateroomContext) {
        context.setTimer(milliseconds: interval)
    }

    mutating func connect(client: ClientId, context: some StateroomContext) {
        context.send("tick every \(interval) ms; \(ticks) ticks so far", to: .client(client))
    }

    mutating func timer(context: some StateroomContext) {
        context.sendText(to: .broadcast) { text in
            text.append("Timer @ ")
            text.append(ticks)
        }
        ticks += 1
        context.setTimer(milliseconds: interval)
    }

    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard let text = message.text, text.hasPrefix("interval ") else { return }
        guard let ms = UInt32(text.dropFirst(9)), ms >= 10, ms <= 60_000 else {
            context.send("usage: interval MS (10...60000)", to: .client(client))
            return
        }
        interval = ms
        context.setTimer(milliseconds: ms)  // replaces the pending timer
        context.sendText(to: .broadcast) { line in
            line.append(client)
            line.append(" set the interval to ")
            line.append(ms)
            line.append(" ms")
        }
    }
}

typealias StateroomMain = Clock  // this module's service: what `stateroom build` serves
