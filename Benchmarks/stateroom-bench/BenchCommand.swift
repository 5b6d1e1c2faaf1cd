import ArgumentParser
import Foundation
import Glibc
import IOCore

@main
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stateroom-bench",
        abstract: "Load generator for room relays: broadcast latency and fan-out, loss and order checked.",
        discussion: """
            Clients join /ws/<room> (R rooms × C clients); S senders per room send --size byte text messages, \
            each stamped with its send time, sender and sequence number; every client records latency in an \
            HdrHistogram and checks per-sender order. Lost, reordered or foreign messages fail the run (exit 1).

            Scenarios by name (--scenario, comma-separated or 'all'): \(Preset.allCases.map(\.rawValue).joined(separator: ", ")). \
            Flags given explicitly override the preset. connect-rate (or --connections N) measures new connections per \
            second instead of messages: connect, TLS handshake (with --tls), upgrade, close handshake.

            Compression: --compression offers permessage-deflate as a browser does; senders compress each message on its \
            own, compressed deliveries are inflated (a thread inflates the same compressed bytes once: --inflate-all to \
            inflate every one). --message json sends a ~--size (default 1 KiB) JSON-like game-state update instead of hex \
            padding. The report gives bytes on the wire per delivery and their ratio to plain frames.

            TLS: --tls (or a wss:// --url) speaks wss: the TLS handshake before the upgrade, every frame sealed and \
            opened through OpenSSL (CTLS); the certificate is checked against --ca-file for the URL's host (SNI). Servers \
            the bench starts get --tls-cert/--tls-key through {cert}/{key} (a throwaway self-signed pair by default, \
            then also the CA).

            Examples:
              stateroom-bench --url ws://127.0.0.1:8080 --rooms 1 --clients-per-room 1000 --senders 8 --closed-loop --server-pid 1234
              stateroom-bench --scenario rooms10-200 --spawn 'taskset -c 0 .build/release/stateroom-server --port {port} --service relay --shards 1 --no-pin'
              taskset -c 1 stateroom-bench --scenario all --compare ours,socketify --rounds 3 --json > results.json
              stateroom-bench --url wss://127.0.0.1:8443 --ca-file cert.pem --rooms 1 --clients-per-room 100 --rate 100
              taskset -c 1 stateroom-bench --tls --scenario rooms10-200,connect-rate --compare ours,tls,socketify-tls --rounds 3
              taskset -c 1 stateroom-bench --compression --message json --scenario fanout-8 --compare ours,compression --rounds 3
            """)

    @Option(help: "Server to load (ws://host:port[/path-prefix], or wss:// for TLS); rooms are <prefix>/<room-prefix><n>.")
    var url = "ws://127.0.0.1:8080"
    @Flag(help: "TLS (wss) to the server: the TLS handshake before the upgrade, every frame sealed and opened through OpenSSL. A wss:// --url implies it; with --compare, every variant (but the plain ones of 'tls') is spoken to over TLS.")
    var tls = false
    @Option(help: "PEM CA file (or the self-signed certificate) the server's certificate is checked against, for the URL's host (an IP address or a DNS name). Without it the certificate is not checked, unless the bench started the server with its own pair.")
    var caFile: String?
    @Option(help: "Certificate chain (PEM) for the servers the bench starts: {cert} in --spawn/--variant, and the TLS variants of --compare (default: a throwaway self-signed pair, CN=localhost, IP 127.0.0.1).")
    var tlsCert: String?
    @Option(help: "Private key (PEM) of --tls-cert: {key} in --spawn/--variant.")
    var tlsKey: String?
    @Option(help: "Named scenario(s), comma-separated, or 'all'.")
    var scenario: String?
    @Option(help: "Rooms.") var rooms: Int?
    @Option(help: "Clients per room.") var clientsPerRoom: Int?
    @Option(help: "Senders per room.") var senders: Int?
    @Option(help: "Message size in bytes (at least 32).") var size: Int?
    @Option(help: "Open loop: messages per second per sender (latency from the scheduled send time).") var rate: Double?
    @Flag(help: "Closed loop: a sender sends its next message when its previous one came back (default without --rate).")
    var closedLoop = false
    @Option(help: "Warm-up seconds (not measured).") var warmup: Double?
    @Option(help: "Measured seconds.") var duration: Double?
    @Option(help: "Load threads, one io_uring loop each.") var threads: Int?
    @Option(help: "Room name prefix.") var roomPrefix: String?
    @Option(help: "Seconds to wait for outstanding deliveries after the last send.") var drainTimeout: Double?
    @Option(help: "Connection-rate run: open and close N connections (connect, TLS handshake, upgrade, close handshake); reports connections/s and server CPU per connection. Applies to the connect-rate scenario of a --scenario list, or makes the run one.")
    var connections: Int?
    @Option(help: "Connection-rate run: connections in flight at once, per load thread (default 64).") var connectWindow: Int?
    @Option(help: "What senders send: hex (fields and padding to --size) or json (a JSON-like game-state update of about --size bytes, 1024 unless given; different every message).")
    var message: MessageKind?
    @Flag(help: "Offer permessage-deflate (RFC 7692) like a browser: compress what the senders send, inflate what arrives compressed; report bytes on the wire per delivery. With --compare, 'ours' is our server compressing against uWebSockets with SHARED_COMPRESSOR.")
    var compression = false
    @Flag(help: "Every client opts in to a seat (?seat=new): what keeping seats costs the server (the seat message is not counted).")
    var seats = false
    @Flag(help: "With --compression: inflate every compressed delivery, even the same bytes a load thread has just inflated for another client (default: once per thread, checked byte for byte).")
    var inflateAll = false

    @Option(help: "PID of the server, for its CPU use (/proc/PID/stat).") var serverPid: Int32?
    @Option(help: "Start the server with this shell command ({port} is replaced by a free port; {cert} and {key} by the TLS pair, which makes the run TLS) and stop it after.")
    var spawn: String?
    @Option(help: "Label of this run in the report and chart.") var label: String?

    @Option(help: """
        Compare servers the bench spawns, in interleaved rounds: any of io (--io uring vs epoll), shards \
        (--shards 1 vs N), wasm (native relay vs --wasm relay), ours, socketify (ours vs uWebSockets; with --tls \
        ours with TLS vs uWebSockets with SSL; with --compression both compressing), tls (ours plain vs TLS), \
        socketify-tls (uWebSockets plain vs SSL), compression (ours --compression on vs off; needs --compression), \
        socketify-compression (uWebSockets SHARED_COMPRESSOR vs none; needs --compression), or 'variants' \
        (only --variant); comma-separated.
        """)
    var compare: String?
    @Option(help: "Rounds per comparison (medians are reported).") var rounds = 3
    @Option(help: "stateroom-server binary for --compare.") var server = ".build/release/stateroom-server"
    @Option(help: "CPU list (taskset -c) for spawned servers.") var serverCpus = "0"
    @Option(help: "N of the shards comparison.") var compareShards = 2
    @Option(help: "Wasm relay module for the wasm comparison (default: Tests/WasmHostTests/Fixtures/relay.wat via wat2wasm).")
    var wasm: String?
    @Option(help: "socketify relay script for the socketify comparison.") var socketify = "Benchmarks/socketify_relay.py"
    @Option(help: "Extra variant NAME=COMMAND for --compare ({port}, {cert}, {key} are replaced; one with {cert} or --tls is spoken to over TLS); repeatable.")
    var variant: [String] = []

    @Flag(help: "Print JSON on standard output instead of tables.") var json = false
    @Option(help: "Also write the JSON report to this file (tables stay on the terminal).") var jsonFile: String?
    @Option(help: "Write the latency percentile curves to this SVG file.") var chart: String?
    @Flag(help: "No live progress on standard error.") var quiet = false

    func scenarios() throws -> [(String, Scenario)] {
        var list: [(String, Scenario)] = []
        if let names = scenario {
            let wanted = names == "all" ? Preset.allCases.map(\.rawValue) : names.split(separator: ",").map(String.init)
            for n in wanted {
                guard let p = Preset(rawValue: n) else {
                    throw ValidationError("unknown scenario '\(n)' (\(Preset.allCases.map(\.rawValue).joined(separator: ", ")), all)")
                }
                list.append((n, p.scenario))
            }
        } else {
            list.append(("custom", Scenario()))
        }
        // --connections/--connect-window go to the connection-rate scenarios of the list; with none
        // in it they make every scenario one.
        let anyConnectRate = list.contains { $0.1.isConnectRate }
        return list.map { name, base in
            var s = base
            if let v = rooms { s.rooms = v }
            if let v = clientsPerRoom { s.clientsPerRoom = v }
            if let v = senders { s.senders = v }
            if let v = size { s.size = v }
            if let v = rate { s.rate = v }
            if closedLoop { s.rate = nil }
            if let v = warmup { s.warmup = v }
            if let v = duration { s.duration = v }
            if let v = threads { s.threads = v }
            if let v = roomPrefix { s.roomPrefix = v }
            if let v = drainTimeout { s.drainTimeout = v }
            if let v = message {
                s.message = v
                if v == .json && size == nil && s.size < 1024 { s.size = 1024 }
            }
            if compression { s.compression = true }
            if seats { s.seats = true }
            if inflateAll { s.inflateMemo = false }
            if s.isConnectRate || !anyConnectRate {
                if let v = connections { s.connectCount = v }
                if let v = connectWindow { s.connectWindow = v }
            }
            return (name, s)
        }
    }

    func validate() throws {
        if closedLoop && rate != nil { throw ValidationError("--rate and --closed-loop exclude each other") }
        if compare != nil && (spawn != nil || serverPid != nil) { throw ValidationError("--compare spawns its own servers; drop --spawn/--server-pid") }
        if rounds < 1 { throw ValidationError("--rounds must be at least 1") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        for f in [caFile, tlsCert, tlsKey].compactMap({ $0 }) where !FileManager.default.fileExists(atPath: f) {
            throw ValidationError("no file at \(f)")
        }
        if !url.hasPrefix("ws://") && !url.hasPrefix("wss://") { throw ValidationError("--url must start with ws:// or wss:// (got \(url))") }
        if let pid = serverPid, processCPUSeconds(pid) == nil {
            throw ValidationError("--server-pid \(pid): no such process (cannot read /proc/\(pid)/stat)")
        }
        for (_, s) in try scenarios() { try s.validate() }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let progress = ProgressPrinter(enabled: !quiet && isatty(2) != 0)
        let log: (String) -> Void = { line in if !quiet { writeStandardError(line + "\n") } }
        let list = try scenarios()
        let pair = CertificatePair(cert: tlsCert, key: tlsKey, log: log)
        defer { pair.removeThrowaway() }
        if let compare {
            try runCompare(compare, list, pair: pair, progress: progress, log: log)
            return
        }
        var base = try Endpoint(url: url)
        if tls { base.tls = true }
        var spawnCommand = spawn
        if let cmd = spawn, usesPair(cmd) {
            // A server given the certificate serves TLS.
            spawnCommand = try pair.fill(cmd)
            base.tls = true
        }
        var client: TLSClient?
        if base.tls {
            // A server the bench started with its own pair is checked against that pair.
            let ownCA = spawnCommand != spawn ? try pair.paths().cert : nil
            let c = try TLSClient(caFile: caFile ?? ownCA)
            log("TLS: \(c.verification)")
            client = c
        }
        var results: [RunResult] = []
        for (name, s) in list {
            var endpoint = base
            var pid = serverPid
            var spawned: SpawnedServer?
            if let spawnCommand {
                let srv = try SpawnedServer(command: spawnCommand)
                spawned = srv
                endpoint = Endpoint(host: "127.0.0.1", port: srv.port, pathPrefix: base.pathPrefix, tls: base.tls)
                pid = srv.pid
            }
            defer { spawned?.stop() }
            let runLabel = label ?? (list.count > 1 ? name : endpoint.description)
            let r = try runScenario(s, endpoint: endpoint, tls: client, label: runLabel, serverPid: pid, progress: progress)
            results.append(r)
            if !json { print(Report.table(r) + "\n") }
        }
        let body = Report.json(results.count == 1 ? AnyEncodable(results[0]) : AnyEncodable(results))
        if json { print(body) }
        if let jsonFile { try body.write(toFile: jsonFile, atomically: true, encoding: .utf8) }
        if let chart {
            try Chart.svg(title: "stateroom-bench latency", series: results.map { ($0.label, $0.latency.curve) })
                .write(toFile: chart, atomically: true, encoding: .utf8)
        }
        if results.contains(where: { !$0.passed }) { throw ExitCode(1) }
    }

    /// Our server as --compare starts it; with `tls`, given the bench's pair.
    func ourServer(_ args: String, tls: Bool = false) -> String {
        "taskset -c \(serverCpus) \(server) --host 127.0.0.1 --port {port} --no-pin --log-level warning \(args)"
            + (tls ? " --tls-cert {cert} --tls-key {key}" : "")
    }

    /// The socketify (uWebSockets) relay; with `tls`, its SSL app with the bench's pair; with
    /// `compression`, permessage-deflate with CompressOptions.SHARED_COMPRESSOR.
    func socketifyServer(tls: Bool = false, compression: Bool = false) -> String {
        "taskset -c \(serverCpus) python3 \(socketify) --host 127.0.0.1 --port {port}" + (tls ? " --tls-cert {cert} --tls-key {key}" : "")
            + (compression ? " --compression" : "")
    }

    func usesPair(_ command: String) -> Bool { command.contains("{cert}") || command.contains("{key}") }

    func groups(_ spec: String) throws -> [ComparisonGroup] {
        var out: [ComparisonGroup] = []
        let names = spec.split(separator: ",").map(String.init)
        let socketifyMissing = FileManager.default.fileExists(atPath: socketify) ? nil : "socketify relay script not found at \(socketify)"
        let t = tls
        let suffix = t ? ", TLS" : ""
        let z = compression
        if !z, let n = names.first(where: { $0 == "compression" || $0 == "socketify-compression" }) {
            throw ValidationError("--compare \(n) needs --compression (the bench offers permessage-deflate only then)")
        }
        let wantsOursVsSocketify = names.contains("ours") || names.contains("socketify")
        if wantsOursVsSocketify {
            var g = ComparisonGroup(name: "ours vs uWebSockets" + (t ? " (TLS)" : "") + (z ? " (permessage-deflate)" : ""), variants: [
                Variant(name: "stateroom (shards 1\(suffix)\(z ? ", deflate" : ""))",
                        command: ourServer("--service relay --shards 1" + (z ? " --compression on" : ""), tls: t), tls: t),
                Variant(name: "uWebSockets (socketify\(t ? ", SSL" : "")\(z ? ", SHARED_COMPRESSOR" : ""))",
                        command: socketifyServer(tls: t, compression: z), tls: t),
            ])
            g.skipped = socketifyMissing
            out.append(g)
        }
        for n in names {
            switch n {
            case "ours", "socketify": continue
            case "io":
                out.append(ComparisonGroup(name: "io_uring vs epoll" + (t ? " (TLS)" : ""), variants: [
                    Variant(name: "--io uring" + (t ? " (TLS)" : ""), command: ourServer("--service relay --shards 1 --io uring", tls: t), tls: t),
                    Variant(name: "--io epoll" + (t ? " (TLS)" : ""), command: ourServer("--service relay --shards 1 --io epoll", tls: t), tls: t),
                ]))
            case "shards":
                out.append(ComparisonGroup(name: "shards 1 vs \(compareShards)" + (t ? " (TLS)" : ""), variants: [
                    Variant(name: "--shards 1" + (t ? " (TLS)" : ""), command: ourServer("--service relay --shards 1", tls: t), tls: t),
                    Variant(name: "--shards \(compareShards)" + (t ? " (TLS)" : ""),
                            command: ourServer("--service relay --shards \(compareShards)", tls: t), tls: t),
                ]))
            case "wasm":
                var g = ComparisonGroup(name: "native vs wasm relay" + (t ? " (TLS)" : ""), variants: [])
                do {
                    let module = try wasmModule()
                    g.variants = [
                        Variant(name: "native relay", command: ourServer("--service relay --shards 1", tls: t), tls: t),
                        Variant(name: "wasm relay", command: ourServer("--wasm \(module) --shards 1", tls: t), tls: t),
                    ]
                } catch {
                    g.variants = [Variant(name: "native relay", command: ""), Variant(name: "wasm relay", command: "")]
                    g.skipped = "wasm relay not available yet: \(error)"
                }
                out.append(g)
            case "tls":
                out.append(ComparisonGroup(name: "stateroom plain vs TLS", variants: [
                    Variant(name: "stateroom plain", command: ourServer("--service relay --shards 1")),
                    Variant(name: "stateroom TLS", command: ourServer("--service relay --shards 1", tls: true), tls: true),
                ]))
            case "socketify-tls":
                var g = ComparisonGroup(name: "uWebSockets plain vs SSL", variants: [
                    Variant(name: "uWebSockets plain", command: socketifyServer()),
                    Variant(name: "uWebSockets SSL", command: socketifyServer(tls: true), tls: true),
                ])
                g.skipped = socketifyMissing
                out.append(g)
            case "compression":
                out.append(ComparisonGroup(name: "stateroom deflate vs none" + (t ? " (TLS)" : ""), variants: [
                    Variant(name: "stateroom --compression on" + (t ? " (TLS)" : ""),
                            command: ourServer("--service relay --shards 1 --compression on", tls: t), tls: t),
                    Variant(name: "stateroom --compression off" + (t ? " (TLS)" : ""),
                            command: ourServer("--service relay --shards 1 --compression off", tls: t), tls: t),
                ]))
            case "socketify-compression":
                var g = ComparisonGroup(name: "uWebSockets deflate vs none" + (t ? " (SSL)" : ""), variants: [
                    Variant(name: "uWebSockets SHARED_COMPRESSOR" + (t ? " (SSL)" : ""), command: socketifyServer(tls: t, compression: true), tls: t),
                    Variant(name: "uWebSockets DISABLED" + (t ? " (SSL)" : ""), command: socketifyServer(tls: t), tls: t),
                ])
                g.skipped = socketifyMissing
                out.append(g)
            case "variants":
                continue
            default:
                throw ValidationError("unknown comparison '\(n)' (io, shards, wasm, ours, socketify, tls, socketify-tls, compression, socketify-compression, variants)")
            }
        }
        if !variant.isEmpty {
            let vs = try variant.map { spec -> Variant in
                guard let eq = spec.firstIndex(of: "=") else { throw ValidationError("--variant wants NAME=COMMAND") }
                let command = String(spec[spec.index(after: eq)...])
                return Variant(name: String(spec[..<eq]), command: command, tls: t || usesPair(command))
            }
            out.append(ComparisonGroup(name: "variants", variants: vs))
        }
        return out
    }

    /// The wasm relay: --wasm, or the fixture converted with wat2wasm.
    func wasmModule() throws -> String {
        if let wasm {
            if wasm.hasSuffix(".wat") { return try wat2wasm(wasm) }
            guard FileManager.default.fileExists(atPath: wasm) else { throw BenchError("no file at \(wasm)") }
            return wasm
        }
        let fixture = "Tests/WasmHostTests/Fixtures/relay.wat"
        guard FileManager.default.fileExists(atPath: fixture) else { throw BenchError("\(fixture) does not exist yet (give --wasm PATH)") }
        let out = try wat2wasm(fixture)
        // Probe: the server must load it.
        let probe = try SpawnedServer(command: ourServer("--wasm \(out) --shards 1"), readyTimeout: 20)
        probe.stop()
        return out
    }

    func wat2wasm(_ wat: String) throws -> String {
        let out = NSTemporaryDirectory() + "stateroom-bench-relay-\(getpid()).wasm"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "wat2wasm '\(wat)' -o '\(out)'"]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw BenchError("wat2wasm failed on \(wat) (apt-get install wabt)") }
        return out
    }

    func runCompare(_ spec: String, _ list: [(String, Scenario)], pair: CertificatePair, progress: ProgressPrinter,
                    log: @escaping (String) -> Void) throws {
        var gs = try groups(spec)
        // {cert}/{key} → the pair (made now if none was given and a variant needs one).
        for gi in gs.indices where gs[gi].skipped == nil {
            for vi in gs[gi].variants.indices where usesPair(gs[gi].variants[vi].command) {
                gs[gi].variants[vi].command = try pair.fill(gs[gi].variants[vi].command)
            }
        }
        var client: TLSClient?
        if gs.contains(where: { $0.skipped == nil && $0.variants.contains(where: \.tls) }) {
            // The bench's own servers have the bench's pair: check them against it unless told otherwise.
            let ownCA = pair.made ? try pair.paths().cert : nil
            let c = try TLSClient(caFile: caFile ?? ownCA)
            log("TLS: \(c.verification)")
            client = c
        }
        var reports: [GroupReport] = []
        for (name, s) in list {
            for g in gs {
                log("\(g.name) — \(name): \(s.summary)")
                let r = runComparison(g, scenario: s, scenarioName: name, rounds: rounds, tls: client, progress: progress, log: log)
                reports.append(r)
                if !json { print(comparisonTable(r)) }
            }
        }
        if json { print(Report.json(reports)) }
        if let jsonFile { try Report.json(reports).write(toFile: jsonFile, atomically: true, encoding: .utf8) }
        if let chart {
            var series: [(name: String, curve: [[Double]])] = []
            for r in reports {
                for v in r.variants {
                    // The run with the median p99 stands for the variant.
                    let sorted = v.runs.sorted { $0.latency.p99Micros < $1.latency.p99Micros }
                    if !sorted.isEmpty {
                        let name = list.count > 1 ? "\(r.scenarioName): \(v.name)" : v.name
                        series.append((name, sorted[sorted.count / 2].latency.curve))
                    }
                }
            }
            try Chart.svg(title: "stateroom-bench latency (median-p99 run per variant)", series: series)
                .write(toFile: chart, atomically: true, encoding: .utf8)
        }
        if reports.contains(where: { $0.variants.contains { $0.median.failedRuns > 0 } }) { throw ExitCode(1) }
    }
}

