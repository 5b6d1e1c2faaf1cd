import Foundation
import Glibc
import Histogram
import IOCore
import WireProtocol

/// Everything one run measured.
struct RunResult: Codable, Sendable {
    var label: String
    var url: String
    var scenario: Scenario
    /// wss: TLS between the bench and the server.
    var tls: Bool
    /// The TLS version negotiated ("TLSv1.3"); nil without TLS.
    var tlsProtocol: String?
    var connectionsRequested: Int
    var connectionsEstablished: Int
    var connectionsFailed: Int
    var connectSeconds: Double
    /// Connections established per second (connection-rate runs: opened and closed per second).
    var connectRate: Double
    /// Connection-rate runs (`connect-rate`, `--connections`) only.
    var connectionRate: ConnectionRate?
    var messagesSent: Int
    var deliveriesExpected: Int
    var deliveriesReceived: Int
    var lost: Int
    var gaps: Int
    var reordered: Int
    var foreign: Int
    var closedDuringRun: Int
    var errors: [String: Int]
    var windowSeconds: Double
    var deliveriesPerSecond: Double
    var messagesPerSecond: Double
    var latency: Latency
    /// Open loop only: how late the bench handed each send to the kernel against the schedule
    /// (latency is measured from the schedule, so this part of it is the bench's own).
    var senderLag: Lag?
    var serverPid: Int32?
    /// The server process's CPU time, plus `serverSoftirqCPUSeconds` when that is known.
    var serverCPUSeconds: Double?
    /// Time the kernel's ksoftirqd threads spent on the server's own cores (network work the
    /// kernel deferred out of the server's context); nil when the server shares a core with the
    /// bench, where it cannot be told apart.
    var serverSoftirqCPUSeconds: Double?
    var serverCPUSecondsPerMillionDeliveries: Double?
    var serverCPUMicrosecondsPerDelivery: Double?
    var serverCPUUtilization: Double?
    /// The process given as the server was charged no CPU at all while at least
    /// `idleServerDeliveries` went through (a server needs ~0.1 µs per delivery even when it
    /// batches hard: two clock ticks): most likely a shell or wrapper around the server.
    var serverLooksIdle: Bool
    var benchCPUSeconds: Double
    var benchCPUUtilization: Double
    var benchBusiestThreadUtilization: Double
    var benchSaturated: Bool
    /// A compiler (swift-build / swift-frontend) ran on the machine during the run: its numbers are
    /// suspect (``--compare`` repeats such runs).
    var disturbed: Bool
    /// Bytes on the wire (message runs).
    var wire: Wire?
    /// permessage-deflate, when the bench offered it (`--compression`).
    var compression: Compression?
    var passed: Bool
    var failures: [String]

    /// What travelled, per delivery and per message sent.
    struct Wire: Codable, Sendable {
        /// Bytes the bench's sockets received in the window ÷ deliveries in it: frames as they came
        /// (compressed, headers, pings; TLS records with TLS).
        var bytesPerDelivery: Double
        /// The messages' own size (after inflation) per delivery.
        var payloadBytesPerDelivery: Double
        /// `bytesPerDelivery` ÷ the bytes the same messages take as plain frames (payload + header):
        /// about 1 without compression, 0.4 for a message that compresses to 40%.
        var wireToPlain: Double
        /// Deliveries in the window that came compressed (RSV1).
        var compressedDeliveries: Int
        /// Frame bytes a sender produced per message (before TLS), and its message bytes.
        var sentFrameBytesPerMessage: Double
        var sentPayloadBytesPerMessage: Double
        /// Messages the senders sent compressed.
        var compressedSends: Int
        /// Compressed messages received (whole run), and how many of them the load threads' memo
        /// served (the same compressed bytes just inflated for another client; `--inflate-all` off).
        var compressedReceived: Int
        var memoHits: Int
    }

    struct Compression: Codable, Sendable {
        /// The offer each connection made.
        var offer: String
        /// Connections that agreed to permessage-deflate, of those established.
        var agreedConnections: Int
        /// The server's first `Sec-WebSocket-Extensions` answer (nil: it declined every offer).
        var answer: String?
    }

    struct Latency: Codable, Sendable {
        var count: UInt64
        var p50Micros: Double
        var p90Micros: Double
        var p99Micros: Double
        var p999Micros: Double
        var maxMicros: Double
        var meanMicros: Double
        /// (percentile, microseconds) points for the chart.
        var curve: [[Double]]
    }

