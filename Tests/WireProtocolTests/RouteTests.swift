import Testing
import WireProtocol

@Suite struct RouteTests {
    static let upgradeHeaders = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    static let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    /// The route of `request`; a request the head parser refuses is a failure of the calling test
    /// (reported at the caller), not a route.
    func routeOf(_ request: String, sourceLocation: SourceLocation = #_sourceLocation) -> Route {
        withHead(request) { result in
            guard let head = result.head else {
                Issue.record("the head did not parse: \(result)", sourceLocation: sourceLocation)
                return .failure(HTTPStatus(code: 0, reason: "unparsed"))
            }
            return route(head)
        }
    }

    func upgrade(_ target: String, method: String = "GET", headers: String = upgradeHeaders,
                 sourceLocation: SourceLocation = #_sourceLocation) -> Route {
        routeOf("\(method) \(target) HTTP/1.1\r\n\(headers)\r\n", sourceLocation: sourceLocation)
    }

    @Test func statusAndMetricsRouteOnGetIgnoringQuery() {
        #expect(routeOf("GET /status HTTP/1.1\r\n\r\n") == .status)
        #expect(routeOf("GET /status?verbose=1 HTTP/1.1\r\n\r\n") == .status)
        #expect(routeOf("GET /metrics HTTP/1.1\r\n\r\n") == .metrics)
        #expect(routeOf("GET /metrics?x HTTP/1.1\r\n\r\n") == .metrics)
        #expect(routeOf("GET http://example.com/status HTTP/1.1\r\n\r\n") == .status, "absolute-form")
    }

    @Test(arguments: ["POST", "HEAD", "PUT", "DELETE"])
    func nonGetOnStatusOrMetricsIsMethodNotAllowed(method: String) {
        #expect(routeOf("\(method) /status HTTP/1.1\r\n\r\n") == .failure(.methodNotAllowed))
        #expect(routeOf("\(method) /metrics HTTP/1.1\r\n\r\n") == .failure(.methodNotAllowed))
    }

    @Test func bareWsPathIsRoomOne() {
        #expect(upgrade("/ws") == .webSocket(roomId: "1", accept: Self.accept))
        #expect(upgrade("/ws?token=abc") == .webSocket(roomId: "1", accept: Self.accept))
    }

    @Test(arguments: [("/ws/lobby", "lobby"), ("/ws/a-b.c_d~e", "a-b.c_d~e"), ("/ws/a%2Db", "a-b"), ("/ws/%41%62", "Ab"),
                      ("/ws/room?x=1", "room"), ("/ws/" + String(repeating: "r", count: 128), String(repeating: "r", count: 128)),
                      ("/ws/" + String(repeating: "%61", count: 128), String(repeating: "a", count: 128))])
    func roomIdIsThePercentDecodedLastSegment(target: String, room: String) {
        #expect(upgrade(target) == .webSocket(roomId: room, accept: Self.accept))
    }

    @Test(arguments: ["/ws/", "/ws/" + String(repeating: "r", count: 129), "/ws/" + String(repeating: "%61", count: 129),
                      "/ws/a%zz", "/ws/a%2", "/ws/a%", "/ws/a%2Fb", "/ws/a/b", "/ws/room/", "/ws/a%20b", "/ws/caf%C3%A9",
                      "/ws/a!b", "/ws/a%00", "/ws/?x=1"])
    func badRoomIdIsBadRequest(target: String) {
        #expect(upgrade(target) == .failure(.badRequest))
    }

    @Test(arguments: ["POST", "HEAD", "PUT"])
    func nonGetOnWsIsMethodNotAllowed(method: String) {
        #expect(upgrade("/ws", method: method) == .failure(.methodNotAllowed))
        #expect(upgrade("/ws/room", method: method) == .failure(.methodNotAllowed))
    }

    @Test func missingUpgradeOrConnectionTokenIsBadRequest() {
        let noUpgrade = Self.upgradeHeaders.replacingOccurrences("Upgrade: websocket\r\n", "")
        #expect(upgrade("/ws/r", headers: noUpgrade) == .failure(.badRequest))
        let wrongUpgrade = Self.upgradeHeaders.replacingOccurrences("Upgrade: websocket", "Upgrade: h2c")
        #expect(upgrade("/ws/r", headers: wrongUpgrade) == .failure(.badRequest))
        let noConnection = Self.upgradeHeaders.replacingOccurrences("Connection: Upgrade\r\n", "")
        #expect(upgrade("/ws/r", headers: noConnection) == .failure(.badRequest))
        let keepAliveOnly = Self.upgradeHeaders.replacingOccurrences("Connection: Upgrade", "Connection: keep-alive")
        #expect(upgrade("/ws/r", headers: keepAliveOnly) == .failure(.badRequest))
        let listed = Self.upgradeHeaders.replacingOccurrences("Connection: Upgrade", "Connection: keep-alive, upgrade")
        #expect(upgrade("/ws/r", headers: listed) == .webSocket(roomId: "r", accept: Self.accept))
        #expect(routeOf("GET /ws/r HTTP/1.0\r\n\(Self.upgradeHeaders)\r\n") == .failure(.badRequest), "HTTP/1.0 cannot upgrade")
    }

