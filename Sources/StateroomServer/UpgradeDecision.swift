import WireProtocol

/// An HTTP status: the code and its reason phrase (for refusing an upgrade).
public typealias HTTPStatus = WireProtocol.HTTPStatus

/// A WebSocket upgrade request that passed the protocol checks, copied out of the receive buffer
/// for an ``UpgradePolicy`` to decide on.
public struct UpgradeRequest: Sendable {
    /// The request path as sent, e.g. `/ws/lobby`.
    public var path: String
    /// The room the client asks for (`1` for `/ws`).
    public var roomId: String
    /// The query string as sent (after `?`), if any, e.g. `token=abc`.
    public var query: String?
    /// Every header line, in order, names as sent.
    public var headers: [(name: String, value: String)]
    /// The client's address, `host:port` (`[v6]:port` for IPv6), if the socket still has one.
    public var peer: String?
    /// Who the client is, when the server's own token check (``ServerConfiguration/jwt``) ran
    /// before the policy: the verified token's `sub`. A policy that accepts with an identity of
    /// its own replaces it.
    public var identity: String?

    public init(path: String, roomId: String, query: String? = nil,
                headers: [(name: String, value: String)] = [], peer: String? = nil, identity: String? = nil) {
        self.path = path
        self.roomId = roomId
        self.query = query
        self.headers = headers
        self.peer = peer
        self.identity = identity
    }

    /// The value of the first header called `name` (ASCII case-insensitive).
    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name.lowercased() == wanted }?.value
    }

    /// The value of query parameter `name` (`a=1&b=2`), percent-decoding not applied.
    public func queryItem(_ name: String) -> String? {
        guard let query else { return nil }
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if kv[0] == name { return kv.count > 1 ? String(kv[1]) : "" }
        }
        return nil
    }
}

/// What an ``UpgradePolicy`` decided.
public enum UpgradeDecision: Sendable {
    /// Go ahead: answer 101, with these extra response headers; the client joins its room as
    /// `identity` (what ``StateroomContext/identity(of:)`` answers for it; nil: anonymous).
    case accept(headers: [(name: String, value: String)], identity: String?)
    /// Refuse with this status (a 4xx or 5xx), extra headers and a plain-text body; the
    /// connection is closed after the response.
    case refuse(HTTPStatus, headers: [(name: String, value: String)], body: String)

    /// Go ahead with no extra headers, anonymously.
    public static var accept: UpgradeDecision { .accept(headers: [], identity: nil) }

    /// Go ahead with these extra headers, anonymously.
    public static func accept(headers: [(name: String, value: String)]) -> UpgradeDecision {
        .accept(headers: headers, identity: nil)
    }

    /// Go ahead as `identity`.
    public static func accept(identity: String) -> UpgradeDecision {
        .accept(headers: [], identity: identity)
    }

    /// Refuse with `status` and the body `"<code> <reason>\n"`.
    public static func refuse(_ status: HTTPStatus) -> UpgradeDecision {
        .refuse(status, headers: [], body: "\(status.code) \(status.reason)\n")
    }
}

/// Decides whether a WebSocket upgrade goes ahead: the one place where who may join is decided
/// (authentication, limits, later extension negotiation).
///
/// Called on the thread of the shard that accepted the connection, once per upgrade request that
/// passed the protocol checks, before the connection moves to the shard that owns its room. It
/// runs on an event loop: it must not block.
public protocol UpgradePolicy: Sendable {
    func decide(_ request: UpgradeRequest) -> UpgradeDecision
}

/// Accepts every upgrade (the default).
public struct AcceptAllUpgrades: UpgradePolicy {
    public init() {}
    public func decide(_ request: UpgradeRequest) -> UpgradeDecision { .accept }
}

/// A policy from a closure: `UpgradePolicyClosure { $0.header("X-Key") == "k" ? .accept : .refuse(.forbidden) }`.
public struct UpgradePolicyClosure: UpgradePolicy {
    let body: @Sendable (UpgradeRequest) -> UpgradeDecision

    public init(_ body: @escaping @Sendable (UpgradeRequest) -> UpgradeDecision) { self.body = body }

    public func decide(_ request: UpgradeRequest) -> UpgradeDecision { body(request) }
}
