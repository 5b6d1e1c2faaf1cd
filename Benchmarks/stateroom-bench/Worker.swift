import CTLS
import Glibc
import Histogram
import IOCore
import Synchronization
import WireProtocol

/// The time line of a run, shared by every worker (monotonic nanoseconds).
struct RunClock: Sendable {
    /// Senders start.
    var start: UInt64
    /// End of warm-up: latencies of messages sent from here on are recorded.
    var measureStart: UInt64
    /// End of the measured window: senders stop.
    var measureEnd: UInt64
}

/// Counters the main thread reads while workers run (progress, drain) and flags it sets.
final class SharedState: Sendable {
    let sent = Atomic<Int>(0)
    let received = Atomic<Int>(0)
    /// Deliveries owed by senders that have stopped (messages sent × room size), summed by workers.
    let expected = Atomic<Int>(0)
    let stoppedWorkers = Atomic<Int>(0)
    let done = Atomic<Bool>(false)
    init() {}
}

/// One client connection owned by one worker.
final class Conn {
    let slot: UInt32
    let fd: Int32
    let room: Int
    /// Index among its room's senders, or -1.
    let senderIndex: Int
    /// room × senders + senderIndex: the id written into its messages.
    let globalSender: UInt32
    var parser = FrameParser(role: .client, maxMessageSize: 64 << 20)
    var alive = true
    /// The TLS session (wss), nil for plain. With one, `pending`/`flight` hold ciphertext (frames
    /// are sealed as they are queued) and received bytes are opened before the parser reads them.
    let tls: OpaquePointer?

    // Outbound: frames are appended to `pending`; at most one send in flight (`flight`), and when it
    // completes everything appended meanwhile goes out in the next single send (gathered per socket).
    var pending: UnsafeMutableRawPointer
    var pendingCap: Int
    var pendingLen = 0
    var flight: UnsafeMutableRawPointer
    var flightCap: Int
    var flightLen = 0
    var flightOff = 0
    var sending = false
    var dirty = false
    let msg: UnsafeMutablePointer<msghdr>
    let iov: UnsafeMutablePointer<iovec>

    // Sender state.
    var template: Payload.Template?
    var nextSeq: UInt32 = 0
    var nextDue: UInt64 = 0
    var awaitingEcho = false
    var sentCount = 0
    /// Scheduled time of the oldest message in `pending` not yet handed to the kernel; 0 if none.
    var pendingSince: UInt64 = 0

    /// Per sender of the room: the next sequence number expected.
    var expect: [UInt32]

    init(slot: UInt32, fd: Int32, tls: OpaquePointer? = nil, room: Int, senderIndex: Int, sendersPerRoom: Int, frameSize: Int) {
        self.slot = slot
        self.fd = fd
        self.tls = tls
        self.room = room
        self.senderIndex = senderIndex
        self.globalSender = UInt32(room * sendersPerRoom + max(senderIndex, 0))
        let cap = max(4096, frameSize * 4)
        pendingCap = senderIndex >= 0 ? cap : 256
        flightCap = pendingCap
        pending = .allocate(byteCount: pendingCap, alignment: 64)
        flight = .allocate(byteCount: flightCap, alignment: 64)
        msg = .allocate(capacity: 1)
        iov = .allocate(capacity: 1)
        msg.initialize(to: msghdr())
        iov.initialize(to: iovec())
        expect = [UInt32](repeating: 0, count: sendersPerRoom)
    }

    deinit {
        if let tls { ctls_conn_free(tls) }
        pending.deallocate()
        flight.deallocate()
        msg.deallocate()
        iov.deallocate()
    }

    /// Room for `n` more bytes in `pending` (grows rarely: a sender far behind its schedule).
    @inline(__always)
    func reserve(_ n: Int) {
        if pendingLen + n <= pendingCap { return }
        let cap = max(pendingCap * 2, pendingLen + n)
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 64)
        fresh.copyMemory(from: pending, byteCount: pendingLen)
        pending.deallocate()
        pending = fresh
        pendingCap = cap
    }
}

/// What one worker counted.
struct WorkerTally {
    var sent = 0
    var received = 0
    var windowDeliveries = 0
    var gaps = 0
    var reordered = 0
    var foreign = 0
    var closed = 0
    var errors: [String: Int] = [:]
    var cpuSeconds = 0.0
    var windowSeconds = 0.0
    var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
    /// Open loop: how late each send left against the schedule of the oldest message it carried.
    var senderLag = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .two)
}

