import IOCore
import WireProtocol

/// An upgrade the front door accepted: the room and the `101` response to send. Sendable: it
/// travels with the socket to the shard that owns the room.
struct AcceptedUpgrade: Sendable {
    let roomId: String
    let response: [UInt8]
    /// permessage-deflate as agreed in the response, if it was.
    var deflate: DeflateParameters?
}

/// What the front door decided for one request head.
enum FrontDoorAnswer {
    /// Send `response`; with `keepAlive` the connection then waits for its next request.
    case respond([UInt8], keepAlive: Bool)
    /// A request that cannot be served (malformed, refused, not found): send the error response
    /// and close.
    case fail([UInt8])
    /// The upgrade policy refused the upgrade: send its response and close.
    case refuse([UInt8])
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
            return .respond(httpResponse(.ok, headers: [("Content-Type", "text/plain; version=0.0.4")],
                                         body: Array(metrics().utf8), keepAlive: keepAlive, headOnly: headOnly),
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
            let request = UpgradeRequest(path: head.path ?? "/", roomId: roomId, query: head.query,
                                         headers: head.copiedHeaders(), peer: peer())
            switch policy.decide(request) {
            case .accept(let headers):
                // The extension is the server's to agree; a policy's header of that name is dropped.
                var all = headers.filter { Self.isSafe($0) && $0.name.lowercased() != "sec-websocket-extensions" }
                if let deflate { all.append((name: "Sec-WebSocket-Extensions", value: deflate.1)) }
                let upgrade = AcceptedUpgrade(
                    roomId: roomId, response: webSocketUpgradeResponse(accept: accept, headers: all), deflate: deflate?.0)
                return .upgrade(upgrade, owner: ownerShard(of: roomId, shards: shards))
            case .refuse(let status, let headers, let body):
                var all: [(String, String)] = [("Content-Type", "text/plain; charset=utf-8")]
                all += headers.filter(Self.isSafe).map { ($0.name, $0.value) }
                return .refuse(httpResponse(status, headers: all, body: Array(body.utf8), keepAlive: false))
            }
        }
    }

    /// A header a policy gave that can be written as it is: a token name and a value without
    /// line breaks (anything else would let a policy's input split the response).
    static func isSafe(_ header: (name: String, value: String)) -> Bool {
        !header.name.isEmpty
            && header.name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }
            && !header.value.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }
    }
}
