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

/// A seat whose client is away, in its grace: what the room sends it is kept for its return.
/// (A connected seat needs nothing of its own: its connection counts what it was sent,
/// ``Connection/delivered``, and its token is derived from the room's secret.)
final class HeldSeat {
    let clientId: ClientId
    /// Messages sent to the seat so far (the last one's number; the first is 1).
    var delivered: UInt64
    /// Messages `firstKept ... delivered`, oldest first (one reference each).
    var kept = Deque<FrameBuffer>()
    var firstKept: UInt64 = 1
    /// Bytes of every kept message, and of those sent since the drop (the bound).
    var keptBytes = 0
    var keptSinceDrop = 0
    /// Past its bound: it ends once the current callback is over.
    var overflowed = false
    /// Monotonic nanoseconds at which it ends.
    var deadline: UInt64

    init(clientId: ClientId, delivered: UInt64, deadline: UInt64) {
        self.clientId = clientId
        self.delivered = delivered
        self.deadline = deadline
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
///
/// A seat's token is its client id and a MAC of it under the room's secret (HMAC-SHA256 by
/// OpenSSL, cut to 14 bytes): 24 URL-safe characters, nothing stored per seat, unforgeable
/// without the secret, which never leaves the server (and the store, with the room's seats).
final class RoomSeats {
    /// 32 random bytes, the key of the room's tokens.
    let secret: [UInt8]
    /// Members that hold a seat.
    var seated = 0
    /// Seats away, in their grace, by client id.
    var held: [UInt32: HeldSeat] = [:]
    /// The room's latest messages, oldest first, at most ``logCap`` bytes (at least one).
    var log = Deque<LoggedFrame>()
    var logBytes = 0
    let logCap: Int

    init(logCap: Int, secret: [UInt8]? = nil) {
        self.logCap = logCap
        self.secret = secret ?? Self.randomSecret()
    }

    var isEmpty: Bool { seated == 0 && held.isEmpty }

    static func randomSecret() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// Client `id`'s token in room `roomId`.
    func token(for id: ClientId, roomId: String) -> String {
        let i = id.rawValue
        let bytes = [UInt8(i >> 24), UInt8(truncatingIfNeeded: i >> 16), UInt8(truncatingIfNeeded: i >> 8),
                     UInt8(truncatingIfNeeded: i)] + mac(id, roomId)
        return Self.base64URL(bytes)
    }

    /// The client a token names, if its MAC is right (compared in constant time).
    func client(of token: String, roomId: String) -> ClientId? {
        guard token.utf8.count == 24, let bytes = base64URLDecode(ArraySlice(token.utf8)), bytes.count == 18 else { return nil }
        let id = ClientId(UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3]))
        let expected = mac(id, roomId)
        return constantTimeEquals(Array(bytes[4...]), expected) ? id : nil
    }

    private func mac(_ id: ClientId, _ roomId: String) -> [UInt8] {
        let message = Array("stateroom seat \(id.rawValue) \(roomId)".utf8)
        // OpenSSL failing leaves no MAC to check: no token is then accepted.
        return Array((hmacSHA256(key: secret, message[...]) ?? Self.randomSecret()).prefix(14))
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

extension Room {
    /// Whether `client` has a connection now (false while its seat is held, or when it is not in the room).
    func isConnected(_ client: ClientId) -> Bool { member(client) != nil }
}