/// One thread, one io_uring loop, a share of the connections. Drives its senders on the run's
/// clock and checks every message it receives: latency into an HdrHistogram, per-sender order.
///
/// The hot path allocates nothing: frames are stamped from a pre-masked template into the socket's
/// pending buffer, received frames are parsed in place in the ring's provided buffers. With TLS a
/// frame is stamped into the thread's scratch and sealed (one record per message, as a browser's
/// `send` makes) through the thread's one `ctls_io`, whose ciphertext is copied to the socket's
/// pending buffer; received ciphertext is lent to the session and opened into the thread's
/// plaintext buffer, which the parser reads in place (OpenSSL keeps a partial record in the session).
final class Worker: @unchecked Sendable {
    // @unchecked Sendable: handed to its thread once; the main thread reads `tally` only after
    // the thread has finished (joined through a semaphore).
    let conns: [Conn]
    let senders: [Conn]
    let scenario: Scenario
    let clock: RunClock
    let shared: SharedState
    /// Members per room (established connections), to count the deliveries each send owes.
    let roomSizes: [Int]
    var tally = WorkerTally()
    private var dirty: [Int] = []
    private var stopped = false
    private let interval: UInt64
    private var startError: String?
    /// TLS: the thread's ctls_io and plaintext buffer (nil without TLS).
    private var tlsBuffers: TLSBuffers?
    /// TLS: a sender's message is stamped here, then sealed.
    private var stamp: UnsafeMutableRawPointer?

    init(conns: [Conn], scenario: Scenario, clock: RunClock, shared: SharedState, roomSizes: [Int]) {
        self.conns = conns
        self.senders = conns.filter { $0.senderIndex >= 0 }
        self.scenario = scenario
        self.clock = clock
        self.shared = shared
        self.roomSizes = roomSizes
        self.interval = scenario.rate.map { UInt64(1e9 / $0) } ?? 0
        dirty.reserveCapacity(conns.count)
    }

    deinit { stamp?.deallocate() }

    func run() {
        var config = EventLoopConfiguration()
        config.ringEntries = 4096
        config.receiveBufferCount = 2048
        config.receiveBufferSize = scenario.size > 8192 ? 64 * 1024 : 32 * 1024
        let loop: UringEventLoop
        do {
            loop = try UringEventLoop(config)
        } catch {
            tally.errors["io_uring: \(error)", default: 0] += 1
            shared.stoppedWorkers.add(1, ordering: .relaxed)
            return
        }
        if conns.contains(where: { $0.tls != nil }) {
            tlsBuffers = TLSBuffers(plainCapacity: 64 * 1024, outCapacity: max(64 * 1024, 2 * (scenario.size + 14)))
            stamp = .allocate(byteCount: scenario.size + 14, alignment: 64)
        }
        for c in conns {
            loop.armReceive(fd: c.fd, tag: Tag(op: .recv, slot: c.slot, generation: 0), multishot: true)
        }
        loop.flush()

        // Stagger open-loop senders over one interval so they do not fire in bursts.
        let total = max(senders.count, 1)
        for (i, s) in senders.enumerated() {
            s.nextDue = clock.start + interval * UInt64(i) / UInt64(total)
        }
        while monotonicNanos() < clock.start { usleep(200) }

        var cpuAtWindow: Double = 0
        var inWindow = false
        if scenario.closedLoop {
            let now = monotonicNanos()
            for s in senders { sendNext(s, time: now) }
        }
        var publishedSent = 0
        var publishedReceived = 0
        while true {
            var now = monotonicNanos()
            if !inWindow && now >= clock.measureStart {
                inWindow = true
                cpuAtWindow = Double(threadCPUNanos()) / 1e9
            }
            var wait: Int64 = 5_000_000
            if !stopped {
                if now >= clock.measureEnd {
                    stopped = true
                    tally.cpuSeconds = Double(threadCPUNanos()) / 1e9 - cpuAtWindow
                    tally.windowSeconds = Double(clock.measureEnd - clock.measureStart) / 1e9
                    var owed = 0
                    for s in senders { owed += s.sentCount * roomSizes[s.room] }
                    shared.sent.add(tally.sent - publishedSent, ordering: .relaxed)
                    publishedSent = tally.sent
                    shared.expected.add(owed, ordering: .relaxed)
                    shared.stoppedWorkers.add(1, ordering: .releasing)
                } else if !scenario.closedLoop {
                    var earliest = UInt64.max
                    for s in senders where s.alive {
                        while s.nextDue <= now && s.nextDue < clock.measureEnd {
                            sendNext(s, time: s.nextDue)
                            s.nextDue &+= interval
                        }
                        earliest = min(earliest, s.nextDue)
                    }
                    now = monotonicNanos()
                    // (UInt64.max when no sender is alive: every connection failed.)
                    let untilDue = earliest > now ? Int64(min(earliest - now, UInt64(wait))) : 0
                    wait = min(wait, untilDue, Int64(clock.measureEnd > now ? clock.measureEnd - now : 0))
                }
            }
            flushDirty(loop)
            if shared.done.load(ordering: .acquiring) { break }
            loop.poll(timeoutNanoseconds: wait) { c in handle(c, loop) }
            if tally.sent != publishedSent && !stopped {
                shared.sent.add(tally.sent - publishedSent, ordering: .relaxed)
                publishedSent = tally.sent
            }
            if tally.received != publishedReceived {
                shared.received.add(tally.received - publishedReceived, ordering: .relaxed)
                publishedReceived = tally.received
            }
        }
    }

