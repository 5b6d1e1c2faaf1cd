import IOCore
import WireProtocol

/// An upgrade the front door accepted: the room and the `101` response to send. Sendable: it
/// travels with the socket to the shard that owns the room.
struct AcceptedUpgrade: Sendable {
    let roomId: String
    let response: [UInt8]
    /// permessage-deflate as agreed in the response, if it was.
    var deflate: DeflateParameters?
    /// Who the client joins as (nil: anonymous).
    var identity: String?
    /// Its place in the server's connection counts (nil: no limit needs counting).
    var admission: AdmissionTicket?
    /// What the client asked of seats (nil: it did not opt in).
    var seat: SeatRequest?
}

/// Why an upgrade was refused before the 101 (each has its counter).
enum UpgradeRefusal {
    /// No valid token (401).
    case unauthorized
    /// A valid token that does not open the room (403).
    case forbidden
    /// Too many upgrade requests from the address (429).
    case rateLimited
    /// Too many WebSockets open from the address (429).
    case addressLimit
    /// The server's WebSocket limit (503).
    case serverFull
    /// The room's client limit (503).
    case roomFull
    /// The configured ``UpgradePolicy`` said no.
    case policy

    var counter: ShardStats.Counter {
        switch self {
        case .unauthorized: .authFailures
        case .forbidden: .authForbidden
        case .rateLimited: .upgradesRateLimited
        case .addressLimit: .upgradesAddressLimited
        case .serverFull: .upgradesServerFull
        case .roomFull: .upgradesRoomFull
        case .policy: .upgradesRefused
        }
    }
}

/// What the front door decided for one request head.
enum FrontDoorAnswer {
    /// Send `response`; with `keepAlive` the connection then waits for its next request.
    case respond([UInt8], keepAlive: Bool)
    /// A request that cannot be served (malformed, refused, not found): send the error response
    /// and close.
    case fail([UInt8])
    /// The upgrade was refused (authentication, limits, the policy): send the response and close.
    case refuse([UInt8], UpgradeRefusal)
    /// Become a WebSocket in the accepted room, on shard `owner`.
    case upgrade(AcceptedUpgrade, owner: Int)
}

/// The front door of a shard: the server's HTTP side for one complete request head —
/// `/status`, `/metrics`, static files, errors — and the single point where a WebSocket upgrade
/// is decided (the configured ``UpgradePolicy``) and the shard owning its room is found.
///
/// It reads the head and answers with bytes; it does no I/O (a static file is read from disk),
/// so it can be tested with a parsed head alone.
struct FrontDoor {
    let staticDirectory: String?
    let policy: any UpgradePolicy
    let shards: Int
    var compression = CompressionConfiguration()
    /// The `/metrics` text.
    let metrics: () -> String
    /// The built-in token check, when one is configured.
    var authenticator: TokenAuthenticator?
    /// The server-wide connection counts, when a limit needs them.
    var admission: Admission?
    /// A bearer token `/metrics` requires, if any.
    var metricsToken: String?
    /// Wall-clock seconds (token expiry) and monotonic seconds (rate buckets); replaceable in tests.
    var wallClock: @Sendable () -> Double = { TokenAuthenticator.wallClock() }
    var monotonicClock: @Sendable () -> Double = { Double(monotonicNanos()) / 1e9 }

