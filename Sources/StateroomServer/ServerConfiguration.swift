import IOCore
import Stateroom

/// Everything a server is started with.
public struct ServerConfiguration: Sendable {
    public enum IOMode: String, Sendable, CaseIterable {
        /// io_uring, falling back to epoll (with a log line) when io_uring cannot be set up.
        case auto
        case uring
        case epoll
    }

    public var host = "0.0.0.0"
    /// 0 picks a free port (all shards share it).
    public var port: UInt16 = 8080
    public var shards = Socket.availableCPUs
    public var io: IOMode = .auto
    /// Largest message a client may send (1009 beyond).
    public var maxMessageSize = 16 << 20
    /// Cap on a socket's queued outbound bytes (1008 beyond).
    public var maxPendingBytes = 4 << 20
    /// Seconds a busy connection's frames may wait so they leave in one send (0: never wait),
    /// while the shard has time to spare; a busy shard waits longer, up to `coalesceLimit`.
    /// Only a connection whose previous send carried four or more frames, less than this long
    /// ago, and whose client has not sent anything for as long, waits; one that receives frames
    /// one to three at a time, or whose client is talking, is sent to at once.
    public var coalesceWindow: Double = 0.008
    /// Longest the window grows to while a shard is busy (more than 60% of its time on a CPU);
    /// it shrinks back to `coalesceWindow` when the load drops. At or below `coalesceWindow`: fixed.
    public var coalesceLimit: Double = 0.016
    /// How long a client closed for being slow may still drain before its TCP connection is cut.
    public var slowClientGrace: Double = 5
    /// Seconds between pings.
    public var heartbeatInterval: Double = 30
    /// Seconds of silence after which a client is dropped.
    public var heartbeatTimeout: Double = 300
    /// Seconds a connection has, from its accept, to become a WebSocket: a request head that never
    /// completes, or a kept-alive connection still asking for plain HTTP then, is closed (the
    /// deadline is not renewed per request).
    public var requestTimeout: Double = 10
    /// Seconds a shutdown waits for clients to take their close (`1001`) and the frames queued
    /// before it; then whatever is still connected is cut.
    public var drainTimeout: Double = 1
    /// Seconds a closing connection waits for the peer's EOF.
    public var closeTimeout: Double = 5
    /// Serve HTTPS and WSS on the port with this certificate chain and key (PEM); nil: plain.
    /// ``Server/reloadTLS()`` reads the files again.
    public var tls: TLSFiles?
    /// permessage-deflate (RFC 7692): on by default, for clients that offer it.
    public var compression = CompressionConfiguration()
    /// Directory served at `/` (static files), if any.
    public var staticDirectory: String?
    /// Verify a JWT on every WebSocket upgrade (``TokenAuthenticator``: `Authorization: Bearer`,
    /// `?token=`, or a `bearer.<token>` subprotocol); its `sub` is the client's identity and its
    /// `rooms` claim limits the rooms it opens. Missing or invalid: `401`; wrong room: `403`.
    /// Runs before ``upgradePolicy``, which then sees the identity. nil: no token needed.
    public var jwt: JWTVerifier?
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <metricsToken>`
    /// (`401` otherwise). `/status` stays open.
    public var metricsToken: String?
    /// Keep rooms in this Redis (durable rooms): a room that empties is saved and dropped from
    /// memory, rooms that changed are saved every ``snapshotInterval`` seconds and on shutdown,
    /// and a room's next client finds it restored. Only services that can be snapshotted (native
    /// ``SnapshottableService``s, wasm modules) are saved; others live in memory as without it.
    /// What a durable room sends waits until the state it came from is stored, and each lease is
    /// fenced by an epoch (a node that lost a room can neither serve nor save it).
    /// The server refuses to start when the store does not answer. nil: rooms live in memory.
    public var store: RedisEndpoint?
    /// Seconds between saves of the rooms that changed without sending anything (answers are
    /// stored before they go out; this bounds what a crash can lose of the rest).
    public var snapshotInterval: Double = 5
    /// Seconds a durable room's lease lives unless renewed (it is renewed three times as often):
    /// after a node dies or freezes, its rooms come back on another node within this time. A node
    /// counts on its lease for nine tenths of it after the command that set it was issued.
    public var leaseDuration: Double = 5
    /// This node's name in leases (default: host name, process id and a random part).
    public var nodeId: String?
    /// Seconds a client that opted in to seats (`?seat=new`, docs/seats.md) keeps its seat after
    /// dropping without a close handshake: its ClientId stays taken, the service is not told, and
    /// what is sent to it is kept for its return. 0: no seats.
    public var resumeGrace: Double = 30
    /// Most bytes of messages kept for one seat after its drop: past it the seat ends (the service
    /// gets `disconnect`). Also the size of each room's log of recent messages, from which frames
    /// lost in flight at a drop are sent again.
    public var resumeBuffer = 256 << 10
    /// Connection limits (all off by default): see ``AdmissionLimits``.
    public var limits = AdmissionLimits()
    /// Decides every WebSocket upgrade that passed the protocol checks (accept, or refuse with a
    /// status): authentication, admission limits. Runs on a shard thread; must not block.
    public var upgradePolicy: any UpgradePolicy = AcceptAllUpgrades()
    /// Pin shard threads to CPUs.
    public var pinThreads = true
    public var eventLoop = EventLoopConfiguration()

    public init() {}
}
