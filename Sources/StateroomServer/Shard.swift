import DequeModule
import Glibc
import IOCore
import Logging
import Stateroom
import WireProtocol

/// What other threads can ask of a shard.
enum ShardMessage: Sendable {
    /// A connection whose upgrade request names a room this shard owns: its descriptor, the
    /// upgrade the accepting shard already parsed and checked, and any bytes the client sent
    /// after the request head (frames).
    case handoff(fd: Int32, roomId: String, accept: String, rest: [UInt8])
    /// Close every connection and stop the loop.
    case shutdown
    /// Serve new rooms from this factory; every open room ends and its clients get 1012.
    case reload(any StateroomServiceFactory)
}

/// A shard: one pinned thread with its own event loop, connections and rooms.
///
/// Everything a shard owns is touched only from its thread (`assertOnShard()` checks that in
/// debug builds); other threads reach it only through its ``Mailbox``.
final class Shard {
    let index: Int
    let config: ServerConfiguration
    private(set) var factory: any StateroomServiceFactory
    /// Created on the shard's own thread (io_uring's SINGLE_ISSUER wants the creator to submit).
    private(set) var loop: (any EventLoopBackend)!
    let listenerFD: Int32
    let mailbox: Mailbox<ShardMessage>
    var peers: [Mailbox<ShardMessage>] = []
    var allStats: [ShardStats] = []
    let stats: ShardStats
    var logger: Logger

    let pool = FramePool()
    private var thread: pthread_t?
    private var joinHandle: pthread_t?
    /// Set by the shard thread once its loop is up (or failed); read by the starter after `ready` signals.
    nonisolated(unsafe) var startError: Error?
    @exclusivity(unchecked) private var counters = [Int](repeating: 0, count: ShardStats.Counter.allCases.count)

    @exclusivity(unchecked) private var conns: [Connection?] = []
    @exclusivity(unchecked) private var generations: [UInt32] = []
    private var freeSlots: [UInt32] = []
    private var rooms: [String: Room] = [:]
    @exclusivity(unchecked) private var dirty: [Connection] = []
    /// Busy connections whose frames wait (at most `window.current`) to leave in one send, in
    /// hold order, each with the deadline it was held until.
    @exclusivity(unchecked) private var held = Deque<(conn: Connection, until: UInt64)>()
    @exclusivity(unchecked) private var window: CoalesceWindow
    private var coalesceNanos: UInt64 { window.current }
    /// Start of the current load epoch (wall clock) and the thread's CPU time then.
    private var epochStart: UInt64 = 0
    private var epochCPU: UInt64 = 0
    /// A held connection is sent to once this much is queued: `holdBytesLimit`, or half the
    /// slow-client cap if that is lower, so holding never makes a client look slow.
    private let holdBytesCap: Int
    @exclusivity(unchecked) private var pendingLeaves: [Connection] = []
    @exclusivity(unchecked) private var failedRooms: [Room] = []
    @exclusivity(unchecked) private var timers = TimerQueue()
    @exclusivity(unchecked) private var sendSpaces: [UnsafeMutableRawPointer] = []
    private let wakeBuffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    private var running = true
    private var shuttingDown = false
    private var acceptArmed = false
    /// Accepting stopped after EMFILE/ENFILE; resumes when a descriptor frees or after a pause.
    private var acceptPaused = false
    private var acceptPauseLogged = false
    @exclusivity(unchecked) private var now: UInt64 = monotonicNanos()
    private var lastPublish: UInt64 = 0
    /// Counters changed since the last publish; the loop then waits at most 1 ms.
    private var publishPending = false

    static let maxIOV = 64
    /// Frames the previous send must have carried for a connection to count as busy.
    static let holdMinFrames = 4
    /// A connection with this much queued is sent to without waiting for more.
    static let holdBytesLimit = 64 << 10
    /// Frames up to this size are copied together into one send buffer of at most `flattenLimit`.
    static let smallChunk = 2048
    static let flattenLimit = 16 << 10
    static let sendSpaceSize = MemoryLayout<msghdr>.stride + maxIOV * MemoryLayout<iovec>.stride

    init(index: Int, config: ServerConfiguration, factory: any StateroomServiceFactory,
         listenerFD: Int32, mailbox: Mailbox<ShardMessage>,
         stats: ShardStats, logger: Logger) {
        self.index = index
        self.config = config
        self.factory = factory
        self.listenerFD = listenerFD
        self.mailbox = mailbox
        self.stats = stats
        self.window = CoalesceWindow(base: Shard.nanos(config.coalesceWindow), limit: Shard.nanos(config.coalesceLimit))
        self.holdBytesCap = min(Shard.holdBytesLimit, config.maxPendingBytes / 2)
        var l = logger
        l[metadataKey: "shard"] = "\(index)"
        self.logger = l
    }

    deinit {
        wakeBuffer.deallocate()
        for s in sendSpaces { s.deallocate() }
    }

    @inline(__always)
    func assertOnShard() {
        #if DEBUG
        if let t = thread { assert(pthread_equal(t, pthread_self()) != 0, "shard state touched off its thread") }
        #endif
    }

