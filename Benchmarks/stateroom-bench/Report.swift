import Foundation

/// Terminal tables and JSON.
enum Report {
    static func micros(_ v: Double) -> String {
        if v >= 100_000 { return String(format: "%.0f ms", v / 1000) }
        if v >= 10_000 { return String(format: "%.1f ms", v / 1000) }
        if v >= 1000 { return String(format: "%.2f ms", v / 1000) }
        return String(format: "%.0f µs", v)
    }

    static func optional(_ v: Double?, _ f: (Double) -> String) -> String { v.map(f) ?? "n/a" }

    /// The report of a connection-rate run, as a two-column table.
    static func connectRateTable(_ r: RunResult, _ c: RunResult.ConnectionRate) -> String {
        var rows: [(String, String)] = []
        rows.append(("server", r.label == r.url ? r.url : "\(r.label) (\(r.url))"))
        rows.append(("scenario", r.scenario.summary))
        rows.append(("TLS", r.tls ? (r.tlsProtocol ?? "yes") : "no (plain)"))
        rows.append(("connections", "\(c.completed) opened and closed, \(r.connectionsFailed) failed, in \(String(format: "%.2f", r.connectSeconds)) s"))
        rows.append(("connections/s", formatCount(c.perSecond)))
        rows.append(("close answered", "\(c.closeAnswered) of \(c.completed) (the server sent its close frame before closing)"))
        let l = r.latency
        rows.append(("set-up p50 / p90 / p99", "\(micros(l.p50Micros)) / \(micros(l.p90Micros)) / \(micros(l.p99Micros))  (connect to 101, \(l.count) connections)"))
        if let cpu = r.serverCPUSeconds, let per = c.serverCPUMicrosecondsPerConnection {
            rows.append(("server CPU", String(format: "%.2f s (%.0f%% of a core), %.1f µs per connection", cpu, 100 * cpu / max(r.windowSeconds, 1e-9), per)
                + (cpu < 0.1 ? "  (under 10 clock ticks: imprecise, raise --connections)" : "")))
            if let soft = r.serverSoftirqCPUSeconds {
                rows.append(("  of which", String(format: "%.2f s ksoftirqd on the server's cores", soft)))
            } else {
                rows.append(("  of which", "the process only (ksoftirqd not counted: the server shares cores with the bench)"))
            }
        } else {
            rows.append(("server CPU", "n/a (give --server-pid or --spawn)"))
        }
        rows.append(("bench CPU", String(format: "%.2f s (%.0f%% of a core; busiest thread %.0f%%), %.1f µs per connection", r.benchCPUSeconds,
                                        100 * r.benchCPUUtilization, 100 * r.benchBusiestThreadUtilization, c.benchCPUMicrosecondsPerConnection)))
        rows.append(("result", r.passed ? "PASS" : "FAIL: " + r.failures.joined(separator: "; ")))
        var out = twoColumns(rows)
        if r.disturbed {
            out += "\n\nWARNING: a compiler (swift-build/swift-frontend) ran on this machine during the run: the numbers are suspect."
        }
        if r.benchSaturated {
            out += "\n\nWARNING: the bench was saturated (a load thread busy \(Int(100 * r.benchBusiestThreadUtilization))% of the run): "
                + "connections/s may show the bench, not the server. Compare servers by server CPU per connection."
        }
        return out
    }

