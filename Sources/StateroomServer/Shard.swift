import DequeModule
import Glibc
import IOCore
import Logging
import Stateroom
import WireProtocol

/// What other threads can ask of a shard.
enum ShardMessage: Sendable {
    /// A connection whose upgrade names a room this shard owns: its descriptor, the upgrade the
    /// accepting shard decided, and any bytes the client sent after the request head (frames).
    /// With TLS, the connection's session moves too.
    case handoff(fd: Int32, AcceptedUpgrade, rest: [UInt8], tls: TLSSession?)
    /// Present this certificate and key to new connections (a reload).
    case tlsContext(TLSContext)
    /// Close every connection and stop the loop.
    case shutdown
    /// The store answered (durable rooms).
    case store(StoreEvent)
    /// Serve new rooms from this factory; every open room ends and its clients get 1012.
    case reload(any StateroomServiceFactory)
}

/// A shard: one pinned thread with its own event loop, connections and rooms.
///
/// The shard is the thread, the loop turn and the dispatch of completions, its mailbox and its
/// timers. The parts it drives each hold their own state: ``ConnectionTable`` (sockets by slot),
/// ``FrontDoor`` (HTTP and the upgrade decision), ``RoomTable`` and ``Room`` (services and
/// members), ``Outbox`` (queued frames, gathered sends) and ``Coalescer`` (who waits to send).
/// The receive path is in Inbound.swift, the send path in Outbound.swift, connection and room
/// lifecycles in Lifecycle.swift.
///
/// Everything a shard owns is touched only from its thread (`assertOnShard()` checks that in
/// debug builds); other threads reach it only through its ``Mailbox``.
final class Shard {
    let index: Int
    let config: ServerConfiguration
    let listenerFD: Int32
    let mailbox: Mailbox<ShardMessage>
    let peers: [Mailbox<ShardMessage>]
    let stats: ShardStats
    let logger: Logger

    /// Created on the shard's own thread (io_uring's SINGLE_ISSUER wants the creator to submit).
    private(set) var loop: (any EventLoopBackend)!
    let pool = FramePool()
    let outbox: Outbox
    @exclusivity(unchecked) var conns = ConnectionTable()
    let rooms: RoomTable
    @exclusivity(unchecked) var coalescer: Coalescer<Connection, SystemClock>
    let frontDoor: FrontDoor
    @exclusivity(unchecked) var timers = TimerQueue()
    /// Connections reading a request head, oldest first, with the moment they must have sent it
    /// by (one timeout for all, so accept order is deadline order).
    var requestDeadlines = Deque<(slot: UInt32, generation: UInt32, at: UInt64)>()
    var requestDeadlinesPeak = 0
    /// Sockets with frames to send at the end of this loop turn.
    @exclusivity(unchecked) var dirty: [Connection] = []
    /// Clients that left their room this turn, and rooms whose service failed: handled after the
    /// turn's completions, so no service is re-entered from inside one of its own callbacks.
    @exclusivity(unchecked) var pendingLeaves: [Connection] = []
    @exclusivity(unchecked) var failedRooms: [(Room, RoomFailure)] = []
    /// Held seats to end once the current callback is over (past their bound, or resumed from a
    /// count that cannot be continued).
    var pendingSeatEnds: [(Room, HeldSeat)] = []
    /// Upgraded sockets waiting for their queued response to drain before they move to the shard
    /// owning their room, by slot.
    var parked: [UInt32: (owner: Int, upgrade: AcceptedUpgrade, rest: [UInt8])] = [:]
    /// Bytes of request heads that arrived in pieces, by slot (kept here, not in every
    /// ``Connection``: most heads arrive whole).
    var partialHeads: [UInt32: [UInt8]] = [:]
    var accept = AcceptState()
    /// The server-wide connection counts, when a limit needs them.
    let admission: Admission?
    /// The certificate and key new connections get (nil: plain), and the shard's TLS scratch.
    var tlsContext: TLSContext?
    lazy var tlsWorkspace = TLSWorkspace()
    /// The shard's compressor, shared inflater and their buffers (made on first use).
    lazy var compression = CompressionWorkspace(level: config.compression.level)
    /// Durable rooms' state on this shard (nil: rooms live in memory only).
    let durable: DurableRooms?
    /// The memory services write `sendText` messages in (``RoomContext``).
    let textScratch = MessageBuffer()
    @exclusivity(unchecked) private var counters = [Int](repeating: 0, count: ShardStats.Counter.allCases.count)
    /// The loop turn's clock reading (monotonic nanoseconds).
    @exclusivity(unchecked) var now: UInt64 = monotonicNanos()
    var running = true
    var shuttingDown = false
    private var lastPublish: UInt64 = 0
    /// Counters changed since the last publish; the loop then waits at most 1 ms.
    private var publishPending = false
    private var thread: pthread_t?
    private var loopThread: LoopThread?
    /// Set by the shard thread once its loop is up (or failed); read by the starter after `ready` signals.
    nonisolated(unsafe) var startError: Error?

