// The HTTP/1.1 request-head parser: one pass over the caller's bytes, in place, no allocation.
//
// Unsafe code is fenced here: `HTTPRequestHead` keeps a raw pointer into the caller's buffer and hands out
// `UnsafeRawBufferPointer` views that are valid only while that buffer is.

@usableFromInline let asciiCR: UInt8 = 0x0D
@usableFromInline let asciiLF: UInt8 = 0x0A
@usableFromInline let asciiSP: UInt8 = 0x20
@usableFromInline let asciiHTAB: UInt8 = 0x09
@usableFromInline let asciiColon: UInt8 = 0x3A
@usableFromInline let asciiComma: UInt8 = 0x2C

/// `tchar` of RFC 9110 §5.6.2: the characters allowed in methods and header field names.
@inlinable @inline(__always)
func isTokenChar(_ c: UInt8) -> Bool {
    switch c {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
         UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
         UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
        return true
    default:
        return false
    }
}

/// ASCII lower-casing of a single byte (letters only; other bytes unchanged).
@inlinable @inline(__always)
func asciiLower(_ c: UInt8) -> UInt8 {
    (c &- UInt8(ascii: "A")) < 26 ? c | 0x20 : c
}

/// Compares `bytes` with `name`'s UTF-8 ignoring ASCII case.
@inlinable
func asciiCaseInsensitiveEquals(_ bytes: UnsafeRawBufferPointer, _ name: String) -> Bool {
    var name = name
    return name.withUTF8 { n in
        guard n.count == bytes.count else { return false }
        for i in 0..<n.count where asciiLower(bytes[i]) != asciiLower(n[i]) {
            return false
        }
        return true
    }
}

/// Compares `bytes` with `string`'s UTF-8 exactly.
@inlinable
func bytesEqual(_ bytes: UnsafeRawBufferPointer, _ string: String) -> Bool {
    var string = string
    return string.withUTF8 { s in
        s.count == bytes.count && (s.count == 0 || memcmpEqual(bytes.baseAddress!, UnsafeRawPointer(s.baseAddress!), s.count))
    }
}

@inlinable @inline(__always)
func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    for i in 0..<count where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) {
        return false
    }
    return true
}

/// A parsed HTTP/1.x request head.
///
/// Every accessor returns a view into the buffer given to ``parseHTTPHead(_:limit:)``; the views (and this
/// value) are valid only while that buffer is alive and unchanged. Copy out anything you keep.
public struct HTTPRequestHead {
    /// Bytes from the start of the buffer up to and including the blank line that ends the head
    /// (a request body or the next pipelined request starts here).
    public let headLength: Int
    /// The minor version of `HTTP/1.x` (0 or 1 in practice).
    public let versionMinor: Int

    @usableFromInline let base: UnsafeRawPointer
    @usableFromInline let methodStart: Int
    @usableFromInline let methodEnd: Int
    @usableFromInline let targetStart: Int
    @usableFromInline let targetEnd: Int
    /// Offset of the first header line.
    @usableFromInline let headersStart: Int
    /// Offset of the CRLF of the blank line.
    @usableFromInline let headersEnd: Int

    @usableFromInline
    init(base: UnsafeRawPointer, headLength: Int, versionMinor: Int, methodStart: Int, methodEnd: Int,
         targetStart: Int, targetEnd: Int, headersStart: Int, headersEnd: Int) {
        self.base = base
        self.headLength = headLength
        self.versionMinor = versionMinor
        self.methodStart = methodStart
        self.methodEnd = methodEnd
        self.targetStart = targetStart
        self.targetEnd = targetEnd
        self.headersStart = headersStart
        self.headersEnd = headersEnd
    }

