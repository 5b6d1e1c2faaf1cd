import StateroomServer

/// A poll room: `vote NAME` counts a vote and everyone in the room sees the tally; a client
/// gets the tally when it joins, and everyone sees who is present.
struct PollService: StateroomService {
    var votes: [String: Int] = [:]
    var present = 0

    mutating func connect(client: ClientId, context: some StateroomContext) {
        present += 1
        context.send(tally, to: .client(client))
        context.send("present: \(present)", to: .broadcast)
    }

    mutating func disconnect(client: ClientId, context: some StateroomContext) {
        present -= 1
        context.send("present: \(present)", to: .broadcast)
    }

    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        guard let text = message.text, text.hasPrefix("vote "), text.count > 5, text.count <= 64 else {
            context.send("say: vote NAME", to: .client(client))
            return
        }
        votes[String(text.dropFirst(5)), default: 0] += 1
        context.send(tally, to: .broadcast)
    }

    /// `tally: a=2 b=1`, options in name order.
    var tally: String {
        "tally:" + votes.keys.sorted().map { " \($0)=\(votes[$0]!)" }.joined()
    }
}
