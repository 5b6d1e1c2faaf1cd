import CTLS
import Foundation
import Glibc
import Histogram
import IOCore
import WireProtocol

/// Opens WebSocket connections with plain syscalls: nonblocking `connect(2)`, with `--tls` the TLS
/// handshake (ctls, memory-only sessions: this loop does every read and write), the HTTP upgrade, and
/// `poll(2)` to wait, up to `window` handshakes in flight at once. Set-up only: the measured traffic
/// runs on io_uring (``Worker``). Sockets are returned blocking (io_uring needs no O_NONBLOCK), with
/// their TLS sessions.
///
/// ``churn(paths:progress:)`` is the connection-rate measurement: each connection is opened the same
/// way, then closed with the close handshake (a close frame, the server's close and EOF), and its
/// slot is refilled.
struct Connector {
    let endpoint: Endpoint
    let window: Int
    let timeout: Double
    /// The client context; required for a wss endpoint.
    var tls: TLSClient?
    /// Offer permessage-deflate as a browser does (``deflateOffer``) and check the answer.
    var offerDeflate = false

    /// What browsers offer (Chromium, Firefox): the server may limit our window; we compress each
    /// message on its own whatever it answers, which is valid with or without context takeover.
    static let deflateOffer = "permessage-deflate; client_max_window_bits"

    /// Each connection opted in to a seat: its seat message follows the 101 and is read here.
    var expectSeat = false

    init(endpoint: Endpoint, window: Int, timeout: Double, tls: TLSClient? = nil, offerDeflate: Bool = false) {
        self.endpoint = endpoint
        self.window = window
        self.timeout = timeout
        self.tls = tls
        self.offerDeflate = offerDeflate
    }

    struct Result {
        /// One descriptor per requested connection, -1 where it failed.
        var fds: [Int32]
        /// With TLS: the session of each descriptor (nil where it failed).
        var sessions: [OpaquePointer?]
        var failed: Int
        var errors: [String: Int]
        var seconds: Double
        /// The TLS version negotiated ("TLSv1.3"), nil without TLS.
        var tlsProtocol: String?
        /// Per descriptor: what permessage-deflate agreement it has (nil: none).
        var deflate: [DeflateParameters?]
        /// The first `Sec-WebSocket-Extensions` answer seen, if any.
        var extensionAnswer: String?
    }

    struct ChurnResult {
        /// Connections that completed the upgrade and then closed.
        var completed: Int
        var failed: Int
        var errors: [String: Int]
        var seconds: Double
        /// Per connection, from connect(2) to the 101 response (ns).
        var setup: Histogram<UInt64>
        /// Connections whose close frame the server answered with its own before closing.
        var closeAnswered: Int
        var tlsProtocol: String?
        /// CPU this thread used.
        var cpuSeconds: Double
    }

    private enum Phase { case connecting, upgrading, closing, done }

    /// One connection being opened (a class: its buffers are mutated in place).
    private final class Pending {
        let index: Int
        var fd: Int32
        var phase: Phase = .connecting
        var session: OpaquePointer?
        /// The TLS handshake is over (always true without TLS).
        var secured: Bool
        /// The upgrade request, sent as soon as the connection is secured.
        var request: [UInt8]
        /// Bytes waiting for the socket: the request, or ciphertext.
        var outbox: [UInt8] = []
        var written = 0
        /// Plaintext received: the response head, then (closing) the server's close frame.
        var response: [UInt8] = []
        let accept: String
        let started: UInt64
        var sawCloseFrame = false

        init(index: Int, fd: Int32, request: [UInt8], accept: String, secured: Bool) {
            self.index = index
            self.fd = fd
            self.request = request
            self.accept = accept
            self.secured = secured
            self.started = monotonicNanos()
        }

        var wantsToWrite: Bool { written < outbox.count }
    }

    /// What one `run` produced.
    private struct Outcome {
        var fds: [Int32]
        var sessions: [OpaquePointer?]
        var completed = 0
        var failed = 0
        var errors: [String: Int] = [:]
        var seconds = 0.0
        var setup = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
        var closeAnswered = 0
        var tlsProtocol: String?
        var deflate: [DeflateParameters?]
        var extensionAnswer: String?
    }

