import Foundation
import Glibc
import IOCore
import WireProtocol

/// Opens WebSocket connections with plain syscalls: nonblocking `connect(2)`, the HTTP upgrade, and
/// `poll(2)` to wait, up to `window` handshakes in flight at once. Set-up only: the measured traffic
/// runs on io_uring (``Worker``). Sockets are returned blocking (io_uring needs no O_NONBLOCK).
struct Connector {
    let endpoint: Endpoint
    let window: Int
    let timeout: Double

    struct Result {
        /// One descriptor per requested connection, -1 where it failed.
        var fds: [Int32]
        var failed: Int
        var errors: [String: Int]
        var seconds: Double
    }

    private enum Phase { case connecting, writing, reading, done }

    private struct Pending {
        var index: Int
        var fd: Int32
        var phase: Phase
        var request: [UInt8]
        var written = 0
        var response: [UInt8] = []
        var accept: String
        var started: UInt64
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
        let addr = try address()
        var fds = [Int32](repeating: -1, count: paths.count)
        var errors: [String: Int] = [:]
        var failed = 0
        var next = 0
        var pending: [Pending] = []
        var pollfds: [pollfd] = []
        let started = monotonicNanos()
        let hostHeader = endpoint.port == 80 ? endpoint.host : "\(endpoint.host):\(endpoint.port)"
        var done = 0
        var lastReport = started

        func fail(_ p: inout Pending, _ why: String) {
            if p.fd >= 0 { Glibc.close(p.fd) }
            p.fd = -1
            p.phase = .done
            failed += 1
            errors[why, default: 0] += 1
        }

        while next < paths.count || !pending.isEmpty {
            // Start new connections up to the window.
            while next < paths.count && pending.count < window {
                let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                let keyBytes = (0..<16).map { _ in UInt8.random(in: 0...255) }
                let key = base64Encode(keyBytes)
                let request = Array("GET \(paths[next]) HTTP/1.1\r\nHost: \(hostHeader)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8)
                var p = Pending(index: next, fd: fd, phase: .connecting, request: request, accept: webSocketAccept(key: key), started: monotonicNanos())
                next += 1
                if fd < 0 {
                    fail(&p, "socket: \(errnoDescription(errno))")
                    continue
                }
                Socket.setNoDelay(fd)
                var storage = addr.storage
                let rc = withUnsafePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, addr.length) }
                }
                if rc == 0 {
                    p.phase = .writing
                } else if errno != EINPROGRESS {
                    fail(&p, "connect: \(errnoDescription(errno))")
                    continue
                }
                pending.append(p)
            }
            // Wait for progress on any of them.
            pollfds.removeAll(keepingCapacity: true)
            for p in pending {
                let ev: Int16 = p.phase == .reading ? Int16(POLLIN) : Int16(POLLOUT)
                pollfds.append(pollfd(fd: p.fd, events: ev, revents: 0))
            }
            _ = Glibc.poll(&pollfds, nfds_t(pollfds.count), 100)
            let now = monotonicNanos()
            for i in pending.indices {
                let revents = pollfds[i].revents
                var p = pending[i]
                if revents == 0 {
                    if Double(now - p.started) / 1e9 > timeout { fail(&p, "handshake timed out after \(Int(timeout)) s") }
                    pending[i] = p
                    continue
                }
                step(&p, revents: revents, fail: fail)
                if p.phase == .done && p.fd >= 0 {
                    fds[p.index] = p.fd
                    done += 1
                }
                pending[i] = p
            }
            pending.removeAll { $0.phase == .done }
            if now - lastReport > 500_000_000 {
                lastReport = now
                progress(done)
            }
        }
        progress(done)
        return Result(fds: fds, failed: failed, errors: errors, seconds: Double(monotonicNanos() - started) / 1e9)
    }

    private func step(_ p: inout Pending, revents: Int16, fail: (inout Pending, String) -> Void) {
        if p.phase == .connecting {
            var err: Int32 = 0
            var len = socklen_t(4)
            getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 { return fail(&p, "connect: \(errnoDescription(err))") }
            p.phase = .writing
        }
        if p.phase == .writing {
            let n = p.request.withUnsafeBytes { Glibc.send(p.fd, $0.baseAddress! + p.written, $0.count - p.written, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EAGAIN { return }
                return fail(&p, "send: \(errnoDescription(errno))")
            }
            p.written += n
            if p.written == p.request.count { p.phase = .reading }
            return
        }
        if p.phase == .reading {
            var buf = [UInt8](repeating: 0, count: 4096)
            // Read only up to the end of the head: nothing follows a 101 until we send.
            let n = buf.withUnsafeMutableBytes { Glibc.recv(p.fd, $0.baseAddress!, $0.count, 0) }
            if n < 0 {
                if errno == EAGAIN { return }
                return fail(&p, "recv: \(errnoDescription(errno))")
            }
            if n == 0 { return fail(&p, "closed during the handshake") }
            p.response.append(contentsOf: buf[0..<n])
            guard let end = headEnd(p.response) else {
                if p.response.count > 16384 { fail(&p, "response head too large") }
                return
            }
            let head = String(decoding: p.response[0..<end], as: UTF8.self)
            let status = head.prefix(while: { $0 != "\r" })
            guard status.hasPrefix("HTTP/1.1 101") else { return fail(&p, "upgrade refused: \(status)") }
            let accepted = head.split(separator: "\r\n").contains { line in
                let parts = line.split(separator: ":", maxSplits: 1)
                return parts.count == 2 && parts[0].lowercased() == "sec-websocket-accept"
                    && parts[1].trimmingCharacters(in: .whitespaces) == p.accept
            }
            guard accepted else { return fail(&p, "bad Sec-WebSocket-Accept") }
            if p.response.count > end { return fail(&p, "unexpected bytes after the 101 response") }
            let flags = fcntl(p.fd, F_GETFL)
            _ = fcntl(p.fd, F_SETFL, flags & ~O_NONBLOCK)
            p.phase = .done
        }
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
