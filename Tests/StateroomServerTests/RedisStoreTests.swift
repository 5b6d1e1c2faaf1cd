import Foundation
import Glibc
import IOCore
@testable import StateroomServer
import Synchronization
import Testing
import Locking

/// A private `redis-server` on a loopback port (nothing saved to disk), for as long as a test needs it.
final class RedisProcess {
    let port: Int
    private var process: Process?

    /// Starts one on a free port and waits until it answers.
    init(port: Int? = nil) throws {
        self.port = try port ?? Self.freePort()
        try start()
    }

    deinit { kill() }

    func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        p.arguments = ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        process = p
        // Up when a plain TCP connect succeeds (bounded: 10 s).
        for _ in 0..<1000 {
            if let fd = connectLoopback(port: UInt16(port)) {
                close(fd)
                return
            }
            usleep(10_000)
        }
        throw StoreError("redis-server on port \(port) did not start")
    }

    /// Ends the server (SIGKILL: as if the machine went away) and waits for it.
    func kill() {
        guard let p = process else { return }
        Glibc.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    static func freePort() throws -> Int {
        let l = try Socket.listen(host: "127.0.0.1", port: 0)
        defer { Socket.close(l.fd) }
        return Int(l.port)
    }
}

@Suite("Redis store", .serialized)
struct RedisStoreTests {
    @Test func endpointsParseAndBadOnesAreNamed() throws {
        #expect(try RedisEndpoint(url: "redis://127.0.0.1:6380/2") == RedisEndpoint(host: "127.0.0.1", port: 6380, database: 2))
        #expect(try RedisEndpoint(url: "redis://cache") == RedisEndpoint(host: "cache", port: 6379, database: 0))
        #expect(throws: StoreError("http://x:1: a store is given as redis://HOST:PORT[/DB]")) { try RedisEndpoint(url: "http://x:1") }
        #expect(throws: StoreError("redis://x:99999: port \"99999\" is not a port number")) { try RedisEndpoint(url: "redis://x:99999") }
        #expect(throws: StoreError("redis://x:1/db: database \"db\" is not a number")) { try RedisEndpoint(url: "redis://x:1/db") }
        #expect(throws: StoreError("redis://:1: no host")) { try RedisEndpoint(url: "redis://:1") }
    }

    @Test func valuesRoundTripBinarySafeInTheChosenDatabase() throws {
        let redis = try RedisProcess()
        let store = RedisStore(RedisEndpoint(host: "127.0.0.1", port: redis.port, database: 3))
        defer { store.stop() }
        try store.ping()
        var value = [UInt8](repeating: 0, count: 1 << 20)
        for i in value.indices { value[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 8) }
        value[5] = 0  // NULs and CR LF inside a value are data, not terminators
        value[6] = 13
        value[7] = 10
        let key = Array("room:a\0b".utf8)
        #expect(store.commandAndWait([Array("SET".utf8), key, value]) == .success(.status("OK")))
        #expect(store.commandAndWait([Array("GET".utf8), key]) == .success(.bytes(value)))
        #expect(store.commandAndWait([Array("GET".utf8), Array("missing".utf8)]) == .success(.null))
        #expect(store.commandAndWait([Array("SET".utf8), Array("empty".utf8), []]) == .success(.status("OK")))
        #expect(store.commandAndWait([Array("GET".utf8), Array("empty".utf8)]) == .success(.bytes([])))
        // The database was selected: database 0 does not have the key.
        let other = RedisStore(RedisEndpoint(host: "127.0.0.1", port: redis.port, database: 0))
        defer { other.stop() }
        #expect(other.commandAndWait([Array("EXISTS".utf8), key]) == .success(.integer(0)))
        #expect(store.commandAndWait([Array("EXISTS".utf8), key]) == .success(.integer(1)))
        // An error reply fails that command only; the connection goes on.
        guard case .failure(let e) = store.commandAndWait([Array("INCR".utf8), key]) else {
            Issue.record("INCR of a non-number succeeded")
            return
        }
        #expect(e.description.hasPrefix("Redis: ERR"))
        #expect(store.commandAndWait([Array("GET".utf8), Array("empty".utf8)]) == .success(.bytes([])))
        #expect(store.failures == 1)
    }

