import Foundation

/// Where to connect: parsed from `ws://host:port[/prefix]` or `wss://…` (TLS).
struct Endpoint: Sendable, CustomStringConvertible {
    var host: String
    var port: UInt16
    /// Path before the room id: `/ws/` by default, so room 7 is `/ws/<roomPrefix>7`.
    var pathPrefix: String
    /// wss: a TLS handshake (SNI and verification name = `host`) before the upgrade.
    var tls: Bool

    init(url: String) throws {
        let tls: Bool
        var rest: Substring
        if url.hasPrefix("ws://") {
            tls = false
            rest = Substring(url.dropFirst(5))
        } else if url.hasPrefix("wss://") {
            tls = true
            rest = Substring(url.dropFirst(6))
        } else {
            throw BenchError("--url must start with ws:// or wss:// (got \(url))")
        }
        var path = "/ws/"
        if let slash = rest.firstIndex(of: "/") {
            let p = String(rest[slash...])
            rest = rest[..<slash]
            if p != "/" && p != "/ws" && p != "/ws/" { path = p.hasSuffix("/") ? p : p + "/" }
        }
        var host = String(rest)
        var port: UInt16 = tls ? 443 : 80
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            host = String(rest[..<colon])
            guard let p = UInt16(rest[rest.index(after: colon)...]) else { throw BenchError("bad port in --url \(url)") }
            port = p
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.host = host
        self.port = port
        self.pathPrefix = path
        self.tls = tls
    }

    init(host: String, port: UInt16, pathPrefix: String = "/ws/", tls: Bool = false) {
        self.host = host
        self.port = port
        self.pathPrefix = pathPrefix
        self.tls = tls
    }

    /// The Host header: the port only when it is not the scheme's default.
    var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == (tls ? 443 : 80) ? h : "\(h):\(port)"
    }

    var description: String { "\(tls ? "wss" : "ws")://\(host.contains(":") ? "[\(host)]" : host):\(port)\(pathPrefix)" }
}

/// One load scenario: who connects where and how messages are sent.
struct Scenario: Sendable, Codable {
    var rooms = 1
    var clientsPerRoom = 100
    var senders = 1
    var size = 64
    /// Messages per second per sender (open loop); nil means closed loop.
    var rate: Double?
    var warmup = 2.0
    var duration = 10.0
    var threads = 1
    var roomPrefix = "bench-"
    /// Seconds to wait after the last send for outstanding deliveries.
    var drainTimeout = 10.0
    /// Connection-rate run (`--scenario connect-rate`, `--connections N`): open and close this many
    /// connections (connect, TLS handshake with --tls, upgrade, close handshake), no messages.
    var connectCount: Int?
    /// Connection-rate run: connections in flight at once, per load thread.
    var connectWindow = 64
    /// What the senders send: the hex-stamped padding, or a JSON-like game-state message of about
    /// `size` bytes (``JSONMessage``), different every time.
    var message: MessageKind = .hex
    /// Offer permessage-deflate (`permessage-deflate; client_max_window_bits`, as browsers do):
    /// compress what the senders send, inflate what arrives compressed.
    var compression = false
    /// Every client opts in to a seat (`?seat=new`, docs/seats.md); the seat message that opens
    /// each connection is not counted as a delivery.
    var seats = false
    /// Identical compressed payloads (a broadcast compressed once reaches every client of a load
    /// thread as the same bytes) are inflated once per thread and checked byte for byte; off, every
    /// compressed delivery is inflated on its own, as each browser would.
    var inflateMemo = true

    var closedLoop: Bool { rate == nil }
    /// The largest payload a sender produces (a JSON message is about `size` bytes, a little more).
    var maxPayload: Int { message == .json ? JSONMessage.maxLength(size) : size }
    /// The largest frame a sender produces (header and mask key included).
    var maxFrame: Int { maxPayload + 14 }
    var connections: Int { rooms * clientsPerRoom }
    var isConnectRate: Bool { connectCount != nil }

