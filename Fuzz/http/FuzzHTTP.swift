// Fuzz target: the HTTP/1.1 request-head parser (`parseHTTPHead`) and the router (`route`).
//
// Properties, beyond "no crash, no out-of-bounds read" (every parse runs on an exactly sized copy):
// - Limit and split points: the parse of any prefix under any limit is what one unlimited parse of
//   the whole input predicts: `complete` once the prefix (cut at the limit) holds the head,
//   `400` once it holds the first malformed byte, else `431` when the buffer reached the limit,
//   else `needMore`. So no head longer than the limit is ever accepted, every proper prefix of a
//   head needs more, and bytes after a head are never read.
// - Round trip: a parsed head, re-serialised from its fields, parses to the same fields and the
//   same route, and is a fixed point of parse-then-serialise.
// - Accessors (`header`, `headerHasToken`, `keepAlive`, `bodyFraming`, `query`, `path`) agree
//   with plain re-implementations over the parsed fields.
// - Routes keep their promises: room ids are 1–128 unreserved bytes, the accept value is that of
//   the key sent, file paths start with `/` and hold no NUL and no `..` segment, and so on.

import WireProtocol

/// The parse of one buffer, copied out while the buffer lived.
enum Outcome: Equatable, CustomStringConvertible {
    case needMore
    case complete(OwnedHead)
    case failure(Int)

    var description: String {
        switch self {
        case .needMore: return "needMore"
        case .complete(let h): return "complete(\(h.headLength) bytes)"
        case .failure(let code): return "failure(\(code))"
        }
    }
}

/// A parsed head's fields as owned bytes.
struct OwnedHead: Equatable {
    var headLength: Int
    var method: [UInt8]
    var target: [UInt8]
    var versionMinor: Int
    var headers: [OwnedHeader]

    /// Equal fields, ignoring where the head ended.
    func sameFields(_ o: OwnedHead) -> Bool {
        method == o.method && target == o.target && versionMinor == o.versionMinor && headers == o.headers
    }
}

struct OwnedHeader: Equatable {
    var name: [UInt8]
    var value: [UInt8]
}

/// A route as a comparable value.
enum OwnedRoute: Equatable {
    case status, metrics
    case webSocket(String, String)
    case file(String)
    case failure(Int)

    init(_ r: Route) {
        switch r {
        case .status: self = .status
        case .metrics: self = .metrics
        case .webSocket(let room, let accept): self = .webSocket(room, accept)
        case .file(let path): self = .file(path)
        case .failure(let s): self = .failure(s.code)
        }
    }
}

/// What `HTTPRequestHead`'s accessors answered, copied while the buffer lived.
struct Accessors {
    var upgradeHeader: [UInt8]?
    var connectionHasUpgrade: Bool
    var connectionHasClose: Bool
    var keepAlive: Bool
    var framing: HTTPBodyFraming
    var query: String?
    var path: String?
    var isHead: Bool
    var copied: [(name: String, value: String)]
}

func own(_ h: HTTPRequestHead) -> OwnedHead {
    var headers: [OwnedHeader] = []
    fuzzForEachHeader(h) { n, v in
        headers.append(OwnedHeader(name: Array(n), value: Array(v)))
        return true
    }
    return OwnedHead(headLength: h.headLength, method: Array(h.method), target: Array(h.target),
                     versionMinor: h.versionMinor, headers: headers)
}

/// Parses a fresh copy of `bytes`; for a complete head also routes it and reads its accessors.
func parse(_ bytes: some Collection<UInt8>, limit: Int) -> (Outcome, OwnedRoute?, Accessors?) {
    withFreshCopy(bytes) { buffer in
        switch parseHTTPHead(UnsafeRawBufferPointer(buffer), limit: limit) {
        case .needMore:
            return (.needMore, nil, nil)
        case .failure(let status):
            return (.failure(status.code), nil, nil)
        case .complete(let head):
            let acc = Accessors(
                upgradeHeader: fuzzHeader(head, "upgrade").map { Array($0) },
                connectionHasUpgrade: fuzzHeaderHasToken(head, "Connection", "upgrade"),
                connectionHasClose: fuzzHeaderHasToken(head, "connection", "Close"),
                keepAlive: fuzzKeepAlive(head), framing: head.bodyFraming, query: head.query, path: head.path,
                isHead: fuzzIsHeadMethod(head), copied: head.copiedHeaders())
            return (.complete(own(head)), OwnedRoute(route(head)), acc)
        }
    }
}

// MARK: - Plain re-implementations over owned fields

func lower(_ b: [UInt8]) -> [UInt8] { b.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 } }
func isOWSByte(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 }
func isTchar(_ c: UInt8) -> Bool {
    if (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) { return true }
    return Array("!#$%&'*+-.^_`|~".utf8).contains(c)
}
func trimmed(_ b: ArraySlice<UInt8>) -> [UInt8] {
    var s = b.startIndex, e = b.endIndex
    while s < e && isOWSByte(b[s]) { s += 1 }
    while e > s && isOWSByte(b[e - 1]) { e -= 1 }
    return Array(b[s..<e])
}