    /// A loop wait this much longer than its timeout means the process was paused or starved:
    /// durable rooms' leases are checked before anything else.
    static let pauseThreshold: UInt64 = 500_000_000

    /// How often quiet connections give back their parser storage.
    static let sweepInterval: UInt64 = 5_000_000_000

    init(index: Int, config: ServerConfiguration, factory: any StateroomServiceFactory,
         listenerFD: Int32, mailboxes: [Mailbox<ShardMessage>], allStats: [ShardStats],
         processStats: ProcessStats, tls: TLSContext?, admission: Admission?,
         store: (RedisStore, node: String)?, logger: Logger) {
        self.tlsContext = tls
        self.durable = store.map { DurableRooms(store: $0.0, node: $0.node, leaseMilliseconds: Int(config.leaseDuration * 1000)) }
        self.index = index
        self.config = config
        self.listenerFD = listenerFD
        self.mailbox = mailboxes[index]
        self.peers = mailboxes
        self.stats = allStats[index]
        var l = logger
        l[metadataKey: "shard"] = "\(index)"
        self.logger = l
        self.outbox = Outbox(pool: pool)
        self.rooms = RoomTable(factory: factory, shard: index)
        self.coalescer = Coalescer(
            window: CoalesceWindow(base: Shard.nanos(config.coalesceWindow), limit: Shard.nanos(config.coalesceLimit)),
            // A held socket is sent to once this much is queued: 64 KiB, or half the slow-client
            // cap if that is lower, so holding never makes a client look slow.
            holdBytesCap: min(64 << 10, config.maxPendingBytes / 2),
            maxFrames: Int32(Outbox.maxIOV), clock: SystemClock())
        var door = FrontDoor(staticDirectory: config.staticDirectory, policy: config.upgradePolicy,
                             shards: mailboxes.count, compression: config.compression,
                             metrics: { renderMetrics(allStats, processStats) })
        door.authenticator = config.jwt.map { TokenAuthenticator(verifier: $0) }
        door.admission = admission
        door.metricsToken = config.metricsToken
        self.frontDoor = door
        self.admission = admission
    }

    @inline(__always)
    func assertOnShard() {
        #if DEBUG
        if let t = thread { assert(LoopThread.isCurrent(t), "shard state touched off its thread") }
        #endif
    }

    @inline(__always)
    func count(_ c: ShardStats.Counter, _ n: Int = 1) { counters[c.rawValue] &+= n }
    func setCounter(_ c: ShardStats.Counter, _ value: Int) { counters[c.rawValue] = value }

    static func nanos(_ seconds: Double) -> UInt64 { UInt64(max(seconds, 0) * 1e9) }

    // MARK: - Loop