    /// A connection-rate run: connections opened (connect, TLS handshake, upgrade) and closed (close
    /// handshake) per second, and the CPU each cost. `latency` holds each connection's set-up time
    /// (connect(2) to the 101) in such a run.
    struct ConnectionRate: Codable, Sendable {
        var completed: Int
        var perSecond: Double
        /// Connections whose close frame the server answered with its own before closing.
        var closeAnswered: Int
        var serverCPUMicrosecondsPerConnection: Double?
        var benchCPUMicrosecondsPerConnection: Double
    }

    struct Lag: Codable, Sendable {
        var count: UInt64
        var p50Micros: Double
        var p99Micros: Double
        var maxMicros: Double
    }
}

/// Progress lines on standard error while a run goes on.
struct ProgressPrinter {
    var enabled: Bool
    func line(_ s: String) {
        guard enabled else { return }
        writeStandardError("\r\u{1B}[K" + s)
    }
    func end() { if enabled { writeStandardError("\n") } }
}

/// Deliveries in a window after which a server charged no CPU at all is suspect.
let idleServerDeliveries = 200_000

/// CPU seconds (user + system) a process has used, from /proc/PID/stat; nil if it is gone.
func processCPUSeconds(_ pid: Int32) -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return nil }
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// CPU numbers in a list such as "0-3,6".
func parseCPUList(_ text: Substring) -> [Int] {
    var out: [Int] = []
    for part in text.split(separator: ",") {
        let ends = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        if ends.count == 1 { out.append(ends[0]) } else if ends.count == 2, ends[0] <= ends[1] { out += Array(ends[0]...ends[1]) }
    }
    return out
}

/// The ksoftirqd threads of the CPUs the server may run on, if none of those CPUs is one the
/// bench may run on (otherwise their time belongs to both and to neither). Softirq work that
/// overflows a busy core runs there and is not in the server's own /proc/PID/stat.
func softirqThreads(serverPid: Int32) -> [Int32]? {
    guard let status = try? String(contentsOfFile: "/proc/\(serverPid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return nil }
    let serverCPUs = Set(parseCPUList(line.dropFirst("Cpus_allowed_list:".count)))
    guard !serverCPUs.isEmpty, serverCPUs.isDisjoint(with: Socket.allowedCPUs) else { return nil }
    var pids: [Int32] = []
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = Int32(entry),
              let comm = try? String(contentsOfFile: "/proc/\(entry)/comm", encoding: .utf8),
              comm.hasPrefix("ksoftirqd/"),
              let cpu = Int(comm.dropFirst("ksoftirqd/".count).trimmingCharacters(in: .whitespacesAndNewlines)),
              serverCPUs.contains(cpu) else { continue }
        pids.append(pid)
    }
    return pids.count == serverCPUs.count ? pids : nil
}

func ownCPUSeconds() -> Double {
    var ru = rusage()
    getrusage(Int32(RUSAGE_SELF.rawValue), &ru)
    return Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6 + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
}

/// Server CPU seconds (the process plus its cores' ksoftirqd when those are the server's alone).
struct ServerCPUMeter {
    let pid: Int32?
    let softirqPids: [Int32]?

    init(pid: Int32?) {
        self.pid = pid
        softirqPids = pid.flatMap(softirqThreads)
    }

    struct Sample { var process: Double?; var softirq: Double? }

    func sample() -> Sample {
        var soft: Double?
        if let pids = softirqPids {
            var total = 0.0
            var ok = true
            for p in pids { guard let c = processCPUSeconds(p) else { ok = false; break }; total += c }
            soft = ok ? total : nil
        }
        return Sample(process: pid.flatMap(processCPUSeconds), softirq: soft)
    }

    /// (server CPU including softirq, softirq part) between two samples.
    static func between(_ a: Sample?, _ b: Sample?) -> (cpu: Double?, softirq: Double?) {
        guard let pa = a?.process, let pb = b?.process else { return (nil, nil) }
        if let sa = a?.softirq, let sb = b?.softirq { return (pb - pa + (sb - sa), sb - sa) }
        return (pb - pa, nil)
    }
}

