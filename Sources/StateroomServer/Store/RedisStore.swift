import CHiredis
import Dispatch
import Glibc
import IOCore
import Synchronization
import Locking

/// Where a Redis server is: `redis://HOST:PORT[/DB]` (port 6379 when left out, database 0).
public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var database: Int

    public init(host: String, port: Int = 6379, database: Int = 0) {
        self.host = host
        self.port = port
        self.database = database
    }

    /// Parses `redis://HOST:PORT[/DB]`; throws naming what is wrong.
    public init(url: String) throws(StoreError) {
        let scheme = "redis://"
        guard url.hasPrefix(scheme) else { throw StoreError("\(url): a store is given as redis://HOST:PORT[/DB]") }
        var rest = Substring(url.dropFirst(scheme.count))
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            guard let n = Int(db), n >= 0, n < 1 << 16 else { throw StoreError("\(url): database \"\(db)\" is not a number") }
            database = n
            rest = rest[..<slash]
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":") {
            guard let p = Int(rest[rest.index(after: colon)...]), p > 0, p < 65536 else {
                throw StoreError("\(url): port \"\(rest[rest.index(after: colon)...])\" is not a port number")
            }
            port = p
            host = String(rest[..<colon])
        }
        guard !host.isEmpty else { throw StoreError("\(url): no host") }
        self.init(host: host, port: port, database: database)
    }

    public var description: String { "redis://\(host):\(port)/\(database)" }
}

/// Why a store operation failed: the server could not be reached, it timed out, or it answered
/// with an error.
public struct StoreError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One Redis reply.
public enum RedisReply: Equatable, Sendable {
    case null
    case integer(Int64)
    case bytes([UInt8])
    case status(String)
    case array([RedisReply])

    /// The reply as bytes (a bulk string or a status), nil for `null`.
    public var data: [UInt8]? {
        switch self {
        case .bytes(let b): return b
        case .status(let s): return Array(s.utf8)
        default: return nil
        }
    }
}

/// A connection to Redis on a thread of its own: the durable rooms' snapshots and leases go
/// through it, so a shard never waits on the network. Shards hand it commands and get each reply
/// on a callback, run on the store thread (a shard posts it to its own mailbox).
///
/// Why a thread and hiredis's blocking API rather than its async API on each shard's loop:
/// store traffic is a few commands per room per snapshot interval, far from the hot path; one
/// connection per process keeps Redis's client count small; and a slow or lost Redis then stalls
/// only this thread, bounded by the command timeout, never a shard's loop.
///
/// Commands queued while the thread was busy go out together as one pipeline (one write, the
/// replies read in order), so many rooms' saves cost one round trip and one wake-up.
///
/// A lost connection fails the command that found it (counted in ``failures``) and is made again
/// by the next command, at most once per ``retryInterval``: while Redis is down, commands fail
/// fast instead of queueing behind connect timeouts, and nothing spins.
public final class RedisStore: Sendable {
    public let endpoint: RedisEndpoint
    /// Longest a connect or a command may take.
    public let timeout: Double
    /// Least time between two connection attempts while Redis is unreachable.
    public let retryInterval: Double

    private struct Job: Sendable {
        let arguments: [[UInt8]]
        let completion: @Sendable (Result<RedisReply, StoreError>) -> Void
    }

    private struct Queue {
        var jobs: [Job] = []
        var stopped = false
    }

    private let queue = Locked(Queue())
    private let wake = DispatchSemaphore(value: 0)
    private let thread = Locked<LoopThread?>(nil)
    private let failureCount = Atomic<Int>(0)
    private let commandCount = Atomic<Int>(0)

    /// Commands that failed (unreachable, timed out, error reply) since start.
    public var failures: Int { failureCount.load(ordering: .relaxed) }
    /// Commands that got a reply.
    public var commands: Int { commandCount.load(ordering: .relaxed) }

    /// Starts the store thread. Nothing is connected until the first command (see ``ping()``
    /// for a start-up check).
    public init(_ endpoint: RedisEndpoint, timeout: Double = 2, retryInterval: Double = 0.5) {
        self.endpoint = endpoint
        self.timeout = timeout
        self.retryInterval = retryInterval
        thread.withLock { $0 = LoopThread(cpu: nil) { [self] in run() } }
    }

