import Foundation
import Glibc
import Histogram
import IOCore
import Synchronization

/// The connection-rate measurement (`--scenario connect-rate`, `--connections N`): `connectCount`
/// connections, `connectWindow` in flight per load thread, each one connect(2), the TLS handshake
/// (with TLS), the upgrade, then the close handshake (a close frame; the server answers and closes;
/// EOF). Reports connections per second and the server's CPU per connection over the whole phase
/// (plus a short settle so the last closes are charged), so TLS and plain runs of one server, or two
/// servers, compare by what a new connection costs.
func runConnectRate(_ scenario: Scenario, endpoint: Endpoint, tls: TLSClient?, label: String, serverPid: Int32?,
                    progress: ProgressPrinter) throws -> RunResult {
    guard let count = scenario.connectCount else { throw BenchError("not a connection-rate scenario") }
    raiseOpenFileLimit()
    let threads = min(scenario.threads, count)
    var shares = [[String]](repeating: [], count: threads)
    for i in 0..<count {
        shares[i % threads].append(endpoint.pathPrefix + scenario.roomPrefix + String(i % scenario.rooms))
    }
    let connector = Connector(endpoint: endpoint, window: scenario.connectWindow, timeout: 15, tls: tls, offerDeflate: scenario.compression)
    _ = try connector.address()   // fail early on a bad host

    let meter = ServerCPUMeter(pid: serverPid)
    final class Counter: Sendable { let value = Atomic<Int>(0) }
    let done = Counter()
    let finished = DispatchSemaphore(value: 0)
    final class Box: @unchecked Sendable {
        // Written by its thread only, read after the semaphore says it finished.
        var result: Connector.ChurnResult?
        var error: String?
    }
    let boxes = (0..<threads).map { _ in Box() }
    let disturbedAtStart = compilerRunning()
    let serverStart = meter.sample()
    let ownStart = ownCPUSeconds()
    let started = monotonicNanos()
    for t in 0..<threads {
        let box = boxes[t]
        let paths = shares[t]
        let th = Thread {
            var last = 0
            do {
                box.result = try connector.churn(paths: paths) { n in
                    done.value.add(n - last, ordering: .relaxed)
                    last = n
                }
            } catch {
                box.error = "\(error)"
            }
            finished.signal()
        }
        th.stackSize = 1 << 20
        th.start()
    }
    var finishedThreads = 0
    var disturbed = disturbedAtStart
    var lastCheck = started
    while finishedThreads < threads {
        if finished.wait(timeout: .now() + .milliseconds(200)) == .success {
            finishedThreads += 1
            continue
        }
        let now = monotonicNanos()
        let n = done.value.load(ordering: .relaxed)
        progress.line("[\(label)] connections: \(n)/\(count)  \(formatCount(Double(n) / max(Double(now - started) / 1e9, 1e-9)))/s")
        if !disturbed && now - lastCheck >= 500_000_000 {
            lastCheck = now
            disturbed = compilerRunning()
        }
    }
    let ended = monotonicNanos()
    let ownEnd = ownCPUSeconds()
    // Let the server finish the last closes it was sent before its CPU is read (an idle server
    // costs nothing meanwhile).
    usleep(100_000)
    let serverEnd = meter.sample()
    progress.end()
    if let e = boxes.compactMap(\.error).first { throw BenchError(e) }

    let seconds = Double(ended - started) / 1e9
    var setup = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
    var completed = 0, failed = 0, closeAnswered = 0
    var errors: [String: Int] = [:]
    var busiest = 0.0
    var proto: String?
    for b in boxes {
        guard let r = b.result else { continue }
        completed += r.completed
        failed += r.failed
        closeAnswered += r.closeAnswered
        for (k, v) in r.errors { errors[k, default: 0] += v }
        setup.add(r.setup)
        busiest = max(busiest, r.cpuSeconds / max(r.seconds, 1e-9))
        proto = proto ?? r.tlsProtocol
    }
    let (serverCPU, serverSoftirq) = ServerCPUMeter.between(serverStart, serverEnd)
    let benchCPU = ownEnd - ownStart
    let perSecond = Double(completed) / max(seconds, 1e-9)
    var failures: [String] = []
    if failed > 0 { failures.append("\(failed) connection(s) failed: \(errors.map { "\($0.key) ×\($0.value)" }.sorted().joined(separator: ", "))") }
    if completed == 0 { failures.append("no connection completed") }
    let rate = RunResult.ConnectionRate(
        completed: completed, perSecond: perSecond, closeAnswered: closeAnswered,
        serverCPUMicrosecondsPerConnection: serverCPU.map { $0 / Double(max(completed, 1)) * 1e6 },
        benchCPUMicrosecondsPerConnection: benchCPU / Double(max(completed, 1)) * 1e6)
    return RunResult(
        label: label, url: endpoint.description, scenario: scenario, tls: endpoint.tls, tlsProtocol: proto,
        connectionsRequested: count, connectionsEstablished: completed, connectionsFailed: failed,
        connectSeconds: seconds, connectRate: perSecond, connectionRate: rate,
        messagesSent: 0, deliveriesExpected: 0, deliveriesReceived: 0,
        lost: 0, gaps: 0, reordered: 0, foreign: 0, closedDuringRun: 0, errors: errors,
        windowSeconds: seconds, deliveriesPerSecond: 0, messagesPerSecond: 0,
        latency: latencySummary(setup), senderLag: nil, serverPid: serverPid,
        serverCPUSeconds: serverCPU, serverSoftirqCPUSeconds: serverSoftirq,
        serverCPUSecondsPerMillionDeliveries: nil, serverCPUMicrosecondsPerDelivery: nil,
        serverCPUUtilization: serverCPU.map { $0 / max(seconds, 1e-9) }, serverLooksIdle: false,
        benchCPUSeconds: benchCPU, benchCPUUtilization: benchCPU / max(seconds, 1e-9), benchBusiestThreadUtilization: busiest,
        benchSaturated: busiest > 0.9, disturbed: disturbed, wire: nil, compression: nil, passed: failures.isEmpty, failures: failures)
}