extension OwnedHead {
    func first(_ name: String) -> [UInt8]? {
        headers.first { lower($0.name) == lower(Array(name.utf8)) }?.value
    }
    func hasToken(_ name: String, _ token: String) -> Bool {
        headers.contains { h in
            lower(h.name) == lower(Array(name.utf8))
                && h.value.split(separator: 0x2C, omittingEmptySubsequences: false)
                    .contains { lower(trimmed($0)) == lower(Array(token.utf8)) }
        }
    }
    /// method SP target SP HTTP/1.d CRLF, `name: value` CRLF per header, CRLF.
    func serialised() -> [UInt8] {
        var out = method + [0x20] + target + Array(" HTTP/1.".utf8) + [UInt8(0x30 + versionMinor), 0x0D, 0x0A]
        for h in headers { out += h.name + [0x3A, 0x20] + h.value + [0x0D, 0x0A] }
        return out + [0x0D, 0x0A]
    }
}

/// The path of an origin- or absolute-form target, as `route` documents it.
func referencePath(_ target: [UInt8]) -> [UInt8]? {
    var rest = ArraySlice(target)
    if target.first != 0x2F {
        let t = lower(target)
        if t.starts(with: Array("http://".utf8)) { rest = rest.dropFirst(7) }
        else if t.starts(with: Array("https://".utf8)) { rest = rest.dropFirst(8) }
        else { return nil }
        guard let slash = rest.firstIndex(where: { $0 == 0x2F || $0 == 0x3F || $0 == 0x23 }), rest[slash] == 0x2F else {
            return []
        }
        rest = rest[slash...]
    }
    return Array(rest.prefix { $0 != 0x3F && $0 != 0x23 })
}

// MARK: - Checks

let defaultLimit = 8192

func checkFields(_ h: OwnedHead, inputCount: Int) {
    require(h.headLength >= 16 && h.headLength <= inputCount, "headLength \(h.headLength) of \(inputCount)")
    require(!h.method.isEmpty && h.method.allSatisfy(isTchar), "method is not a token")
    require(!h.target.isEmpty && h.target.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "target has a byte outside VCHAR")
    require((0...9).contains(h.versionMinor), "version 1.\(h.versionMinor)")
    for header in h.headers {
        require(!header.name.isEmpty && header.name.allSatisfy(isTchar), "header name is not a token")
        require(header.value.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }, "control byte in a value")
        require(header.value.first.map { !isOWSByte($0) } ?? true, "value starts with OWS")
        require(header.value.last.map { !isOWSByte($0) } ?? true, "value ends with OWS")
    }
}

func checkAccessors(_ h: OwnedHead, _ a: Accessors) {
    require(a.upgradeHeader == h.first("Upgrade"), "header(\"upgrade\") disagrees")
    require(a.connectionHasUpgrade == h.hasToken("connection", "UPGRADE"), "headerHasToken(Connection, upgrade) disagrees")
    require(a.connectionHasClose == h.hasToken("Connection", "close"), "headerHasToken(Connection, close) disagrees")
    let keepAlive = h.versionMinor >= 1
        ? !h.hasToken("Connection", "close")
        : h.hasToken("Connection", "keep-alive") && !h.hasToken("Connection", "close")
    require(a.keepAlive == keepAlive, "keepAlive disagrees")
    let framing: HTTPBodyFraming
    if h.first("Transfer-Encoding") != nil {
        framing = .present
    } else if let cl = h.first("Content-Length") {
        if cl.isEmpty || cl.count > 18 || !cl.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) { framing = .invalid }
        else { framing = cl.allSatisfy { $0 == 0x30 } ? .none : .present }
    } else {
        framing = .none
    }
    require(a.framing == framing, "bodyFraming \(a.framing), expected \(framing)")
    let query = h.target.firstIndex(of: 0x3F).map { q in
        String(decoding: h.target[(q + 1)...].prefix { $0 != 0x23 }, as: UTF8.self)
    }
    require(a.query == query, "query disagrees")
    let path = referencePath(h.target).map { $0.isEmpty ? "/" : String(decoding: $0, as: UTF8.self) }
    require(a.path == path, "path \(a.path ?? "nil"), expected \(path ?? "nil")")
    require(a.isHead == (h.method == Array("HEAD".utf8)), "isHeadMethod disagrees")
    require(a.copied.count == h.headers.count, "copiedHeaders count")
    for (c, o) in zip(a.copied, h.headers) {
        require(c.name == String(decoding: o.name, as: UTF8.self) && c.value == String(decoding: o.value, as: UTF8.self),
                "copiedHeaders disagrees")
    }
}