    /// Appends the sender's next message, stamped with `time`, to its pending buffer (sealed with TLS).
    @inline(__always)
    private func sendNext(_ s: Conn, time: UInt64) {
        guard let t = s.template, s.alive else { return }
        if let session = s.tls, let tb = tlsBuffers, let stamp {
            let n = Payload.write(t, to: stamp, time: time, sender: s.globalSender, sequence: s.nextSeq)
            guard ctls_write(session, tb.io, stamp, Int32(n)) == Int32(n) else {
                tb.clearOut()
                fail(s, "TLS write failed: \(tlsLastError())")
                return
            }
            if s.pendingSince == 0 { s.pendingSince = time }
            appendSealed(s, tb)
        } else {
            s.reserve(t.count)
            if s.pendingSince == 0 { s.pendingSince = time }
            s.pendingLen += Payload.write(t, to: s.pending + s.pendingLen, time: time, sender: s.globalSender, sequence: s.nextSeq)
        }
        s.nextSeq &+= 1
        s.sentCount += 1
        s.awaitingEcho = true
        tally.sent += 1
        markDirty(s)
    }

    /// Moves the ciphertext the last ctls call produced to `c`'s pending bytes.
    @inline(__always)
    private func appendSealed(_ c: Conn, _ tb: TLSBuffers) {
        let n = tb.outCount
        guard n > 0 else { return }
        c.reserve(n)
        (c.pending + c.pendingLen).copyMemory(from: tb.outBytes, byteCount: n)
        c.pendingLen += n
        tb.clearOut()
        markDirty(c)
    }