    @inline(__always)
    private func count(_ c: ShardStats.Counter, _ n: Int = 1) { counters[c.rawValue] &+= n }

    // MARK: - Loop

    func run(ready: StartLatch) {
        thread = pthread_self()
        do {
            loop = try makeEventLoop(config.eventLoop)
        } catch {
            startError = error
            ready.arrive()
            return
        }
        ready.arrive()
        loop.armAccept(fd: listenerFD, tag: Tag(op: .accept, slot: 0, generation: 0))
        acceptArmed = true
        loop.readWake(fd: mailbox.doorbell.fd, into: wakeBuffer, tag: Tag(op: .wake, slot: 0, generation: 0))
        if config.heartbeatInterval > 0 {
            timers.schedule(at: monotonicNanos() + Shard.nanos(config.heartbeatInterval), .heartbeat)
        }
        epochStart = monotonicNanos()
        epochCPU = threadCPUNanos()
        counters[ShardStats.Counter.coalesceWindowMicros.rawValue] = Int(window.current / 1000)
        while running {
            var timeout: Int64 = -1
            now = monotonicNanos()
            /// Wait no later than `deadline` (monotonic nanoseconds).
            func wake(by deadline: UInt64) {
                let t: Int64 = deadline > now ? Int64(deadline - now) : 0
                if timeout < 0 || t < timeout { timeout = t }
            }
            if let d = timers.nextDeadline { wake(by: d) }
            if let h = held.first { wake(by: h.until) }
            if publishPending { wake(by: now + 1_000_000) }
            // After load, the loop wakes once per epoch until the window is back at its base and
            // the busy gauge at zero, so neither stays stale through an idle spell.
            if window.current > window.base || counters[ShardStats.Counter.busyPermille.rawValue] > 0 {
                wake(by: epochStart &+ CoalesceWindow.epoch)
            }
            // The clock is read again once the wait is over, so what the handlers stamp
            // (a client's last words, deadlines) is not as old as the wait.
            var woke = false
            loop.poll(timeoutNanoseconds: timeout) { c in
                if !woke { self.now = monotonicNanos(); woke = true }
                self.handle(c)
            }
            now = monotonicNanos()
            drainPending()
            runTimers()
            drainPending()
            flushDirty()
            if now &- epochStart >= CoalesceWindow.epoch { measureLoad() }
            // /metrics may lag by a millisecond; a busy loop takes the stats lock at most 1000 times a second.
            if now &- lastPublish >= 1_000_000 || !running {
                stats.publish(counters)
                lastPublish = now
                publishPending = false
            } else {
                publishPending = true
            }
            if shuttingDown && counters[ShardStats.Counter.connectionsOpen.rawValue] == 0 { running = false }
        }
        loop.flush()
    }

    private static func nanos(_ seconds: Double) -> UInt64 { UInt64(max(seconds, 0) * 1e9) }

    /// Ends a load epoch: the share of it this thread spent on a CPU sets the coalescing window.
    /// An idle loop sleeps through epochs; the first turn after counts the whole gap as one.
    private func measureLoad() {
        let cpu = threadCPUNanos()
        let busy = Double(cpu &- epochCPU) / Double(now &- epochStart)
        epochStart = now
        epochCPU = cpu
        if window.adapts { window.update(busy: busy) }
        counters[ShardStats.Counter.busyPermille.rawValue] = Int(min(busy, 1) * 1000)
        counters[ShardStats.Counter.coalesceWindowMicros.rawValue] = Int(window.current / 1000)
    }

    private func handle(_ c: Completion) {
        switch c.tag.op {
        case .accept: handleAccept(c)
        case .recv: handleRecv(c)
        case .send: handleSend(c)
        case .wake: handleWake(c)
        case .cancel: break
        }
    }

    // MARK: - Accept

    private func handleAccept(_ c: Completion) {
        if !c.more { acceptArmed = false }
        if c.result >= 0 {
            count(.connectionsAccepted)
            if acceptPaused { acceptPaused = false; acceptPauseLogged = false }
            if shuttingDown {
                Socket.close(c.result)
            } else {
                let conn = adopt(fd: c.result)
                Socket.setNoDelay(conn.fd)
                armReceive(conn, multishot: false)
                // A client gets this long to send a complete request head (and, kept alive, the next one).
                timers.schedule(at: now + Shard.nanos(config.requestTimeout),
                                .requestDeadline(slot: conn.slot, generation: conn.generation))
            }
        } else {
            let e = -c.result
            if e != ECANCELED { count(.acceptErrors) }
            if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM {
                // Out of descriptors: stop accepting (a multishot accept that stayed armed would
                // only fail again at once), log once, and resume when a connection closes or in 1 s.
                if !acceptPauseLogged {
                    logger.warning("accept paused: \(errnoDescription(e)); resuming when a connection closes (or in 1 s)")
                    acceptPauseLogged = true
                }
                if !acceptPaused {
                    acceptPaused = true
                    timers.schedule(at: now + 1_000_000_000, .resumeAccept)
                }
                if c.more { loop.cancel(Tag(op: .accept, slot: 0, generation: 0)) }
                return
            }
            if e != ECANCELED { logger.error("accept failed: \(errnoDescription(e))") }
        }
        if !acceptArmed && !acceptPaused { resumeAccept() }
    }