    /// Queues a command (`["SET", key, value]` as bytes); `completion` gets the reply on the
    /// store thread. After ``stop()`` the command fails at once.
    public func command(_ arguments: [[UInt8]], completion: @escaping @Sendable (Result<RedisReply, StoreError>) -> Void) {
        let queued = queue.withLock { q -> Bool in
            guard !q.stopped else { return false }
            q.jobs.append(Job(arguments: arguments, completion: completion))
            return true
        }
        if queued {
            wake.signal()
        } else {
            completion(.failure(StoreError("the store is stopped")))
        }
    }

    /// ``command(_:completion:)`` with string arguments.
    public func command(_ arguments: String..., completion: @escaping @Sendable (Result<RedisReply, StoreError>) -> Void) {
        command(arguments.map { Array($0.utf8) }, completion: completion)
    }

    /// Runs a command and waits for its reply: for start-up checks and tests, never on a shard.
    public func commandAndWait(_ arguments: [[UInt8]]) -> Result<RedisReply, StoreError> {
        let box = Locked<Result<RedisReply, StoreError>?>(nil)
        let replied = DispatchSemaphore(value: 0)
        command(arguments) { result in
            box.withLock { $0 = result }
            replied.signal()
        }
        replied.wait()
        return box.withLock { $0! }
    }

    /// Checks that Redis answers `PING`; the error names the endpoint and the reason.
    public func ping() throws(StoreError) {
        switch commandAndWait([Array("PING".utf8)]) {
        case .success(.status("PONG")): return
        case .success(let other): throw StoreError("\(endpoint): unexpected answer to PING: \(other)")
        case .failure(let e): throw e
        }
    }

    /// Fails what is queued, ends the thread and closes the connection; waits for the thread.
    /// The store thread keeps the store alive until then.
    public func stop() {
        let pending = queue.withLock { q -> [Job] in
            if q.stopped { return [] }
            q.stopped = true
            defer { q.jobs.removeAll() }
            return q.jobs
        }
        for job in pending { job.completion(.failure(StoreError("the store is stopped"))) }
        wake.signal()
        thread.withLock { t in
            t?.join()
            t = nil
        }
    }

    // MARK: - The store thread

    private func run() {
        var connection: OpaquePointer?  // redisContext*
        var lastAttempt = -Double.infinity
        defer {
            if let connection { redisFree(UnsafeMutablePointer(connection)) }
        }
        while true {
            wake.wait()
            // Everything queued goes out as one pipeline: one write, then the replies in order
            // (commands from many rooms cost one round trip and one wake-up, not one each).
            let jobs = queue.withLock { q -> [Job] in
                if q.stopped { return [] }
                defer { q.jobs.removeAll(keepingCapacity: true) }
                return q.jobs
            }
            if jobs.isEmpty {
                if queue.withLock({ $0.stopped }) { return }
                continue
            }
            // The semaphore was signalled once per job: take back the signals of those drained here.
            for _ in 1..<jobs.count { _ = wake.wait(timeout: .now()) }
            if connection == nil {
                let now = Double(monotonicNanos()) / 1e9
                if now - lastAttempt < retryInterval {
                    for job in jobs { fail(job, "\(endpoint): unreachable (retrying every \(retryInterval) s)") }
                    continue
                }
                lastAttempt = now
                switch connect() {
                case .success(let c): connection = c
                case .failure(let e):
                    for job in jobs { fail(job, e.description) }
                    continue
                }
            }
            let results = execute(jobs.map(\.arguments), on: connection!)
            if sr_redis_err(UnsafeMutablePointer(connection!)) != 0 {
                // The connection may be half-way through a reply: never reuse it after an error
                // that is not a plain error reply.
                redisFree(UnsafeMutablePointer(connection!))
                connection = nil
            }
            for (job, result) in zip(jobs, results) {
                if case .failure = result {
                    failureCount.add(1, ordering: .relaxed)
                } else {
                    commandCount.add(1, ordering: .relaxed)
                }
                job.completion(result)
            }
        }
    }

    private func fail(_ job: Job, _ reason: String) {
        failureCount.add(1, ordering: .relaxed)
        job.completion(.failure(StoreError(reason)))
    }

    private var timeval: timeval {
        let micro = Int((timeout * 1e6).rounded())
        return Glibc.timeval(tv_sec: micro / 1_000_000, tv_usec: micro % 1_000_000)
    }