    /// Answers `head`. `peer` gives the client's address when an upgrade policy is consulted.
    func answer(_ head: HTTPRequestHead, peer: () -> String?) -> FrontDoorAnswer {
        let headOnly = head.isHeadMethod
        // No route reads a request body (route() refuses bad framing, and a body on an upgrade),
        // so a request with one is answered and the connection closed: the body's bytes must
        // never be taken for the next request.
        let keepAlive = head.keepAlive && head.bodyFraming == .none
        switch route(head) {
        case .status:
            return .respond(httpResponse(.ok, headers: [("Content-Type", "text/plain")], body: Array("ok".utf8),
                                         keepAlive: keepAlive, headOnly: headOnly), keepAlive: keepAlive)
        case .metrics:
            if let metricsToken, !Self.bearer(head, matches: metricsToken) {
                return .fail(refusal(.unauthorized, reason: "/metrics needs its bearer token",
                                     headers: [("WWW-Authenticate", "Bearer realm=\"metrics\"")]))
            }
            return .respond(httpResponse(.ok, headers: [("Content-Type", "text/plain; version=0.0.4")],
                                         body: Array(metrics().utf8), keepAlive: keepAlive, headOnly: headOnly),
                            keepAlive: keepAlive)
        case .file(let path) where path == "/stateroom.js":
            // The JavaScript client, from every server (a static directory cannot hide it).
            return .respond(httpResponse(.ok, headers: [("Content-Type", "text/javascript; charset=utf-8"),
                                                        ("Cache-Control", "no-cache")],
                                         body: Self.clientScript, keepAlive: keepAlive, headOnly: headOnly),
                            keepAlive: keepAlive)
        case .file(let path):
            guard let dir = staticDirectory, let file = StaticFiles.read(root: dir, path: path) else {
                return .fail(httpErrorResponse(.notFound))
            }
            return .respond(httpResponse(.ok, headers: [("Content-Type", file.contentType)], body: file.bytes,
                                         keepAlive: keepAlive, headOnly: headOnly), keepAlive: keepAlive)
        case .failure(let status):
            return .fail(httpErrorResponse(status))
        case .webSocket(let roomId, let accept):
            let deflate: (DeflateParameters, String)?
            switch negotiateCompression(head, compression) {
            case .none: deflate = nil
            case .agreed(let parameters, let header): deflate = (parameters, header)
            case .malformed: return .fail(httpErrorResponse(.badRequest))
            }
            var request = UpgradeRequest(path: head.path ?? "/", roomId: roomId, query: head.query,
                                         headers: head.copiedHeaders(), peer: peer())
            let address = admission.flatMap { $0.limits.needsCounting ? Admission.address(ofPeer: request.peer) : nil }
            if let admission, let refused = admission.check(address, now: monotonicClock()) {
                return refuse(refused)
            }
            var subprotocol: String?
            if let authenticator {
                switch authenticator.authenticate(request, now: wallClock()) {
                case .accepted(let identity, let chosen):
                    request.identity = identity
                    subprotocol = chosen
                case .refused(let status, let reason):
                    let challenge = status.code == 401
                        ? [("WWW-Authenticate", "Bearer error=\"invalid_token\"")] : []
                    return .refuse(refusal(status, reason: reason, headers: challenge),
                                   status.code == 401 ? .unauthorized : .forbidden)
                }
            }
            switch policy.decide(request) {
            case .accept(let headers, let identity):
                // The extension is the server's to agree; a policy's header of that name is dropped,
                // as is its subprotocol when a token offered as one chose it already.
                var all = headers.filter {
                    Self.isSafe($0) && $0.name.lowercased() != "sec-websocket-extensions"
                        && (subprotocol == nil || $0.name.lowercased() != "sec-websocket-protocol")
                }
                if let subprotocol { all.append((name: "Sec-WebSocket-Protocol", value: subprotocol)) }
                if let deflate { all.append((name: "Sec-WebSocket-Extensions", value: deflate.1)) }
                var ticket: AdmissionTicket?
                if let admission, admission.limits.needsCounting {
                    switch admission.admit(address) {
                    case .success(let t): ticket = t
                    case .failure(let refused): return refuse(refused)
                    }
                }
                let upgrade = AcceptedUpgrade(
                    roomId: roomId, response: webSocketUpgradeResponse(accept: accept, headers: all), deflate: deflate?.0,
                    identity: identity ?? request.identity, admission: ticket, seat: SeatRequest(request))
                return .upgrade(upgrade, owner: ownerShard(of: roomId, shards: shards))
            case .refuse(let status, let headers, let body):
                var all: [(String, String)] = [("Content-Type", "text/plain; charset=utf-8")]
                all += headers.filter(Self.isSafe).map { ($0.name, $0.value) }
                return .refuse(httpResponse(status, headers: all, body: Array(body.utf8), keepAlive: false), .policy)
            }
        }
    }

    /// `/stateroom.js`'s bytes (ClientScript.swift, a source file's text, with the newline it ends with).
    static let clientScript = Array((ClientScript.source + "\n").utf8)

    /// The answer for a refusal by the admission limits.
    private func refuse(_ refused: AdmissionRefusal) -> FrontDoorAnswer {
        switch refused {
        case .rateLimited(let after):
            return .refuse(refusal(.tooManyRequests, reason: "too many upgrade requests from this address",
                                   headers: [("Retry-After", "\(after)")]), .rateLimited)
        case .tooManyFromAddress:
            return .refuse(refusal(.tooManyRequests, reason: "too many connections from this address",
                                   headers: [("Retry-After", "5")]), .addressLimit)
        case .serverFull:
            return .refuse(refusal(.serviceUnavailable, reason: "the server is at its connection limit",
                                   headers: [("Retry-After", "5")]), .serverFull)
        }
    }

    /// A plain-text refusal: `"<code> <reason phrase>: <why>\n"`; the connection closes after it.
    func refusal(_ status: HTTPStatus, reason: String, headers: [(String, String)] = []) -> [UInt8] {
        httpResponse(status, headers: [("Content-Type", "text/plain; charset=utf-8")] + headers,
                     body: Array("\(status.code) \(status.reason): \(reason)\n".utf8), keepAlive: false)
    }

    /// Whether the request carries `Authorization: Bearer <token>` (compared in constant time).
    static func bearer(_ head: HTTPRequestHead, matches token: String) -> Bool {
        guard let value = head.copiedHeaders().first(where: { $0.name.lowercased() == "authorization" })?.value,
              value.count > 7, value.prefix(7).lowercased() == "bearer " else { return false }
        return constantTimeEquals(Array(value.utf8.dropFirst(7)), Array(token.utf8))
    }

    /// A header a policy gave that can be written as it is: a token name and a value without
    /// line breaks (anything else would let a policy's input split the response).
    static func isSafe(_ header: (name: String, value: String)) -> Bool {
        !header.name.isEmpty
            && header.name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
            && !header.value.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }
    }
}
