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

    /// permessage-deflate as agreed at the upgrade (nil: none); with it the parser accepts RSV1.
    let deflate: DeflateParameters?
    /// The compressor for this sender's messages (nil: they go plain; a window of 8 bits).
    var compressor: DeflateCompressor?
    /// Only when the server keeps its compression context across messages: this connection's inflater.
    var inflater: DeflateDecompressor?

    // Sender state.
    var template: Payload.Template?
    /// The mask key of frames built per message (compressed or JSON ones).
    var maskKey: (UInt8, UInt8, UInt8, UInt8) = (0x11, 0x22, 0x33, 0x44)
    var nextSeq: UInt32 = 0
    var nextDue: UInt64 = 0
    var awaitingEcho = false
    var sentCount = 0
    /// Scheduled time of the oldest message in `pending` not yet handed to the kernel; 0 if none.
    var pendingSince: UInt64 = 0

    /// Per sender of the room: the next sequence number expected.
    var expect: [UInt32]

    init(slot: UInt32, fd: Int32, tls: OpaquePointer? = nil, deflate: DeflateParameters? = nil, room: Int, senderIndex: Int,
         sendersPerRoom: Int, frameSize: Int) {
        self.slot = slot
        self.fd = fd
        self.tls = tls
        self.deflate = deflate
        parser.acceptsCompressed = deflate != nil
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
    /// In the window: bytes the sockets received (frames as they came: compressed, with headers;
    /// ciphertext with TLS), the deliveries' message bytes (inflated), deliveries that came compressed.
    var windowWireBytes = 0
    var windowPayloadBytes = 0
    var windowCompressedDeliveries = 0
    /// Every message sent: frame bytes (before TLS), message bytes, how many went compressed.
    var sentFrameBytes = 0
    var sentPayloadBytes = 0
    var sentCompressed = 0
    /// Compressed deliveries inflated, and those served by the memo (same bytes just inflated).
    var inflations = 0
    var inflationsSkipped = 0
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
    /// Frames built per message (JSON, compressed) and inflation (nil when neither happens).
    private var work: DeflateWork?
    /// Senders' frames are built per message rather than stamped from a template.
    private let buildsFrames: Bool

    init(conns: [Conn], scenario: Scenario, clock: RunClock, shared: SharedState, roomSizes: [Int]) {
        self.conns = conns
        self.senders = conns.filter { $0.senderIndex >= 0 }
        self.scenario = scenario
        self.clock = clock
        self.shared = shared
        self.roomSizes = roomSizes
        self.interval = scenario.rate.map { UInt64(1e9 / $0) } ?? 0
        self.buildsFrames = scenario.message == .json
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
            tlsBuffers = TLSBuffers(plainCapacity: 64 * 1024, outCapacity: max(64 * 1024, 2 * scenario.maxFrame))
            stamp = .allocate(byteCount: scenario.maxFrame, alignment: 64)
        }
        if buildsFrames || conns.contains(where: { $0.deflate != nil }) {
            let w = DeflateWork(maxPayload: scenario.maxPayload, memo: scenario.inflateMemo)
            work = w
            for c in conns {
                guard let d = c.deflate else { continue }
                if c.senderIndex >= 0 { c.compressor = w.compressor(windowBits: d.clientMaxWindowBits) }
                if !d.serverNoContextTakeover { c.inflater = DeflateDecompressor(windowBits: 15, noContextTakeover: false) }
            }
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
        if buildsFrames || s.compressor != nil {
            guard let work else { return }
            buildAndQueue(s, time: time, work: work)
        } else if let session = s.tls, let tb = tlsBuffers, let stamp {
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
            tally.sentFrameBytes += t.count
            tally.sentPayloadBytes += scenario.size
        }
        if !s.alive { return }
        s.nextSeq &+= 1
        s.sentCount += 1
        s.awaitingEcho = true
        tally.sent += 1
        markDirty(s)
    }

    /// Writes the sender's next message (JSON or hex) into the work scratch, compresses it when the
    /// connection agreed to permessage-deflate and it gets smaller, and queues it as one masked frame
    /// (RSV1 when compressed), sealed with TLS. No allocation.
    @inline(__always)
    private func buildAndQueue(_ s: Conn, time: UInt64, work: DeflateWork) {
        let n = scenario.message == .json
            ? JSONMessage.write(to: work.plain, size: scenario.size, time: time, sender: s.globalSender, sequence: s.nextSeq, room: s.room)
            : Payload.writePlain(to: work.plain, size: scenario.size, time: time, sender: s.globalSender, sequence: s.nextSeq)
        var payload = UnsafeRawBufferPointer(start: work.plain, count: n)
        var b0: UInt8 = 0x81  // FIN, text
        if let c = s.compressor, let m = c.compress(payload, into: work.packed, capacity: work.packedCapacity) {
            payload = UnsafeRawBufferPointer(start: work.packed, count: m)
            b0 |= 0x40  // RSV1: compressed
            tally.sentCompressed += 1
        }
        let count = payload.count
        let header = count <= 125 ? 6 : (count <= 0xFFFF ? 8 : 14)
        let frameLength = header + count
        let dest: UnsafeMutableRawPointer
        if s.tls != nil, let stamp {
            dest = stamp
        } else {
            s.reserve(frameLength)
            dest = s.pending + s.pendingLen
        }
        dest.storeBytes(of: b0, as: UInt8.self)
        if count <= 125 {
            dest.storeBytes(of: 0x80 | UInt8(count), toByteOffset: 1, as: UInt8.self)
        } else if count <= 0xFFFF {
            dest.storeBytes(of: 0x80 | 126, toByteOffset: 1, as: UInt8.self)
            dest.storeBytes(of: UInt16(count).bigEndian, toByteOffset: 2, as: UInt16.self)
        } else {
            dest.storeBytes(of: 0x80 | 127, toByteOffset: 1, as: UInt8.self)
            dest.storeBytes(of: UInt64(count).bigEndian, toByteOffset: 2, as: UInt64.self)
        }
        let k = s.maskKey
        dest.storeBytes(of: k.0, toByteOffset: header - 4, as: UInt8.self)
        dest.storeBytes(of: k.1, toByteOffset: header - 3, as: UInt8.self)
        dest.storeBytes(of: k.2, toByteOffset: header - 2, as: UInt8.self)
        dest.storeBytes(of: k.3, toByteOffset: header - 1, as: UInt8.self)
        (dest + header).copyMemory(from: payload.baseAddress!, byteCount: count)
        unmask(UnsafeMutableRawBufferPointer(start: dest + header, count: count), key: k, phase: 0)
        tally.sentFrameBytes += frameLength
        tally.sentPayloadBytes += n
        if s.pendingSince == 0 { s.pendingSince = time }
        if let session = s.tls, let tb = tlsBuffers {
            guard ctls_write(session, tb.io, dest, Int32(frameLength)) == Int32(frameLength) else {
                tb.clearOut()
                fail(s, "TLS write failed: \(tlsLastError())")
                return
            }
            appendSealed(s, tb)
        } else {
            s.pendingLen += frameLength
        }
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
                let now = monotonicNanos()
                if now >= clock.measureStart && now < clock.measureEnd { tally.windowWireBytes += Int(comp.result) }
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

    /// One message delivered to `c` (inflated if it came compressed): latency, order, closed loop.
    @inline(__always)
    private func deliver(_ c: Conn, _ payload: UnsafeRawBufferPointer, now: UInt64, inWindow: Bool, compressed: Bool) {
        guard let f = Payload.parse(payload) else {
            if scenario.seats && Self.isSeatMessage(payload) { return }
            tally.foreign += 1
            return
        }
        let sendersPerRoom = scenario.senders
        let room = Int(f.sender) / sendersPerRoom
        let s = Int(f.sender) % sendersPerRoom
        guard room == c.room else {
            tally.foreign += 1
            return
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
        if inWindow {
            tally.windowDeliveries += 1
            tally.windowPayloadBytes += payload.count
            if compressed { tally.windowCompressedDeliveries += 1 }
        }
        if f.time >= clock.measureStart && f.time < clock.measureEnd && now >= f.time {
            _ = tally.histogram.record(now - f.time)
        }
        if scenario.closedLoop && s == c.senderIndex && c.awaitingEcho && f.sequence &+ 1 == c.nextSeq {
            c.awaitingEcho = false
            if !stopped { sendNext(c, time: monotonicNanos()) }
        }
    }

    /// The seat message a connection that opted in to a seat gets first (`{"type":"seat",…}`).
    static func isSeatMessage(_ payload: UnsafeRawBufferPointer) -> Bool {
        let prefix = Array(#"{"type":"seat""#.utf8)
        return payload.count >= prefix.count && zip(payload, prefix).allSatisfy { $0 == $1 }
    }

    private func parse(_ c: Conn, _ buf: UnsafeMutableRawBufferPointer) {
        var offset = 0
        let now = monotonicNanos()
        let inWindow = now >= clock.measureStart && now < clock.measureEnd
        while true {
            switch c.parser.next(buf, offset: &offset) {
            case .needMore:
                return
            case .message(_, let payload):
                deliver(c, payload, now: now, inWindow: inWindow, compressed: false)
            case .compressedMessage(_, let payload):
                guard c.deflate != nil, let work else {
                    fail(c, "the server sent a compressed message, but no compression was agreed")
                    return
                }
                tally.inflations += 1
                if let own = c.inflater {
                    // The server keeps its context: this connection's own inflater, no memo.
                    guard case .ok(let n) = own.decompress(payload, limit: DeflateWork.inflateLimit, into: &work.inflated) else {
                        fail(c, "a compressed message from the server does not inflate")
                        return
                    }
                    work.inflated.withUnsafeBytes { deliver(c, UnsafeRawBufferPointer(rebasing: $0[0..<n]), now: now, inWindow: inWindow, compressed: true) }
                } else {
                    let hits = work.memoHits
                    let ok = work.inflate(payload) { deliver(c, $0, now: now, inWindow: inWindow, compressed: true) }
                    if work.memoHits != hits { tally.inflationsSkipped += 1 }
                    guard ok else {
                        fail(c, "a compressed message from the server does not inflate")
                        return
                    }
                }
                if !c.alive { return }
            case .ping(let data):
                var pong: [UInt8] = []
                encodeClientFrame(opcode: .pong, payload: UnsafeRawBufferPointer(data), maskKey: (1, 2, 3, 4), into: &pong)
                queueFrame(c, pong)
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
