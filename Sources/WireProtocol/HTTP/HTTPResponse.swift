// Serialized HTTP/1.1 responses. Off the hot path (one per connection or per plain HTTP request).

extension Array where Element == UInt8 {
    @inline(__always)
    mutating func appendASCII(_ s: String) {
        append(contentsOf: s.utf8)
    }
}

/// The full bytes of an HTTP/1.1 response.
///
/// Writes the status line, `headers` in order, then `Content-Length` (unless `headers` already has one),
/// and `Connection: keep-alive` or `Connection: close`, then the blank line and `body`. Pass a
/// `Content-Type` in `headers` when the body has one. With `headOnly` (a response to `HEAD`) the
/// Content-Length still describes `body` but the body bytes are left out.
public func httpResponse(_ status: HTTPStatus, headers: [(String, String)] = [], body: [UInt8] = [],
                         keepAlive: Bool, headOnly: Bool = false) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(128 + headers.count * 32 + (headOnly ? 0 : body.count))
    out.appendASCII("HTTP/1.1 \(status.code) \(status.reason)\r\n")
    var hasLength = false
    for (name, value) in headers {
        if name.lowercased() == "content-length" { hasLength = true }
        out.appendASCII(name)
        out.appendASCII(": ")
        out.appendASCII(value)
        out.appendASCII("\r\n")
    }
    if !hasLength {
        out.appendASCII("Content-Length: \(body.count)\r\n")
    }
    out.appendASCII(keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n")
    if !headOnly {
        out.append(contentsOf: body)
    }
    return out
}

/// A complete error response that closes the connection: the body is a short plain-text line
/// (`"404 Not Found\n"`). A 426 carries `Sec-WebSocket-Version: 13`. Extra `headers` (e.g. `Allow` for
/// a 405) are added as given.
public func httpErrorResponse(_ status: HTTPStatus, headers: [(String, String)] = []) -> [UInt8] {
    var all: [(String, String)] = [("Content-Type", "text/plain; charset=utf-8")]
    if status.code == 426 {
        all.append(("Sec-WebSocket-Version", "13"))
    }
    all.append(contentsOf: headers)
    return httpResponse(status, headers: all, body: Array("\(status.code) \(status.reason)\n".utf8), keepAlive: false)
}

/// The `101 Switching Protocols` response completing a WebSocket handshake (no extensions, no
/// subprotocol), with any extra `headers` after the handshake's own.
public func webSocketUpgradeResponse(accept: String, headers: [(name: String, value: String)] = []) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(130)
    out.appendASCII("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")
    out.appendASCII(accept)
    for (name, value) in headers {
        out.appendASCII("\r\n")
        out.appendASCII(name)
        out.appendASCII(": ")
        out.appendASCII(value)
    }
    out.appendASCII("\r\n\r\n")
    return out
}