    /// Queues a control frame (plaintext, or sealed with TLS).
    private func queueFrame(_ c: Conn, _ frame: [UInt8]) {
        if let session = c.tls, let tb = tlsBuffers {
            let ok = frame.withUnsafeBytes { ctls_write(session, tb.io, $0.baseAddress, Int32($0.count)) } == Int32(frame.count)
            guard ok else {
                tb.clearOut()
                fail(c, "TLS write failed: \(tlsLastError())")
                return
            }
            appendSealed(c, tb)
            return
        }
        c.reserve(frame.count)
        frame.withUnsafeBytes { (c.pending + c.pendingLen).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        c.pendingLen += frame.count
        markDirty(c)
    }

    @inline(__always)
    private func markDirty(_ c: Conn) {
        if !c.dirty {
            c.dirty = true
            dirty.append(Int(c.slot))
        }
    }

    /// One send per dirty socket with everything it has queued (none if a send is in flight: its
    /// completion sends the rest).
    private func flushDirty(_ loop: UringEventLoop) {
        if dirty.isEmpty { return }
        for i in dirty {
            let c = conns[i]
            c.dirty = false
            if !c.sending && c.pendingLen > 0 && c.alive { submit(c, loop) }
        }
        dirty.removeAll(keepingCapacity: true)
    }

    /// Swaps pending into flight and sends it. Custody: `flight`, `iov` and `msg` stay untouched
    /// until this send's completion.
    private func submit(_ c: Conn, _ loop: UringEventLoop) {
        if c.pendingSince != 0 {
            if !scenario.closedLoop && c.pendingSince >= clock.measureStart && c.pendingSince < clock.measureEnd {
                let now = monotonicNanos()
                _ = tally.senderLag.record(now > c.pendingSince ? now - c.pendingSince : 0)
            }
            c.pendingSince = 0
        }
        swap(&c.pending, &c.flight)
        swap(&c.pendingCap, &c.flightCap)
        c.flightLen = c.pendingLen
        c.flightOff = 0
        c.pendingLen = 0
        resend(c, loop)
    }

    private func resend(_ c: Conn, _ loop: UringEventLoop) {
        c.iov.pointee = iovec(iov_base: c.flight + c.flightOff, iov_len: c.flightLen - c.flightOff)
        c.msg.pointee = msghdr()
        c.msg.pointee.msg_iov = c.iov
        c.msg.pointee.msg_iovlen = 1
        c.sending = true
        loop.send(fd: c.fd, message: c.msg, tag: Tag(op: .send, slot: c.slot, generation: 0))
    }

    private func fail(_ c: Conn, _ why: String) {
        if c.alive {
            c.alive = false
            tally.closed += 1
            tally.errors[why, default: 0] += 1
        }
    }

    private func handle(_ comp: Completion, _ loop: UringEventLoop) {
        let c = conns[Int(comp.tag.slot)]
        switch comp.tag.op {
        case .recv:
            if comp.result > 0, let id = comp.bufferID {
                let buf = loop.buffer(id, count: Int(comp.result))
                if c.alive {
                    if c.tls != nil { open(c, buf) } else { parse(c, buf) }
                }
                loop.recycle(id)
            } else if comp.result == 0 {
                fail(c, "server closed the connection")
                return
            } else if comp.result < 0 && comp.result != -ENOBUFS {
                fail(c, "recv: \(errnoDescription(-comp.result))")
                return
            }
            if !comp.more && c.alive {
                loop.armReceive(fd: c.fd, tag: Tag(op: .recv, slot: c.slot, generation: 0), multishot: true)
            }
        case .send:
            c.sending = false
            if comp.result < 0 {
                fail(c, "send: \(errnoDescription(-comp.result))")
                return
            }
            c.flightOff += Int(comp.result)
            if c.flightOff < c.flightLen {
                resend(c, loop)
            } else if c.pendingLen > 0 {
                markDirty(c)
            }
        default:
            break
        }
    }

    /// Opens the TLS records in `buf` (ciphertext as received: records may be split across
    /// receives, the session keeps the partial one) and parses their plaintext, several records
    /// per parser call.
    private func open(_ c: Conn, _ buf: UnsafeMutableRawBufferPointer) {
        guard let session = c.tls, let tb = tlsBuffers, let base = buf.baseAddress else { return }
        tb.lend(base, buf.count)
        defer { tb.endLoan() }
        let plain = tb.plain
        let capacity = tb.plainCapacity
        var filled = 0
        while c.alive {
            let room = capacity - filled
            let r = ctls_read(session, tb.io, plain + filled, Int32(room))
            // Key updates and alerts the session answers while reading.
            if tb.outCount > 0 { appendSealed(c, tb) }
            if r > 0 {
                filled += Int(r)
                // All input taken and the record fitted: nothing more can come out until the next
                // receive (OpenSSL reads a record's bytes as it needs them, no read-ahead), so the
                // call that would only say "want input" is skipped.
                let exhausted = tb.unread == 0 && Int(r) < room
                if exhausted || capacity - filled < 16 * 1024 {
                    parse(c, UnsafeMutableRawBufferPointer(start: plain, count: filled))
                    filled = 0
                }
                if exhausted { break }
                continue
            }
            if filled > 0 && c.alive {
                parse(c, UnsafeMutableRawBufferPointer(start: plain, count: filled))
                filled = 0
            }
            if r == CTLS_WANT_INPUT { break }
            if r == CTLS_CLOSED {
                fail(c, "server sent TLS close_notify")
            } else {
                fail(c, "TLS record rejected: \(tlsLastError())")
            }
            break
        }
    }

    private func parse(_ c: Conn, _ buf: UnsafeMutableRawBufferPointer) {
        var offset = 0
        let now = monotonicNanos()
        let inWindow = now >= clock.measureStart && now < clock.measureEnd
        let sendersPerRoom = scenario.senders
        while true {
            switch c.parser.next(buf, offset: &offset) {
            case .needMore:
                return
            case .message(_, let payload):
                guard let f = Payload.parse(payload) else {
                    tally.foreign += 1
                    continue
                }
                let room = Int(f.sender) / sendersPerRoom
                let s = Int(f.sender) % sendersPerRoom
                guard room == c.room else {
                    tally.foreign += 1
                    continue
                }
                let want = c.expect[s]
                if f.sequence == want {
                    c.expect[s] = want &+ 1
                } else if f.sequence > want {
                    tally.gaps += 1
                    c.expect[s] = f.sequence &+ 1
                } else {
                    tally.reordered += 1
                }
                tally.received += 1
                if inWindow { tally.windowDeliveries += 1 }
                if f.time >= clock.measureStart && f.time < clock.measureEnd && now >= f.time {
                    _ = tally.histogram.record(now - f.time)
                }
                if scenario.closedLoop && s == c.senderIndex && c.awaitingEcho && f.sequence &+ 1 == c.nextSeq {
                    c.awaitingEcho = false
                    if !stopped { sendNext(c, time: monotonicNanos()) }
                }
            case .ping(let data):
                var pong: [UInt8] = []
                encodeClientFrame(opcode: .pong, payload: UnsafeRawBufferPointer(data), maskKey: (1, 2, 3, 4), into: &pong)
                queueFrame(c, pong)
            case .compressedMessage:
                fail(c, "the server sent a compressed message, but no compression was agreed")
                return
            case .pong:
                continue
            case .close(let code, _):
                fail(c, "server sent close \(code.map(String.init) ?? "(no code)")")
                return
            case .protocolError(let code):
                fail(c, "protocol error from the server (\(code.rawValue))")
                return
            }
        }
    }
}
