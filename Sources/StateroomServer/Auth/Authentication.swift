import CLibCrypto
import Glibc
import IOCore
import WireProtocol

/// The built-in token check: every WebSocket upgrade must carry a JWT that ``verifier`` accepts;
/// its `sub` becomes the client's identity and its optional `rooms` claim limits which rooms it
/// opens.
///
/// The token is taken from, in this order: an `Authorization: Bearer <token>` header; the query
/// parameter `token` (`/ws/lobby?token=<token>`); a `Sec-WebSocket-Protocol` entry
/// `bearer.<token>` (browsers can set no headers on a WebSocket). A token offered as a
/// subprotocol makes the server choose a subprotocol, as RFC 6455 §4.2.2 requires: the first
/// other one the client offered, or, when it offered none, the token entry itself.
struct TokenAuthenticator: Sendable {
    let verifier: JWTVerifier

    /// The prefix that marks a `Sec-WebSocket-Protocol` entry as a token.
    static let subprotocolPrefix = "bearer."

    enum Outcome: Equatable {
        case accepted(identity: String, subprotocol: String?)
        /// 401 (no usable token) or 403 (a valid token that does not open this room), with a
        /// one-line reason.
        case refused(HTTPStatus, reason: String)
    }

    func authenticate(_ request: UpgradeRequest, now: Double) -> Outcome {
        guard let found = Self.token(in: request) else {
            return .refused(.unauthorized, reason: "no token (send Authorization: Bearer, ?token= or a bearer.<token> subprotocol)")
        }
        let claims: JWTClaims
        do {
            claims = try verifier.verify(found.token, now: now)
        } catch {
            return .refused(.unauthorized, reason: error.description)
        }
        if !claims.permits(room: request.roomId) {
            return .refused(.forbidden, reason: "token does not open room \(Self.printable(request.roomId))")
        }
        return .accepted(identity: claims.subject, subprotocol: found.subprotocol)
    }

    /// The request's token and, when it came as a subprotocol, the subprotocol to answer with.
    static func token(in request: UpgradeRequest) -> (token: Substring, subprotocol: String?)? {
        var protocols: [Substring] = []
        for (name, value) in request.headers {
            let lower = name.lowercased()
            if lower == "authorization" {
                let v = value.drop { $0 == " " }
                if v.count > 7, v.prefix(7).lowercased() == "bearer " {
                    let token = v.dropFirst(7).drop { $0 == " " }
                    if !token.isEmpty { return (trimmed(token), nil) }
                }
            } else if lower == "sec-websocket-protocol" {
                protocols += value.split(separator: ",").map { trimmed($0) }.filter { !$0.isEmpty }
            }
        }
        if let token = request.queryItem("token").map(percentDecoded), !token.isEmpty {
            return (Substring(token), nil)
        }
        if let entry = protocols.first(where: { $0.hasPrefix(subprotocolPrefix) }) {
            let chosen = protocols.first { !$0.hasPrefix(subprotocolPrefix) } ?? entry
            return (entry.dropFirst(subprotocolPrefix.count), String(chosen))
        }
        return nil
    }

    private static func trimmed(_ s: Substring) -> Substring {
        var t = s
        while let f = t.first, f == " " || f == "\t" { t.removeFirst() }
        while let l = t.last, l == " " || l == "\t" { t.removeLast() }
        return t
    }

    /// `%XX` sequences decoded (a JWT needs none, but a client may encode `.`), with the request
    /// router's decoder; a bad escape leaves the value as sent (it then fails as a token).
    static func percentDecoded(_ s: String) -> String {
        guard s.utf8.contains(UInt8(ascii: "%")) else { return s }
        var out: [UInt8] = []
        let ok = Array(s.utf8).withUnsafeBytes { raw in percentDecode(raw) { out.append($0); return true } }
        return ok ? String(decoding: out, as: UTF8.self) : s
    }

    /// A room id as it may appear in a one-line reason (control characters replaced, capped).
    static func printable(_ s: String) -> String {
        let clean = String(s.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
        return clean.count > 64 ? String(clean.prefix(64)) + "…" : clean
    }

    /// Wall-clock seconds since 1970 (what `exp` and `nbf` count in).
    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Compares two byte strings in time that depends only on their lengths (OpenSSL's `CRYPTO_memcmp`).
func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.count == b.count && CRYPTO_memcmp(a, b, a.count) == 0
}

extension JWTVerifier {
    /// The verifier command-line options ask for: a secret (HS256), a file holding one (a trailing
    /// line break dropped), or a PEM public key or certificate file (RS256 or ES256). nil when
    /// none is given; more than one, an unreadable file or an unusable key throws.
    public static func configured(secret: String?, secretFile: String?, publicKeyFile: String?,
                                  clockSkew: Double = 30) throws(JWTKeyError) -> JWTVerifier? {
        switch (secret, secretFile, publicKeyFile) {
        case (nil, nil, nil):
            return nil
        case (let secret?, nil, nil):
            return try JWTVerifier(hmacSecret: Array(secret.utf8), clockSkew: clockSkew)
        case (nil, let path?, nil):
            guard var bytes = FileIO.read(path, maxSize: 1 << 16) else {
                throw JWTKeyError("cannot read the JWT secret file \(path)")
            }
            while bytes.last == UInt8(ascii: "\n") || bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
            return try JWTVerifier(hmacSecret: bytes, clockSkew: clockSkew)
        case (nil, nil, let path?):
            guard let pem = FileIO.read(path, maxSize: 1 << 20) else {
                throw JWTKeyError("cannot read the JWT public key file \(path)")
            }
            return try JWTVerifier(publicKeyPEM: String(decoding: pem, as: UTF8.self), clockSkew: clockSkew)
        default:
            throw JWTKeyError("give one JWT key: a secret, a secret file or a public key")
        }
    }
}