    func run(ready: StartLatch) {
        thread = LoopThread.current
        do {
            loop = try makeEventLoop(config.eventLoop)
        } catch {
            startError = error
            ready.arrive()
            return
        }
        ready.arrive()
        armAccept()
        loop.armWake(mailbox.doorbell, tag: Tag(op: .wake, slot: 0, generation: 0))
        if config.heartbeatInterval > 0 {
            timers.schedule(at: monotonicNanos() + Shard.nanos(config.heartbeatInterval), .heartbeat)
        }
        timers.schedule(at: monotonicNanos() + Shard.sweepInterval, .sweep)
        if durable != nil {
            timers.schedule(at: monotonicNanos() + Shard.nanos(config.snapshotInterval), .snapshots)
            timers.schedule(at: monotonicNanos() + Shard.nanos(config.leaseDuration / 3), .leases)
        }
        coalescer.startEpoch()
        counters[ShardStats.Counter.coalesceWindowMicros.rawValue] = Int(coalescer.current / 1000)
        while running {
            var timeout: Int64 = -1
            now = monotonicNanos()
            /// Wait no later than `deadline` (monotonic nanoseconds).
            func wake(by deadline: UInt64) {
                let t: Int64 = deadline > now ? Int64(deadline - now) : 0
                if timeout < 0 || t < timeout { timeout = t }
            }
            if let d = timers.nextDeadline { wake(by: d) }
            if let r = requestDeadlines.first { wake(by: r.at) }
            if let h = coalescer.nextDeadline { wake(by: h) }
            if publishPending { wake(by: now + 1_000_000) }
            // After load, the loop wakes once per epoch until the window is back at its base and
            // the busy gauge at zero, so neither stays stale through an idle spell.
            if coalescer.needsEpochWake { wake(by: coalescer.epochEnd) }
            // The clock is read again once the wait is over, so what the handlers stamp
            // (a client's last words, deadlines) is not as old as the wait.
            var woke = false
            let waitStart = now
            loop.poll(timeoutNanoseconds: timeout) { c in
                if !woke {
                    self.now = monotonicNanos()
                    woke = true
                    // Much later than asked for: paused or starved. Leases first.
                    if self.durable != nil && self.now &- waitStart > UInt64(max(timeout, 0)) &+ Shard.pauseThreshold {
                        self.checkLeasesAfterPause()
                    }
                }
                self.handle(c)
            }
            now = monotonicNanos()
            drainPending()
            runTimers()
            drainPending()
            if let durable, !durable.toCommit.isEmpty { commitGates() }
            flushDirty()
            if coalescer.measureLoad(now: now) {
                counters[ShardStats.Counter.busyPermille.rawValue] = Int(coalescer.busy * 1000)
                counters[ShardStats.Counter.coalesceWindowMicros.rawValue] = Int(coalescer.current / 1000)
            }
            // /metrics may lag by a millisecond; a busy loop takes the stats lock at most 1000 times a second.
            if now &- lastPublish >= 1_000_000 || !running {
                stats.publish(counters)
                lastPublish = now
                publishPending = false
            } else {
                publishPending = true
            }
            if shuttingDown && conns.count == 0 && (durable?.savesInFlight ?? 0) == 0 { running = false }
        }
        loop.flush()
        // What rooms still hold for seats goes back to the pool.
        for room in rooms.all { dropSeats(of: room) }
    }

    private func handle(_ c: Completion) {
        switch c.tag.op {
        case .accept: handleAccept(c)
        case .recv: handleRecv(c)
        case .send: handleSend(c)
        case .wake: handleWake()
        case .cancel: break
        }
    }

    // MARK: - Mailbox

    private func handleWake() {
        for m in mailbox.drain() {
            switch m {
            case .handoff(let fd, let accepted, let rest, let tls):
                if shuttingDown { Socket.close(fd); admission?.socketClosed(); continue }
                count(.handoffsIn)
                let conn = adopt(fd: fd)
                if let tls { conn.setTLS(tls) }
                upgrade(conn, accepted, rest: rest)
            case .tlsContext(let context):
                tlsContext = context
            case .shutdown:
                beginShutdown()
            case .reload(let factory):
                restartRooms(factory)
            case .store(.loaded(let room, let issuedAt, let result)):
                storedRoomLoaded(room, issuedAt: issuedAt, result)
            case .store(.saved(let room, let version, let epoch, let issuedAt, let result)):
                storedRoomSaved(room, version: version, epoch: epoch, issuedAt: issuedAt, result)
            case .store(.renewed(let room, let epoch, let issuedAt, let result)):
                leaseRenewed(room, epoch: epoch, issuedAt: issuedAt, result)
            case .store(.handoverRequested(let room)):
                if !shuttingDown { handOverRoom(room) }
            }
        }
        if running { loop.armWake(mailbox.doorbell, tag: Tag(op: .wake, slot: 0, generation: 0)) }
    }