    var summary: String {
        if let n = connectCount {
            return "\(n) connections opened and closed (connect, handshake, upgrade, close), \(connectWindow) in flight"
                + (threads > 1 ? " per thread × \(threads) threads" : "") + ", \(rooms) room\(rooms == 1 ? "" : "s")"
        }
        let mode = rate.map { "\(formatCount($0)) msgs/s per sender" } ?? "closed loop"
        let what = message == .json ? "~\(size) B JSON" : "\(size) B"
        return "\(rooms) room\(rooms == 1 ? "" : "s") × \(clientsPerRoom) clients, \(senders) sender\(senders == 1 ? "" : "s")/room, \(what), \(mode)"
            + (compression ? ", permessage-deflate offered" : "")
    }

    func validate() throws {
        if let n = connectCount {
            if n < 1 { throw BenchError("--connections must be at least 1") }
            if rooms < 1 { throw BenchError("--rooms must be at least 1") }
            if threads < 1 || threads > 64 { throw BenchError("--threads must be between 1 and 64") }
            if connectWindow < 1 || connectWindow * threads > 10_000 {
                throw BenchError("--connect-window must be at least 1 and at most 10,000 in flight over all threads")
            }
            return
        }
        if rooms < 1 || clientsPerRoom < 1 { throw BenchError("--rooms and --clients-per-room must be at least 1") }
        if senders < 1 || senders > clientsPerRoom { throw BenchError("--senders must be between 1 and --clients-per-room") }
        if size < Payload.headerLength { throw BenchError("--size must be at least \(Payload.headerLength) bytes (timestamp, sender, sequence)") }
        if message == .json && size < JSONMessage.minimumSize {
            throw BenchError("--message json needs --size of at least \(JSONMessage.minimumSize) bytes")
        }
        if let r = rate, !(r > 0) { throw BenchError("--rate must be positive") }
        if threads < 1 || threads > 64 { throw BenchError("--threads must be between 1 and 64") }
        if duration <= 0 || warmup < 0 { throw BenchError("--duration must be positive and --warmup not negative") }
        if connections > 19_000 {
            throw BenchError("\(connections) connections: this machine's hard open-file limit is 20,000 per process; stay below ~19,000")
        }
    }
}

/// What senders send (`--message`).
enum MessageKind: String, Codable, Sendable, CaseIterable {
    /// Hex fields and `x` padding to `--size` (compresses to almost nothing).
    case hex
    /// A JSON-like game-state update of about `--size` bytes (``JSONMessage``).
    case json
}

/// Named scenarios of the issue, so a run is reproducible by name.
enum Preset: String, CaseIterable, Sendable {
    case fanout1 = "fanout-1"
    case fanout8 = "fanout-8"
    case rooms10At200 = "rooms10-200"
    case rooms10At2000 = "rooms10-2000"
    case rooms100 = "rooms100"
    case large = "large-16k"
    /// New connections per second: 2,000 connections (each: connect, TLS handshake with --tls,
    /// upgrade, close handshake), 64 in flight.
    case connectRate = "connect-rate"

    var scenario: Scenario {
        var s = Scenario()
        switch self {
        case .fanout1: s.rooms = 1; s.clientsPerRoom = 1000; s.senders = 1
        case .fanout8: s.rooms = 1; s.clientsPerRoom = 1000; s.senders = 8
        case .rooms10At200: s.rooms = 10; s.clientsPerRoom = 100; s.rate = 200
        case .rooms10At2000: s.rooms = 10; s.clientsPerRoom = 100; s.rate = 2000
        case .rooms100: s.rooms = 100; s.clientsPerRoom = 10
        case .large: s.rooms = 1; s.clientsPerRoom = 100; s.size = 16 * 1024
        case .connectRate: s.rooms = 1; s.connectCount = 2000; s.connectWindow = 64
        }
        return s
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func formatCount(_ v: Double) -> String {
    if v >= 1e6 { return String(format: "%.2fM", v / 1e6) }
    if v >= 1e4 { return String(format: "%.1fk", v / 1e3) }
    if v == v.rounded() { return String(Int(v)) }
    return String(format: "%.1f", v)
}
