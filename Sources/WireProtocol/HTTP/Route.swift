// Routing of a parsed request head: the server's few fixed endpoints, the WebSocket upgrade, static files.

/// Where a request goes, decided from its head alone by ``route(_:)``.
public enum Route: Equatable, Sendable {
    /// `GET /status` (query string ignored).
    case status
    /// `GET /metrics` (query string ignored).
    case metrics
    /// A valid WebSocket upgrade for room `roomId`; `accept` is the `Sec-WebSocket-Accept` value to send.
    case webSocket(roomId: String, accept: String)
    /// Any other `GET`/`HEAD` target: the percent-decoded path (starting with `/`, never containing a `..`
    /// segment or a NUL byte, valid UTF-8), for static files. The server answers 404 when there is none.
    case file(path: String)
    /// The request cannot be served: reply with ``httpErrorResponse(_:headers:)``.
    case failure(HTTPStatus)
}

/// The longest room id, in bytes after percent-decoding.
public let maxRoomIdLength = 128

/// Routes a request head.
///
/// Rules: `/ws` is room `"1"`; `/ws/<room>` names a room by its percent-decoded last segment, which must be
/// 1–128 bytes of URL-safe characters `[A-Za-z0-9-._~]` after decoding, else 400 (also for bad %-escapes,
/// extra segments, an empty segment). Query strings are ignored; an absolute-form target
/// (`http://host/path`) is reduced to its path. Non-GET on `/ws` or `/ws/...` is 405. For an upgrade:
/// missing `Upgrade: websocket` or missing `upgrade` token in `Connection` is 400; HTTP/1.0 is 400;
/// a missing or invalid `Sec-WebSocket-Key` (must be base64 of exactly 16 bytes) is 400;
/// `Sec-WebSocket-Version` missing or not `13` is 426. Non-GET on `/status` or `/metrics` is 405; methods
/// other than GET/HEAD on any other path are 405. Bad escapes, NUL, invalid UTF-8 or `..` segments in a file
/// path are 400. Invalid body framing (``HTTPRequestHead/bodyFraming``) is 400 on any path, and an
/// upgrade request with a body is 400.
public func route(_ head: HTTPRequestHead) -> Route {
    // Invalid body framing makes the request undelimitable, whatever its target (400).
    let framing = head.bodyFraming
    if framing == .invalid { return .failure(.badRequest) }
    let method = head.method
    let isGet = bytesEqual(method, "GET")
    let isGetOrHead = isGet || bytesEqual(method, "HEAD")

    guard let path = requestPath(head.target) else {
        return .failure(isGetOrHead ? .badRequest : .methodNotAllowed)
    }
    if bytesEqual(path, "/status") {
        return isGet ? .status : .failure(.methodNotAllowed)
    }
    if bytesEqual(path, "/metrics") {
        return isGet ? .metrics : .failure(.methodNotAllowed)
    }
    if bytesEqual(path, "/ws") || (path.count >= 4 && bytesEqual(UnsafeRawBufferPointer(rebasing: path[0..<4]), "/ws/")) {
        guard isGet else { return .failure(.methodNotAllowed) }
        let roomId: String
        if path.count == 3 {
            roomId = "1"
        } else {
            guard let id = decodeRoomId(UnsafeRawBufferPointer(rebasing: path[4...])) else {
                return .failure(.badRequest)
            }
            roomId = id
        }
        // An upgrade request carries no body (RFC 6455 §4.1); one that does is refused.
        if framing != .none { return .failure(.badRequest) }
        return upgradeRoute(head, roomId: roomId)
    }
    guard isGetOrHead else { return .failure(.methodNotAllowed) }
    guard let filePath = decodeFilePath(path) else { return .failure(.badRequest) }
    return .file(path: filePath)
}

/// Checks the WebSocket handshake headers (RFC 6455 §4.2.1) and computes the accept value.
func upgradeRoute(_ head: HTTPRequestHead, roomId: String) -> Route {
    guard head.versionMinor >= 1,
          head.headerHasToken("Upgrade", "websocket"),
          head.headerHasToken("Connection", "upgrade") else {
        return .failure(.badRequest)
    }
    guard let key = head.header("Sec-WebSocket-Key"), isValidWebSocketKey(key) else {
        return .failure(.badRequest)
    }
    guard let version = head.header("Sec-WebSocket-Version"), bytesEqual(version, "13") else {
        return .failure(.upgradeRequired)
    }
    return .webSocket(roomId: roomId, accept: webSocketAccept(key: key))
}