    /// Resolves the endpoint once.
    func address() throws -> (family: Int32, storage: sockaddr_storage, length: socklen_t) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &res)
        guard rc == 0, let info = res else {
            throw BenchError("cannot resolve \(endpoint.host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(res) }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: info.pointee.ai_addr, count: Int(info.pointee.ai_addrlen)))
        }
        return (info.pointee.ai_family, storage, info.pointee.ai_addrlen)
    }

    /// Opens `paths.count` connections (one per path) and returns them in the same order.
    func open(paths: [String], progress: (Int) -> Void) throws -> Result {
        let o = try run(paths: paths, churn: false, progress: progress)
        return Result(fds: o.fds, sessions: o.sessions, failed: o.failed, errors: o.errors, seconds: o.seconds, tlsProtocol: o.tlsProtocol,
                      deflate: o.deflate, extensionAnswer: o.extensionAnswer)
    }

    /// Opens and closes one connection per path, `window` at a time (connection-rate measurement).
    func churn(paths: [String], progress: (Int) -> Void) throws -> ChurnResult {
        let cpu0 = threadCPUNanos()
        let o = try run(paths: paths, churn: true, progress: progress)
        return ChurnResult(completed: o.completed, failed: o.failed, errors: o.errors, seconds: o.seconds, setup: o.setup,
                           closeAnswered: o.closeAnswered, tlsProtocol: o.tlsProtocol,
                           cpuSeconds: Double(threadCPUNanos() - cpu0) / 1e9)
    }

    private func run(paths: [String], churn: Bool, progress: (Int) -> Void) throws -> Outcome {
        if endpoint.tls && tls == nil { throw BenchError("a wss endpoint needs a TLS client context") }
        let addr = try address()
        let tlsBuffers = endpoint.tls ? TLSBuffers(plainCapacity: 16 * 1024, outCapacity: 16 * 1024) : nil
        var out = Outcome(fds: churn ? [] : [Int32](repeating: -1, count: paths.count),
                          sessions: churn ? [] : [OpaquePointer?](repeating: nil, count: paths.count),
                          deflate: churn ? [] : [DeflateParameters?](repeating: nil, count: paths.count))
        var next = 0
        var pending: [Pending] = []
        var pollfds: [pollfd] = []
        let started = monotonicNanos()
        var done = 0
        var lastReport = started
        let receive = UnsafeMutableRawPointer.allocate(byteCount: 16 * 1024, alignment: 64)
        defer { receive.deallocate() }
        let serverName = endpoint.host

        func fail(_ p: Pending, _ why: String) {
            if p.fd >= 0 { Glibc.close(p.fd) }
            p.fd = -1
            if let s = p.session { ctls_conn_free(s) }
            p.session = nil
            p.phase = .done
            out.failed += 1
            out.errors[why, default: 0] += 1
        }

        /// The connection is usable (open) or has closed cleanly (churn).
        func finish(_ p: Pending) {
            if churn {
                Glibc.close(p.fd)
                if let s = p.session { ctls_conn_free(s) }
                p.fd = -1
                p.session = nil
                out.completed += 1
                if p.sawCloseFrame { out.closeAnswered += 1 }
            } else {
                let flags = fcntl(p.fd, F_GETFL)
                _ = fcntl(p.fd, F_SETFL, flags & ~O_NONBLOCK)
                out.fds[p.index] = p.fd
                out.sessions[p.index] = p.session
                out.completed += 1
            }
            p.phase = .done
            done += 1
        }

        /// Queues plaintext for the socket: sealed with TLS.
        func queue(_ p: Pending, _ bytes: [UInt8]) -> Bool {
            guard let session = p.session, let tb = tlsBuffers else {
                p.outbox.append(contentsOf: bytes)
                return true
            }
            let n = bytes.withUnsafeBytes { ctls_write(session, tb.io, $0.baseAddress, Int32($0.count)) }
            tb.moveOut(to: &p.outbox)
            return n == Int32(bytes.count)
        }

        /// The upgrade answer is in: check it, then hand the connection over or start closing it.
        func upgraded(_ p: Pending, end: Int) {
            let head = String(decoding: p.response[0..<end], as: UTF8.self)
            // ("\r\n" is one Character in Swift.)
            let status = head.prefix(while: { $0 != "\r\n" && $0 != "\n" })
            guard status.hasPrefix("HTTP/1.1 101") else { return fail(p, "upgrade refused: \(status)") }
            let accepted = head.split(separator: "\r\n").contains { line in
                let parts = line.split(separator: ":", maxSplits: 1)
                return parts.count == 2 && parts[0].lowercased() == "sec-websocket-accept"
                    && parts[1].trimmingCharacters(in: .whitespaces) == p.accept
            }
            guard accepted else { return fail(p, "bad Sec-WebSocket-Accept") }
            var end = end
            if expectSeat {
                // The seat message follows the head (a short text frame): wait for all of it.
                let extra = p.response.count - end
                if extra < 2 || extra < 2 + Int(p.response[end + 1] & 0x7F) { return }
                let frame = p.response[end..<(end + 2 + Int(p.response[end + 1] & 0x7F))]
                guard frame.first == 0x81, String(decoding: frame.dropFirst(2), as: UTF8.self).hasPrefix(#"{"type":"seat""#) else {
                    return fail(p, "no seat message after the 101 response")
                }
                end = frame.endIndex
            }
            if p.response.count > end { return fail(p, "unexpected bytes after the 101 response") }
            var answers: [String] = []
            for line in head.split(separator: "\r\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2 && parts[0].lowercased() == "sec-websocket-extensions" {
                    answers.append(parts[1].trimmingCharacters(in: .whitespaces))
                }
            }
            if !answers.isEmpty {
                guard offerDeflate else { return fail(p, "an extension answered that was not offered: \(answers)") }
                guard answers.count == 1 else { return fail(p, "several Sec-WebSocket-Extensions answers: \(answers)") }
                switch parseDeflateAnswer(answers[0]) {
                case .success(let params):
                    if out.extensionAnswer == nil { out.extensionAnswer = answers[0] }
                    if !churn { out.deflate[p.index] = params }
                case .failure(let why):
                    return fail(p, "bad permessage-deflate answer (\(why.description)): \(answers[0])")
                }
            }
            if out.tlsProtocol == nil, let s = p.session { out.tlsProtocol = String(cString: ctls_protocol(s)) }
            if !churn { return finish(p) }
            let now = monotonicNanos()
            _ = out.setup.record(now > p.started ? now - p.started : 0)
            p.response.removeAll(keepingCapacity: true)
            p.phase = .closing
            let close: [UInt8] = [0x88, 0x82, 0x11, 0x22, 0x33, 0x44, 0x03 ^ 0x11, 0xE8 ^ 0x22]  // 1000, masked
            if !queue(p, close) { fail(p, "TLS write: \(tlsLastError())") }
        }

        /// Feeds received bytes: TLS handshake and records, then the response head or close frame.
        func received(_ p: Pending, _ n: Int) {
            var peerClosed = false
            if let session = p.session, let tb = tlsBuffers {
                tb.lend(receive, n)
                defer { tb.endLoan() }
                if !p.secured {
                    let r = ctls_handshake(session, tb.io)
                    tb.moveOut(to: &p.outbox)
                    if r == CTLS_FAILED { return fail(p, "TLS handshake: \(tlsLastError())") }
                    if r == 1 {
                        p.secured = true
                        // TLS 1.3: the request leaves with the client's Finished.
                        if !queue(p, p.request) { return fail(p, "TLS write: \(tlsLastError())") }
                    }
                }
                if p.secured {
                    while true {
                        let r = ctls_read(session, tb.io, tb.plain, Int32(tb.plainCapacity))
                        tb.moveOut(to: &p.outbox)
                        if r > 0 {
                            p.response.append(contentsOf: UnsafeRawBufferPointer(start: tb.plain, count: Int(r)))
                            continue
                        }
                        if r == CTLS_WANT_INPUT { break }
                        if r == CTLS_CLOSED { peerClosed = true; break }
                        return fail(p, "TLS: \(tlsLastError())")
                    }
                }
            } else {
                p.response.append(contentsOf: UnsafeRawBufferPointer(start: receive, count: n))
            }
            switch p.phase {
            case .upgrading:
                if let end = headEnd(p.response) {
                    upgraded(p, end: end)
                } else if peerClosed {
                    fail(p, "closed during the handshake (close_notify)")
                } else if p.response.count > 16384 {
                    fail(p, "response head too large")
                }
            case .closing:
                // The server's close frame (unmasked): 0x88, length, code.
                if p.response.count >= 2 && p.response[0] == 0x88 { p.sawCloseFrame = true }
                if peerClosed { finish(p) }
            default:
                break
            }
        }

        func step(_ p: Pending, revents: Int16) {
            if p.phase == .connecting {
                var err: Int32 = 0
                var len = socklen_t(4)
                getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len)
                if err != 0 { return fail(p, "connect: \(errnoDescription(err))") }
                p.phase = .upgrading
                if let tls, let tb = tlsBuffers {
                    guard let s = tls.session(serverName: serverName) else { return fail(p, "TLS: cannot create a session") }
                    p.session = s
                    tb.endLoan()
                    let r = ctls_handshake(s, tb.io)   // the ClientHello
                    tb.moveOut(to: &p.outbox)
                    if r == CTLS_FAILED { return fail(p, "TLS handshake: \(tlsLastError())") }
                } else {
                    p.outbox = p.request
                }
            } else if revents & Int16(POLLIN | POLLERR | POLLHUP) != 0 {
                let n = Glibc.recv(p.fd, receive, 16 * 1024, 0)
                if n < 0 {
                    if errno == EAGAIN { return }
                    if p.phase == .closing && errno == ECONNRESET { return finish(p) }
                    return fail(p, "recv: \(errnoDescription(errno))")
                }
                if n == 0 {
                    if p.phase == .closing { return finish(p) }
                    return fail(p, "closed during the handshake")
                }
                received(p, n)
                if p.phase == .done { return }
            }
            while p.wantsToWrite {
                let sent = p.outbox.withUnsafeBytes { Glibc.send(p.fd, $0.baseAddress! + p.written, $0.count - p.written, Int32(MSG_NOSIGNAL)) }
                if sent < 0 {
                    if errno == EAGAIN { return }
                    return fail(p, "send: \(errnoDescription(errno))")
                }
                p.written += sent
            }
            if p.written > 0 {
                p.outbox.removeAll(keepingCapacity: true)
                p.written = 0
            }
        }

        while next < paths.count || !pending.isEmpty {
            // Start new connections up to the window.
            while next < paths.count && pending.count < window {
                let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                let keyBytes = (0..<16).map { _ in UInt8.random(in: 0...255) }
                let key = base64Encode(keyBytes)
                let offer = offerDeflate ? "Sec-WebSocket-Extensions: \(Connector.deflateOffer)\r\n" : ""
                let request = Array("GET \(paths[next]) HTTP/1.1\r\nHost: \(endpoint.hostHeader)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n\(offer)\r\n".utf8)
                let p = Pending(index: next, fd: fd, request: request, accept: webSocketAccept(key: key), secured: !endpoint.tls)
                next += 1
                if fd < 0 {
                    fail(p, "socket: \(errnoDescription(errno))")
                    continue
                }
                Socket.setNoDelay(fd)
                var storage = addr.storage
                let rc = withUnsafePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, addr.length) }
                }
                if rc != 0 && errno != EINPROGRESS {
                    fail(p, "connect: \(errnoDescription(errno))")
                    continue
                }
                pending.append(p)
                if rc == 0 { step(p, revents: Int16(POLLOUT)) }
            }
            pending.removeAll { $0.phase == .done }
            // Wait for progress on any of them.
            pollfds.removeAll(keepingCapacity: true)
            for p in pending {
                let ev: Int16 = p.phase == .connecting || p.wantsToWrite ? Int16(POLLOUT) : Int16(POLLIN)
                pollfds.append(pollfd(fd: p.fd, events: ev, revents: 0))
            }
            if !pollfds.isEmpty { _ = Glibc.poll(&pollfds, nfds_t(pollfds.count), 100) }
            let now = monotonicNanos()
            for (i, p) in pending.enumerated() {
                let revents = pollfds[i].revents
                if revents == 0 {
                    if Double(now - p.started) / 1e9 > timeout {
                        fail(p, p.phase == .closing ? "close not answered within \(Int(timeout)) s" : "handshake timed out after \(Int(timeout)) s")
                    }
                    continue
                }
                step(p, revents: revents)
            }
            pending.removeAll { $0.phase == .done }
            if now - lastReport > 500_000_000 {
                lastReport = now
                progress(done)
            }
        }
        progress(done)
        out.seconds = Double(monotonicNanos() - started) / 1e9
        return out
    }

    private func headEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 {
            return i + 4
        }
        return nil
    }
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
@discardableResult
func raiseOpenFileLimit() -> Int {
    var lim = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 1024 }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
    }
    return Int(lim.rlim_cur)
}
