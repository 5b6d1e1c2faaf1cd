import Glibc
import Synchronization
import Locking

/// Limits that keep one client, or one address, from taking what others need. Zero turns a
/// limit off; every limit is off by default.
public struct AdmissionLimits: Sendable, Equatable {
    /// Open WebSockets, server-wide. At the limit a new upgrade is refused with `503`; accepting
    /// pauses (as when descriptors run out) while the server holds ``socketCap`` sockets, so
    /// plain HTTP (`/status`, `/metrics`) still has room when WebSockets are at the limit.
    public var maxConnections = 0
    /// Open WebSockets from one IP address; beyond it an upgrade gets `429` with `Retry-After`.
    public var maxConnectionsPerIP = 0
    /// Upgrade requests per second from one IP address (a token bucket holding
    /// ``upgradeBurstPerIP``); beyond it `429` with `Retry-After`. Every upgrade request counts,
    /// refused ones too, so guessing tokens is slowed down as well.
    public var upgradeRatePerIP: Double = 0
    /// Upgrade requests one address may make at once before the rate applies (0: the rate,
    /// rounded up, and at least 1).
    public var upgradeBurstPerIP = 0
    /// Clients in one room; a client beyond it gets `503` (no room is created or changed).
    public var maxClientsPerRoom = 0

    public init() {}

    /// Any limit that needs the shared counters (all but the per-room one).
    var needsCounting: Bool {
        maxConnections > 0 || maxConnectionsPerIP > 0 || upgradeRatePerIP > 0
    }

    /// Sockets (WebSockets and plain HTTP) at which accepting pauses: the WebSocket limit and
    /// an eighth more (at least 64) for HTTP requests and handshakes in progress.
    public var socketCap: Int {
        maxConnections > 0 ? maxConnections + max(64, maxConnections / 8) : 0
    }

    var burst: Double {
        upgradeBurstPerIP > 0 ? Double(upgradeBurstPerIP) : max(1, upgradeRatePerIP.rounded(.up))
    }
}

/// Why the admission limits refused an upgrade.
enum AdmissionRefusal: Error, Equatable {
    /// The address made upgrade requests faster than its rate; it may retry after this many seconds.
    case rateLimited(retryAfter: Int)
    /// The address has as many WebSockets open as it may.
    case tooManyFromAddress
    /// The server has as many WebSockets open as it may.
    case serverFull
}

/// The server-wide counters behind ``AdmissionLimits``: open WebSockets in total and per
/// address, each address's upgrade-rate bucket, and open sockets (for pausing accept). Shared by
/// every shard; consulted once per upgrade request and once per accepted socket, never per
/// message, so one lock is enough.
final class Admission: Sendable {
    let limits: AdmissionLimits
    private struct Bucket {
        var tokens: Double
        var updated: Double
    }

    private struct State {
        var open = 0
        var perAddress: [String: Int] = [:]
        var buckets: [String: Bucket] = [:]
    }

    private let state = Locked(State())
    private let sockets = Atomic<Int>(0)
    /// Beyond this many tracked addresses, buckets that have refilled are dropped.
    static let bucketPruneThreshold = 16_384

    init(_ limits: AdmissionLimits) {
        self.limits = limits
    }

    /// Open WebSockets admitted and not yet closed.
    var openWebSockets: Int { state.withLock { $0.open } }

    /// WebSockets open from `address`.
    func open(from address: String) -> Int { state.withLock { $0.perAddress[address] ?? 0 } }

    // MARK: - Sockets (accept pausing)

    /// Counts an accepted socket; true while the server holds fewer than ``AdmissionLimits/socketCap``.
    func socketOpened() -> Bool {
        let n = sockets.wrappingAdd(1, ordering: .relaxed).newValue
        return limits.socketCap == 0 || n < limits.socketCap
    }

    func socketClosed() {
        sockets.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Whether accepting may resume.
    var belowSocketCap: Bool {
        limits.socketCap == 0 || sockets.load(ordering: .relaxed) < limits.socketCap
    }

    // MARK: - Upgrades

    /// The rate check for one upgrade request from `address` (spends a token), and a first look
    /// at the connection limits, before any work such as verifying a token is done for it.
    func check(_ address: String?, now: Double) -> AdmissionRefusal? {
        state.withLock { s in
            if limits.maxConnections > 0 && s.open >= limits.maxConnections { return .serverFull }
            guard let address else { return nil }
            if limits.upgradeRatePerIP > 0 {
                let burst = limits.burst
                if s.buckets.count >= Self.bucketPruneThreshold { prune(&s, now: now) }
                var b = s.buckets[address] ?? Bucket(tokens: burst, updated: now)
                b.tokens = min(burst, b.tokens + max(0, now - b.updated) * limits.upgradeRatePerIP)
                b.updated = now
                if b.tokens < 1 {
                    s.buckets[address] = b
                    let wait = (1 - b.tokens) / limits.upgradeRatePerIP
                    return .rateLimited(retryAfter: max(1, Int(wait.rounded(.up))))
                }
                b.tokens -= 1
                s.buckets[address] = b
            }
            if limits.maxConnectionsPerIP > 0 && (s.perAddress[address] ?? 0) >= limits.maxConnectionsPerIP {
                return .tooManyFromAddress
            }
            return nil
        }
    }

    /// Takes a place for an accepted upgrade from `address`: the ticket gives it back when it is
    /// released (when the connection is gone). Refused when the limits were reached since
    /// ``check(_:now:)``.
    func admit(_ address: String?) -> Result<AdmissionTicket, AdmissionRefusal> {
        let refusal: AdmissionRefusal? = state.withLock { s in
            if limits.maxConnections > 0 && s.open >= limits.maxConnections { return .serverFull }
            if let address, limits.maxConnectionsPerIP > 0 {
                let n = s.perAddress[address] ?? 0
                if n >= limits.maxConnectionsPerIP { return .tooManyFromAddress }
                s.perAddress[address] = n + 1
            }
            s.open += 1
            return nil
        }
        if let refusal { return .failure(refusal) }
        return .success(AdmissionTicket(self, address: limits.maxConnectionsPerIP > 0 ? address : nil))
    }

    fileprivate func release(_ address: String?) {
        state.withLock { s in
            s.open -= 1
            if let address, let n = s.perAddress[address] {
                s.perAddress[address] = n > 1 ? n - 1 : nil
            }
        }
    }

    private func prune(_ s: inout State, now: Double) {
        let rate = limits.upgradeRatePerIP
        let burst = limits.burst
        s.buckets = s.buckets.filter { $0.value.tokens + (now - $0.value.updated) * rate < burst }
    }

    /// The address part of a peer string (`host:port`, `[v6]:port`).
    static func address(ofPeer peer: String?) -> String? {
        guard let peer else { return nil }
        if peer.hasPrefix("["), let end = peer.firstIndex(of: "]") {
            return String(peer[peer.index(after: peer.startIndex)..<end])
        }
        if let colon = peer.lastIndex(of: ":") { return String(peer[..<colon]) }
        return peer
    }
}

/// One admitted WebSocket's place in the ``Admission`` counts, given back when the ticket goes
/// away: it travels with the upgrade (across shards) and then lives in the connection, so
/// whichever way the connection ends — closed, aborted, refused at its room, never handed over —
/// the place is returned exactly once.
final class AdmissionTicket: Sendable {
    private let admission: Admission
    private let address: String?

    fileprivate init(_ admission: Admission, address: String?) {
        self.admission = admission
        self.address = address
    }

    deinit { admission.release(address) }
}