    /// A connected context with the command timeout set and the database selected.
    private func connect() -> Result<OpaquePointer, StoreError> {
        guard let c = redisConnectWithTimeout(endpoint.host, Int32(endpoint.port), timeval) else {
            return .failure(StoreError("\(endpoint): cannot allocate a connection"))
        }
        if sr_redis_err(c) != 0 {
            let reason = String(cString: sr_redis_errstr(c))
            redisFree(c)
            return .failure(StoreError("\(endpoint): cannot connect: \(reason)"))
        }
        redisSetTimeout(c, timeval)
        let context = OpaquePointer(c)
        if endpoint.database != 0 {
            if case .failure(let e) = execute([Array("SELECT".utf8), Array(String(endpoint.database).utf8)], on: context) {
                redisFree(c)
                return .failure(e)
            }
        }
        return .success(context)
    }

    private func execute(_ arguments: [[UInt8]], on connection: OpaquePointer) -> Result<RedisReply, StoreError> {
        execute([arguments], on: connection)[0]
    }

    /// Sends `commands` as one pipeline and reads their replies in order; once the connection
    /// fails, that command and every later one fail with its error.
    private func execute(_ commands: [[[UInt8]]], on connection: OpaquePointer) -> [Result<RedisReply, StoreError>] {
        let c = UnsafeMutablePointer<redisContext>(connection)
        for arguments in commands { appendCommand(c, arguments) }
        var results: [Result<RedisReply, StoreError>] = []
        results.reserveCapacity(commands.count)
        for _ in commands {
            var raw: UnsafeMutableRawPointer?
            guard sr_redis_err(c) == 0, redisGetReply(c, &raw) == REDIS_OK, let raw else {
                results.append(.failure(StoreError("\(endpoint): \(String(cString: sr_redis_errstr(c)))")))
                continue
            }
            results.append(Self.convert(raw.assumingMemoryBound(to: redisReply.self)))
            freeReplyObject(raw)
        }
        return results
    }

    private static func convert(_ r: UnsafeMutablePointer<redisReply>) -> Result<RedisReply, StoreError> {
        let reply = r.pointee
        func text() -> [UInt8] {
            guard let s = reply.str else { return [] }
            return Array(UnsafeRawBufferPointer(start: s, count: reply.len))
        }
        switch reply.type {
        case REDIS_REPLY_NIL: return .success(.null)
        case REDIS_REPLY_INTEGER: return .success(.integer(reply.integer))
        case REDIS_REPLY_STRING: return .success(.bytes(text()))
        case REDIS_REPLY_STATUS: return .success(.status(String(decoding: text(), as: UTF8.self)))
        case REDIS_REPLY_ERROR: return .failure(StoreError("Redis: \(String(decoding: text(), as: UTF8.self))"))
        case REDIS_REPLY_ARRAY:
            var items: [RedisReply] = []
            for i in 0..<reply.elements {
                guard let e = reply.element[i] else { items.append(.null); continue }
                switch convert(e) {
                case .success(let item): items.append(item)
                case .failure(let error): return .failure(error)
                }
            }
            return .success(.array(items))
        default:
            return .failure(StoreError("Redis: reply of unknown type \(reply.type)"))
        }
    }
}

/// Copies `arguments` into the context's output buffer as one command (sent by the next read of
/// a reply). Arguments go with their lengths, so they are binary-safe.
private func appendCommand(_ c: UnsafeMutablePointer<redisContext>, _ arguments: [[UInt8]]) {
    withArgv(arguments) { count, argv, lengths in _ = redisAppendCommandArgv(c, count, argv, lengths) }
}

/// Sends `arguments` as one command and reads its reply (nil when the connection failed; the
/// caller frees the reply).
private func sendCommand(_ c: UnsafeMutablePointer<redisContext>, _ arguments: [[UInt8]]) -> UnsafeMutableRawPointer? {
    withArgv(arguments) { count, argv, lengths in redisCommandArgv(c, count, argv, lengths) }
}

/// hiredis's argv form of `arguments`, for the duration of `body`.
private func withArgv<R>(_ arguments: [[UInt8]],
                         _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int>?) -> R) -> R {
    let lengths = arguments.map { $0.count }
    // Each argument copied to memory of its own: an empty one still needs a pointer.
    let copies: [UnsafeMutablePointer<CChar>] = arguments.map { a in
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, a.count))
        a.withUnsafeBytes { raw in
            if let base = raw.baseAddress { UnsafeMutableRawPointer(p).copyMemory(from: base, byteCount: a.count) }
        }
        return p
    }
    defer { for p in copies { p.deallocate() } }
    var pointers: [UnsafePointer<CChar>?] = copies.map { UnsafePointer($0) }
    return pointers.withUnsafeMutableBufferPointer { argv in
        lengths.withUnsafeBufferPointer { body(Int32(arguments.count), argv.baseAddress, $0.baseAddress) }
    }
}

