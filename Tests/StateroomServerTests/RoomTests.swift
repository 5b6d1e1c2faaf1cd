import IOCore
import Stateroom
@testable import StateroomServer
import Testing

/// Records what a room's services asked of their shard.
final class RecordingHost: RoomHost {
    var sent: [(String, MessageRecipient)] = []
    var timers: [UInt32] = []
    func send(_ message: MessagePayload, to recipient: MessageRecipient, in room: Room) {
        sent.append((message.text ?? "<binary>", recipient))
    }
    func setTimer(of room: Room, milliseconds: UInt32) { timers.append(milliseconds) }
    let textScratch = MessageBuffer()
}

/// Greets, echoes, and gives up on "quit".
struct ScriptedService: StateroomService {
    var events: [String] = []
    mutating func initialize(context: some StateroomContext) { context.setTimer(milliseconds: 5) }
    mutating func connect(client: ClientId, context: some StateroomContext) {
        context.send("hello \(client.rawValue)", to: .client(client))
    }
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        if message.isText("quit") {
            context.closeRoom(reason: "asked to quit by \(client.rawValue)")
            context.closeRoom(reason: "a second reason is ignored")
            return
        }
        context.send(message, to: .everyoneExcept(client))
    }
}

private func connection(_ slot: UInt32) -> Connection {
    Connection(slot: slot, generation: 0, fd: -1, maxMessageSize: 1024, now: 0)
}

@Suite struct RoomTests {
    @Test func membersGetIncreasingIdsAndAreFoundByIdAfterOthersLeave() {
        let room = Room(id: "r", service: ScriptedService())
        let conns = (0..<6).map { connection($0) }
        let ids = conns.map { room.add($0) }
        #expect(ids.map(\.rawValue) == [1, 2, 3, 4, 5, 6])
        room.remove(conns[1])
        room.remove(conns[4])
        room.remove(conns[4])  // twice: a no-op
        #expect(room.members.map(\.clientId.rawValue) == [1, 3, 4, 6])
        #expect(room.member(ClientId(2)) == nil)
        #expect(room.member(ClientId(6)) === conns[5])
        #expect(room.member(ClientId(7)) == nil)
        let late = connection(9)
        #expect(room.add(late).rawValue == 7, "ids are never reused")
        #expect(room.member(ClientId(7)) === late)
    }

    @Test func fanOutRetainsTheFrameOncePerRecipientAndSkipsTheExcludedClient() {
        let pool = FramePool()
        let room = Room(id: "r", service: ScriptedService())
        let conns = (0..<4).map { connection($0) }
        for c in conns { _ = room.add(c) }
        let frame = pool.buffer(copying: [0x81, 0x01, 0x61])
        var got: [UInt32] = []
        let take: (Connection, FrameBuffer) -> Void = { c, f in got.append(c.clientId.rawValue); pool.release(f) }
        room.fanOut(frame, to: .broadcast, pool: pool, take)
        room.fanOut(frame, to: .everyoneExcept(ClientId(2)), pool: pool, take)
        room.fanOut(frame, to: .everyoneExcept(ClientId(99)), pool: pool, take)
        room.fanOut(frame, to: .client(ClientId(3)), pool: pool, take)
        room.fanOut(frame, to: .client(ClientId(99)), pool: pool, take)
        #expect(got == [1, 2, 3, 4, 1, 3, 4, 1, 2, 3, 4, 3])
        // Every recipient released its reference: only the caller's is left.
        pool.release(frame)
        #expect(pool.outstanding == 0)
    }

    @Test func aFailureComesBackAsAValueOnceAndTheServiceIsNotCalledAgain() {
        let host = RecordingHost()
        let room = Room(id: "r", service: ScriptedService())
        #expect(room.initialize(host) == nil)
        #expect(host.timers == [5])
        let a = connection(0)
        let b = connection(1)
        #expect(room.connect(room.add(a), host) == nil)
        #expect(room.connect(room.add(b), host) == nil)
        #expect(room.message(ClientId(1), .text("hi"), host) == nil)
        #expect(room.message(ClientId(2), .text("quit"), host) == RoomFailure(reason: "asked to quit by 2"))
        #expect(room.failure == RoomFailure(reason: "asked to quit by 2"))
        #expect(room.message(ClientId(1), .text("after"), host) == nil, "reported once")
        #expect(room.disconnect(ClientId(1), host) == nil)
        #expect(host.sent.map(\.0) == ["hello 1", "hello 2", "hi"], "nothing reaches the service after its failure")
    }