    @Test func repliesComeBackOnTheStoreThreadInOrder() throws {
        let redis = try RedisProcess()
        let store = RedisStore(RedisEndpoint(host: "127.0.0.1", port: redis.port))
        defer { store.stop() }
        let seen = Locked<[Int64]>([])
        let finished = DispatchSemaphore(value: 0)
        for _ in 0..<200 {
            store.command("INCR", "n") { result in
                if case .success(.integer(let n)) = result { seen.withLock { $0.append(n) } }
                finished.signal()
            }
        }
        for _ in 0..<200 { finished.wait() }
        #expect(seen.withLock { $0 } == Array(1...200))
    }

    @Test func anErrorReplyInAPipelineFailsThatCommandOnly() throws {
        let redis = try RedisProcess()
        let store = RedisStore(RedisEndpoint(host: "127.0.0.1", port: redis.port))
        defer { store.stop() }
        try store.ping()
        // Queued together, so they go out as one pipeline.
        let results = Locked<[Int: Result<RedisReply, StoreError>]>([:])
        let done = DispatchSemaphore(value: 0)
        let commands: [[String]] = [["SET", "k", "text"], ["INCR", "k"], ["GET", "k"], ["INCR", "n"]]
        for (i, c) in commands.enumerated() {
            store.command(c.map { Array($0.utf8) }) { r in
                results.withLock { $0[i] = r }
                done.signal()
            }
        }
        for _ in commands { done.wait() }
        let r = results.withLock { $0 }
        #expect(r[0] == .success(.status("OK")))
        guard case .failure(let e) = r[1] else {
            Issue.record("INCR of text succeeded")
            return
        }
        #expect(e.description.hasPrefix("Redis: ERR"))
        #expect(r[2] == .success(.bytes(Array("text".utf8))))
        #expect(r[3] == .success(.integer(1)))
    }

    @Test func anUnreachableServerIsAClearErrorAtOnceAndNeverAHang() throws {
        let port = try RedisProcess.freePort()  // nothing listens there
        let store = RedisStore(RedisEndpoint(host: "127.0.0.1", port: port), timeout: 1, retryInterval: 60)
        defer { store.stop() }
        #expect(throws: StoreError("redis://127.0.0.1:\(port)/0: cannot connect: Connection refused")) { try store.ping() }
        // Within the retry interval, commands fail without another connect attempt.
        guard case .failure(let e) = store.commandAndWait([Array("GET".utf8), Array("k".utf8)]) else {
            Issue.record("a command succeeded without a server")
            return
        }
        #expect(e.description.contains("unreachable"))
        #expect(store.failures == 2)
    }

    @Test func aLostServerFailsCommandsUntilItIsBackThenTheyResume() throws {
        let redis = try RedisProcess()
        let store = RedisStore(RedisEndpoint(host: "127.0.0.1", port: redis.port), timeout: 1, retryInterval: 0.05)
        defer { store.stop() }
        #expect(store.commandAndWait([Array("SET".utf8), Array("k".utf8), Array("1".utf8)]) == .success(.status("OK")))
        redis.kill()
        guard case .failure = store.commandAndWait([Array("GET".utf8), Array("k".utf8)]) else {
            Issue.record("a command succeeded with the server gone")
            return
        }
        #expect(store.failures >= 1)
        try redis.start()  // same port, empty (nothing was saved)
        var resumed = false
        for _ in 0..<100 where !resumed {  // bounded: 100 tries, 50 ms apart at least
            if case .success(.null) = store.commandAndWait([Array("GET".utf8), Array("k".utf8)]) { resumed = true }
            usleep(50_000)
        }
        #expect(resumed)
    }

    @Test func stoppingFailsWhatIsQueuedAndLaterCommands() throws {
        let redis = try RedisProcess()
        let store = RedisStore(RedisEndpoint(host: "127.0.0.1", port: redis.port))
        try store.ping()
        store.stop()
        store.stop()  // twice is fine
        #expect(store.commandAndWait([Array("PING".utf8)]) == .failure(StoreError("the store is stopped")))
    }
}