    @Test func missingOrInvalidKeyIsBadRequest() {
        let noKey = Self.upgradeHeaders.replacingOccurrences("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")
        #expect(upgrade("/ws/r", headers: noKey) == .failure(.badRequest))
        let shortKey = Self.upgradeHeaders.replacingOccurrences("dGhlIHNhbXBsZSBub25jZQ==", "Zm9vYmFy")
        #expect(upgrade("/ws/r", headers: shortKey) == .failure(.badRequest))
        let notBase64 = Self.upgradeHeaders.replacingOccurrences("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j!Q==")
        #expect(upgrade("/ws/r", headers: notBase64) == .failure(.badRequest))
    }

    @Test func missingOrWrongVersionIsUpgradeRequired() {
        let noVersion = Self.upgradeHeaders.replacingOccurrences("Sec-WebSocket-Version: 13\r\n", "")
        #expect(upgrade("/ws/r", headers: noVersion) == .failure(.upgradeRequired))
        let v8 = Self.upgradeHeaders.replacingOccurrences("Version: 13", "Version: 8")
        #expect(upgrade("/ws/r", headers: v8) == .failure(.upgradeRequired))
    }

    @Test func otherGetAndHeadTargetsAreFilesWithDecodedPaths() {
        #expect(routeOf("GET / HTTP/1.1\r\n\r\n") == .file(path: "/"))
        #expect(routeOf("GET /index.html?v=2 HTTP/1.1\r\n\r\n") == .file(path: "/index.html"))
        #expect(routeOf("HEAD /a%20b/c%C3%A9.txt HTTP/1.1\r\n\r\n") == .file(path: "/a b/cé.txt"))
        #expect(routeOf("GET /wsx HTTP/1.1\r\n\r\n") == .file(path: "/wsx"))
        #expect(routeOf("GET /statuses HTTP/1.1\r\n\r\n") == .file(path: "/statuses"))
        #expect(routeOf("GET http://example.com HTTP/1.1\r\n\r\n") == .file(path: "/"))
    }

    @Test(arguments: ["/%zz", "/a%0", "/%00", "/../etc/passwd", "/a/%2E%2E/b", "/a/..", "/%FF"])
    func badFilePathIsBadRequest(target: String) {
        #expect(routeOf("GET \(target) HTTP/1.1\r\n\r\n") == .failure(.badRequest))
    }

    @Test(arguments: ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
    func otherMethodsOnOtherPathsAreMethodNotAllowed(method: String) {
        #expect(routeOf("\(method) /index.html HTTP/1.1\r\n\r\n") == .failure(.methodNotAllowed))
    }

    @Test func targetThatIsNeitherOriginNorAbsoluteFormIsRejected() {
        #expect(routeOf("OPTIONS * HTTP/1.1\r\n\r\n") == .failure(.methodNotAllowed))
        #expect(routeOf("GET * HTTP/1.1\r\n\r\n") == .failure(.badRequest))
        #expect(routeOf("GET example.com:80 HTTP/1.1\r\n\r\n") == .failure(.badRequest))
    }

    @Test(arguments: ["abc", "-1", "5, 6", "1e3", ""])
    func invalidContentLengthIsBadRequestOnAnyPath(value: String) {
        #expect(routeOf("GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: \(value)\r\n\r\n") == .failure(.badRequest))
        #expect(upgrade("/ws", headers: Self.upgradeHeaders + "Content-Length: \(value)\r\n") == .failure(.badRequest))
    }

    @Test func bodyFramingIsReadFromTheHead() throws {
        func framing(_ headers: String) throws -> HTTPBodyFraming {
            try withHead("GET /status HTTP/1.1\r\nHost: x\r\n\(headers)\r\n") { result in
                try #require(result.head, "the head with \(headers.debugDescription) did not parse: \(result)").bodyFraming
            }
        }
        #expect(try framing("") == HTTPBodyFraming.none)
        #expect(try framing("Content-Length: 0\r\n") == HTTPBodyFraming.none)
        #expect(try framing("Content-Length: 5\r\n") == .present)
        #expect(try framing("Transfer-Encoding: chunked\r\n") == .present)
        #expect(try framing("Content-Length: 5x\r\n") == .invalid)
    }

    @Test func aBodyStillRoutesButAnUpgradeWithABodyIsRefused() {
        #expect(routeOf("GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n") == .status)
        #expect(upgrade("/ws", headers: Self.upgradeHeaders + "Content-Length: 5\r\n") == .failure(.badRequest))
        #expect(upgrade("/ws", headers: Self.upgradeHeaders + "Transfer-Encoding: chunked\r\n") == .failure(.badRequest))
    }
}

extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        var result = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