func latencySummary(_ h: Histogram<UInt64>) -> RunResult.Latency {
    func us(_ v: UInt64) -> Double { Double(v) / 1000 }
    var curve: [[Double]] = []
    if h.totalCount > 0 {
        var p = 0.0
        while p < 99.9999 {
            curve.append([p, us(h.valueAtPercentile(p))])
            p = 100 - (100 - p) / 1.25   // log steps towards 100
        }
        curve.append([100, us(h.max)])
    }
    return RunResult.Latency(
        count: h.totalCount, p50Micros: us(h.valueAtPercentile(50)), p90Micros: us(h.valueAtPercentile(90)),
        p99Micros: us(h.valueAtPercentile(99)), p999Micros: us(h.valueAtPercentile(99.9)), maxMicros: us(h.max),
        meanMicros: h.totalCount > 0 ? h.mean / 1000 : 0, curve: curve)
}

/// Runs one scenario against one endpoint (`tls` is required for a wss endpoint).
func runScenario(_ scenario: Scenario, endpoint: Endpoint, tls: TLSClient? = nil, label: String, serverPid: Int32?,
                 progress: ProgressPrinter) throws -> RunResult {
    try scenario.validate()
    if scenario.isConnectRate {
        return try runConnectRate(scenario, endpoint: endpoint, tls: tls, label: label, serverPid: serverPid, progress: progress)
    }
    raiseOpenFileLimit()
    var paths: [String] = []
    var rooms: [Int] = []
    var senderIndex: [Int] = []
    paths.reserveCapacity(scenario.connections)
    // Interleave rooms so connections spread over the server's shards as they open.
    for k in 0..<scenario.clientsPerRoom {
        for r in 0..<scenario.rooms {
            paths.append(endpoint.pathPrefix + scenario.roomPrefix + String(r) + (scenario.seats ? "?seat=new" : ""))
            rooms.append(r)
            senderIndex.append(k < scenario.senders ? k : -1)
        }
    }
    var connector = Connector(endpoint: endpoint, window: 256, timeout: 15, tls: tls, offerDeflate: scenario.compression)
    connector.expectSeat = scenario.seats
    var opened = try connector.open(paths: paths) { n in
        progress.line("[\(label)] connecting: \(n)/\(paths.count)")
    }
    progress.end()
    defer { for fd in opened.fds where fd >= 0 { Glibc.close(fd) } }

    var roomSizes = [Int](repeating: 0, count: scenario.rooms)
    for (i, fd) in opened.fds.enumerated() where fd >= 0 { roomSizes[rooms[i]] += 1 }
    // Let the server finish registering the last joins before the first message.
    usleep(300_000)

    // Assign connections to workers: whole rooms per worker when there are enough rooms.
    let threads = scenario.threads
    var perWorker = [[Conn]](repeating: [], count: threads)
    var senderCount = 0
    var templateKey: UInt8 = 1
    for (i, fd) in opened.fds.enumerated() where fd >= 0 {
        let w = scenario.rooms >= threads ? rooms[i] % threads : i % threads
        // The Conn owns the TLS session from here (frees it).
        let c = Conn(slot: UInt32(perWorker[w].count), fd: fd, tls: opened.sessions[i], deflate: opened.deflate[i], room: rooms[i],
                     senderIndex: senderIndex[i], sendersPerRoom: scenario.senders, frameSize: scenario.maxFrame)
        opened.sessions[i] = nil
        if senderIndex[i] >= 0 {
            templateKey = templateKey &+ 37
            c.template = Payload.Template(size: scenario.size, key: (templateKey, 0x5A, templateKey ^ 0xA5, 0x3C))
            c.maskKey = (templateKey, 0x5A, templateKey ^ 0xA5, 0x3C)
            senderCount += 1
        }
        perWorker[w].append(c)
    }
    let start = monotonicNanos() + 100_000_000
    let measureStart = start + UInt64(scenario.warmup * 1e9)
    let clock = RunClock(start: start, measureStart: measureStart, measureEnd: measureStart + UInt64(scenario.duration * 1e9))
    let shared = SharedState()
    let workers = perWorker.map { Worker(conns: $0, scenario: scenario, clock: clock, shared: shared, roomSizes: roomSizes) }
    let finished = DispatchSemaphore(value: 0)
    for w in workers {
        let t = Thread {
            w.run()
            finished.signal()
        }
        t.stackSize = 1 << 20
        t.start()
    }

    // Watch: progress, CPU samples at the window's edges, then the drain.
    var serverCPUStart: Double?
    var serverCPUEnd: Double?
    let softirqPids = serverPid.flatMap(softirqThreads)
    func softirqSeconds() -> Double? {
        guard let pids = softirqPids else { return nil }
        var total = 0.0
        for p in pids { guard let c = processCPUSeconds(p) else { return nil }; total += c }
        return total
    }
    var softirqStart: Double?
    var softirqEnd: Double?
    var ownCPUStart = 0.0
    var ownCPUEnd = 0.0
    var lastT = monotonicNanos()
    var lastReceived = 0
    var phase = 0
    var disturbed = false
    var lastDisturbanceCheck: UInt64 = 0
    while true {
        let now = monotonicNanos()
        if phase == 0 && now >= clock.measureStart {
            phase = 1
            serverCPUStart = serverPid.flatMap(processCPUSeconds)
            softirqStart = softirqSeconds()
            ownCPUStart = ownCPUSeconds()
        }
        if phase == 1 && now >= clock.measureEnd {
            phase = 2
            serverCPUEnd = serverPid.flatMap(processCPUSeconds)
            softirqEnd = softirqSeconds()
            ownCPUEnd = ownCPUSeconds()
        }
        let received = shared.received.load(ordering: .relaxed)
        if phase < 2 && !disturbed && now - lastDisturbanceCheck >= 500_000_000 {
            lastDisturbanceCheck = now
            disturbed = compilerRunning()
        }
        if now - lastT >= 1_000_000_000 {
            let rate = Double(received - lastReceived) / (Double(now - lastT) / 1e9)
            let stage = phase == 0 ? "warm-up" : (phase == 1 ? "measuring" : "draining")
            let elapsed = Double(Int64(now) - Int64(clock.start)) / 1e9
            progress.line("[\(label)] \(stage) \(String(format: "%5.1f", elapsed))s  sent \(shared.sent.load(ordering: .relaxed))  "
                + "delivered \(received)  \(formatCount(rate)) deliveries/s")
            lastT = now
            lastReceived = received
        }
        if phase == 2 && shared.stoppedWorkers.load(ordering: .acquiring) == threads {
            let expected = shared.expected.load(ordering: .relaxed)
            if received >= expected { break }
            if Double(now - clock.measureEnd) / 1e9 > scenario.drainTimeout { break }
        }
        usleep(phase == 2 ? 2_000 : 20_000)
    }
    shared.done.store(true, ordering: .releasing)
    for _ in workers { finished.wait() }
    progress.end()

    // Aggregate.
    var total = WorkerTally()
    var busiest = 0.0
    for w in workers {
        let t = w.tally
        total.sent += t.sent
        total.received += t.received
        total.windowDeliveries += t.windowDeliveries
        total.gaps += t.gaps
        total.reordered += t.reordered
        total.foreign += t.foreign
        total.closed += t.closed
        total.cpuSeconds += t.cpuSeconds
        total.windowWireBytes += t.windowWireBytes
        total.windowPayloadBytes += t.windowPayloadBytes
        total.windowCompressedDeliveries += t.windowCompressedDeliveries
        total.sentFrameBytes += t.sentFrameBytes
        total.sentPayloadBytes += t.sentPayloadBytes
        total.sentCompressed += t.sentCompressed
        total.inflations += t.inflations
        total.inflationsSkipped += t.inflationsSkipped
        for (k, v) in t.errors { total.errors[k, default: 0] += v }
        total.histogram.add(t.histogram)
        total.senderLag.add(t.senderLag)
        if t.windowSeconds > 0 { busiest = max(busiest, t.cpuSeconds / t.windowSeconds) }
    }
    var expected = 0
    for w in workers { for s in w.senders { expected += s.sentCount * roomSizes[s.room] } }
    let window = scenario.duration
    let latency = latencySummary(total.histogram)
    func us(_ v: UInt64) -> Double { Double(v) / 1000 }
    let lagH = total.senderLag
    let senderLag = scenario.closedLoop ? nil : RunResult.Lag(
        count: lagH.totalCount, p50Micros: us(lagH.valueAtPercentile(50)),
        p99Micros: us(lagH.valueAtPercentile(99)), maxMicros: us(lagH.max))
    let deliveriesPerSecond = Double(total.windowDeliveries) / window
    var serverCPU: Double?
    var serverSoftirq: Double?
    if let a = serverCPUStart, let b = serverCPUEnd {
        serverCPU = b - a
        if let sa = softirqStart, let sb = softirqEnd {
            serverSoftirq = sb - sa
            serverCPU = b - a + (sb - sa)
        }
    }
    let serverLooksIdle = serverCPU.map { $0 == 0 && total.windowDeliveries >= idleServerDeliveries } ?? false
    let benchCPU = ownCPUEnd - ownCPUStart
    let benchUtil = benchCPU / window
    // Saturated: the busiest load thread was on CPU nearly all of the window, so the server may
    // have been waiting for the bench rather than the other way round.
    let saturated = busiest > 0.9
    var failures: [String] = []
    let lost = max(0, expected - total.received)
    if opened.failed > 0 { failures.append("\(opened.failed) connection(s) failed: \(opened.errors.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "))") }
    if lost > 0 { failures.append("\(lost) deliveries lost") }
    if total.gaps > 0 { failures.append("\(total.gaps) sequence gaps") }
    if total.reordered > 0 { failures.append("\(total.reordered) reordered or duplicated messages") }
    if total.foreign > 0 { failures.append("\(total.foreign) messages not from this run's senders") }
    if total.closed > 0 { failures.append("\(total.closed) connection(s) closed during the run: \(total.errors.map { "\($0.key) ×\($0.value)" }.joined(separator: ", "))") }
    if total.sent == 0 { failures.append("no message was sent") }
    let established = opened.fds.filter { $0 >= 0 }.count
    let deliveries = Double(max(total.windowDeliveries, 1))
    let payloadPerDelivery = Double(total.windowPayloadBytes) / deliveries
    let plainFrame = payloadPerDelivery + Double(frameHeaderSize(payloadLength: Int(payloadPerDelivery)))
    let bytesPerDelivery = Double(total.windowWireBytes) / deliveries
    let wire = RunResult.Wire(
        bytesPerDelivery: bytesPerDelivery, payloadBytesPerDelivery: payloadPerDelivery,
        wireToPlain: plainFrame > 0 ? bytesPerDelivery / plainFrame : 0, compressedDeliveries: total.windowCompressedDeliveries,
        sentFrameBytesPerMessage: Double(total.sentFrameBytes) / Double(max(total.sent, 1)),
        sentPayloadBytesPerMessage: Double(total.sentPayloadBytes) / Double(max(total.sent, 1)),
        compressedSends: total.sentCompressed, compressedReceived: total.inflations, memoHits: total.inflationsSkipped)
    let compression = scenario.compression
        ? RunResult.Compression(offer: Connector.deflateOffer, agreedConnections: opened.deflate.filter { $0 != nil }.count,
                                answer: opened.extensionAnswer)
        : nil
    return RunResult(
        label: label, url: endpoint.description, scenario: scenario, tls: endpoint.tls, tlsProtocol: opened.tlsProtocol,
        connectionsRequested: paths.count, connectionsEstablished: established, connectionsFailed: opened.failed,
        connectSeconds: opened.seconds, connectRate: Double(established) / max(opened.seconds, 1e-9), connectionRate: nil,
        messagesSent: total.sent, deliveriesExpected: expected, deliveriesReceived: total.received,
        lost: lost, gaps: total.gaps, reordered: total.reordered, foreign: total.foreign,
        closedDuringRun: total.closed, errors: total.errors.merging(opened.errors) { $0 + $1 },
        windowSeconds: window, deliveriesPerSecond: deliveriesPerSecond,
        messagesPerSecond: deliveriesPerSecond / Double(max(1, scenario.clientsPerRoom)),
        latency: latency, senderLag: senderLag, serverPid: serverPid, serverCPUSeconds: serverCPU, serverSoftirqCPUSeconds: serverSoftirq,
        serverCPUSecondsPerMillionDeliveries: serverCPU.map { $0 / max(Double(total.windowDeliveries), 1) * 1e6 },
        serverCPUMicrosecondsPerDelivery: serverCPU.map { $0 / max(Double(total.windowDeliveries), 1) * 1e6 },
        serverCPUUtilization: serverCPU.map { $0 / window }, serverLooksIdle: serverLooksIdle,
        benchCPUSeconds: benchCPU, benchCPUUtilization: benchUtil, benchBusiestThreadUtilization: busiest,
        benchSaturated: saturated, disturbed: disturbed, wire: wire, compression: compression, passed: failures.isEmpty, failures: failures)
}
