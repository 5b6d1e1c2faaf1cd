import Glibc
import Stateroom
@testable import StateroomServer
import Synchronization
import Testing
import WireProtocol
import Locking

/// Parses `request` and hands the head to `door`.
private func answer(_ door: FrontDoor, _ request: String, peer: String? = "127.0.0.1:4242") -> FrontDoorAnswer? {
    var bytes = Array(request.utf8)
    return bytes.withUnsafeMutableBytes { buf -> FrontDoorAnswer? in
        guard case .complete(let head) = parseHTTPHead(UnsafeRawBufferPointer(buf)) else { return nil }
        return door.answer(head, peer: { peer })
    }
}

private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

private let upgradeHead = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

/// Remembers the last request it saw; refuses rooms whose id starts with "no".
final class RecordingPolicy: UpgradePolicy {
    let last = Locked<UpgradeRequest?>(nil)
    func decide(_ request: UpgradeRequest) -> UpgradeDecision {
        last.withLock { $0 = request }
        if request.roomId.hasPrefix("no") {
            return .refuse(.forbidden, headers: [("X-Why", "closed room"), ("Bad\r\nHeader", "x")], body: "not you\n")
        }
        return .accept(headers: [("X-Room", request.roomId), ("X-Evil", "a\r\nSet-Cookie: b")])
    }
}

@Suite struct FrontDoorTests {
    func door(policy: any UpgradePolicy = AcceptAllUpgrades(), shards: Int = 4, staticDirectory: String? = nil) -> FrontDoor {
        FrontDoor(staticDirectory: staticDirectory, policy: policy, shards: shards, metrics: { "m 1\n" })
    }

    @Test func statusAndMetricsAreAnsweredAndKeptAlive() throws {
        guard case .respond(let status, let keep)? = answer(door(), "GET /status HTTP/1.1\r\nHost: x\r\n\r\n") else {
            Issue.record("no response"); return
        }
        #expect(text(status).hasPrefix("HTTP/1.1 200 OK\r\n") && text(status).hasSuffix("\r\n\r\nok") && keep)
        guard case .respond(let metrics, _)? = answer(door(), "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n") else {
            Issue.record("no response"); return
        }
        #expect(text(metrics).hasSuffix("m 1\n") && text(metrics).contains("Connection: close"))
    }

    @Test func malformedUpgradesAndMissingFilesFail() {
        guard case .fail(let r)? = answer(door(), "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n") else {
            Issue.record("expected a failure"); return
        }
        #expect(text(r).hasPrefix("HTTP/1.1 400 "))
        guard case .fail(let nf)? = answer(door(), "GET /index.html HTTP/1.1\r\n\r\n") else {
            Issue.record("expected a failure"); return
        }
        #expect(text(nf).hasPrefix("HTTP/1.1 404 "))
    }

    @Test func theUpgradeDecisionSeesACopyOfTheRequestAndItsHeadersReachThe101() throws {
        let policy = RecordingPolicy()
        let d = door(policy: policy, shards: 4)
        let a = answer(d, "GET /ws/lobby?token=abc&x=1 HTTP/1.1\r\nHost: h\r\nX-Key: secret\r\n" + upgradeHead + "\r\n")
        guard case .upgrade(let accepted, let owner)? = a else { Issue.record("expected an upgrade: \(String(describing: a))"); return }
        #expect(accepted.roomId == "lobby")
        #expect(owner == ownerShard(of: "lobby", shards: 4))
        let response = text(accepted.response)
        #expect(response.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
        #expect(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))
        #expect(response.contains("\r\nX-Room: lobby\r\n"))
        #expect(!response.contains("Set-Cookie"), "a header value with a line break is dropped")
        let seen = try #require(policy.last.withLock { $0 })
        #expect(seen.path == "/ws/lobby" && seen.query == "token=abc&x=1" && seen.peer == "127.0.0.1:4242")
        #expect(seen.queryItem("token") == "abc" && seen.queryItem("y") == nil)
        #expect(seen.header("x-key") == "secret" && seen.header("Sec-WebSocket-Version") == "13")
    }

    @Test func aRefusalIsTheStatusHeadersAndBodyThePolicyGave() {
        let a = answer(door(policy: RecordingPolicy()), "GET /ws/nope HTTP/1.1\r\n" + upgradeHead + "\r\n")
        guard case .refuse(let r, _)? = a else { Issue.record("expected a refusal"); return }
        let response = text(r)
        #expect(response.hasPrefix("HTTP/1.1 403 Forbidden\r\n"))
        #expect(response.contains("\r\nX-Why: closed room\r\n") && !response.contains("Bad"))
        #expect(response.contains("Connection: close") && response.hasSuffix("\r\n\r\nnot you\n"))
    }
}

