import Glibc
import IOCore
import Logging
import Stateroom
import Synchronization
import Locking

/// Counts shard threads that finished starting.
final class StartLatch: Sendable {
    private let arrived = Locked(0)
    func arrive() { arrived.withLock { $0 += 1 } }
    func wait(for n: Int) {
        while arrived.withLock({ $0 }) < n { usleep(500) }
    }
}

/// A running server: one listener and one shard thread per configured shard.
public final class Server: @unchecked Sendable {
    // @unchecked: `shards` is written once in `start` before any thread runs and read only after;
    // everything else a shard owns is touched only by its own thread.
    public let configuration: ServerConfiguration
    /// The port actually bound (useful with port 0).
    public private(set) var port: UInt16 = 0
    /// The backend in use (`uring` or `epoll`).
    public private(set) var backend: EventLoopConfiguration.Backend = .uring
    private var shards: [Shard] = []
    private let logger: Logger
    private let processStats = ProcessStats()
    /// Serialises certificate reloads.
    private let reloading = Locked(())
    /// The durable rooms' store (``ServerConfiguration/store``) and this node's hand-over
    /// channel, stopped after the shards.
    private var store: RedisStore?
    private var subscriber: RedisSubscriber?
    /// This node's id in room leases (with a store).
    public private(set) var nodeId = ""


    public init(configuration: ServerConfiguration, logger: Logger = Logger(label: "stateroom")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Decides the backend, binds the listeners and starts every shard. Throws a clear error if
    /// the port cannot be bound or the event loop cannot be set up.
    public func start(factory: any StateroomServiceFactory) throws {
        var config = configuration
        config.shards = max(1, config.shards)
        switch config.io {
        case .uring:
            config.eventLoop.backend = .uring
        case .epoll:
            config.eventLoop.backend = .epoll
        case .auto:
            do {
                _ = try UringEventLoop(config.eventLoop)
                config.eventLoop.backend = .uring
            } catch {
                logger.warning("io_uring unavailable, falling back to epoll: \(error)")
                config.eventLoop.backend = .epoll
            }
        }
        backend = config.eventLoop.backend
        signal(SIGPIPE, SIG_IGN)
        // A pair that cannot be served stops the start with the reason (expired, not matching,
        // unreadable), before the port is bound.
        let tls = try config.tls.map { try TLSContext($0) }
        if let tls { logger.info("TLS: \(tls.summary)") }
        // A store that does not answer stops the start: rooms would not be durable.
        if let endpoint = config.store {
            let s = RedisStore(endpoint)
            do {
                try s.ping()
            } catch {
                s.stop()
                throw StoreError("durable rooms: \(error)")
            }
            store = s
            nodeId = config.nodeId ?? Server.makeNodeId()
            logger.info("durable rooms in \(endpoint) as node \(nodeId), saved every \(config.snapshotInterval) s and when a room empties")
        }

        var listeners: [Int32] = []
        var boundPort = config.port
        do {
            for _ in 0..<config.shards {
                let l = try Socket.listen(host: config.host, port: boundPort)
                listeners.append(l.fd)
                boundPort = l.port
            }
        } catch {
            for fd in listeners { Socket.close(fd) }
            store?.stop()
            store = nil
            throw error
        }
        port = boundPort

        let admission = config.limits.needsCounting ? Admission(config.limits) : nil
        var mailboxes: [Mailbox<ShardMessage>] = []
        var stats: [ShardStats] = []
        for _ in 0..<config.shards {
            mailboxes.append(try Mailbox())
            stats.append(ShardStats())
        }
        for i in 0..<config.shards {
            shards.append(Shard(index: i, config: config, factory: factory, listenerFD: listeners[i],
                                mailboxes: mailboxes, allStats: stats, processStats: processStats,
                                tls: tls, admission: admission, store: store.map { ($0, node: nodeId) }, logger: logger))
        }
        if let endpoint = config.store {
            // Other nodes ask for this node's rooms here; each request goes to the room's shard.
            let boxes = mailboxes
            subscriber = RedisSubscriber(endpoint, channel: StoredRoom.channel(of: nodeId)) { payload in
                let room = String(decoding: payload, as: UTF8.self)
                boxes[ownerShard(of: room, shards: boxes.count)].post(.store(.handoverRequested(room: room)))
            }
        }
        // Pin shard i to the i-th CPU this process may use (respecting taskset/cgroup masks).
        let cpus = Socket.allowedCPUs
        let latch = StartLatch()
        for (i, s) in shards.enumerated() {
            s.start(cpu: config.pinThreads && !cpus.isEmpty ? cpus[i % cpus.count] : nil, ready: latch)
        }
        latch.wait(for: shards.count)
        if let failed = shards.first(where: { $0.startError != nil }), let err = failed.startError {
            stop()
            throw err
        }
    }

    /// Serves every new room from `factory`; rooms open now end and their clients are closed
    /// with 1012 (service restart), so they reconnect to the new service.
    public func reload(factory: any StateroomServiceFactory) {
        for s in shards { s.mailbox.post(.reload(factory)) }
    }

    /// Reads the certificate chain and key again (``ServerConfiguration/tls``) and presents them
    /// to new connections; open connections keep the pair they started with. If the files cannot
    /// be served, the old pair stays and the error (naming the file) is thrown and logged.
    public func reloadTLS() throws {
        guard let files = configuration.tls else { return }
        try reloading.withLock { _ in
            let context: TLSContext
            do {
                context = try TLSContext(files)
            } catch {
                processStats.tlsReloadFailures.add(1, ordering: .relaxed)
                logger.error("TLS reload failed, keeping the current certificate: \(error)")
                throw error
            }
            for s in shards { s.mailbox.post(.tlsContext(context)) }
            processStats.tlsReloads.add(1, ordering: .relaxed)
            logger.info("TLS reloaded: \(context.summary)")
        }
    }

    /// Asks every shard to close its connections (1001) and stop, then waits for them.
    public func stop() {
        for s in shards { s.mailbox.post(.shutdown) }
        wait()
    }

    /// Blocks until every shard thread has ended (then stops the store).
    public func wait() {
        for s in shards { s.join() }
        subscriber?.stop()
        store?.stop()
    }

    /// A node id unique across machines and restarts: host name, process id, a random part.
    static func makeNodeId() -> String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let name = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(name.isEmpty ? "node" : name)-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
    }
}