    /// The method token as sent (methods are case-sensitive: `GET`, `HEAD`, ...).
    @inlinable
    public var method: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + methodStart, count: methodEnd - methodStart)
    }

    /// The request-target as sent (origin-form `/path?query`, or absolute-form, or `*`).
    @inlinable
    public var target: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + targetStart, count: targetEnd - targetStart)
    }

    /// True when the method is exactly `HEAD` (the response must then carry no body).
    @inlinable
    public var isHeadMethod: Bool { bytesEqual(method, "HEAD") }

    /// Calls `body(name, value)` for each header line in order (value trimmed of OWS) until it returns false.
    @inlinable
    public func forEachHeader(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Bool) {
        var i = headersStart
        while i < headersEnd {
            let nameStart = i
            while base.load(fromByteOffset: i, as: UInt8.self) != asciiColon { i += 1 }
            let nameEnd = i
            i += 1
            while base.load(fromByteOffset: i, as: UInt8.self) != asciiCR { i += 1 }
            let lineEnd = i
            i += 2
            var vs = nameEnd + 1
            var ve = lineEnd
            while vs < ve, isOWS(base.load(fromByteOffset: vs, as: UInt8.self)) { vs += 1 }
            while ve > vs, isOWS(base.load(fromByteOffset: ve - 1, as: UInt8.self)) { ve -= 1 }
            let name = UnsafeRawBufferPointer(start: base + nameStart, count: nameEnd - nameStart)
            let value = UnsafeRawBufferPointer(start: base + vs, count: ve - vs)
            if !body(name, value) { return }
        }
    }

    /// The value of the first header called `name` (ASCII case-insensitive), trimmed of optional
    /// whitespace, or nil when there is none.
    @inlinable
    public func header(_ name: String) -> UnsafeRawBufferPointer? {
        var found: UnsafeRawBufferPointer?
        forEachHeader { n, v in
            if asciiCaseInsensitiveEquals(n, name) {
                found = v
                return false
            }
            return true
        }
        return found
    }

    /// True when any header called `name` holds `token` in its comma-separated list (both compared
    /// ASCII case-insensitively), e.g. `headerHasToken("Connection", "upgrade")`.
    @inlinable
    public func headerHasToken(_ name: String, _ token: String) -> Bool {
        var found = false
        forEachHeader { n, v in
            if asciiCaseInsensitiveEquals(n, name) && listHasToken(v, token) {
                found = true
                return false
            }
            return true
        }
        return found
    }

    /// Whether the connection persists after this request: HTTP/1.1 unless `Connection: close`;
    /// HTTP/1.0 only with `Connection: keep-alive`.
    @inlinable
    public var keepAlive: Bool {
        if versionMinor >= 1 {
            return !headerHasToken("Connection", "close")
        }
        return headerHasToken("Connection", "keep-alive") && !headerHasToken("Connection", "close")
    }

    /// Every header line as owned strings, in order, names as sent and values trimmed of optional
    /// whitespace (bytes that are not UTF-8 are repaired with U+FFFD). For decisions made away
    /// from the receive buffer, such as an upgrade policy; not for the hot path.
    public func copiedHeaders() -> [(name: String, value: String)] {
        var out: [(name: String, value: String)] = []
        forEachHeader { n, v in
            out.append((String(decoding: n, as: UTF8.self), String(decoding: v, as: UTF8.self)))
            return true
        }
        return out
    }

    /// The query of the request-target (after `?`, before any `#`), as sent; nil when there is none.
    public var query: String? {
        let t = target
        guard let q = t.firstIndex(of: UInt8(ascii: "?")) else { return nil }
        var end = q + 1
        while end < t.count, t[end] != UInt8(ascii: "#") { end += 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: t[(q + 1)..<end]), as: UTF8.self)
    }

    /// What the head says about a body after it (RFC 9112 §6): `Transfer-Encoding`, or a
    /// `Content-Length` that must be one plain decimal number (`abc`, `-1`, `5, 6` are invalid).
    public var bodyFraming: HTTPBodyFraming {
        if header("Transfer-Encoding") != nil { return .present }
        guard let cl = header("Content-Length") else { return .none }
        guard !cl.isEmpty, cl.count <= 18, cl.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return .invalid }
        return cl.allSatisfy({ $0 == 0x30 }) ? .none : .present
    }
}

/// Whether a request has a body after its head.
public enum HTTPBodyFraming: Sendable, Equatable {
    /// No body (no framing headers, or `Content-Length: 0`).
    case none
    /// A body follows (`Content-Length` > 0 or `Transfer-Encoding`).
    case present
    /// Unusable framing: the request cannot be delimited, so the connection cannot go on.
    case invalid
}

@inlinable @inline(__always)
func isOWS(_ c: UInt8) -> Bool { c == asciiSP || c == asciiHTAB }

/// True when the comma-separated `list` has an element equal to `token` (ASCII case-insensitive).
@inlinable
func listHasToken(_ list: UnsafeRawBufferPointer, _ token: String) -> Bool {
    var start = 0
    let count = list.count
    while start <= count {
        var end = start
        while end < count && list[end] != asciiComma { end += 1 }
        var s = start
        var e = end
        while s < e && isOWS(list[s]) { s += 1 }
        while e > s && isOWS(list[e - 1]) { e -= 1 }
        if asciiCaseInsensitiveEquals(UnsafeRawBufferPointer(rebasing: list[s..<e]), token) { return true }
        start = end + 1
    }
    return false
}

