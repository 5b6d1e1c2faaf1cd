import IOCore
import Stateroom
import StateroomServer
import Testing
import WireProtocol

private func startServer(_ service: BuiltinService = .counter, shards: Int = 1,
                         io: ServerConfiguration.IOMode = .uring,
                         configure: (inout ServerConfiguration) -> Void = { _ in }) throws -> Server {
    var c = ServerConfiguration()
    c.host = "127.0.0.1"
    c.port = 0
    c.shards = shards
    c.io = io
    c.pinThreads = false
    c.eventLoop.receiveBufferCount = 64
    configure(&c)
    let server = Server(configuration: c)
    try server.start(factory: service.factory)
    return server
}

@Suite("server with our own client", .serialized)
struct ServerTests {
    @Test("the seed's counter: increment reaches both clients", arguments: ServerConfiguration.IOMode.allCases)
    func counterScenario(io: ServerConfiguration.IOMode) throws {
        let server = try startServer(io: io)
        defer { server.stop() }
        let a = try TestClient(port: server.port)
        let b = try TestClient(port: server.port, path: "/ws/1")
        a.send(text: "increment")
        #expect(a.nextMessage() == .text("new value: 1"))
        #expect(b.nextMessage() == .text("new value: 1"))
        b.send(text: "decrement")
        #expect(a.nextMessage() == .text("new value: 0"))
        #expect(b.nextMessage() == .text("new value: 0"))
        b.send(text: "something else")
        a.send(text: "increment")
        #expect(b.nextMessage() == .text("new value: 1"), "other messages are ignored")
    }

    @Test("rooms spread over three shards keep their own state (connections are handed over)")
    func shardedRooms() throws {
        let server = try startServer(shards: 3)
        defer { server.stop() }
        let rooms = (0..<9).map { "room-\($0)" }
        #expect(Set(rooms.map { ownerShard(of: $0, shards: 3) }).count == 3, "the rooms cover every shard")
        var clients: [(TestClient, TestClient)] = []
        for r in rooms { clients.append((try TestClient(port: server.port, path: "/ws/\(r)"), try TestClient(port: server.port, path: "/ws/\(r)"))) }
        for (i, pair) in clients.enumerated() {
            for _ in 0...i { pair.0.send(text: "increment") }
        }
        for (i, pair) in clients.enumerated() {
            var last = TestClient.Event.timeout
            for _ in 0...i { last = pair.1.nextMessage() }
            #expect(last == .text("new value: \(i + 1)"), "room \(rooms[i])")
        }
    }

    @Test("relay returns text and binary verbatim, split and fragmented messages included")
    func relayVerbatim() throws {
        let server = try startServer(.relay)
        defer { server.stop() }
        let a = try TestClient(port: server.port, path: "/ws/r")
        let b = try TestClient(port: server.port, path: "/ws/r")
        for size in [0, 1, 125, 126, 65535, 65536, 200_000] {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            a.send(.binary, payload)
            #expect(b.nextMessage() == .binary(payload), "size \(size)")
            #expect(a.nextMessage() == .binary(payload), "the sender receives its own message")
        }
        a.send(.text, Array("frag".utf8), fin: false)
        a.send(.ping, Array("p".utf8))
        a.send(.continuation, Array("mented é".utf8), fin: true)
        #expect(a.next() == .pong(Array("p".utf8)))
        #expect(b.nextMessage() == .text("fragmented é"))
    }