/// The certificate and key for servers the bench starts: --tls-cert/--tls-key, or a throwaway
/// self-signed pair made on first use (and removed at the end).
final class CertificatePair {
    private var cert: String?
    private var key: String?
    private var throwawayDirectory: String?
    private let log: (String) -> Void

    init(cert: String?, key: String?, log: @escaping (String) -> Void) {
        self.cert = cert
        self.key = key
        self.log = log
    }

    /// A pair is in use (given or made) by a server the bench started.
    private(set) var made = false

    func paths() throws -> (cert: String, key: String) {
        made = true
        if let cert, let key { return (cert, key) }
        let p = try makeThrowawayCertificate(log: log)
        cert = p.cert
        key = p.key
        throwawayDirectory = p.directory
        return (p.cert, p.key)
    }

    /// Replaces {cert} and {key} in a server command.
    func fill(_ command: String) throws -> String {
        let p = try paths()
        return command.replacingOccurrences(of: "{cert}", with: p.cert).replacingOccurrences(of: "{key}", with: p.key)
    }

    func removeThrowaway() {
        if let d = throwawayDirectory { try? FileManager.default.removeItem(atPath: d) }
    }
}

/// Type-erased Encodable (one result or a list).
struct AnyEncodable: Encodable {
    let encodeBody: (Encoder) throws -> Void
    init<T: Encodable>(_ v: T) { encodeBody = v.encode }
    func encode(to encoder: Encoder) throws { try encodeBody(encoder) }
}

extension MessageKind: ExpressibleByArgument {}
