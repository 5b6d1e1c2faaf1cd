import Stateroom
@testable import StateroomServer
import Testing
import WireProtocol

// The front door's token check and admission limits, on parsed request heads. Tokens were made
// with PyJWT (secret "front-door-secret"): bob with no other claim; carol with rooms ["a", "lobby"]
// and exp 2000000000; bob signed with "other-secret".
private let secret = Array("front-door-secret".utf8)
private let bob = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IifQ.NrKqavLexdcwVFBndCikaojkRKnSLSdDN_IZkEo7SSc"
private let carol = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjYXJvbCIsInJvb21zIjpbImEiLCJsb2JieSJdLCJleHAiOjIwMDAwMDAwMDB9.EQauJ6pmTB3qYFatVxNQjS_07kElQIvHi9KMuApcsCQ"
private let forged = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IifQ.ZH2znLKjStF4j9bmN36QWGL8xH59ISBrV1kUz4w-dGQ"

private let upgradeHead = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

private func answer(_ door: FrontDoor, _ request: String, peer: String? = "127.0.0.1:4242") -> FrontDoorAnswer? {
    var bytes = Array(request.utf8)
    return bytes.withUnsafeMutableBytes { buf -> FrontDoorAnswer? in
        guard case .complete(let head) = parseHTTPHead(UnsafeRawBufferPointer(buf)) else { return nil }
        return door.answer(head, peer: { peer })
    }
}

private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

private func response(_ upgrade: AcceptedUpgrade?) -> String { text(upgrade?.response ?? []) }

private func upgrade(_ path: String, _ headers: String = "") -> String {
    "GET \(path) HTTP/1.1\r\nHost: h\r\n" + headers + upgradeHead + "\r\n"
}

@Suite struct AuthTests {
    func door(limits: AdmissionLimits = AdmissionLimits(), jwt: Bool = true, policy: any UpgradePolicy = AcceptAllUpgrades(),
              now: Double = 1_900_000_000, metricsToken: String? = nil) throws -> FrontDoor {
        var d = FrontDoor(staticDirectory: nil, policy: policy, shards: 1, metrics: { "m 1\n" })
        if jwt { d.authenticator = TokenAuthenticator(verifier: try JWTVerifier(hmacSecret: secret)) }
        if limits.needsCounting { d.admission = Admission(limits) }
        d.metricsToken = metricsToken
        d.wallClock = { now }
        return d
    }

    func accepted(_ a: FrontDoorAnswer?, sourceLocation: SourceLocation = #_sourceLocation) -> AcceptedUpgrade? {
        guard case .upgrade(let up, _)? = a else {
            Issue.record("expected an upgrade, got \(String(describing: a))", sourceLocation: sourceLocation)
            return nil
        }
        return up
    }

    func refused(_ a: FrontDoorAnswer?, sourceLocation: SourceLocation = #_sourceLocation) -> (String, UpgradeRefusal)? {
        guard case .refuse(let r, let why)? = a else {
            Issue.record("expected a refusal, got \(String(describing: a))", sourceLocation: sourceLocation)
            return nil
        }
        return (text(r), why)
    }

    @Test func aTokenFromEachSourceGivesTheIdentity() throws {
        let d = try door()
        #expect(accepted(answer(d, upgrade("/ws/x", "Authorization: Bearer \(bob)\r\n")))?.identity == "bob")
        #expect(accepted(answer(d, upgrade("/ws/x?token=\(bob)")))?.identity == "bob")
        #expect(accepted(answer(d, upgrade("/ws/x?a=1&token=\(bob.split(separator: ".").joined(separator: "%2E"))")))?.identity == "bob")
        let sub = accepted(answer(d, upgrade("/ws/x", "Sec-WebSocket-Protocol: chat.v1, bearer.\(bob)\r\n")))
        #expect(sub?.identity == "bob")
        #expect(response(sub).contains("\r\nSec-WebSocket-Protocol: chat.v1\r\n"))
        let only = accepted(answer(d, upgrade("/ws/x", "Sec-WebSocket-Protocol: bearer.\(bob)\r\n")))
        #expect(response(only).contains("\r\nSec-WebSocket-Protocol: bearer.\(bob)\r\n"))
        // A token from a header or the query chooses no subprotocol.
        let plain = accepted(answer(d, upgrade("/ws/x?token=\(bob)")))
        #expect(!response(plain).contains("Sec-WebSocket-Protocol"))
    }

    @Test func noOrBadTokensAre401WithAReason() throws {
        let d = try door()
        let missing = refused(answer(d, upgrade("/ws/x")))
        #expect(missing?.0.hasPrefix("HTTP/1.1 401 Unauthorized\r\n") == true)
        #expect(missing?.0.contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n") == true)
        #expect(missing?.0.hasSuffix("\r\n\r\n401 Unauthorized: no token (send Authorization: Bearer, ?token= or a bearer.<token> subprotocol)\n") == true)
        #expect(missing?.1 == .unauthorized)
        let bad = refused(answer(d, upgrade("/ws/x?token=\(forged)")))
        #expect(bad?.0.hasPrefix("HTTP/1.1 401 ") == true && bad?.0.contains("signature") == true)
        // An Authorization header of another scheme is no token.
        #expect(refused(answer(d, upgrade("/ws/x", "Authorization: Basic Ym9iOnB3\r\n")))?.1 == .unauthorized)
        // Expiry is checked against the wall clock given.
        let late = try door(now: 2_000_000_100)
        #expect(refused(answer(late, upgrade("/ws/a?token=\(carol)")))?.0.contains("expired") == true)
        let withinSkew = try door(now: 2_000_000_010)
        #expect(accepted(answer(withinSkew, upgrade("/ws/a?token=\(carol)")))?.identity == "carol")
    }

