import Foundation
import Glibc

/// A server configuration to compare: a shell command with `{port}` (and, for a TLS server,
/// `{cert}`/`{key}`, replaced before it gets here).
struct Variant: Codable, Sendable {
    var name: String
    var command: String
    /// Spoken to over TLS (wss).
    var tls = false
}

/// A set of variants compared with each other on one scenario; the first is the baseline.
struct ComparisonGroup {
    var name: String
    var variants: [Variant]
    /// Why the group cannot run here (printed instead of results).
    var skipped: String?
}

struct Medians: Codable, Sendable {
    var deliveriesPerSecond: Double
    var p50Micros: Double
    var p99Micros: Double
    var p999Micros: Double
    var serverMicrosecondsPerDelivery: Double?
    var serverCPUUtilization: Double?
    var benchCPUUtilization: Double
    /// Open loop: p99 of how late the bench sent against its schedule (nil in closed loop).
    var benchSendLagP99Micros: Double?
    var benchSaturatedRuns: Int
    var lost: Int
    var reordered: Int
    var failedRuns: Int
    var disturbedRuns: Int
    /// Connection-rate runs: connections opened and closed per second, and CPU per connection.
    var connectionsPerSecond: Double?
    var serverMicrosecondsPerConnection: Double?
    var benchMicrosecondsPerConnection: Double?
    /// Bytes the bench received per delivery, and that against plain frames (message runs).
    var wireBytesPerDelivery: Double?
    var wireToPlain: Double?
    /// Connections that agreed to permessage-deflate (median), when the bench offered it.
    var deflateConnections: Int?
}

struct VariantReport: Codable, Sendable {
    var name: String
    var command: String
    var tls: Bool
    var runs: [RunResult]
    var median: Medians
}

struct Ratio: Codable, Sendable {
    var variant: String
    var baseline: String
    /// nil in connection-rate groups (no messages).
    var deliveriesPerSecond: Double?
    var p50: Double
    var p99: Double
    var serverCPUPerDelivery: Double?
    var connectionsPerSecond: Double?
    var serverCPUPerConnection: Double?
    var wireBytesPerDelivery: Double?
}

