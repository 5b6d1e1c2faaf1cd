import Testing
import WireProtocol

@Suite struct HTTPHeadParserTests {
    static let sample = "GET /ws/lobby?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        + "Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  \r\nX-Empty:\r\nx-dup: first\r\nX-Dup: second\r\n\r\n"

    @Test func completeHeadExposesRequestLineAndLength() {
        let request = Self.sample + "BODY"
        withHead(request) { result in
            guard case let .complete(head) = result else {
                Issue.record("expected complete, got \(result)")
                return
            }
            #expect(string(head.method) == "GET")
            #expect(string(head.target) == "/ws/lobby?x=1")
            #expect(head.versionMinor == 1)
            #expect(head.headLength == Self.sample.utf8.count)
            #expect(!head.isHeadMethod)
        }
    }

    @Test func headerLookupIsCaseInsensitiveFirstMatchAndTrimmed() {
        withHead(Self.sample) { result in
            guard case let .complete(head) = result else { Issue.record("not complete"); return }
            #expect(string(head.header("host")) == "example.com")
            #expect(string(head.header("HOST")) == "example.com")
            #expect(string(head.header("sec-websocket-key")) == "dGhlIHNhbXBsZSBub25jZQ==")
            #expect(string(head.header("X-Dup")) == "first")
            #expect(string(head.header("x-empty")) == "")
            #expect(head.header("Missing") == nil)
            #expect(head.header("Hos") == nil)
        }
    }

    @Test func headerTokensAreMatchedInCommaSeparatedListsCaseInsensitively() {
        withHead(Self.sample) { result in
            guard case let .complete(head) = result else { Issue.record("not complete"); return }
            #expect(head.headerHasToken("connection", "upgrade"))
            #expect(head.headerHasToken("Connection", "KEEP-ALIVE"))
            #expect(!head.headerHasToken("Connection", "close"))
            #expect(!head.headerHasToken("Connection", "keep"))
            #expect(head.headerHasToken("upgrade", "WebSocket"))
            #expect(head.headerHasToken("X-Dup", "second"), "later headers of the same name count")
        }
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n", false),
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", true),
    ])
    func keepAliveFollowsVersionAndConnectionHeader(request: String, keepAlive: Bool) {
        withHead(request) { result in
            guard case let .complete(head) = result else { Issue.record("not complete"); return }
            #expect(head.keepAlive == keepAlive)
        }
    }

    @Test func everyStrictPrefixOfAValidHeadNeedsMore() {
        let bytes = Array(Self.sample.utf8)
        for n in 0..<bytes.count {
            let result = bytes[..<n].withUnsafeBytes { parseHTTPHead($0) }
            guard case .needMore = result else {
                Issue.record("prefix \(n): \(result)")
                return
            }
        }
    }

    @Test func headLargerThanLimitIsRequestHeaderFieldsTooLarge() {
        let big = "GET / HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 9000) + "\r\n\r\n"
        withHead(big) { result in
            guard case .failure(let status) = result else { Issue.record("\(result)"); return }
            #expect(status == .requestHeaderFieldsTooLarge)
        }
        // Without a terminator yet, but already at the limit.
        let partial = "GET / HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 100)
        withHead(partial, limit: 64) { result in
            guard case .failure(let status) = result else { Issue.record("\(result)"); return }
            #expect(status.code == 431)
        }
        // Below the limit it just needs more.
        withHead(partial, limit: 1000) { result in
            guard case .needMore = result else { Issue.record("\(result)"); return }
        }
        // A head of exactly `limit` bytes is fine.
        let exact = "GET / HTTP/1.1\r\n\r\n"
        withHead(exact, limit: exact.utf8.count) { result in
            guard case .complete = result else { Issue.record("\(result)"); return }
        }
        withHead(exact, limit: exact.utf8.count - 1) { result in
            guard case .failure(.requestHeaderFieldsTooLarge) = result else { Issue.record("\(result)"); return }
        }
    }

    @Test(arguments: [
        "GET  / HTTP/1.1\r\n\r\n",                       // double space
        "GET / HTTP/2.0\r\n\r\n",                        // version
        "GET / HTTP/1.x\r\n\r\n",
        "GET / http/1.1\r\n\r\n",
        "GET / HTTP/1.1 \r\n\r\n",
        "GET /\r\n\r\n",                                  // HTTP/0.9 style
        "G(T / HTTP/1.1\r\n\r\n",                        // bad method token
        " GET / HTTP/1.1\r\n\r\n",
        "GET /a\u{7F}b HTTP/1.1\r\n\r\n",                // control char in target
        "GET / HTTP/1.1\nHost: a\r\n\r\n",               // bare LF
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",          // bare CR
        "GET / HTTP/1.1\r\nHost: a\r\n\r\r",
        "GET / HTTP/1.1\r\nNoColon\r\n\r\n",             // missing colon
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",            // space before colon
        "GET / HTTP/1.1\r\nHo(st: a\r\n\r\n",            // bad name token
        "GET / HTTP/1.1\r\n: a\r\n\r\n",                 // empty name
        "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",        // obs-fold
        "GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: a\u{01}b\r\n\r\n",       // control char in value
        "GET / HTTP/1.1\r\nX-A: a\u{00}b\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: a\u{7F}\r\n\r\n",
        "\u{16}\u{03}\u{01}\u{02}\u{00}",                // a TLS ClientHello is rejected early
    ])
    func malformedHeadIsBadRequest(request: String) {
        withHead(request) { result in
            guard case .failure(let status) = result else {
                Issue.record("expected 400 for \(request.debugDescription), got \(result)")
                return
            }
            #expect(status == .badRequest)
        }
    }

    @Test func acceptableVariantsParse() {
        for request in [
            "\r\nGET / HTTP/1.1\r\n\r\n",                    // leading empty line
            "GET / HTTP/1.1\r\nX-A:\tb \t\r\n\r\n",          // tabs as OWS
            "GET / HTTP/1.1\r\nX-A: caf\u{E9}\r\n\r\n",      // obs-text
            "PATCH * HTTP/1.0\r\n\r\n",                      // no Host: accepted
            "M-SEARCH /x HTTP/1.1\r\n\r\n",
        ] {
            withHead(request) { result in
                guard case .complete = result else {
                    Issue.record("expected complete for \(request.debugDescription), got \(result)")
                    return
                }
            }
        }
        withHead("\r\nGET /x HTTP/1.1\r\nX-A:\tb \t\r\n\r\n") { result in
            guard case let .complete(head) = result else { return }
            #expect(string(head.method) == "GET")
            #expect(string(head.target) == "/x")
            #expect(string(head.header("x-a")) == "b")
        }
    }

    @Test func pipelinedRequestsParseOneAtATime() {
        let two = Array("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n".utf8)
        two.withUnsafeBytes { buffer in
            guard case let .complete(first) = parseHTTPHead(buffer) else { Issue.record("first"); return }
            #expect(string(first.target) == "/a")
            let rest = UnsafeRawBufferPointer(rebasing: buffer[first.headLength...])
            guard case let .complete(second) = parseHTTPHead(rest) else { Issue.record("second"); return }
            #expect(string(second.target) == "/b")
        }
    }
}