    @Test func theRoomsClaimLimitsTheRooms() throws {
        let d = try door()
        #expect(accepted(answer(d, upgrade("/ws/lobby?token=\(carol)")))?.identity == "carol")
        let other = refused(answer(d, upgrade("/ws/b?token=\(carol)")))
        #expect(other?.0.hasPrefix("HTTP/1.1 403 Forbidden\r\n") == true)
        #expect(other?.0.hasSuffix("403 Forbidden: token does not open room b\n") == true)
        #expect(other?.1 == .forbidden)
    }

    @Test func thePolicySeesTheIdentityAndMayReplaceIt() throws {
        let policy = UpgradePolicyClosure { request in
            request.identity == "bob" ? .accept(identity: "bob@example") : .refuse(.forbidden)
        }
        let d = try door(policy: policy)
        #expect(accepted(answer(d, upgrade("/ws/x?token=\(bob)")))?.identity == "bob@example")
        #expect(refused(answer(d, upgrade("/ws/lobby?token=\(carol)")))?.1 == .policy)
        // Without a token check, a policy's identity is the client's.
        let anonymous = try door(jwt: false, policy: UpgradePolicyClosure { _ in .accept(identity: "guest") })
        #expect(accepted(answer(anonymous, upgrade("/ws/x")))?.identity == "guest")
        #expect(accepted(answer(try door(jwt: false), upgrade("/ws/x")))?.identity == nil)
    }

    @Test func metricsNeedTheirTokenWhenOneIsSet() throws {
        let d = try door(jwt: false, metricsToken: "m3tr1cs")
        guard case .fail(let r)? = answer(d, "GET /metrics HTTP/1.1\r\n\r\n") else { Issue.record("expected 401"); return }
        #expect(text(r).hasPrefix("HTTP/1.1 401 "))
        guard case .fail? = answer(d, "GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n") else {
            Issue.record("expected 401"); return
        }
        guard case .respond(let ok, _)? = answer(d, "GET /metrics HTTP/1.1\r\nAuthorization: Bearer m3tr1cs\r\n\r\n") else {
            Issue.record("expected the metrics"); return
        }
        #expect(text(ok).hasSuffix("m 1\n"))
        guard case .respond(let status, _)? = answer(d, "GET /status HTTP/1.1\r\n\r\n") else { Issue.record("status"); return }
        #expect(text(status).hasSuffix("ok"))
    }

    @Test func connectionLimitsPerServerAndAddressHoldUntilTicketsAreReleased() throws {
        var limits = AdmissionLimits()
        limits.maxConnections = 3
        limits.maxConnectionsPerIP = 2
        let d = try door(limits: limits, jwt: false)
        var held: [AcceptedUpgrade] = []
        for _ in 0..<2 { if let up = accepted(answer(d, upgrade("/ws/x"), peer: "10.0.0.1:1")) { held.append(up) } }
        let third = refused(answer(d, upgrade("/ws/x"), peer: "10.0.0.1:2"))
        #expect(third?.1 == .addressLimit)
        #expect(third?.0.hasPrefix("HTTP/1.1 429 Too Many Requests\r\n") == true && third?.0.contains("Retry-After: 5\r\n") == true)
        if let up = accepted(answer(d, upgrade("/ws/x"), peer: "[::1]:9")) { held.append(up) }
        let full = refused(answer(d, upgrade("/ws/x"), peer: "10.0.0.2:1"))
        #expect(full?.1 == .serverFull && full?.0.hasPrefix("HTTP/1.1 503 ") == true)
        #expect(d.admission?.openWebSockets == 3 && d.admission?.open(from: "10.0.0.1") == 2 && d.admission?.open(from: "::1") == 1)
        held.removeFirst()  // the ticket goes with the upgrade
        #expect(d.admission?.openWebSockets == 2 && d.admission?.open(from: "10.0.0.1") == 1)
        #expect(accepted(answer(d, upgrade("/ws/x"), peer: "10.0.0.1:3")) != nil)
    }

    @Test func theUpgradeRateIsATokenBucketPerAddress() {
        var limits = AdmissionLimits()
        limits.upgradeRatePerIP = 2
        limits.upgradeBurstPerIP = 3
        let a = Admission(limits)
        for _ in 0..<3 { #expect(a.check("10.0.0.1", now: 100) == nil) }
        #expect(a.check("10.0.0.1", now: 100) == .rateLimited(retryAfter: 1))
        #expect(a.check("10.0.0.2", now: 100) == nil)
        #expect(a.check("10.0.0.1", now: 100.5) == nil)  // one token back after 0.5 s
        #expect(a.check("10.0.0.1", now: 100.5) == .rateLimited(retryAfter: 1))
        // A slow rate asks for a longer wait.
        var slow = AdmissionLimits()
        slow.upgradeRatePerIP = 0.1
        let s = Admission(slow)
        #expect(s.check("h", now: 0) == nil)
        #expect(s.check("h", now: 0) == .rateLimited(retryAfter: 10))
    }

    @Test func peerAddressesLoseTheirPort() {
        #expect(Admission.address(ofPeer: "127.0.0.1:5555") == "127.0.0.1")
        #expect(Admission.address(ofPeer: "[::1]:80") == "::1")
        #expect(Admission.address(ofPeer: nil) == nil)
    }

    @Test func socketCapLeavesRoomForPlainHTTP() {
        var limits = AdmissionLimits()
        #expect(limits.socketCap == 0)
        limits.maxConnections = 2
        #expect(limits.socketCap == 66)
        limits.maxConnections = 10_000
        #expect(limits.socketCap == 11_250)
    }
}