/// A Redis pub/sub subscription on a thread of its own (a subscribed connection can do nothing
/// else): each message published to ``channel`` is handed to the callback, on this thread.
/// A lost connection is made again (and the channel subscribed again) at most once per retry
/// interval; messages published meanwhile are lost, which the callers' protocol tolerates (a
/// node asking for a room asks again).
public final class RedisSubscriber: Sendable {
    public let endpoint: RedisEndpoint
    public let channel: String
    private let retryInterval: Double
    private let onMessage: @Sendable ([UInt8]) -> Void
    private struct State {
        var stopped = false
        var fd: Int32 = -1
    }
    private let state = Locked(State())
    private let thread = Locked<LoopThread?>(nil)
    private let subscribedOnce = DispatchSemaphore(value: 0)

    /// Subscribes to `channel` and waits (up to `timeout` seconds) until the subscription is in
    /// place, so nothing published after `init` returns is missed while Redis is up.
    public init(_ endpoint: RedisEndpoint, channel: String, retryInterval: Double = 0.5, timeout: Double = 2,
                onMessage: @escaping @Sendable ([UInt8]) -> Void) {
        self.endpoint = endpoint
        self.channel = channel
        self.retryInterval = retryInterval
        self.onMessage = onMessage
        thread.withLock { $0 = LoopThread(cpu: nil) { [self] in run() } }
        _ = subscribedOnce.wait(timeout: .now() + timeout)
    }

    /// Ends the subscription and waits for its thread.
    public func stop() {
        let fd = state.withLock { s -> Int32 in
            s.stopped = true
            return s.fd
        }
        // Wakes the blocking read.
        if fd >= 0 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        thread.withLock { t in
            t?.join()
            t = nil
        }
    }

    private var stopped: Bool { state.withLock { $0.stopped } }

    private func run() {
        var signalled = false
        while !stopped {
            let micro = 2_000_000
            let tv = timeval(tv_sec: micro / 1_000_000, tv_usec: 0)
            guard let c = redisConnectWithTimeout(endpoint.host, Int32(endpoint.port), tv) else { return }
            defer { redisFree(c) }
            if sr_redis_err(c) == 0 {
                let ok = state.withLock { s -> Bool in
                    if s.stopped { return false }
                    s.fd = sr_redis_fd(c)
                    return true
                }
                if !ok { return }
                if endpoint.database != 0 { _ = command(c, ["SELECT", String(endpoint.database)]) }
                if command(c, ["SUBSCRIBE", channel]) {
                    if !signalled {
                        signalled = true
                        subscribedOnce.signal()
                    }
                    listen(c)
                }
                state.withLock { $0.fd = -1 }
            }
            if stopped { return }
            usleep(UInt32(retryInterval * 1e6))
        }
    }

    /// Sends a command and reads its reply; true when it was not an error.
    private func command(_ c: UnsafeMutablePointer<redisContext>, _ arguments: [String]) -> Bool {
        guard let reply = sendCommand(c, arguments.map { Array($0.utf8) }) else { return false }
        defer { freeReplyObject(reply) }
        return reply.assumingMemoryBound(to: redisReply.self).pointee.type != REDIS_REPLY_ERROR
    }

    /// Reads published messages until the connection fails or is shut down.
    private func listen(_ c: UnsafeMutablePointer<redisContext>) {
        while !stopped {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(c, &raw) == REDIS_OK, let raw else { return }
            defer { freeReplyObject(raw) }
            let r = raw.assumingMemoryBound(to: redisReply.self).pointee
            // ["message", channel, payload]
            guard r.type == REDIS_REPLY_ARRAY, r.elements == 3, let kind = r.element[0], let payload = r.element[2],
                  let k = kind.pointee.str, String(cString: k) == "message", let p = payload.pointee.str else { continue }
            onMessage(Array(UnsafeRawBufferPointer(start: p, count: payload.pointee.len)))
        }
    }
}