@Suite("upgrade policy on a running server", .serialized)
struct UpgradePolicyServerTests {
    @Test("a refused client gets the policy's status and the room never sees it", arguments: ServerConfiguration.IOMode.allCases)
    func refusedAndAccepted(io: ServerConfiguration.IOMode) throws {
        var c = ServerConfiguration()
        c.host = "127.0.0.1"
        c.port = 0
        c.shards = 2
        c.io = io
        c.pinThreads = false
        c.upgradePolicy = UpgradePolicyClosure { request in
            request.queryItem("key") == "k" ? .accept : .refuse(.unauthorized)
        }
        let server = Server(configuration: c)
        try server.start(factory: BuiltinService.counter.factory)
        defer { server.stop() }
        let refused = "GET /ws/p HTTP/1.1\r\nHost: x\r\n" + upgradeHead + "\r\n"
        #expect(httpStatus(port: server.port, refused) == 401)
        let a = try TestClient(port: server.port, path: "/ws/p?key=k")
        a.send(text: "increment")
        #expect(a.nextMessage() == .text("new value: 1"), "accepted clients are served; the refused one never joined")
    }
}

@Suite("pipelined requests before an upgrade", .serialized)
struct PipelinedUpgradeTests {
    /// Reads from `fd` until `text` holds `needle` or the socket's 5 s timeout passes.
    private func read(_ fd: Int32, until needle: String, into text: inout String) {
        var buf = [UInt8](repeating: 0, count: 4096)
        while !text.contains(needle) {
            let n = retryingEINTR { Glibc.read(fd, &buf, buf.count) }
            if n <= 0 { return }
            text += String(decoding: buf[0..<n], as: UTF8.self)
        }
    }

    @Test("a response still queued when the upgrade moves to the room's shard arrives first, and the socket then works",
          arguments: ServerConfiguration.IOMode.allCases)
    func statusThenUpgradeInOneWrite(io: ServerConfiguration.IOMode) throws {
        var c = ServerConfiguration()
        c.host = "127.0.0.1"
        c.port = 0
        c.shards = 2
        c.io = io
        c.pinThreads = false
        let server = Server(configuration: c)
        try server.start(factory: BuiltinService.counter.factory)
        defer { server.stop() }
        // Rooms of both shards: whichever shard accepts a connection, some upgrades move.
        let rooms = (0..<8).map { "pipe\($0)" }
        #expect(Set(rooms.map { ownerShard(of: $0, shards: 2) }).count == 2)
        for room in rooms {
            let fd = try #require(connectLoopback(port: server.port))
            defer { close(fd) }
            let request = "GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /ws/\(room) HTTP/1.1\r\nHost: x\r\n" + upgradeHead + "\r\n"
            var bytes = Array(request.utf8)
            // A masked "increment" frame right behind the upgrade, in the same write.
            let key: (UInt8, UInt8, UInt8, UInt8) = (1, 2, 3, 4)
            Array("increment".utf8).withUnsafeBytes { encodeClientFrame(opcode: .text, payload: $0, maskKey: key, into: &bytes) }
            _ = retryingEINTR { bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) } }
            var text = ""
            read(fd, until: "new value: 1", into: &text)
            let ok = try #require(text.firstRange(of: "HTTP/1.1 200 OK"), "room \(room): \(text)")
            let upgraded = try #require(text.firstRange(of: "HTTP/1.1 101 Switching Protocols"), "room \(room): \(text)")
            #expect(ok.lowerBound < upgraded.lowerBound, "the /status answer comes first")
            #expect(text.contains("new value: 1"), "room \(room): the frame sent with the upgrade reached the room")
        }
    }
}

@Suite("request heads when receive buffers run out", .serialized)
struct ReceiveBufferShortageTests {
    @Test("a request head whose receive found no buffer is read once buffers are back", arguments: [ServerConfiguration.IOMode.uring])
    func headsOutnumberingBuffers(io: ServerConfiguration.IOMode) throws {
        var c = ServerConfiguration()
        c.host = "127.0.0.1"
        c.port = 0
        c.shards = 1
        c.io = io
        c.pinThreads = false
        c.eventLoop.receiveBufferCount = 2
        let server = Server(configuration: c)
        try server.start(factory: BuiltinService.counter.factory)
        defer { server.stop() }
        // Many sockets with a complete head waiting before the server reads any: their receives
        // need more buffers at once than the ring holds, and some end with ENOBUFS.
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        let request = Array(("GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").utf8)
        for _ in 0..<64 {
            let fd = try #require(connectLoopback(port: server.port))
            fds.append(fd)
            _ = retryingEINTR { request.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) } }
        }
        for (i, fd) in fds.enumerated() {
            var buf = [UInt8](repeating: 0, count: 512)
            let n = retryingEINTR { read(fd, &buf, buf.count) }
            #expect(n > 12 && String(decoding: buf[0..<max(n, 0)], as: UTF8.self).hasPrefix("HTTP/1.1 200 OK"),
                    "connection \(i) got no answer within 5 s")
        }
    }
}