/// The result of ``parseHTTPHead(_:limit:)``.
public enum HTTPHeadParse {
    /// No complete head yet and the buffer is still under the limit: read more and parse again
    /// from the start of the (grown) buffer.
    case needMore
    /// A complete, well-formed head.
    case complete(HTTPRequestHead)
    /// The head is malformed (400) or too large (431); reply with ``httpErrorResponse(_:headers:)`` and close.
    case failure(HTTPStatus)
}

@usableFromInline
enum HeadScanError: Error {
    case incomplete
    case malformed
}

/// Parses an HTTP/1.x request head from the start of `buffer`, in place and without allocating.
///
/// - Returns: `.needMore` if no blank line (CRLFCRLF) yet and `buffer.count < limit`;
///   `.failure(.requestHeaderFieldsTooLarge)` when the head would exceed `limit` bytes;
///   `.failure(.badRequest)` for anything malformed: a bad request line or version (only `HTTP/1.x`),
///   a bare CR or LF, control characters, obs-fold continuation lines, whitespace before a colon, a header
///   line without a colon, invalid token characters in the method or a header name. Malformed bytes are
///   reported as soon as they are seen, even before the head is complete. Leading empty lines are skipped.
///   A missing `Host` is accepted.
public func parseHTTPHead(_ buffer: UnsafeRawBufferPointer, limit: Int = 8192) -> HTTPHeadParse {
    let end = min(buffer.count, limit)
    guard let base = buffer.baseAddress, end > 0 else {
        return buffer.count >= limit ? .failure(.requestHeaderFieldsTooLarge) : .needMore
    }
    do {
        return .complete(try scanHead(base, end))
    } catch .incomplete {
        return buffer.count >= limit ? .failure(.requestHeaderFieldsTooLarge) : .needMore
    } catch {
        return .failure(.badRequest)
    }
}

@usableFromInline
func scanHead(_ base: UnsafeRawPointer, _ end: Int) throws(HeadScanError) -> HTTPRequestHead {
    let p = base.assumingMemoryBound(to: UInt8.self)
    var i = 0

    @inline(__always) func byte(_ at: Int) throws(HeadScanError) -> UInt8 {
        if at >= end { throw .incomplete }
        return p[at]
    }
    @inline(__always) func expect(_ c: UInt8) throws(HeadScanError) {
        if try byte(i) != c { throw .malformed }
        i += 1
    }

    // RFC 9112 §2.2: ignore at least one empty line before the request-line.
    while try byte(i) == asciiCR {
        i += 1
        try expect(asciiLF)
    }

    // method SP
    let methodStart = i
    while isTokenChar(try byte(i)) { i += 1 }
    if i == methodStart { throw .malformed }
    let methodEnd = i
    try expect(asciiSP)

    // request-target SP: any visible ASCII
    let targetStart = i
    while true {
        let c = try byte(i)
        guard c > asciiSP && c < 0x7F else { break }
        i += 1
    }
    if i == targetStart { throw .malformed }
    let targetEnd = i
    try expect(asciiSP)

    // HTTP-version CRLF
    for c in "HTTP/1.".utf8 { try expect(c) }
    let digit = try byte(i) &- UInt8(ascii: "0")
    if digit > 9 { throw .malformed }
    i += 1
    try expect(asciiCR)
    try expect(asciiLF)

    // header fields
    let headersStart = i
    while true {
        let c = try byte(i)
        if c == asciiCR {
            i += 1
            try expect(asciiLF)
            return HTTPRequestHead(base: base, headLength: i, versionMinor: Int(digit),
                                   methodStart: methodStart, methodEnd: methodEnd,
                                   targetStart: targetStart, targetEnd: targetEnd,
                                   headersStart: headersStart, headersEnd: i - 2)
        }
        // field-name ":" (no whitespace before the colon; a leading SP/HTAB is obs-fold)
        let nameStart = i
        while isTokenChar(try byte(i)) { i += 1 }
        if i == nameStart { throw .malformed }
        try expect(asciiColon)
        // field-value: VCHAR / obs-text / SP / HTAB
        while true {
            let v = try byte(i)
            if v == asciiCR { break }
            if v == asciiHTAB || (v >= asciiSP && v != 0x7F) {
                i += 1
            } else {
                throw .malformed
            }
        }
        i += 1
        try expect(asciiLF)
    }
}