    private func resumeAccept() {
        guard !acceptArmed, !shuttingDown else { return }
        acceptArmed = true
        loop.armAccept(fd: listenerFD, tag: Tag(op: .accept, slot: 0, generation: 0))
    }

    /// Gives a socket a slot on this shard (a fresh accept, or a handoff from another shard).
    private func adopt(fd: Int32) -> Connection {
        let slot: UInt32
        if let s = freeSlots.popLast() {
            slot = s
        } else {
            slot = UInt32(conns.count)
            conns.append(nil)
            generations.append(0)
        }
        let conn = Connection(slot: slot, generation: generations[Int(slot)], fd: fd,
                              maxMessageSize: config.maxMessageSize, now: now)
        conns[Int(slot)] = conn
        count(.connectionsOpen)
        return conn
    }

    private func armReceive(_ conn: Connection, multishot: Bool) {
        guard !conn.recvArmed else { return }
        conn.recvArmed = true
        loop.armReceive(fd: conn.fd, tag: conn.tag(.recv), multishot: multishot)
    }

    @inline(__always)
    private func connection(for tag: Tag) -> Connection? {
        let i = Int(tag.slot)
        guard i < conns.count, let c = conns[i], c.generation == tag.generation else { return nil }
        return c
    }

    // MARK: - Receive

    private func handleRecv(_ c: Completion) {
        guard let conn = connection(for: c.tag) else {
            if let id = c.bufferID { loop.recycle(id) }
            return
        }
        if !c.more { conn.recvArmed = false }
        if c.result > 0, let id = c.bufferID {
            conn.lastHeard = now
            let buf = loop.buffer(id, count: Int(c.result))
            switch conn.state {
            case .http: onHTTPBytes(conn, buf)
            case .open: onFrameBytes(conn, buf)
            case .closing, .dead: break
            }
            loop.recycle(id)
        } else if let id = c.bufferID {
            loop.recycle(id)
        }
        if conn.state == .dead {
            finishIfIdle(conn)
            return
        }
        if c.result > 0 || c.result == -ENOBUFS {
            // A multishot receive can end while the socket lives (buffer ring briefly empty).
            if !conn.recvArmed, conn.state == .open || conn.state == .closing {
                armReceive(conn, multishot: true)
            }
            return
        }
        if c.result == 0 || c.result < 0 {
            if conn.recvArmed { return }
            // EOF or error: the peer is gone (or we shut the socket down).
            abort(conn)
        }
    }

    // MARK: - HTTP

