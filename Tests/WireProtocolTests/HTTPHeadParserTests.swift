import Testing
import WireProtocol

@Suite struct HTTPHeadParserTests {
    static let sample = "GET /ws/lobby?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        + "Sec-WebSocket-Key:   dGhlIHNhbXBsZSBub25jZQ==  \r\nX-Empty:\r\nx-dup: first\r\nX-Dup: second\r\n\r\n"

    @Test func completeHeadExposesRequestLineAndLength() throws {
        let request = Self.sample + "BODY"
        try withHead(request) { result in
            let head = try #require(result.head, "expected complete, got \(result)")
            #expect(string(head.method) == "GET")
            #expect(string(head.target) == "/ws/lobby?x=1")
            #expect(head.versionMinor == 1)
            #expect(head.headLength == Self.sample.utf8.count)
            #expect(!head.isHeadMethod)
        }
    }

    @Test func headerLookupIsCaseInsensitiveFirstMatchAndTrimmed() throws {
        try withHead(Self.sample) { result in
            let head = try #require(result.head, "expected complete, got \(result)")
            #expect(string(head.header("host")) == "example.com")
            #expect(string(head.header("HOST")) == "example.com")
            #expect(string(head.header("sec-websocket-key")) == "dGhlIHNhbXBsZSBub25jZQ==")
            #expect(string(head.header("X-Dup")) == "first")
            #expect(string(head.header("x-empty")) == "")
            #expect(head.header("Missing") == nil)
            #expect(head.header("Hos") == nil)
        }
    }

    @Test func headerTokensAreMatchedInCommaSeparatedListsCaseInsensitively() throws {
        try withHead(Self.sample) { result in
            let head = try #require(result.head, "expected complete, got \(result)")
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
    func keepAliveFollowsVersionAndConnectionHeader(request: String, keepAlive: Bool) throws {
        try withHead(request) { result in
            let head = try #require(result.head, "expected complete, got \(result)")
            #expect(head.keepAlive == keepAlive)
        }
    }

    @Test func everyStrictPrefixOfAValidHeadNeedsMore() throws {
        let bytes = Array(Self.sample.utf8)
        for n in 0..<bytes.count {
            let result = bytes[..<n].withUnsafeBytes { parseHTTPHead($0) }
            try #require(result.needsMore, "prefix \(n): \(result)")
        }
    }

    @Test func headLargerThanLimitIsRequestHeaderFieldsTooLarge() {
        let big = "GET / HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 9000) + "\r\n\r\n"
        withHead(big) { result in
            #expect(result.failureStatus == .requestHeaderFieldsTooLarge, "got \(result)")
        }
        // Without a terminator yet, but already at the limit.
        let partial = "GET / HTTP/1.1\r\nX-Big: " + String(repeating: "a", count: 100)
        withHead(partial, limit: 64) { result in
            #expect(result.failureStatus?.code == 431, "got \(result)")
        }
        // Below the limit it just needs more.
        withHead(partial, limit: 1000) { result in
            #expect(result.needsMore, "got \(result)")
        }
        // A head of exactly `limit` bytes is fine.
        let exact = "GET / HTTP/1.1\r\n\r\n"
        withHead(exact, limit: exact.utf8.count) { result in
            #expect(result.head != nil, "got \(result)")
        }
        withHead(exact, limit: exact.utf8.count - 1) { result in
            #expect(result.failureStatus == .requestHeaderFieldsTooLarge, "got \(result)")
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
            #expect(result.failureStatus == .badRequest, "expected 400 for \(request.debugDescription), got \(result)")
        }
    }

    @Test func acceptableVariantsParse() throws {
        for request in [
            "\r\nGET / HTTP/1.1\r\n\r\n",                    // leading empty line
            "GET / HTTP/1.1\r\nX-A:\tb \t\r\n\r\n",          // tabs as OWS
            "GET / HTTP/1.1\r\nX-A: caf\u{E9}\r\n\r\n",      // obs-text
            "PATCH * HTTP/1.0\r\n\r\n",                      // no Host: accepted
            "M-SEARCH /x HTTP/1.1\r\n\r\n",
        ] {
            withHead(request) { result in
                #expect(result.head != nil, "expected complete for \(request.debugDescription), got \(result)")
            }
        }
        try withHead("\r\nGET /x HTTP/1.1\r\nX-A:\tb \t\r\n\r\n") { result in
            let head = try #require(result.head, "expected complete, got \(result)")
            #expect(string(head.method) == "GET")
            #expect(string(head.target) == "/x")
            #expect(string(head.header("x-a")) == "b")
        }
    }

    @Test func pipelinedRequestsParseOneAtATime() throws {
        let two = Array("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n".utf8)
        try two.withUnsafeBytes { buffer in
            let first = try #require(parseHTTPHead(buffer).head, "the first request did not parse")
            #expect(string(first.target) == "/a")
            let rest = UnsafeRawBufferPointer(rebasing: buffer[first.headLength...])
            let second = try #require(parseHTTPHead(rest).head, "the second request did not parse")
            #expect(string(second.target) == "/b")
        }
    }
}