    @Test func aServiceSeesEachClientsIdentityFromConnectToDisconnect() {
        struct WhoIs: StateroomService {
            mutating func connect(client: ClientId, context: some StateroomContext) {
                context.send("in \(context.identity(of: client) ?? "-")", to: .broadcast)
            }
            mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
                context.send("msg \(context.identity(of: client) ?? "-")", to: .broadcast)
            }
            mutating func disconnect(client: ClientId, context: some StateroomContext) {
                context.send("out \(context.identity(of: client) ?? "-")", to: .broadcast)
            }
        }
        let host = RecordingHost()
        let room = Room(id: "r", service: WhoIs())
        let bob = connection(0)
        let anon = connection(1)
        let bobId = room.add(bob, identity: "bob")
        let anonId = room.add(anon)
        #expect(room.connect(bobId, host) == nil && room.connect(anonId, host) == nil)
        #expect(room.message(bobId, .text("x"), host) == nil && room.message(anonId, .text("x"), host) == nil)
        // The shard removes a member, tells the service, then forgets the identity.
        room.remove(bob)
        #expect(room.disconnect(bobId, host) == nil)
        room.forgetIdentity(of: bobId)
        #expect(room.identity(of: bobId) == nil)
        #expect(host.sent.map(\.0) == ["in bob", "in -", "msg bob", "msg -", "out bob"])
    }

    @Test func aTextWrittenInPlaceReachesTheShardAndANestedSendKeepsItIntact() {
        struct Writer: StateroomService {
            var value = 0
            mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
                value += 1
                let value = value
                context.sendText(to: .broadcast) { text in
                    text.append("value ")
                    text.append(value)
                    text.append(" from ")
                    text.append(client)
                    text.append(": ")
                    // Sent while the outer text is half written: it gets memory of its own.
                    context.sendText(to: .client(client)) { inner in inner.append("ack") }
                    text.append(message)
                }
            }
        }
        let host = RecordingHost()
        let room = Room(id: "r", service: Writer())
        let a = connection(0)
        #expect(room.connect(room.add(a), host) == nil)
        #expect(room.message(ClientId(1), .text("hi"), host) == nil)
        #expect(room.message(ClientId(1), .text("again"), host) == nil)
        #expect(host.sent.map(\.0) == ["ack", "value 1 from ClientId(1): hi", "ack", "value 2 from ClientId(1): again"])
        #expect(host.sent.map(\.1) == [.client(ClientId(1)), .broadcast, .client(ClientId(1)), .broadcast])
        #expect(!host.textScratch.inUse)
    }

    @Test func theRoomTableCreatesOnFirstOpenEndsOnceAndSwapsFactories() throws {
        let host = RecordingHost()
        let table = RoomTable(factory: ServiceFactory { _ in ScriptedService() }, shard: 0)
        let first = try table.open("a", host: host)
        #expect(first.created && first.failure == nil)
        #expect(try table.open("a", host: host).room === first.room)
        #expect(!(try table.open("a", host: host).created))
        #expect(table.count == 1)
        #expect(table.end(first.room))
        #expect(!table.end(first.room), "ending twice is a no-op")
        #expect(first.room.isClosed && table["a"] == nil)
        let second = try table.open("a", host: host)
        #expect(second.created && second.room !== first.room)
        let open = table.replaceFactory(ServiceFactory { _ in CounterService() })
        #expect(open.map(\.id) == ["a"])
        struct Refused: Error {}
        let refusing = RoomTable(factory: ServiceFactory { _ in throw Refused() }, shard: 0)
        #expect(throws: Refused.self) { try refusing.open("b", host: host) }
        #expect(refusing.count == 0)
    }
}

/// glibc's size of a heap block (malloc.h, which Glibc's module does not expose).
@_silgen_name("malloc_usable_size") private func mallocUsableSize(_ p: UnsafeMutableRawPointer?) -> Int

@Suite struct ConnectionSizeTests {
    @Test func anIdleConnectionIsOneSmallAllocation() {
        // A server keeps one per client: its size is the per-connection floor of memory.
        let conn = Connection(slot: 0, generation: 0, fd: -1, maxMessageSize: 1 << 20, now: 0)
        let bytes = mallocUsableSize(Unmanaged.passUnretained(conn).toOpaque())
        #expect(bytes <= 168, "a Connection takes \(bytes) bytes")
        #expect(!conn.parser.holdsStorage && conn.queue.isEmpty)
    }
}