    private func onHTTPBytes(_ conn: Connection, _ buf: UnsafeMutableRawBufferPointer) {
        if conn.httpBuffer.isEmpty {
            let consumed = processHTTP(conn, buf)
            if consumed < buf.count, conn.state == .http {
                conn.httpBuffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: buf[consumed...]))
            }
        } else {
            conn.httpBuffer.append(contentsOf: UnsafeRawBufferPointer(buf))
            var pending = conn.httpBuffer
            conn.httpBuffer = []
            let consumed = pending.withUnsafeMutableBytes { processHTTP(conn, $0) }
            if consumed < pending.count, conn.state == .http {
                pending.removeFirst(consumed)
                conn.httpBuffer = pending
            }
        }
        if conn.state == .http { armReceive(conn, multishot: false) }
    }

    /// Handles every complete request head in `buf`; returns the bytes consumed. After an upgrade
    /// the remaining bytes are frames and are consumed here as well.
    private func processHTTP(_ conn: Connection, _ buf: UnsafeMutableRawBufferPointer) -> Int {
        var offset = 0
        while conn.state == .http && offset < buf.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buf[offset...])
            switch parseHTTPHead(UnsafeRawBufferPointer(rest)) {
            case .needMore:
                return offset
            case .failure(let status):
                httpError(conn, status)
                return buf.count
            case .complete(let head):
                let headLength = head.headLength
                let isHead = head.isHeadMethod
                // No route reads a request body (route() refuses bad framing, and a body on an
                // upgrade), so a request with one is answered and the connection closed: the body's
                // bytes must never be taken for the next request.
                let keepAlive = head.keepAlive && head.bodyFraming == .none
                switch route(head) {
                case .status:
                    respond(conn, httpResponse(.ok, headers: [("Content-Type", "text/plain")],
                                               body: isHead ? [] : Array("ok".utf8), keepAlive: keepAlive),
                            close: !keepAlive)
                case .metrics:
                    let body = Array(renderMetrics(allStats).utf8)
                    respond(conn, httpResponse(.ok, headers: [("Content-Type", "text/plain; version=0.0.4")],
                                               body: isHead ? [] : body, keepAlive: keepAlive),
                            close: !keepAlive)
                case .file(let path):
                    serveFile(conn, path: path, keepAlive: keepAlive, headOnly: isHead)
                case .failure(let status):
                    httpError(conn, status)
                    return buf.count
                case .webSocket(let roomId, let accept):
                    let rest = UnsafeMutableRawBufferPointer(rebasing: buf[(offset + headLength)...])
                    let owner = ownerShard(of: roomId, shards: peers.count)
                    if owner != index {
                        handOff(conn, to: owner, roomId: roomId, accept: accept, rest: UnsafeRawBufferPointer(rest))
                    } else {
                        upgrade(conn, roomId: roomId, accept: accept, rest: rest)
                    }
                    return buf.count
                }
                offset += headLength
            }
        }
        return offset
    }

    private func httpError(_ conn: Connection, _ status: HTTPStatus) {
        count(.httpErrors)
        respond(conn, httpErrorResponse(status), close: true)
    }

    private func respond(_ conn: Connection, _ bytes: [UInt8], close: Bool) {
        enqueue(conn, bytes: bytes, force: true)
        if close {
            conn.state = .closing
            conn.closeAfterFlush = true
            timers.schedule(at: now + Shard.nanos(config.closeTimeout), .connectionDeadline(slot: conn.slot, generation: conn.generation))
        }
    }

    private func serveFile(_ conn: Connection, path: String, keepAlive: Bool, headOnly: Bool) {
        guard let dir = config.staticDirectory, let file = StaticFiles.read(root: dir, path: path) else {
            httpError(conn, .notFound)
            return
        }
        respond(conn, httpResponse(.ok, headers: [("Content-Type", file.contentType)],
                                   body: headOnly ? [] : file.bytes, keepAlive: keepAlive),
                close: !keepAlive)
    }

    /// Gives the socket to the shard that owns its room. No operation of ours is in flight on it
    /// (the head is read with single-shot receives), so the descriptor moves cleanly.
    /// The owner answers 101 without parsing the request again.
    private func handOff(_ conn: Connection, to owner: Int, roomId: String, accept: String, rest: UnsafeRawBufferPointer) {
        count(.handoffsOut)
        let fd = conn.fd
        loop.forget(fd: fd)
        release(conn, closeDescriptor: false)
        peers[owner].post(.handoff(fd: fd, roomId: roomId, accept: accept, rest: Array(rest)))
    }

    // MARK: - Mailbox

    private func handleWake(_ c: Completion) {
        for m in mailbox.drain() {
            switch m {
            case .handoff(let fd, let roomId, let accept, var rest):
                if shuttingDown { Socket.close(fd); continue }
                count(.handoffsIn)
                let conn = adopt(fd: fd)
                rest.withUnsafeMutableBytes { upgrade(conn, roomId: roomId, accept: accept, rest: $0) }
            case .shutdown:
                beginShutdown()
            case .reload(let newFactory):
                factory = newFactory
                restartRooms()
            }
        }
        if running {
            loop.readWake(fd: mailbox.doorbell.fd, into: wakeBuffer, tag: Tag(op: .wake, slot: 0, generation: 0))
        }
    }

    /// Ends every room (clients are closed with 1012 "service restart"); the next connect to a
    /// room id creates it afresh from the current factory.
    private func restartRooms() {
        let all = Array(rooms.values)
        for room in all {
            let members = room.members
            destroy(room)
            for m in members { closeWebSocket(m, .serviceRestart, reason: "service restart") }
        }
        logger.info("service reloaded: \(all.count) room(s) restarted")
    }

    private func beginShutdown() {
        shuttingDown = true
        for conn in conns {
            guard let conn else { continue }
            if conn.state == .open { closeWebSocket(conn, .goingAway, reason: "server shutting down") }
            else if conn.state == .http { abort(conn) }
        }
        timers.schedule(at: now + 1_000_000_000, .resumeAccept)
    }

    // MARK: - WebSocket

    /// Answers 101, joins (or creates) the room, and parses `rest`, the bytes that followed the
    /// request head, as frames.
    private func upgrade(_ conn: Connection, roomId: String, accept: String, rest: UnsafeMutableRawBufferPointer) {
        enqueue(conn, bytes: webSocketUpgradeResponse(accept: accept), force: true)
        conn.state = .open
        let room: Room
        if let r = rooms[roomId], !r.isClosed {
            room = r
        } else {
            do {
                let service = try factory.makeService(roomId: roomId, shard: index)
                room = Room(id: roomId, service: service)
            } catch {
                logger.error("room \(roomId): cannot create its service: \(error)")
                closeWebSocket(conn, .internalError, reason: "service unavailable")
                return
            }
            rooms[roomId] = room
            count(.roomsCreated)
            count(.roomsActive)
            let ctx = RoomContext(shard: self, room: room)
            room.service.initialize(context: ctx)
            if checkFailed(room) { closeWebSocket(conn, .internalError, reason: "service failed"); return }
        }
        count(.webSocketsOpen)
        let id = room.add(conn)
        let ctx = RoomContext(shard: self, room: room)
        room.service.connect(client: id, context: ctx)
        _ = checkFailed(room)
        armReceive(conn, multishot: true)
        if rest.count > 0 { onFrameBytes(conn, rest) }
    }

    private func onFrameBytes(_ conn: Connection, _ buf: UnsafeMutableRawBufferPointer) {
        var offset = 0
        while conn.state == .open {
            let event = conn.parser.next(buf, offset: &offset)
            switch event {
            case .needMore:
                return
            case .message(let opcode, let view):
                count(.messagesReceived)
                guard let room = conn.room, !room.isClosed else { continue }
                let payload = MessagePayload(borrowing: view, kind: opcode == .text ? .text : .binary)
                let ctx = RoomContext(shard: self, room: room)
                room.service.message(client: conn.clientId, message: payload, context: ctx)
                if checkFailed(room) { return }
            case .ping(let view):
                enqueueControl(conn, .pong, payload: view)
            case .pong:
                break
            case .close(let code, _):
                // Echo the client's code (an empty close is answered with an empty close).
                if let code {
                    closeWebSocket(conn, CloseCode(rawValue: code), reason: "")
                } else {
                    closeWebSocket(conn, nil, reason: "")
                }
                return
            case .protocolError(let code):
                count(.protocolErrorCloses)
                closeWebSocket(conn, code, reason: protocolReason(code))
                return
            }
        }
    }

    private func protocolReason(_ code: CloseCode) -> String {
        switch code.rawValue {
        case 1002: return "protocol error"
        case 1007: return "invalid UTF-8"
        case 1009: return "message too big"
        default: return ""
        }
    }

    /// Queues a close frame, leaves the room, and shuts the socket once the frame is out.
    func closeWebSocket(_ conn: Connection, _ code: CloseCode?, reason: String, grace: Double? = nil) {
        guard conn.state == .open else { return }
        conn.state = .closing
        let frame: [UInt8] = code.map { closeFrame($0, reason: reason) } ?? [0x88, 0x00]
        enqueue(conn, bytes: frame, force: true)
        conn.closeAfterFlush = true
        scheduleLeave(conn)
        timers.schedule(at: now + Shard.nanos(grace ?? config.closeTimeout),
                        .connectionDeadline(slot: conn.slot, generation: conn.generation))
    }

    private func scheduleLeave(_ conn: Connection) {
        if conn.room != nil { pendingLeaves.append(conn) }
    }

    /// Removes departed clients from their rooms and tells the services; ends failed rooms.
    private func drainPending() {
        while !pendingLeaves.isEmpty || !failedRooms.isEmpty {
            while let conn = pendingLeaves.popLast() {
                guard let room = conn.room else { continue }
                conn.room = nil
                room.remove(conn)
                count(.webSocketsOpen, -1)
                if room.isClosed { continue }
                if room.failure == nil {
                    let ctx = RoomContext(shard: self, room: room)
                    room.service.disconnect(client: conn.clientId, context: ctx)
                    if checkFailed(room) { continue }
                }
                if room.members.isEmpty { destroy(room) }
            }
            while let room = failedRooms.popLast() {
                guard !room.isClosed else { continue }
                count(.roomFailures)
                logger.error("room \(room.id) ended: \(room.failure ?? "failed"); closing its clients with 1011")
                let members = room.members
                destroy(room)
                for m in members { closeWebSocket(m, .internalError, reason: "room ended") }
            }
        }
    }

    /// After a service call: if the service ended its room, schedule the teardown.
    @discardableResult
    private func checkFailed(_ room: Room) -> Bool {
        guard room.failure != nil else { return false }
        if !room.isClosed { failedRooms.append(room) }
        return true
    }

    private func destroy(_ room: Room) {
        guard !room.isClosed else { return }
        room.isClosed = true
        room.timerToken &+= 1
        if rooms[room.id] === room { rooms[room.id] = nil }
        count(.roomsActive, -1)
    }

    // MARK: - Sending

    /// Sends from a service: encodes the frame once, queues it to every recipient.
    func send(_ message: MessagePayload, to recipient: MessageRecipient, in room: Room) {
        assertOnShard()
        guard !room.isClosed else { return }
        let frame = message.withUnsafeBytes { payload -> FrameBuffer in
            encodeFrame(opcode: message.kind == .text ? .text : .binary, payload: payload)
        }
        switch recipient {
        case .broadcast:
            let members = room.members
            pool.retain(frame, count: UInt32(members.count))
            forEach(members) { enqueue($0, frame: frame) }
        case .everyoneExcept(let except):
            let members = room.members
            pool.retain(frame, count: UInt32(members.count))
            forEach(members) { m in
                if m.clientId == except { pool.release(frame) } else { enqueue(m, frame: frame) }
            }
        case .client(let id):
            if let m = room.byId[id] {
                pool.retain(frame)
                enqueue(m, frame: frame)
            }
        }
        pool.release(frame)
    }

    /// Calls `body` with each member without retaining and releasing it: `members`, a copy the
    /// caller holds, keeps them all alive even if the room changes meanwhile. A fan-out to a
    /// thousand members otherwise spends more on reference counting than on queueing.
    @inline(__always)
    private func forEach(_ members: [Connection], _ body: (Connection) -> Void) {
        members.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: Unmanaged<Connection>.self) { refs in
                for r in refs { r._withUnsafeGuaranteedRef(body) }
            }
        }
    }

    private func encodeFrame(opcode: Opcode, payload: UnsafeRawBufferPointer) -> FrameBuffer {
        let header = frameHeaderSize(payloadLength: payload.count)
        let frame = pool.allocate(capacity: header + payload.count)
        let h = encodeFrameHeader(opcode: opcode, fin: true, payloadLength: payload.count, into: frame.bytes)
        if let base = payload.baseAddress, payload.count > 0 {
            (frame.bytes + h).copyMemory(from: base, byteCount: payload.count)
        }
        frame.count = h + payload.count
        return frame
    }

    private func enqueueControl(_ conn: Connection, _ opcode: Opcode, payload: UnsafeRawBufferPointer) {
        let frame = encodeFrame(opcode: opcode, payload: payload)
        enqueue(conn, frame: frame, force: true)
    }

    private func enqueue(_ conn: Connection, bytes: [UInt8], force: Bool = false) {
        let frame = pool.allocate(capacity: bytes.count)
        bytes.withUnsafeBytes { frame.bytes.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        frame.count = bytes.count
        enqueue(conn, frame: frame, force: force)
    }

    /// Queues one reference of `frame` (already retained for this recipient) to `conn`.
    /// A client whose queue would pass the cap is closed with 1008 instead.
    private func enqueue(_ conn: Connection, frame: FrameBuffer, force: Bool = false) {
        if conn.state == .dead || (conn.closeAfterFlush && !force) || conn.writeShut {
            pool.release(frame)
            return
        }
        let len = frame.count
        // A single frame larger than the cap still goes to a client that has drained its queue;
        // the cap is about a backlog building up behind a client that does not read.
        if !force && conn.queuedBytes > 0 && conn.queuedBytes + len > config.maxPendingBytes {
            pool.release(frame)
            slowClient(conn)
            return
        }
        conn.queue.append(OutChunk(buffer: frame, offset: 0, length: Int32(len)))
        conn.queuedBytes += len
        count(.framesQueued)
        count(.bytesQueued, len)
        // A held client whose queue has grown enough goes out now; its entry in `held` no longer
        // matches and is dropped when it reaches the front.
        if conn.isHeld && conn.queuedBytes >= holdBytesCap { conn.heldUntil = 0 }
        markDirty(conn)
    }

    @inline(__always)
    private func markDirty(_ conn: Connection) {
        if !conn.isDirty && !conn.sendInFlight && !conn.isHeld {
            conn.isDirty = true
            dirty.append(conn)
        }
    }

    /// Over the outbound cap: drop what has not been handed to the kernel yet, queue a 1008
    /// close behind what is in flight, and cut the connection if it has not drained by the grace.
    private func slowClient(_ conn: Connection) {
        guard conn.state == .open else { return }
        count(.slowClientCloses)
        logger.info("closing slow client \(conn.clientId) of room \(conn.room?.id ?? "?"): more than \(config.maxPendingBytes) bytes queued")
        dropUnsent(conn)
        closeWebSocket(conn, .policyViolation, reason: "too slow: outbound queue full", grace: config.slowClientGrace)
    }

    /// Releases queued chunks that are not part of the send in flight.
    private func dropUnsent(_ conn: Connection) {
        let keep = conn.sendInFlight ? conn.inFlightChunks : 0
        while conn.queue.count > keep {
            let chunk = conn.queue.removeLast()
            conn.queuedBytes -= Int(chunk.length)
            pool.release(chunk.buffer)
        }
    }

    private func acquireSendSpace() -> UnsafeMutableRawPointer {
        if let s = sendSpaces.popLast() { return s }
        return .allocate(byteCount: Shard.sendSpaceSize, alignment: 16)
    }

    /// Submits one gathered send per dirty socket: its queued frames (up to `maxIOV` buffers, small
    /// frames first copied together) in one send or sendmsg.
    ///
    /// Send coalescing: a connection whose previous send carried several frames
    /// (`holdMinFrames`) is receiving faster than the loop sends, and the kernel's cost is mostly
    /// per send, not per frame (loopback: ~3.5 µs for a send of one small frame, ~4 µs for a
    /// send of sixteen). Its new frames wait until `coalesceNanos` after that send, then leave together.
    /// A connection that got fewer frames per send is sent to at once, so a quiet room never
    /// waits; so is one whose client sent something within the window, since it may be waiting
    /// for an answer (a sender waiting for its own message to come back must not be slowed).
    /// Without this, a loaded shard spends all of its core sending a few frames at a time
    /// however light the load.
    private func flushDirty() {
        releaseHeld()
        var i = 0
        while i < dirty.count {
            let conn = dirty[i]
            i += 1
            conn.isDirty = false
            guard !conn.sendInFlight, conn.state != .dead else { continue }
            if conn.queue.isEmpty {
                if conn.closeAfterFlush && !conn.writeShut { shutWrite(conn) }
                continue
            }
            if conn.lastSendFrames >= Shard.holdMinFrames && now &- conn.lastSendAt < coalesceNanos
                && now &- conn.lastHeard >= coalesceNanos && !conn.closeAfterFlush
                && conn.queue.count < Shard.maxIOV && conn.queuedBytes < holdBytesCap {
                let until = conn.lastSendAt &+ coalesceNanos
                conn.heldUntil = until
                held.append((conn, until))
                count(.sendsHeld)
                continue
            }
            conn.lastSendAt = now
            conn.lastSendFrames = min(conn.queue.count, Shard.maxIOV)
            if conn.queue.count > 1 { flattenSmallChunks(conn) }
            if conn.queue.count == 1 {
                // One buffer: a plain send, no msghdr to build or for the kernel to copy.
                let chunk = conn.queue[conn.queue.startIndex]
                conn.inFlightChunks = 1
                conn.sendInFlight = true
                count(.sendsSubmitted)
                // Custody: the chunk's frame buffer stays referenced by the queue until handleSend.
                loop.send(fd: conn.fd, bytes: chunk.buffer.bytes + Int(chunk.offset), count: Int(chunk.length), tag: conn.tag(.send))
                continue
            }
            let space = conn.sendSpace ?? acquireSendSpace()
            conn.sendSpace = space
            let msg = space.bindMemory(to: msghdr.self, capacity: 1)
            let iov = (space + MemoryLayout<msghdr>.stride).bindMemory(to: iovec.self, capacity: Shard.maxIOV)
            var n = 0
            for chunk in conn.queue {
                if n == Shard.maxIOV { break }
                iov[n] = iovec(iov_base: chunk.buffer.bytes + Int(chunk.offset), iov_len: Int(chunk.length))
                n += 1
            }
            msg.pointee = msghdr()
            msg.pointee.msg_iov = iov
            msg.pointee.msg_iovlen = n
            conn.inFlightChunks = n
            conn.sendInFlight = true
            count(.sendsSubmitted)
            // Custody: msg, iov and the frame buffers they name stay alive and unchanged until this
            // send completes (handleSend); queued chunks keep their buffer references until then.
            loop.send(fd: conn.fd, message: msg, tag: conn.tag(.send))
        }
        dirty.removeAll(keepingCapacity: true)
    }

    /// Copies the run of small chunks at the head of `conn`'s queue into one buffer. The kernel
    /// pays per iovec (importing it, then a copy call per segment), which costs more than this
    /// copy for small frames; the run's frame references are dropped here, not at completion.
    private func flattenSmallChunks(_ conn: Connection) {
        var total = 0
        var n = 0
        for chunk in conn.queue {
            let len = Int(chunk.length)
            if len > Shard.smallChunk || total + len > Shard.flattenLimit { break }
            total += len
            n += 1
        }
        guard n > 1 else { return }
        let flat = pool.allocate(capacity: total)
        var at = flat.bytes
        for _ in 0..<n {
            let chunk = conn.queue.removeFirst()
            at.copyMemory(from: chunk.buffer.bytes + Int(chunk.offset), byteCount: Int(chunk.length))
            at += Int(chunk.length)
            pool.release(chunk.buffer)
        }
        flat.count = total
        conn.queue.prepend(OutChunk(buffer: flat, offset: 0, length: Int32(total)))
    }

    /// Moves held connections whose window has passed back to the dirty list. The queue is in
    /// hold order, not deadline order; popping while the front is due still releases every
    /// connection at most one window after it was held. An entry whose deadline is no longer its
    /// connection's (let go early because its queue grew, and perhaps held again since, with a
    /// newer entry) is dropped as it reaches the front, so it holds up nobody behind it.
    private func releaseHeld() {
        while let (conn, until) = held.first, conn.heldUntil != until || until <= now {
            held.removeFirst()
            guard conn.heldUntil == until else { continue }
            conn.heldUntil = 0
            markDirty(conn)
        }
    }

    private func handleSend(_ c: Completion) {
        guard let conn = connection(for: c.tag) else { return }
        conn.sendInFlight = false
        let inFlight = conn.inFlightChunks
        conn.inFlightChunks = 0
        if c.result <= 0 {
            // The peer is gone (EPIPE, ECONNRESET) or we shut the socket down.
            releaseQueue(conn)
            if conn.state != .dead { abort(conn) } else { finishIfIdle(conn) }
            return
        }
        var sent = Int(c.result)
        var done = 0
        while sent > 0, done < inFlight, var chunk = conn.queue.first {
            let len = Int(chunk.length)
            if len <= sent {
                sent -= len
                conn.queuedBytes -= len
                conn.queue.removeFirst()
                pool.release(chunk.buffer)
                done += 1
            } else {
                chunk.offset += Int32(sent)
                chunk.length -= Int32(sent)
                conn.queuedBytes -= sent
                conn.queue[conn.queue.startIndex] = chunk
                sent = 0
            }
        }
        if let space = conn.sendSpace, conn.queue.isEmpty {
            sendSpaces.append(space)
            conn.sendSpace = nil
        }
        if conn.state == .dead {
            releaseQueue(conn)
            finishIfIdle(conn)
            return
        }
        if !conn.queue.isEmpty || conn.closeAfterFlush { markDirty(conn) }
    }

    private func releaseQueue(_ conn: Connection) {
        while let chunk = conn.queue.popFirst() { pool.release(chunk.buffer) }
        conn.queuedBytes = 0
        if let space = conn.sendSpace, !conn.sendInFlight {
            sendSpaces.append(space)
            conn.sendSpace = nil
        }
    }

    /// Everything queued has gone out of a closing connection: send FIN and read until the peer's EOF.
    private func shutWrite(_ conn: Connection) {
        conn.writeShut = true
        Socket.shutdown(conn.fd, write: true, read: false)
        if !conn.recvArmed { armReceive(conn, multishot: true) }
    }

    // MARK: - Teardown

    /// Ends a connection now: leaves its room, shuts the socket (which completes any receive or
    /// send in flight), and frees the slot once nothing is in flight.
    func abort(_ conn: Connection) {
        if conn.state == .dead { finishIfIdle(conn); return }
        if conn.state == .open { scheduleLeave(conn) }
        conn.state = .dead
        Socket.shutdown(conn.fd, write: true, read: true)
        if conn.recvArmed { loop.cancel(conn.tag(.recv)) }
        if !conn.sendInFlight { releaseQueue(conn) }
        finishIfIdle(conn)
    }

    private func finishIfIdle(_ conn: Connection) {
        guard conn.state == .dead, !conn.recvArmed, !conn.sendInFlight else { return }
        release(conn, closeDescriptor: true)
    }

    private func release(_ conn: Connection, closeDescriptor: Bool) {
        let i = Int(conn.slot)
        guard i < conns.count, conns[i] === conn else { return }
        releaseQueue(conn)
        if conn.room != nil { scheduleLeave(conn) }
        conns[i] = nil
        generations[i] = (generations[i] &+ 1) & Tag.generationMask
        freeSlots.append(conn.slot)
        count(.connectionsOpen, -1)
        if closeDescriptor {
            loop.forget(fd: conn.fd)
            Socket.close(conn.fd)
            if acceptPaused { acceptPaused = false; resumeAccept() }
        }
        conn.state = .dead
    }

    // MARK: - Timers

    func setRoomTimer(_ room: Room, milliseconds: UInt32) {
        guard !room.isClosed else { return }
        room.timerToken &+= 1
        timers.schedule(at: monotonicNanos() + UInt64(milliseconds) * 1_000_000, .room(room, token: room.timerToken))
    }

    private func runTimers() {
        let limit = timers.currentSequence
        while let t = timers.popDue(now: now, sequenceLimit: limit) {
            switch t.kind {
            case .room(let room, let token):
                guard !room.isClosed, room.timerToken == token else { continue }
                let ctx = RoomContext(shard: self, room: room)
                room.service.timer(context: ctx)
                checkFailed(room)
                drainPending()
            case .heartbeat:
                heartbeat()
                timers.schedule(at: now + Shard.nanos(config.heartbeatInterval), .heartbeat)
            case .requestDeadline(let slot, let generation):
                if let conn = connection(for: Tag(op: .recv, slot: slot, generation: generation)),
                   conn.state == .http {
                    abort(conn)
                }
            case .connectionDeadline(let slot, let generation):
                if let conn = connection(for: Tag(op: .recv, slot: slot, generation: generation)),
                   conn.state == .closing || conn.state == .dead {
                    abort(conn)
                }
            case .resumeAccept:
                if shuttingDown {
                    running = false
                    for conn in conns { if let conn { abort(conn) } }
                } else if acceptPaused {
                    acceptPaused = false
                    resumeAccept()
                }
            }
        }
    }

    /// Pings every open client (one frame buffer shared by all) and drops the silent ones.
    private func heartbeat() {
        let timeout = Shard.nanos(config.heartbeatTimeout)
        let ping = encodeFrame(opcode: .ping, payload: UnsafeRawBufferPointer(start: nil, count: 0))
        for conn in conns {
            guard let conn, conn.state == .open else { continue }
            if config.heartbeatTimeout > 0 && now &- conn.lastHeard > timeout {
                count(.heartbeatTimeouts)
                dropUnsent(conn)
                closeWebSocket(conn, .goingAway, reason: "heartbeat timeout", grace: 1)
                continue
            }
            pool.retain(ping)
            count(.pingsSent)
            enqueue(conn, frame: ping, force: true)
        }
        pool.release(ping)
    }

    // MARK: - Threads

    /// Starts the shard's thread, pinned to `cpu` if given.
    func start(cpu: Int?, ready: StartLatch) {
        let box = Unmanaged.passRetained(ShardThreadBox(shard: self, cpu: cpu, ready: ready))
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let box = Unmanaged<ShardThreadBox>.fromOpaque(arg!).takeRetainedValue()
            if let cpu = box.cpu { Socket.pinCurrentThread(to: cpu) }
            box.shard.run(ready: box.ready)
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        joinHandle = tid
    }

    func join() {
        if let t = joinHandle { pthread_join(t, nil) }
    }
}

private final class ShardThreadBox {
    let shard: Shard
    let cpu: Int?
    let ready: StartLatch
    init(shard: Shard, cpu: Int?, ready: StartLatch) { self.shard = shard; self.cpu = cpu; self.ready = ready }
}