/// The path part of a request-target: origin-form up to `?`/`#`, or the path of an absolute-form target
/// (empty, standing for `/`, when it has none). Nil when the target has neither form (e.g. `*`).
func requestPath(_ target: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
    var start = 0
    if target.first != UInt8(ascii: "/") {
        // absolute-form: scheme "://" authority [path]
        let schemeLength: Int
        if target.count >= 7 && asciiCaseInsensitiveEquals(UnsafeRawBufferPointer(rebasing: target[0..<7]), "http://") {
            schemeLength = 7
        } else if target.count >= 8 && asciiCaseInsensitiveEquals(UnsafeRawBufferPointer(rebasing: target[0..<8]), "https://") {
            schemeLength = 8
        } else {
            return nil
        }
        start = schemeLength
        while start < target.count, target[start] != UInt8(ascii: "/"), target[start] != UInt8(ascii: "?"),
              target[start] != UInt8(ascii: "#") {
            start += 1
        }
        if start == target.count || target[start] != UInt8(ascii: "/") {
            // No path: the empty slice stands for "/".
            return UnsafeRawBufferPointer(rebasing: target[start..<start])
        }
    }
    var end = start
    while end < target.count, target[end] != UInt8(ascii: "?"), target[end] != UInt8(ascii: "#") { end += 1 }
    return UnsafeRawBufferPointer(rebasing: target[start..<end])
}

@inline(__always)
func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}

/// Percent-decodes `bytes`, calling `sink` for each decoded byte; false on a bad escape.
@inline(__always)
public func percentDecode(_ bytes: UnsafeRawBufferPointer, _ sink: (UInt8) -> Bool) -> Bool {
    var i = 0
    while i < bytes.count {
        var c = bytes[i]
        if c == UInt8(ascii: "%") {
            guard i + 2 < bytes.count, let hi = hexValue(bytes[i + 1]), let lo = hexValue(bytes[i + 2]) else {
                return false
            }
            c = hi << 4 | lo
            i += 3
        } else {
            i += 1
        }
        if !sink(c) { return false }
    }
    return true
}

@inline(__always)
func isUnreserved(_ c: UInt8) -> Bool {
    switch c {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
         UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
        return true
    default:
        return false
    }
}

/// Decodes and validates a room id segment (1–128 unreserved bytes after decoding, no `/` before decoding).
func decodeRoomId(_ segment: UnsafeRawBufferPointer) -> String? {
    if segment.isEmpty || segment.count > maxRoomIdLength * 3 { return nil }
    return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: maxRoomIdLength) { out -> String? in
        var n = 0
        let ok = percentDecode(segment) { c in
            guard n < maxRoomIdLength, isUnreserved(c) else { return false }
            out[n] = c
            n += 1
            return true
        }
        guard ok, n > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(rebasing: out[0..<n]), as: UTF8.self)
    }
}

/// Decodes a file path; nil for bad escapes, NUL, invalid UTF-8, or a `..` segment.
func decodeFilePath(_ path: UnsafeRawBufferPointer) -> String? {
    if path.isEmpty { return "/" }
    var decoded: [UInt8] = []
    decoded.reserveCapacity(path.count)
    let ok = percentDecode(path) { c in
        guard c != 0 else { return false }
        decoded.append(c)
        return true
    }
    guard ok else { return nil }
    var validator = UTF8Validator()
    let valid = decoded.withUnsafeBytes { validator.feed($0) } && validator.isComplete
    guard valid else { return nil }
    for segment in decoded.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    where segment.count == 2 && segment.first == UInt8(ascii: ".") && segment.last == UInt8(ascii: ".") {
        return nil
    }
    return String(decoding: decoded, as: UTF8.self)
}

extension HTTPRequestHead {
    /// The path of the request-target as sent, without query or fragment (`/` for an absolute-form
    /// target that has none); nil for a target of neither form.
    public var path: String? {
        requestPath(target).map { $0.isEmpty ? "/" : String(decoding: $0, as: UTF8.self) }
    }
}
