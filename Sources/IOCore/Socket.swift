import CUring
import Glibc

/// Small socket helpers (plain syscalls, used at set-up and teardown, not per message).
public enum Socket {
    /// A listening TCP socket on `host:port` with SO_REUSEADDR and SO_REUSEPORT, so every shard can
    /// have its own listener on the same port and the kernel spreads connections among them.
    public static func listen(host: String, port: UInt16, backlog: Int32 = 4096) throws -> (fd: Int32, port: UInt16) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let info = res else {
            throw EventLoopError("cannot resolve listen address \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(res) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw EventLoopError("socket: \(errnoDescription(errno))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        if bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
            let e = errno
            close(fd)
            throw EventLoopError("cannot listen on \(host):\(port): bind: \(errnoDescription(e))")
        }
        if Glibc.listen(fd, backlog) != 0 {
            let e = errno
            close(fd)
            throw EventLoopError("listen: \(errnoDescription(e))")
        }
        return (fd, localPort(fd))
    }

    /// The local port a socket is bound to.
    public static func localPort(_ fd: Int32) -> UInt16 {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
        default:
            return 0
        }
    }

    /// The address of the socket's peer, `host:port` (`[v6]:port` for IPv6); nil when it has
    /// none (already disconnected) or is not an IP socket.
    public static func peerAddress(_ fd: Int32) -> String? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var port = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Int32 in
                guard getpeername(fd, sa, &len) == 0 else { return -1 }
                return getnameinfo(sa, len, &host, socklen_t(host.count), &port, socklen_t(port.count),
                                   NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard rc == 0 else { return nil }
        let text = { (chars: [CChar]) in String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        let h = text(host)
        return Int32(storage.ss_family) == AF_INET6 ? "[\(h)]:\(text(port))" : "\(h):\(text(port))"
    }

    /// TCP_NODELAY: frames go out when written, not after Nagle's delay.
    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    public static func shutdown(_ fd: Int32, write: Bool, read: Bool) {
        let how: Int32 = write && read ? Int32(SHUT_RDWR) : (write ? Int32(SHUT_WR) : Int32(SHUT_RD))
        _ = Glibc.shutdown(fd, how)
    }

    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    /// Pins the calling thread to `cpu`; returns false if the kernel refused.
    @discardableResult
    public static func pinCurrentThread(to cpu: Int) -> Bool { cu_pin_thread_to_cpu(Int32(cpu)) == 0 }

    /// How many CPUs this process may run on.
    public static var availableCPUs: Int { max(1, allowedCPUs.count) }

    /// The numbers of the CPUs this process may run on (its affinity mask), in order.
    public static var allowedCPUs: [Int] {
        var buf = [Int32](repeating: 0, count: 1024)
        let n = Int(cu_allowed_cpus(&buf, 1024))
        return buf[0..<n].map(Int.init)
    }
}

/// An eventfd: the cross-thread doorbell of a shard's mailbox.
public final class EventFD: @unchecked Sendable {
    // Sendable: the descriptor is an integer; write(2) on an eventfd is thread-safe. `readTarget`
    // is touched only by the one loop that listens (``EventLoopBackend/armWake(_:tag:)``).
    public let fd: Int32
    /// Where the listening loop's read of the counter lands; alive as long as the eventfd.
    let readTarget = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    public init() throws {
        fd = cu_eventfd()
        if fd < 0 { throw EventLoopError("eventfd: \(errnoDescription(errno))") }
    }
    /// Rings the doorbell (adds 1).
    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }
    deinit {
        Glibc.close(fd)
        readTarget.deallocate()
    }
}

extension EventLoopBackend {
    /// Arms a read of `bell`'s counter: a `.wake`-style completion tagged `tag` when it rings.
    /// Custody: the read lands in `bell`'s own 8 bytes, which live as long as `bell`; keep it
    /// alive until the completion.
    public func armWake(_ bell: EventFD, tag: Tag) {
        readWake(fd: bell.fd, into: bell.readTarget, tag: tag)
    }
}

/// Monotonic clock in nanoseconds.
@inline(__always)
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// CPU time the calling thread has used (user and system), in nanoseconds.
public func threadCPUNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Writes `text` to standard error unbuffered (safe from any thread).
public func writeStandardError(_ text: String) {
    cu_write_stderr(text)
}