func checkRoute(_ r: OwnedRoute, _ h: OwnedHead) {
    let path = referencePath(h.target)
    let isGet = h.method == Array("GET".utf8)
    switch r {
    case .status:
        require(isGet && path == Array("/status".utf8), "status route for another request")
    case .metrics:
        require(isGet && path == Array("/metrics".utf8), "metrics route for another request")
    case .webSocket(let room, let accept):
        require(isGet && h.versionMinor >= 1, "upgrade for a non-GET or HTTP/1.0 request")
        guard let p = path else { fail("upgrade without a path") }
        require(p == Array("/ws".utf8) || p.starts(with: Array("/ws/".utf8)), "upgrade off /ws")
        if p == Array("/ws".utf8) { require(room == "1", "room of /ws is \(room)") }
        let id = Array(room.utf8)
        require(!id.isEmpty && id.count <= 128, "room id of \(id.count) bytes")
        require(id.allSatisfy { isTchar($0) && !Array("!#$%&'*+^`|".utf8).contains($0) }, "room id \(room) not unreserved")
        guard let key = h.first("Sec-WebSocket-Key") else {
            fail("upgrade without a key")
        }
        let expected = key.withUnsafeBytes { webSocketAccept(key: $0) }
        require(accept == expected && accept.utf8.count == 28, "accept value \(accept)")
        require(h.first("Sec-WebSocket-Version") == Array("13".utf8), "upgrade without version 13")
        require(h.hasToken("Upgrade", "websocket") && h.hasToken("Connection", "upgrade"), "upgrade without its tokens")
    case .file(let file):
        require(isGet || h.method == Array("HEAD".utf8), "file route for \(String(decoding: h.method, as: UTF8.self))")
        let bytes = Array(file.utf8)
        require(bytes.first == 0x2F, "file path \(file) does not start with /")
        require(!bytes.contains(0), "NUL in a file path")
        require(!bytes.split(separator: 0x2F, omittingEmptySubsequences: false).contains { $0.elementsEqual([0x2E, 0x2E]) },
                "`..` segment in \(file)")
    case .failure(let code):
        require([400, 405, 426].contains(code), "route failure \(code)")
    }
}

/// The first prefix length whose unlimited parse is a 400, found by bisection (the properties
/// below check that the outcome really is monotone in the prefix length).
func firstMalformedPrefix(_ data: UnsafeRawBufferPointer) -> Int? {
    guard case .failure(400) = parse(data, limit: Int.max).0 else { return nil }
    var lo = 1, hi = data.count   // parse(prefix hi) is 400; find the smallest such
    while lo < hi {
        let mid = (lo + hi) / 2
        if case .failure(400) = parse(data[..<mid], limit: Int.max).0 { hi = mid } else { lo = mid + 1 }
    }
    return lo
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    var rng = SplitMix(hashing: input)

    // The unlimited parse of the whole input is the model for every prefix and limit.
    let (whole, wholeRoute, wholeAccessors) = parse(input, limit: Int.max)
    let malformedAt = firstMalformedPrefix(input)
    var headLength: Int?
    if case .complete(let h) = whole { headLength = h.headLength }
    func expected(prefix n: Int, limit: Int) -> Outcome {
        let end = min(n, limit)
        if let l = headLength, l <= end, case .complete(let h) = whole { return .complete(h) }
        if let j = malformedAt, j <= end { return .failure(400) }
        return n >= limit ? .failure(431) : .needMore
    }
    func check(prefix n: Int, limit: Int) {
        let got = parse(input[..<n], limit: limit).0
        let want = expected(prefix: n, limit: limit)
        require(got == want, "prefix \(n) of \(size), limit \(limit): \(got), expected \(want)")
    }

    check(prefix: size, limit: defaultLimit)
    if let l = headLength {
        check(prefix: l - 1, limit: defaultLimit)
        check(prefix: l, limit: l)
        check(prefix: size, limit: l - 1)
    }
    if let j = malformedAt {
        check(prefix: j - 1, limit: Int.max)
    }
    for _ in 0..<6 {
        let n = rng.below(size + 1)
        let limit = rng.next() & 1 == 0 ? defaultLimit : rng.below(size + 2)
        check(prefix: n, limit: limit)
    }

    guard case .complete(let head) = whole, let r = wholeRoute, let acc = wholeAccessors else { return 0 }
    checkFields(head, inputCount: size)
    checkAccessors(head, acc)
    checkRoute(r, head)

    // Round trip through the serialised fields.
    let again = head.serialised()
    let (reparsed, reroute, _) = parse(again, limit: Int.max)
    guard case .complete(let h2) = reparsed else {
        fail("re-serialised head does not parse: \(reparsed)")
    }
    require(h2.sameFields(head) && h2.headLength == again.count, "re-serialised head parses to other fields")
    require(h2.serialised() == again, "serialise is not a fixed point")
    require(reroute == r, "re-serialised head routes elsewhere: \(String(describing: reroute)) vs \(r)")
    return 0
}