struct GroupReport: Codable, Sendable {
    var group: String
    var scenarioName: String
    var scenario: Scenario
    var rounds: Int
    var variants: [VariantReport]
    var ratios: [Ratio]
    var skipped: String?
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func medians(_ runs: [RunResult]) -> Medians {
    let cpu = runs.compactMap(\.serverCPUMicrosecondsPerDelivery)
    let util = runs.compactMap(\.serverCPUUtilization)
    let lag = runs.compactMap(\.senderLag?.p99Micros)
    let rates = runs.compactMap(\.connectionRate)
    let perConn = rates.compactMap(\.serverCPUMicrosecondsPerConnection)
    let wires = runs.compactMap(\.wire)
    let agreed = runs.compactMap(\.compression).map { Double($0.agreedConnections) }
    return Medians(
        deliveriesPerSecond: median(runs.map(\.deliveriesPerSecond)),
        p50Micros: median(runs.map(\.latency.p50Micros)),
        p99Micros: median(runs.map(\.latency.p99Micros)),
        p999Micros: median(runs.map(\.latency.p999Micros)),
        serverMicrosecondsPerDelivery: cpu.isEmpty ? nil : median(cpu),
        serverCPUUtilization: util.isEmpty ? nil : median(util),
        benchCPUUtilization: median(runs.map(\.benchBusiestThreadUtilization)),
        benchSendLagP99Micros: lag.isEmpty ? nil : median(lag),
        benchSaturatedRuns: runs.filter(\.benchSaturated).count,
        lost: runs.map(\.lost).reduce(0, +),
        reordered: runs.map { $0.reordered + $0.gaps }.reduce(0, +),
        failedRuns: runs.filter { !$0.passed }.count,
        disturbedRuns: runs.filter(\.disturbed).count,
        connectionsPerSecond: rates.isEmpty ? nil : median(rates.map(\.perSecond)),
        serverMicrosecondsPerConnection: perConn.isEmpty ? nil : median(perConn),
        benchMicrosecondsPerConnection: rates.isEmpty ? nil : median(rates.map(\.benchCPUMicrosecondsPerConnection)),
        wireBytesPerDelivery: wires.isEmpty ? nil : median(wires.map(\.bytesPerDelivery)),
        wireToPlain: wires.isEmpty ? nil : median(wires.map(\.wireToPlain)),
        deflateConnections: agreed.isEmpty ? nil : Int(median(agreed)))
}

/// Runs every variant of `group` on `scenario` for `rounds` interleaved rounds (ABBA order, a fresh
/// server per run) and reports medians and ratios to the first variant.
func runComparison(_ group: ComparisonGroup, scenario: Scenario, scenarioName: String, rounds: Int, tls: TLSClient? = nil,
                   progress: ProgressPrinter, log: (String) -> Void) -> GroupReport {
    var runs = [[RunResult]](repeating: [], count: group.variants.count)
    var skipped = group.skipped
    if skipped == nil && tls == nil && group.variants.contains(where: \.tls) {
        skipped = "a TLS variant needs a TLS client context"
    }
    if skipped == nil {
        outer: for round in 0..<rounds {
            let order = round % 2 == 0 ? Array(group.variants.indices) : group.variants.indices.reversed()
            for i in order {
                let v = group.variants[i]
                do {
                    let label = "\(scenarioName) \(v.name) r\(round + 1)"
                    var attempt = 0
                    var r: RunResult
                    // A run during which a compiler ran is repeated (up to 3 times; the last is kept
                    // and marked `disturbed`).
                    repeat {
                        attempt += 1
                        waitForQuietMachine(log: log)
                        let server = try SpawnedServer(command: v.command)
                        defer { server.stop() }
                        r = try runScenario(scenario, endpoint: Endpoint(host: "127.0.0.1", port: server.port, tls: v.tls),
                                            tls: v.tls ? tls : nil, label: label, serverPid: server.pid, progress: progress)
                        if r.disturbed { log("  \(label): a compiler ran during the run\(attempt < 3 ? "; repeating it" : "; kept, marked disturbed")") }
                    } while r.disturbed && attempt < 3
                    var named = r
                    named.label = v.name
                    runs[i].append(named)
                    if let c = r.connectionRate {
                        log("  \(label): \(formatCount(c.perSecond)) connections/s, set-up p99 \(Report.micros(r.latency.p99Micros)), "
                            + "server \(c.serverCPUMicrosecondsPerConnection.map { String(format: "%.1f", $0) } ?? "n/a") µs/connection"
                            + (r.passed ? "" : "  FAIL: " + r.failures.joined(separator: "; ")))
                    } else {
                        log("  \(label): \(formatCount(r.deliveriesPerSecond)) deliveries/s, p99 \(Report.micros(r.latency.p99Micros)), "
                            + "server \(r.serverCPUMicrosecondsPerDelivery.map { String(format: "%.3f", $0) } ?? "n/a") µs/delivery"
                            + (r.passed ? "" : "  FAIL: " + r.failures.joined(separator: "; ")))
                    }
                } catch {
                    if round == 0 && runs[i].isEmpty {
                        skipped = "\(v.name) could not be run: \(error)"
                        break outer
                    }
                    log("  \(v.name) round \(round + 1) failed: \(error)")
                }
            }
        }
    }
    var reports: [VariantReport] = []
    for (i, v) in group.variants.enumerated() {
        reports.append(VariantReport(name: v.name, command: v.command, tls: v.tls, runs: runs[i], median: medians(runs[i])))
    }
    var ratios: [Ratio] = []
    if skipped == nil, let base = reports.first {
        for r in reports.dropFirst() {
            let a = base.median, b = r.median
            var cpu: Double?
            if let x = b.serverMicrosecondsPerDelivery, let y = a.serverMicrosecondsPerDelivery, y > 0 { cpu = x / y }
            var connRate: Double?, connCPU: Double?
            if let x = b.connectionsPerSecond, let y = a.connectionsPerSecond, y > 0 { connRate = x / y }
            if let x = b.serverMicrosecondsPerConnection, let y = a.serverMicrosecondsPerConnection, y > 0 { connCPU = x / y }
            var wireRatio: Double?
            if let x = b.wireBytesPerDelivery, let y = a.wireBytesPerDelivery, y > 0 { wireRatio = x / y }
            ratios.append(Ratio(variant: r.name, baseline: base.name, deliveriesPerSecond: a.deliveriesPerSecond > 0 ? b.deliveriesPerSecond / a.deliveriesPerSecond : nil,
                                p50: b.p50Micros / a.p50Micros, p99: b.p99Micros / a.p99Micros, serverCPUPerDelivery: cpu,
                                connectionsPerSecond: connRate, serverCPUPerConnection: connCPU, wireBytesPerDelivery: wireRatio))
        }
    }
    return GroupReport(group: group.name, scenarioName: scenarioName, scenario: scenario, rounds: rounds,
                       variants: skipped == nil ? reports : [], ratios: ratios, skipped: skipped)
}

func comparisonTable(_ g: GroupReport) -> String {
    var out = "\(g.group) — \(g.scenarioName): \(g.scenario.summary); medians of \(g.rounds) interleaved rounds\n"
    if let why = g.skipped { return out + "SKIPPED: \(why)\n" }
    if g.scenario.isConnectRate { return out + connectRateComparisonTable(g) }
    let openLoop = g.variants.contains { $0.median.benchSendLagP99Micros != nil }
    var header = ["variant", "deliveries/s", "p50", "p99", "p99.9", "server µs/delivery", "server CPU", "bench busiest thread"]
    if openLoop { header.append("bench send lag p99") }
    // Bytes on the wire matter when the messages can compress: a JSON message or deflate offered.
    let showWire = g.scenario.compression || g.scenario.message == .json
    if showWire { header += ["wire B/delivery", "of plain"] }
    if g.scenario.compression { header.append("deflate conns") }
    header += ["lost", "reordered", "failed runs"]
    var t = TextTable(header: header)
    for v in g.variants {
        let m = v.median
        var row: [String] = [v.name, formatCount(m.deliveriesPerSecond), Report.micros(m.p50Micros), Report.micros(m.p99Micros),
                             Report.micros(m.p999Micros), m.serverMicrosecondsPerDelivery.map { String(format: "%.3f", $0) } ?? "n/a",
                             m.serverCPUUtilization.map { String(format: "%.0f%%", 100 * $0) } ?? "n/a",
                             String(format: "%.0f%%", 100 * m.benchCPUUtilization) + (m.benchSaturatedRuns > 0 ? " SATURATED" : "")]
        if openLoop { row.append(m.benchSendLagP99Micros.map(Report.micros) ?? "n/a") }
        if showWire {
            row.append(m.wireBytesPerDelivery.map { String(format: "%.1f", $0) } ?? "n/a")
            row.append(m.wireToPlain.map { String(format: "%.2f×", $0) } ?? "n/a")
        }
        if g.scenario.compression { row.append(m.deflateConnections.map { "\($0)" } ?? "n/a") }
        row += ["\(m.lost)", "\(m.reordered)", "\(m.failedRuns)/\(v.runs.count)"]
        t.rows.append(row)
    }
    out += t.render() + "\n"
    for r in g.ratios {
        out += "ratio \(r.variant) / \(r.baseline): deliveries/s \(r.deliveriesPerSecond.map { String(format: "%.2f×", $0) } ?? "n/a"), "
            + "p50 \(String(format: "%.2f", r.p50))×, p99 \(String(format: "%.2f", r.p99))×, "
            + "server CPU per delivery \(r.serverCPUPerDelivery.map { String(format: "%.2f", $0) + "×" } ?? "n/a")"
            + (showWire ? ", wire bytes per delivery \(r.wireBytesPerDelivery.map { String(format: "%.2f×", $0) } ?? "n/a")" : "") + "\n"
    }
    if g.variants.contains(where: { $0.median.disturbedRuns > 0 }) {
        out += "WARNING: a compiler ran on the machine during some runs (marked disturbed in the JSON).\n"
    }
    if g.variants.contains(where: { $0.median.benchSaturatedRuns > 0 }) {
        out += "WARNING: the bench was saturated in some runs: compare by server CPU per delivery, not deliveries/s.\n"
    }
    return out
}

/// The body of a connection-rate comparison (after its title line).
func connectRateComparisonTable(_ g: GroupReport) -> String {
    var t = TextTable(header: ["variant", "TLS", "connections/s", "set-up p50", "set-up p99", "server µs/connection", "server CPU",
                               "bench µs/connection", "bench busiest thread", "failed runs"])
    for v in g.variants {
        let m = v.median
        let proto = v.runs.compactMap(\.tlsProtocol).first
        t.rows.append([v.name, v.tls ? (proto ?? "yes") : "no", m.connectionsPerSecond.map(formatCount) ?? "n/a",
                       Report.micros(m.p50Micros), Report.micros(m.p99Micros),
                       m.serverMicrosecondsPerConnection.map { String(format: "%.1f", $0) } ?? "n/a",
                       m.serverCPUUtilization.map { String(format: "%.0f%%", 100 * $0) } ?? "n/a",
                       m.benchMicrosecondsPerConnection.map { String(format: "%.1f", $0) } ?? "n/a",
                       String(format: "%.0f%%", 100 * m.benchCPUUtilization) + (m.benchSaturatedRuns > 0 ? " SATURATED" : ""),
                       "\(m.failedRuns)/\(v.runs.count)"])
    }
    var out = t.render() + "\n"
    for r in g.ratios {
        out += "ratio \(r.variant) / \(r.baseline): connections/s \(r.connectionsPerSecond.map { String(format: "%.2f×", $0) } ?? "n/a"), "
            + "set-up p50 \(String(format: "%.2f", r.p50))×, p99 \(String(format: "%.2f", r.p99))×, "
            + "server CPU per connection \(r.serverCPUPerConnection.map { String(format: "%.2f×", $0) } ?? "n/a")\n"
    }
    if g.variants.contains(where: { $0.median.disturbedRuns > 0 }) {
        out += "WARNING: a compiler ran on the machine during some runs (marked disturbed in the JSON).\n"
    }
    if g.variants.contains(where: { $0.median.benchSaturatedRuns > 0 }) {
        out += "WARNING: the bench was saturated in some runs: compare by server CPU per connection, not connections/s.\n"
    }
    return out
}

/// Waits (up to 10 minutes) while a compiler runs on this machine: other builds would skew
/// the numbers.
func waitForQuietMachine(log: (String) -> Void) {
    var warned = false
    for _ in 0..<600 {
        if !compilerRunning() { return }
        if !warned { log("  waiting for swift-build / swift-frontend to finish before measuring…"); warned = true }
        sleep(1)
    }
}

func compilerRunning() -> Bool {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return false }
    for e in entries where e.first?.isNumber == true {
        guard let cmd = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { continue }
        let exe = cmd.split(separator: 0).first.map { String(decoding: $0, as: UTF8.self) } ?? ""
        let base = exe.split(separator: "/").last.map(String.init) ?? ""
        if base == "swift-build" || base == "swift-frontend" { return true }
    }
    return false
}
