import Glibc
import IOCore
import Stateroom
@testable import StateroomServer
import Testing
import WireProtocol

/// Seats (docs/seats.md): the request's parameters, tokens, the seat message, the stored form,
/// and a drop and resume through a real server with our own client.
@Suite("Seats")
struct SeatTests {
    private func request(_ query: String?) -> UpgradeRequest {
        UpgradeRequest(path: "/ws/r", roomId: "r", query: query)
    }

    @Test("a request opts in with seat=new and resumes with seat=<token>&received=<n>")
    func requestParameters() {
        #expect(SeatRequest(request(nil)) == nil)
        #expect(SeatRequest(request("token=abc")) == nil)
        #expect(SeatRequest(request("seat=new")) == .new)
        #expect(SeatRequest(request("token=t&seat=new")) == .new)
        #expect(SeatRequest(request("seat=AbC-_&received=42")) == .resume(token: "AbC-_", received: 42))
        // A resume whose count is missing or not a number names more than any seat was sent.
        #expect(SeatRequest(request("seat=AbC")) == .resume(token: "AbC", received: .max))
        #expect(SeatRequest(request("seat=AbC&received=-1")) == .resume(token: "AbC", received: .max))
    }

    @Test("a token names its client in its room only, under the room's secret")
    func tokens() throws {
        let seats = RoomSeats(logCap: 1024)
        let token = seats.token(for: ClientId(7), roomId: "lobby")
        #expect(token.count == 24)
        #expect(token.utf8.allSatisfy { c in
            (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z"))
                || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "-") || c == UInt8(ascii: "_")
        })
        #expect(seats.client(of: token, roomId: "lobby") == ClientId(7))
        #expect(seats.client(of: token, roomId: "lobby2") == nil, "another room's token")
        #expect(RoomSeats(logCap: 1024).client(of: token, roomId: "lobby") == nil, "another secret")
        #expect(seats.token(for: ClientId(8), roomId: "lobby") != token)
        // Every single-character change is refused.
        let chars = Array(token.utf8)
        for i in chars.indices {
            var forged = chars
            forged[i] = forged[i] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
            #expect(seats.client(of: String(decoding: forged, as: UTF8.self), roomId: "lobby") == nil)
        }
        for bad in ["", "new", String(token.dropLast()), token + "AAAA", String(repeating: "*", count: 24)] {
            #expect(seats.client(of: bad, roomId: "lobby") == nil)
        }
        // The same secret (a room restored with its seats) recognizes the same tokens.
        #expect(RoomSeats(logCap: 1024, secret: seats.secret).client(of: token, roomId: "lobby") == ClientId(7))
    }

    @Test("the seat message is the documented JSON, in one short text frame")
    func seatMessage() throws {
        let frame = Shard.seatMessage(token: "abc", client: ClientId(7), recovered: true, grace: 30)
        #expect(frame[0] == 0x81 && Int(frame[1]) == frame.count - 2)
        #expect(String(decoding: frame.dropFirst(2), as: UTF8.self)
                == #"{"type":"seat","seat":"abc","client":7,"recovered":true,"grace":30}"#)
        let off = Shard.seatMessage(token: nil, client: ClientId(1), recovered: false, grace: 0)
        #expect(String(decoding: off.dropFirst(2), as: UTF8.self)
                == #"{"type":"seat","seat":null,"client":1,"recovered":false,"grace":0}"#)
        let half = Shard.seatMessage(token: "t", client: ClientId(2), recovered: false, grace: 2.5)
        #expect(String(decoding: half.dropFirst(2), as: UTF8.self).hasSuffix(#""grace":2.5}"#))
    }

    @Test("a logged frame applies to the clients it went to, and only those that had joined")
    func loggedFrameRecipients() {
        let pool = FramePool()
        let frame = pool.frame(.text("x"))
        defer { pool.release(frame) }
        let all = LoggedFrame(frame: frame, recipient: .broadcast, joinedBefore: 5)
        #expect(all.applies(to: ClientId(4)) && !all.applies(to: ClientId(5)))
        let except = LoggedFrame(frame: frame, recipient: .everyoneExcept(ClientId(2)), joinedBefore: .max)
        #expect(except.applies(to: ClientId(1)) && !except.applies(to: ClientId(2)))
        let one = LoggedFrame(frame: frame, recipient: .client(ClientId(3)), joinedBefore: .max)
        #expect(one.applies(to: ClientId(3)) && !one.applies(to: ClientId(4)))
    }

    @Test("a stored room carries its seats; older formats still read")
    func storedSeats() throws {
        let seats = StoredSeats(secret: Array(repeating: 9, count: 32), frames: [[0x81, 1, 65], [0x81, 1, 66]], seats: [
            .init(clientId: 3, identity: "alice", delivered: 12, firstKept: 11, deadlineMilliseconds: 1_700_000_000_000, kept: [0, 1]),
            .init(clientId: 5, identity: nil, delivered: 4, firstKept: 5, deadlineMilliseconds: 1_700_000_000_500, kept: []),
        ])
        let room = StoredRoom(nextClientId: 6, service: ServiceSnapshot(kind: "k", bytes: [1, 2]), epoch: 4, seats: seats)
        #expect(try StoredRoom(decoding: room.encoded()) == room)
        let plain = StoredRoom(nextClientId: 6, service: ServiceSnapshot(kind: "k", bytes: [1, 2]), epoch: 4)
        #expect(try StoredRoom(decoding: plain.encoded()) == plain)

        // Format 2 (no seats): what a node before seats wrote.
        var w = SnapshotWriter()
        w.write(UInt32(2))
        w.write(UInt32(6))
        w.write(Int64(4))
        w.write("k")
        w.write(bytes: [1, 2])
        #expect(try StoredRoom(decoding: StoredRoom.magic + w.bytes) == plain)

        // Kept messages that do not end at the seat's count are refused, not half-restored.
        var lying = seats
        lying.seats[0].delivered = 13
        let bad = StoredRoom(nextClientId: 6, service: ServiceSnapshot(kind: "k", bytes: []), seats: lying)
        #expect(throws: SnapshotError.self) { try StoredRoom(decoding: bad.encoded()) }
        var outOfRange = seats
        outOfRange.seats[0].kept = [0, 7]
        let bad2 = StoredRoom(nextClientId: 6, service: ServiceSnapshot(kind: "k", bytes: []), seats: outOfRange)
        #expect(throws: SnapshotError.self) { try StoredRoom(decoding: bad2.encoded()) }
    }

    /// Answers `is N` with whether client N is connected (``StateroomContext/isConnected(_:)``),
    /// and relays anything else.
    struct PresenceService: StateroomService {
        mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
            if let text = message.text, text.hasPrefix("is "), let n = UInt32(text.dropFirst(3)) {
                context.send("\(n): \(context.isConnected(ClientId(n)))", to: .client(client))
            } else {
                context.send(message, to: .broadcast)
            }
        }
    }

    private func startServer(grace: Double = 30) throws -> Server {
        var c = ServerConfiguration()
        c.host = "127.0.0.1"
        c.port = 0
        c.shards = 1
        c.pinThreads = false
        c.eventLoop.receiveBufferCount = 64
        c.resumeGrace = grace
        let server = Server(configuration: c)
        try server.start(factory: ServiceFactory { _ in PresenceService() })
        return server
    }

    private func hello(_ client: TestClient) throws -> (token: String, client: Int, recovered: Bool) {
        guard case .text(let json) = client.nextMessage() else { throw ClientError("no seat message") }
        func field(_ name: String) -> Substring? {
            guard let r = json.range(of: "\"\(name)\":") else { return nil }
            return json[r.upperBound...].prefix { $0 != "," && $0 != "}" }
        }
        let token = String(field("seat")?.trimmingCharacters(in: ["\""]) ?? "")
        return (token, Int(field("client") ?? "") ?? -1, field("recovered") == "true")
    }

    @Test("through a server: a dropped seat is away, its messages are kept, and a resume gets them")
    func dropAndResume() throws {
        let server = try startServer()
        defer { server.stop() }
        let a = try TestClient(port: server.port, path: "/ws/p?seat=new")
        let seat = try hello(a)
        #expect(seat.client == 1 && !seat.recovered)
        let b = try TestClient(port: server.port, path: "/ws/p")
        b.send(text: "is 1")
        #expect(b.nextMessage() == .text("1: true"))
        b.send(text: "one")
        #expect(b.nextMessage() == .text("one"))
        #expect(a.nextMessage() == .text("one"))
        // Gone without a close: the seat is held and the client is away.
        shutdown(a.fd, Int32(SHUT_RDWR))
        var away = false
        for _ in 0..<100 where !away {
            b.send(text: "is 1")
            away = b.nextMessage() == .text("1: false")
            if !away { usleep(10_000) }
        }
        #expect(away)
        b.send(text: "two")
        #expect(b.nextMessage() == .text("two"))
        b.send(text: "three")
        #expect(b.nextMessage() == .text("three"))
        let back = try TestClient(port: server.port, path: "/ws/p?seat=\(seat.token)&received=1")
        let resumed = try hello(back)
        #expect(resumed.recovered && resumed.client == 1 && resumed.token == seat.token)
        #expect(back.nextMessage() == .text("two"))
        #expect(back.nextMessage() == .text("three"))
        b.send(text: "is 1")
        #expect(b.nextMessage() == .text("1: true"))
        b.send(text: "four")
        #expect(back.nextMessage() == .text("four"))
        #expect(b.nextMessage() == .text("four"))
    }
}