    private func beginShutdown() {
        shuttingDown = true
        conns.forEach { conn in
            if conn.state == .http || conn.state == .parked { abort(conn) }
            else if conn.state == .open && durable == nil { closeWebSocket(conn, .goingAway, reason: "server shutting down") }
        }
        var drain = config.drainTimeout
        if let durable {
            // Rooms are saved first; their clients get 1012 once the store has them.
            drain = max(drain, durable.store.timeout * 2 + 1)
            saveEverythingForShutdown()
        }
        timers.schedule(at: now + Shard.nanos(drain), .drainDeadline)
    }

    // MARK: - Timers

    private func runTimers() {
        while let r = requestDeadlines.first, r.at <= now {
            requestDeadlines.removeFirst()
            if let conn = conns.lookup(slot: r.slot, generation: r.generation), conn.state == .http {
                if let s = conn.transport.session, !s.established { count(.tlsHandshakeTimeouts) }
                abort(conn)
            }
        }
        // Give back a burst's worth of storage once the burst is over.
        if requestDeadlines.isEmpty && requestDeadlinesPeak > 1024 {
            requestDeadlines = []
            requestDeadlinesPeak = 0
        }
        let limit = timers.currentSequence
        while let t = timers.popDue(now: now, sequenceLimit: limit) {
            switch t.kind {
            case .room(let room, let token):
                guard !room.isClosed, room.timerToken == token else { continue }
                if !mayRun(room) {
                    deferCallback(room, .timer)
                    continue
                }
                if let failure = room.timer(self) { roomFailed(room, failure) }
                drainPending()
            case .heartbeat:
                heartbeat()
                timers.schedule(at: now + Shard.nanos(config.heartbeatInterval), .heartbeat)
            case .connectionDeadline(let slot, let generation):
                if let conn = conns.lookup(slot: slot, generation: generation),
                   conn.state == .closing || conn.state == .dead || conn.state == .parked {
                    abort(conn)
                }
            case .drainDeadline:
                running = false
                conns.forEach { abort($0) }
            case .resumeAccept:
                if !shuttingDown && accept.paused {
                    if let admission, !admission.belowSocketCap {
                        timers.schedule(at: now + 1_000_000_000, .resumeAccept)
                        break
                    }
                    accept.paused = false
                    armAccept()
                }
            case .sweep:
                sweep()
                timers.schedule(at: now + Shard.sweepInterval, .sweep)
            case .snapshots:
                if !shuttingDown { saveChangedRooms() }
                timers.schedule(at: now + Shard.nanos(config.snapshotInterval), .snapshots)
            case .leases:
                if !shuttingDown { renewLeases() }
                timers.schedule(at: now + Shard.nanos(config.leaseDuration / 3), .leases)
            case .leaseRetry(let room):
                if !shuttingDown { retryLease(room) }
            case .saveRetry(let room):
                retrySave(room)
            case .revalidateRetry(let room):
                retryRevalidation(room)
            case .seatGrace(let room):
                seatGraceOver(room)
                drainPending()
            }
        }
    }

    /// Pings every open client (one frame buffer shared by all) and drops the silent ones.
    private func heartbeat() {
        let timeout = Shard.nanos(config.heartbeatTimeout)
        let ping = pool.emptyFrame(.ping)
        conns.forEach { conn in
            guard conn.state == .open else { return }
            if config.heartbeatTimeout > 0 && now &- conn.lastHeard > timeout {
                count(.heartbeatTimeouts)
                dropUnsent(conn)
                closeWebSocket(conn, .goingAway, reason: "heartbeat timeout", grace: 1)
                return
            }
            pool.retain(ping)
            count(.pingsSent)
            enqueue(conn, frame: ping, force: true)
        }
        pool.release(ping)
    }

    /// Quiet connections give back the parser storage a frame spanning buffers left them.
    private func sweep() {
        conns.forEach { conn in
            if conn.parser.holdsStorage && now &- conn.lastHeard >= Shard.sweepInterval { conn.parser.releaseMemory() }
        }
    }

    // MARK: - Thread

    /// Starts the shard's thread, pinned to `cpu` if given.
    func start(cpu: Int?, ready: StartLatch) {
        nonisolated(unsafe) let shard = self
        loopThread = LoopThread(cpu: cpu) { shard.run(ready: ready) }
    }

    func join() {
        loopThread?.join()
    }
}
