import DequeModule
import IOCore
import Stateroom

// Seats (connection state recovery, docs/seats.md): a client that opted in and drops without a
// close handshake keeps its ClientId for the grace, what the service sends it meanwhile is kept,
// and a connection that resumes the seat gets every message it missed, in order, none twice.
//
// How the server knows what was missed: each seat counts the messages queued to it
// (``Seat/delivered``), and the room keeps a short log of what it sent (one reference to each
// encoded frame, shared by every recipient: no copy per seat), bounded by the resume buffer.
// When a seat's connection drops, the log's messages for that seat are its last ones, numbered
// back from `delivered`; they cover frames that were in flight when the socket died. From then
// on, what the service sends the seat is kept in the seat, in order. A resuming client names how
// many it received; the server sends it the rest.

/// What an upgrade asked of seats: its query's `seat=new`, or `seat=<token>&received=<n>`.
enum SeatRequest: Sendable, Equatable {
    case new
    case resume(token: String, received: UInt64)

    /// The request's seat parameters; nil when it did not opt in. A resume whose count is missing
    /// or not a number names more than any seat was sent: it is refused (a new seat).
    init?(_ request: UpgradeRequest) {
        guard let seat = request.queryItem("seat") else { return nil }
        if seat == "new" || seat.isEmpty {
            self = .new
        } else {
            self = .resume(token: seat, received: request.queryItem("received").flatMap { UInt64($0) } ?? .max)
        }
    }
}

/// One client's place in a room, kept while the client is away (held) for the grace.
final class Seat {
    let clientId: ClientId
    /// The secret a resuming client names (24 URL-safe characters, 144 random bits).
    let token: String
    /// The identity the seat was taken with: only the same identity resumes it.
    let identity: String?
    /// Messages queued to the seat so far (the last one's number; the first is 1).
    var delivered: UInt64 = 0
    /// Away, in its grace: messages for it are kept, the service has not been told.
    var held = false
    /// Its connection's leaving ends it (the client closed, or was closed for good).
    var endsOnLeave = false
    /// Ended (expired, overflowed, or the client closed): waits for its `disconnect`.
    var ended = false
    /// While held: messages `firstKept ... delivered`, oldest first (one reference each).
    var kept = Deque<FrameBuffer>()
    var firstKept: UInt64 = 1
    /// While held: bytes of every kept message, and of those sent since the drop (the bound).
    var keptBytes = 0
    var keptSinceDrop = 0
    /// Monotonic nanoseconds at which a held seat ends.
    var deadline: UInt64 = 0

    init(clientId: ClientId, token: String, identity: String?) {
        self.clientId = clientId
        self.token = token
        self.identity = identity
    }

    /// A new unguessable token (the system's cryptographic generator).
    static func newToken() -> String {
        var rng = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        for _ in 0..<18 { bytes.append(UInt8.random(in: 0...255, using: &rng)) }
        return base64URL(bytes)
    }

    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// Base64url without padding (`bytes.count` a multiple of 3).
    static func base64URL(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        var i = 0
        while i + 2 < bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int((n >> UInt32(shift)) & 63)]) }
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A message the room sent, in its log: one reference of the frame, and whom it went to.
struct LoggedFrame {
    let frame: FrameBuffer
    let recipient: MessageRecipient
    /// Only clients with lower ids were sent it (a durable room's frame released after a join).
    let joinedBefore: UInt32

    @inline(__always)
    func applies(to id: ClientId) -> Bool {
        guard id.rawValue < joinedBefore else { return false }
        switch recipient {
        case .broadcast: return true
        case .everyoneExcept(let except): return except != id
        case .client(let only): return only == id
        }
    }
}

/// A room's seats and its log (made when the first client opts in, dropped with the last seat).
final class RoomSeats {
    var byToken: [String: Seat] = [:]
    var byClient: [UInt32: Seat] = [:]
    /// Seats away, in their grace.
    var held: [Seat] = []
    /// The room's latest messages, oldest first, at most ``logCap`` bytes (at least one).
    var log = Deque<LoggedFrame>()
    var logBytes = 0
    let logCap: Int

    init(logCap: Int) { self.logCap = logCap }

    var isEmpty: Bool { byToken.isEmpty }
}

extension Room {
    /// Whether `client` has a connection now (false while its seat is held, or when it is not in the room).
    func isConnected(_ client: ClientId) -> Bool { member(client) != nil }
}