    @Test("bad frames get their close codes", arguments: [
        BadFrame(bytes: [0x81, 0x02, 0x68, 0x69], code: 1002),           // unmasked
        BadFrame(bytes: [0xC1, 0x80, 1, 2, 3, 4], code: 1002),           // RSV1
        BadFrame(bytes: [0x83, 0x80, 1, 2, 3, 4], code: 1002),           // opcode 3
        BadFrame(bytes: [0x80, 0x80, 1, 2, 3, 4], code: 1002),           // continuation first
        BadFrame(bytes: [0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28], code: 1007), // invalid UTF-8
    ])
    func badFrames(_ bad: BadFrame) throws {
        let (bytes, code) = (bad.bytes, bad.code)
        let server = try startServer()
        defer { server.stop() }
        let c = try TestClient(port: server.port)
        c.writeAll(bytes)
        #expect(c.next() == .close(code))
        #expect(c.next() == .eof)
        let d = try TestClient(port: server.port)
        d.send(text: "increment")
        #expect(d.nextMessage() == .text("new value: 1"), "the server carries on")
    }

    @Test("a message over the size limit is closed with 1009")
    func tooBig() throws {
        let server = try startServer { $0.maxMessageSize = 1000 }
        defer { server.stop() }
        let c = try TestClient(port: server.port)
        c.send(.text, [UInt8](repeating: 0x61, count: 1001))
        #expect(c.next() == .close(1009))
    }

    @Test("HTTP errors", arguments: [
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ("POST /ws HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET /status HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
        ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
        ("GET /ws/a%20b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
        ("GET /status HTTP/1.1\r\nX: " + String(repeating: "a", count: 9000) + "\r\n\r\n", 431),
        ("\u{1}\u{2}garbage\r\n\r\n", 400),
    ])
    func httpErrors(request: String, status: Int) throws {
        let server = try startServer()
        defer { server.stop() }
        #expect(httpStatus(port: server.port, request) == status)
    }

    @Test("a client that stops reading is closed with 1008; the others keep receiving")
    func slowClient() throws {
        // A grace long enough to drain megabytes even under ThreadSanitizer on a busy machine: when it
        // runs out the connection is cut, and a reset discards what the client has not read yet.
        let server = try startServer(.relay) { $0.maxPendingBytes = 64 * 1024; $0.slowClientGrace = 30 }
        defer { server.stop() }
        let slow = try TestClient(port: server.port, path: "/ws/bp")
        let good = try TestClient(port: server.port, path: "/ws/bp")
        let sender = try TestClient(port: server.port, path: "/ws/bp")
        let payload = [UInt8](repeating: 7, count: 16 * 1024)
        // 16 MiB in all: far beyond the kernel's socket buffers and the 64 KiB cap.
        for i in 0..<1024 {
            sender.send(.binary, payload)
            #expect(good.nextMessage() == .binary(payload), "message \(i)")
            #expect(sender.nextMessage() == .binary(payload))
        }
        var sawClose: UInt16?
        for _ in 0..<5000 {
            let e = slow.next(seconds: 5)
            if case .close(let code) = e { sawClose = code; break }
            if e == .eof || e == .timeout { break }
        }
        #expect(sawClose == 1008)
    }

    @Test("reload ends rooms with 1012 and serves the new service on reconnect")
    func reload() throws {
        let server = try startServer(.counter, shards: 2)
        defer { server.stop() }
        let a = try TestClient(port: server.port, path: "/ws/reload")
        a.send(text: "increment")
        #expect(a.nextMessage() == .text("new value: 1"))
        server.reload(factory: BuiltinService.echo.factory)
        #expect(a.nextMessage() == .close(1012))
        let b = try TestClient(port: server.port, path: "/ws/reload")
        #expect(b.nextMessage() == .text("User ClientId(1) connected."), "a fresh room of the new service")
    }

    @Test("stable hash is pinned: the same room lands on the same shard everywhere")
    func stableHashPinned() {
        #expect(stableHash("") == 0xcbf2_9ce4_8422_2325)
        #expect(stableHash("a") == 0xaf63_dc4c_8601_ec8c)
    }
}

struct BadFrame: Sendable, CustomTestStringConvertible {
    var bytes: [UInt8]
    var code: UInt16
    var testDescription: String { "\(bytes.prefix(2)) -> \(code)" }
}