    static func twoColumns(_ rows: [(String, String)]) -> String {
        let w = rows.map { $0.0.count }.max() ?? 0
        return rows.map { $0.0.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
    }

    /// The report of one run, as a two-column table.
    static func table(_ r: RunResult) -> String {
        if let c = r.connectionRate { return connectRateTable(r, c) }
        var rows: [(String, String)] = []
        rows.append(("server", r.label == r.url ? r.url : "\(r.label) (\(r.url))"))
        rows.append(("scenario", r.scenario.summary))
        if r.tls { rows.append(("TLS", r.tlsProtocol ?? "yes")) }
        rows.append(("window", String(format: "%.1f s measured after %.1f s warm-up, %d load thread(s)", r.windowSeconds, r.scenario.warmup, r.scenario.threads)))
        rows.append(("connections", "\(r.connectionsEstablished) established, \(r.connectionsFailed) failed, \(formatCount(r.connectRate))/s"))
        rows.append(("messages sent", "\(r.messagesSent)"))
        rows.append(("deliveries", "\(r.deliveriesReceived) received of \(r.deliveriesExpected) expected"))
        rows.append(("lost / gaps / reordered", "\(r.lost) / \(r.gaps) / \(r.reordered)"))
        rows.append(("deliveries/s", formatCount(r.deliveriesPerSecond)))
        let l = r.latency
        rows.append(("latency p50 / p90 / p99", "\(micros(l.p50Micros)) / \(micros(l.p90Micros)) / \(micros(l.p99Micros))"))
        rows.append(("latency p99.9 / max", "\(micros(l.p999Micros)) / \(micros(l.maxMicros))  (\(l.count) samples)"))
        if let g = r.senderLag {
            rows.append(("bench send lag p50 / p99", "\(micros(g.p50Micros)) / \(micros(g.p99Micros)), max \(micros(g.maxMicros))  (late against the schedule; part of the latency)"))
        }
        if let cpu = r.serverCPUSeconds, let per = r.serverCPUMicrosecondsPerDelivery {
            rows.append(("server CPU", String(format: "%.2f s (%.0f%% of a core), %.3f µs per delivery = %.3f s per million", cpu, 100 * cpu / r.windowSeconds, per, per)))
            if let soft = r.serverSoftirqCPUSeconds {
                rows.append(("  of which", String(format: "%.2f s ksoftirqd on the server's cores", soft)))
            } else {
                rows.append(("  of which", "the process only (ksoftirqd not counted: the server shares cores with the bench)"))
            }
        } else {
            rows.append(("server CPU", "n/a (give --server-pid or --spawn)"))
        }
        rows.append(("bench CPU", String(format: "%.2f s (%.0f%% of a core; busiest thread %.0f%%)", r.benchCPUSeconds, 100 * r.benchCPUUtilization, 100 * r.benchBusiestThreadUtilization)))
        rows += wireRows(r)
        rows.append(("result", r.passed ? "PASS" : "FAIL: " + r.failures.joined(separator: "; ")))
        let w = rows.map { $0.0.count }.max() ?? 0
        var out = rows.map { $0.0.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
        if r.disturbed {
            out += "\n\nWARNING: a compiler (swift-build/swift-frontend) ran on this machine during the run: the numbers are suspect."
        }
        if r.serverLooksIdle, let pid = r.serverPid {
            out += "\n\nWARNING: process \(pid) used no CPU while \(r.deliveriesReceived) deliveries went through: "
                + "it is probably a shell or wrapper, not the server. Give the server's own PID "
                + "(e.g. --server-pid $(pgrep -f stateroom-server)) or let the bench start it (--spawn)."
        }
        if r.benchSaturated {
            out += "\n\nWARNING: the bench was saturated (a load thread busy \(Int(100 * r.benchBusiestThreadUtilization))% of the window): "
                + "deliveries/s and latency may show the bench, not the server. Compare servers by CPU per delivery, "
                + "or add --threads."
        }
        return out
    }

    /// Rows about the message, permessage-deflate and the bytes on the wire.
    static func wireRows(_ r: RunResult) -> [(String, String)] {
        var rows: [(String, String)] = []
        if r.scenario.message == .json { rows.append(("message", "JSON-like game state, ~\(r.scenario.size) B, different every message")) }
        if let c = r.compression {
            rows.append(("permessage-deflate", "offered (\(c.offer)); agreed by \(c.agreedConnections) of \(r.connectionsEstablished) connections"
                + (c.answer.map { ": \($0)" } ?? " (declined)")))
        }
        if let w = r.wire {
            rows.append(("wire bytes / delivery", String(format: "%.1f B received per delivery for %.1f B messages: %.2f× their plain frames (%.1f:1)",
                                                        w.bytesPerDelivery, w.payloadBytesPerDelivery, w.wireToPlain,
                                                        w.wireToPlain > 0 ? 1 / w.wireToPlain : 0)))
            if r.compression != nil {
                let inWindow = r.deliveriesPerSecond * r.windowSeconds
                let share = inWindow > 0 ? 100 * Double(w.compressedDeliveries) / inWindow : 0
                rows.append(("  compressed", String(format: "%d deliveries in the window came compressed (%.0f%%); of %d compressed messages received, %d were the same bytes a load thread had just inflated (memo)",
                                                    w.compressedDeliveries, min(share, 100), w.compressedReceived, w.memoHits)))
                rows.append(("  sent", String(format: "%.1f B per message for %.1f B messages, %d of %d compressed",
                                              w.sentFrameBytesPerMessage, w.sentPayloadBytesPerMessage, w.compressedSends, r.messagesSent)))
            }
        }
        return rows
    }

    static func json<T: Encodable>(_ value: T) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        // A median of no runs is NaN: written as a string rather than losing the whole report.
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        guard let d = try? e.encode(value) else { return "{}" }
        return String(decoding: d, as: UTF8.self)
    }
}

/// Aligned columns.
struct TextTable {
    var header: [String]
    var rows: [[String]] = []

    func render() -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                i == 0 ? c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: max(0, widths[i] - c.count)) + c
            }.joined(separator: "  ")
        }
        var out = [line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")]
        for r in rows { out.append(line(r)) }
        return out.joined(separator: "\n")
    }
}
