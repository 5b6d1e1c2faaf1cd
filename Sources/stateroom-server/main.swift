import ArgumentParser
import Glibc
import IOCore
import Logging
import Stateroom
import StateroomServer
import WasmHost

@main
struct StateroomServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stateroom-server",
        abstract: "Serves Stateroom rooms over WebSocket: /ws/<room>, /status, /metrics.")

    @Option(help: "Address to listen on.")
    var host = "0.0.0.0"
    @Option(help: "Port to listen on (0 picks a free one).")
    var port: UInt16 = 8080
    @Option(help: "Shard threads, each pinned to a core (default: number of CPUs).")
    var shards: Int?
    @Option(help: "Built-in service: counter, echo, relay or chat.")
    var service: String = "counter"
    @Option(help: "Serve this WebAssembly module in every room instead of a built-in service.")
    var wasm: String?
    @Option(help: "Serve static files from this directory at /.")
    var `static`: String?
    @Option(help: "I/O backend: auto (io_uring, else epoll), uring or epoll.")
    var io: String = "auto"
    @Option(help: "Largest message a client may send, in bytes (1009 beyond).")
    var maxMessageSize: Int = 16 << 20
    @Option(help: "Cap on a client's queued outbound bytes (closed with 1008 beyond).")
    var maxPendingBytes: Int = 4 << 20
    @Option(help: "Milliseconds a busy client's frames may wait to leave in one send (0: send at once); a busy shard waits longer, up to --coalesce-max-ms.")
    var coalesceMs: Double = 8
    @Option(help: "Milliseconds the coalescing window may grow to while a shard is busy (at most --coalesce-ms: fixed).")
    var coalesceMaxMs: Double = 16
    @Option(help: "Seconds between pings.")
    var heartbeatInterval: Double = 30
    @Option(help: "Seconds of silence after which a client is dropped.")
    var heartbeatTimeout: Double = 300
    @Option(help: "Seconds a client that opted in to seats (?seat=new) keeps its ClientId and its missed messages after dropping without a close (0: no seats).")
    var resumeGrace: Double = 30
    @Option(help: "Most bytes of messages kept for one dropped seat; past it the seat ends. Also each room's log of recent messages, replayed to a resuming client.")
    var resumeBuffer: Int = 256 << 10
    @Option(help: "Seconds a client has to send a complete request head.")
    var requestTimeout: Double = 10
    @Option(help: "Seconds a shutdown (SIGTERM, SIGINT) waits for clients to take their 1001 close before cutting them.")
    var drainTimeout: Double = 1
    @Option(help: "Guest execution budget per wasm callback, in milliseconds.")
    var wasmCallbackBudget: Int = 100
    @Option(help: "Memory cap of one wasm room instance, in bytes.")
    var wasmMaxMemory: Int = 64 << 20
    @Option(help: "Serve HTTPS and WSS with this certificate chain (PEM; with --tls-key). SIGHUP reloads it.")
    var tlsCert: String?
    @Option(help: "Private key (PEM, RSA or ECDSA) of --tls-cert.")
    var tlsKey: String?
    @Option(help: "permessage-deflate for clients that offer it: on or off.")
    var compression = "on"
    @Option(help: "Messages shorter than this many bytes go uncompressed.")
    var compressionMinBytes = 128
    @Flag(help: "Let clients keep their compression context across messages (better compression; an inflater of up to 7 KiB + 2^window-bits bytes per client that sends compressed messages).")
    var compressionClientContext = false
    @Option(help: "With --compression-client-context: the window clients are asked to compress with (8-15).")
    var compressionClientWindowBits = 15
    @Option(help: "Require a JWT signed with this HS256 secret on every WebSocket upgrade (its sub names the client). Prefer --jwt-secret-file: arguments are visible to other users.")
    var jwtSecret: String?
    @Option(help: "Like --jwt-secret, with the secret read from this file (a trailing newline is dropped).")
    var jwtSecretFile: String?
    @Option(help: "Require a JWT signed with the private half of this public key (PEM: RSA for RS256, P-256 for ES256) on every WebSocket upgrade.")
    var jwtPublicKey: String?
    @Option(help: "Seconds of clock difference tolerated when checking a token's exp and nbf.")
    var jwtClockSkew: Double = 30
    @Option(help: "Answer /metrics only with 'Authorization: Bearer <token>'.")
    var metricsToken: String?
    @Option(help: "Open WebSockets, server-wide (0: no limit); beyond it upgrades get 503 and accepting pauses.")
    var maxConnections = 0
    @Option(help: "Open WebSockets from one IP address (0: no limit); beyond it 429.")
    var maxConnectionsPerIp = 0
    @Option(help: "WebSocket upgrade requests per second from one IP address (0: no limit); beyond it 429 with Retry-After.")
    var upgradeRatePerIp: Double = 0
    @Option(help: "Upgrade requests one IP address may make at once before --upgrade-rate-per-ip applies (0: the rate, at least 1).")
    var upgradeBurstPerIp = 0
    @Option(help: "Clients in one room (0: no limit); beyond it 503.")
    var maxClientsPerRoom = 0
    @Option(help: "Keep rooms in this Redis (redis://HOST:PORT[/DB]): a room that empties is saved and dropped from memory, rooms that changed are saved every --snapshot-interval seconds and on shutdown, and come back on their next client; what a room sends waits until the state it came from is stored, under a fenced lease. The server does not start if it does not answer.")
    var store: String?
    @Option(help: "With --store: seconds between saves of the rooms that changed without sending anything (answers are stored before they go out).")
    var snapshotInterval: Double = 5
    @Option(help: "With --store: seconds a room's lease (one owner node per room) lives unless renewed; a dead node's rooms come back elsewhere within it.")
    var leaseDuration: Double = 5
    @Option(help: "With --store: this node's name in leases (default: host name, pid and a random part; unique per process).")
    var nodeId: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"
    @Flag(help: "Do not pin shard threads to cores.")
    var noPin = false

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
        guard ServerConfiguration.IOMode(rawValue: io) != nil else { throw ValidationError("--io must be auto, uring or epoll") }
        if wasm == nil && BuiltinService(rawValue: service) == nil {
            throw ValidationError("unknown service '\(service)' (counter, echo, relay, chat)")
        }
        if let s = shards, s < 1 || s > 1024 { throw ValidationError("--shards must be between 1 and 1024") }
        if !(0...1000).contains(coalesceMs) { throw ValidationError("--coalesce-ms must be between 0 and 1000") }
        if !(0...1000).contains(coalesceMaxMs) { throw ValidationError("--coalesce-max-ms must be between 0 and 1000") }
        if !(0...3600).contains(drainTimeout) { throw ValidationError("--drain-timeout must be between 0 and 3600") }
        if maxMessageSize < 1 { throw ValidationError("--max-message-size must be positive") }
        if maxPendingBytes < 1024 { throw ValidationError("--max-pending-bytes must be at least 1024") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        if compression != "on" && compression != "off" { throw ValidationError("--compression must be on or off") }
        if compressionMinBytes < 0 { throw ValidationError("--compression-min-bytes must not be negative") }
        if !(8...15).contains(compressionClientWindowBits) { throw ValidationError("--compression-client-window-bits must be between 8 and 15") }
        if [jwtSecret != nil, jwtSecretFile != nil, jwtPublicKey != nil].filter({ $0 }).count > 1 {
            throw ValidationError("--jwt-secret, --jwt-secret-file and --jwt-public-key exclude each other")
        }
        if !(0...3600).contains(jwtClockSkew) { throw ValidationError("--jwt-clock-skew must be between 0 and 3600") }
        if metricsToken?.isEmpty == true { throw ValidationError("--metrics-token must not be empty") }
        if maxConnections < 0 || maxConnectionsPerIp < 0 || upgradeBurstPerIp < 0 || maxClientsPerRoom < 0 {
            throw ValidationError("connection limits must not be negative")
        }
        if !(upgradeRatePerIp >= 0 && upgradeRatePerIp.isFinite) { throw ValidationError("--upgrade-rate-per-ip must be a non-negative number") }
        if let store {
            do { _ = try RedisEndpoint(url: store) } catch { throw ValidationError("--store: \(error)") }
        }
        if !(resumeGrace >= 0 && resumeGrace <= 86_400) { throw ValidationError("--resume-grace must be between 0 and 86400 seconds") }
        if resumeBuffer < 1024 { throw ValidationError("--resume-buffer must be at least 1024 bytes") }
        if !(0.1...3600).contains(snapshotInterval) { throw ValidationError("--snapshot-interval must be between 0.1 and 3600") }
        if !(0.3...600).contains(leaseDuration) { throw ValidationError("--lease-duration must be between 0.3 and 600") }
        if let nodeId, nodeId.isEmpty || nodeId.utf8.count > 200 { throw ValidationError("--node-id must be 1 to 200 bytes") }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "stateroom")

        var config = ServerConfiguration()
        config.host = host
        config.port = port
        if let shards { config.shards = shards }
        config.io = ServerConfiguration.IOMode(rawValue: io) ?? .auto
        config.maxMessageSize = maxMessageSize
        config.maxPendingBytes = maxPendingBytes
        config.coalesceWindow = coalesceMs / 1000
        config.coalesceLimit = coalesceMaxMs / 1000
        config.heartbeatInterval = heartbeatInterval
        config.heartbeatTimeout = heartbeatTimeout
        config.resumeGrace = resumeGrace
        config.resumeBuffer = resumeBuffer
        config.staticDirectory = `static`
        config.requestTimeout = requestTimeout
        config.drainTimeout = drainTimeout
        config.pinThreads = !noPin
        if let tlsCert, let tlsKey { config.tls = TLSFiles(certificateChain: tlsCert, privateKey: tlsKey) }
        config.compression.enabled = compression == "on"
        config.compression.minimumBytes = compressionMinBytes
        config.compression.clientNoContextTakeover = !compressionClientContext
        config.compression.clientMaxWindowBits = compressionClientWindowBits
        do {
            config.jwt = try makeVerifier()
        } catch {
            writeStandardError("stateroom-server: \(error)\n")
            Glibc.exit(1)
        }
        if let jwt = config.jwt, jwt.algorithm == "HS256", (jwtSecret ?? "").utf8.count < 32 && jwtSecretFile == nil {
            logger.warning("the --jwt-secret is shorter than 32 bytes; RFC 7518 asks for at least 256 bits for HS256")
        }
        config.metricsToken = metricsToken
        config.limits.maxConnections = maxConnections
        config.limits.maxConnectionsPerIP = maxConnectionsPerIp
        config.limits.upgradeRatePerIP = upgradeRatePerIp
        config.limits.upgradeBurstPerIP = upgradeBurstPerIp
        config.limits.maxClientsPerRoom = maxClientsPerRoom
        config.store = try store.map { try RedisEndpoint(url: $0) }
        config.snapshotInterval = snapshotInterval
        config.leaseDuration = leaseDuration
        config.nodeId = nodeId

        let factory: any StateroomServiceFactory
        let serviceName: String
        if let wasm {
            do {
                factory = try makeWasmFactory(path: wasm, logger: logger)
            } catch {
                writeStandardError("stateroom-server: cannot load \(wasm): \(error)\n")
                Glibc.exit(1)
            }
            serviceName = "wasm \(wasm)"
        } else {
            factory = BuiltinService(rawValue: service)!.factory
            serviceName = service
        }

        // Buffers of 1 MiB and more (a big message inflated, a large send) are mapped from the
        // kernel and unmapped when freed. glibc's default threshold rises to the size of each such
        // buffer freed, after which the next ones come from an arena that keeps their pages: one
        // 16 MiB message would leave a shard holding tens of MB for the process's life.
        _ = mallopt(-3 /* M_MMAP_THRESHOLD, malloc.h */, 1 << 20)

        // Blocked before the shards start, so only this thread receives them.
        let signals = StopSignals(hangup: true)

        let server = Server(configuration: config, logger: logger)
        do {
            try server.start(factory: factory)
        } catch {
            writeStandardError("stateroom-server: \(error)\n")
            Glibc.exit(1)
        }
        let scheme = config.tls == nil ? "http" : "https"
        print("stateroom-server listening on \(scheme)://\(host):\(server.port) (service: \(serviceName), shards: \(config.shards), io: \(server.backend.rawValue))")
        fflush(nil)

        var sig = signals.wait()
        while sig == SIGHUP {
            // A failed reload keeps the current pair; reloadTLS logs why.
            if config.tls == nil { logger.info("SIGHUP: nothing to reload (no --tls-cert)") }
            try? server.reloadTLS()
            sig = signals.wait()
        }
        logger.info("signal \(sig): shutting down")
        server.stop()
    }

    /// The token verifier the JWT options ask for (nil: none).
    func makeVerifier() throws -> JWTVerifier? {
        try JWTVerifier.configured(secret: jwtSecret, secretFile: jwtSecretFile, publicKeyFile: jwtPublicKey,
                                   clockSkew: jwtClockSkew)
    }

    func makeWasmFactory(path: String, logger: Logger) throws -> any StateroomServiceFactory {
        try WasmServiceFactory(path: path,
                               limits: WasmLimits(callbackBudgetMilliseconds: wasmCallbackBudget, maxMemoryBytes: wasmMaxMemory),
                               logger: logger)
    }
}

/// glibc's `mallopt` (malloc.h, which Glibc's module does not expose).
@_silgen_name("mallopt") private func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
