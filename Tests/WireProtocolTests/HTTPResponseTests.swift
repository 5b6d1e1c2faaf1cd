import Testing
import WireProtocol

@Suite struct HTTPResponseTests {
    func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test func responseHasStatusLineHeadersLengthConnectionAndBody() {
        let r = httpResponse(.ok, headers: [("Content-Type", "text/plain")], body: Array("ok".utf8), keepAlive: true)
        #expect(text(r) == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        let c = httpResponse(.notFound, keepAlive: false)
        #expect(text(c) == "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    @Test func headResponseKeepsLengthButDropsBody() {
        let r = httpResponse(.ok, body: Array("hello".utf8), keepAlive: true, headOnly: true)
        #expect(text(r) == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n")
    }

    @Test func givenContentLengthIsNotDuplicated() {
        let r = httpResponse(.ok, headers: [("content-length", "5")], keepAlive: true, headOnly: true)
        #expect(text(r) == "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: keep-alive\r\n\r\n")
    }

    @Test func errorResponseClosesWithPlainTextReason() {
        let r = text(httpErrorResponse(.badRequest))
        #expect(r.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(r.contains("Connection: close\r\n"))
        #expect(r.contains("Content-Type: text/plain; charset=utf-8\r\n"))
        #expect(r.hasSuffix("\r\n\r\n400 Bad Request\n"))
        #expect(r.contains("Content-Length: 16\r\n"))
        #expect(!r.contains("Sec-WebSocket-Version"))
    }

    @Test func upgradeRequiredCarriesSupportedVersion() {
        let r = text(httpErrorResponse(.upgradeRequired))
        #expect(r.hasPrefix("HTTP/1.1 426 Upgrade Required\r\n"))
        #expect(r.contains("Sec-WebSocket-Version: 13\r\n"))
    }

    @Test func errorResponseAddsExtraHeaders() {
        let r = text(httpErrorResponse(.methodNotAllowed, headers: [("Allow", "GET")]))
        #expect(r.contains("\r\nAllow: GET\r\n"))
    }

    @Test func upgradeResponseIsSwitchingProtocolsWithAccept() {
        #expect(text(webSocketUpgradeResponse(accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")) ==
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    }

    @Test func statusConstantsHaveTheirCodes() {
        let all: [(HTTPStatus, Int)] = [(.ok, 200), (.switchingProtocols, 101), (.badRequest, 400), (.notFound, 404),
                                        (.methodNotAllowed, 405), (.upgradeRequired, 426), (.requestHeaderFieldsTooLarge, 431),
                                        (.internalServerError, 500), (.serviceUnavailable, 503)]
        for (status, code) in all { #expect(status.code == code) }
    }
}
