import CUring
import Glibc

/// The epoll backend, behind the same contract as ``UringEventLoop``, for hosts where io_uring is
/// disabled. Readiness is turned into the same completions: a readable socket is read into one of
/// this loop's own receive buffers, a send is tried at once and finished when the socket turns
/// writable, so the shard above cannot tell the backends apart.
public final class EpollEventLoop: EventLoopBackend {
    public let backendName = "epoll"

    private struct Watch {
        var acceptTag: Tag?
        var recvTag: Tag?
        var recvMultishot = false
        var sendTag: Tag?
        var sendMessage: UnsafeMutablePointer<msghdr>?
        var wakeTag: Tag?
        var wakeInto: UnsafeMutableRawPointer?
        var registeredMask: UInt32 = 0
        var registered = false
        var active: Bool { acceptTag != nil || recvTag != nil || sendTag != nil || wakeTag != nil }
    }

    private let epfd: Int32
    private var watches: [Watch] = []
    private var ready: [Completion] = []
    private var dispatching: [Completion] = []
    private let bufferSize: Int
    private let buffers: UnsafeMutableRawPointer
    private var freeBuffers: [UInt16]
    private let events: UnsafeMutablePointer<cu_epoll_event>
    private let maxEvents: Int32 = 256
    private var starved = false
    private var ownedMessages = Set<UnsafeMutablePointer<msghdr>>()

    public init(_ config: EventLoopConfiguration) throws {
        epfd = cu_epoll_create()
        if epfd < 0 { throw EventLoopError("epoll_create1 failed: \(errnoDescription(errno))") }
        bufferSize = config.receiveBufferSize
        buffers = .allocate(byteCount: config.receiveBufferCount * bufferSize, alignment: 4096)
        freeBuffers = (0..<config.receiveBufferCount).reversed().map { UInt16($0) }
        events = .allocate(capacity: Int(maxEvents))
        ready.reserveCapacity(1024)
        dispatching.reserveCapacity(1024)
    }

    deinit {
        close(epfd)
        buffers.deallocate()
        events.deallocate()
    }

    private func withWatch(_ fd: Int32, _ body: (inout Watch) -> Void) {
        let i = Int(fd)
        if i >= watches.count { watches.append(contentsOf: repeatElement(Watch(), count: i - watches.count + 1 + 64)) }
        body(&watches[i])
        update(fd)
    }

    private func update(_ fd: Int32) {
        let w = watches[Int(fd)]
        var mask: UInt32 = 0
        if (w.acceptTag != nil || w.recvTag != nil || w.wakeTag != nil) && !(starved && w.recvTag != nil) {
            mask |= CU_EPOLLIN | CU_EPOLLRDHUP
        }
        if w.sendTag != nil { mask |= CU_EPOLLOUT }
        if !w.registered {
            if mask == 0 { return }
            if cu_epoll_ctl(epfd, CU_EPOLL_CTL_ADD, fd, mask, UInt64(UInt32(bitPattern: fd))) == 0 {
                watches[Int(fd)].registered = true
                watches[Int(fd)].registeredMask = mask
            }
        } else if mask != w.registeredMask {
            _ = cu_epoll_ctl(epfd, CU_EPOLL_CTL_MOD, fd, mask, UInt64(UInt32(bitPattern: fd)))
            watches[Int(fd)].registeredMask = mask
        }
    }

    private static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 && flags & O_NONBLOCK == 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    public func armAccept(fd: Int32, tag: Tag) {
        Self.setNonBlocking(fd)
        withWatch(fd) { $0.acceptTag = tag }
    }

    public func armReceive(fd: Int32, tag: Tag, multishot: Bool) {
        Self.setNonBlocking(fd)
        withWatch(fd) { $0.recvTag = tag; $0.recvMultishot = multishot }
    }

    public func send(fd: Int32, message: UnsafeMutablePointer<msghdr>, tag: Tag) {
        let n = sendmsg(fd, message, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        if n >= 0 {
            ready.append(Completion(tag: tag, result: Int32(n), bufferID: nil, more: false))
        } else if errno == EAGAIN || errno == EWOULDBLOCK {
            withWatch(fd) { $0.sendTag = tag; $0.sendMessage = message }
        } else {
            ready.append(Completion(tag: tag, result: -errno, bufferID: nil, more: false))
        }
    }

    public func send(fd: Int32, bytes: UnsafeRawPointer, count: Int, tag: Tag) {
        let n = Glibc.send(fd, bytes, count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        if n >= 0 {
            ready.append(Completion(tag: tag, result: Int32(n), bufferID: nil, more: false))
        } else if errno == EAGAIN || errno == EWOULDBLOCK {
            // Finish it as a one-iovec sendmsg when the socket turns writable.
            let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 1)
            iov.pointee = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes), iov_len: count)
            let msg = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)
            msg.pointee = msghdr()
            msg.pointee.msg_iov = iov
            msg.pointee.msg_iovlen = 1
            ownedMessages.insert(msg)
            withWatch(fd) { $0.sendTag = tag; $0.sendMessage = msg }
        } else {
            ready.append(Completion(tag: tag, result: -errno, bufferID: nil, more: false))
        }
    }

    /// Frees a `msghdr` this loop made for a single-buffer send that had to wait.
    private func releaseOwned(_ msg: UnsafeMutablePointer<msghdr>?) {
        guard let msg, ownedMessages.remove(msg) != nil else { return }
        msg.pointee.msg_iov.deallocate()
        msg.deallocate()
    }

    public func readWake(fd: Int32, into: UnsafeMutableRawPointer, tag: Tag) {
        withWatch(fd) { $0.wakeTag = tag; $0.wakeInto = into }
    }

    public func cancel(_ target: Tag) {
        for fd in watches.indices where watches[fd].active {
            var hit = false
            if watches[fd].recvTag == target { watches[fd].recvTag = nil; hit = true }
            if watches[fd].acceptTag == target { watches[fd].acceptTag = nil; hit = true }
            if hit {
                ready.append(Completion(tag: target, result: -ECANCELED, bufferID: nil, more: false))
                update(Int32(fd))
            }
        }
    }

    public func forget(fd: Int32) {
        let i = Int(fd)
        guard i < watches.count else { return }
        if watches[i].registered { _ = cu_epoll_ctl(epfd, CU_EPOLL_CTL_DEL, fd, 0, 0) }
        releaseOwned(watches[i].sendMessage)
        watches[i] = Watch()
    }

    public func buffer(_ id: UInt16, count: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: buffers + Int(id) * bufferSize, count: count)
    }

    public func recycle(_ id: UInt16) {
        freeBuffers.append(id)
        if starved {
            starved = false
            for fd in watches.indices where watches[fd].recvTag != nil { update(Int32(fd)) }
        }
    }

    public func flush() {}

    public func poll(timeoutNanoseconds: Int64, _ body: (Completion) -> Void) {
        var timeoutMs: Int32 = -1
        if !ready.isEmpty {
            timeoutMs = 0
        } else if timeoutNanoseconds >= 0 {
            timeoutMs = Int32(clamping: (timeoutNanoseconds + 999_999) / 1_000_000)
        }
        let n = cu_epoll_wait(epfd, events, maxEvents, timeoutMs)
        if n > 0 {
            for i in 0..<Int(n) {
                handle(fd: Int32(bitPattern: UInt32(truncatingIfNeeded: events[i].data)), events: events[i].events)
            }
        }
        swap(&ready, &dispatching)
        for c in dispatching { body(c) }
        dispatching.removeAll(keepingCapacity: true)
    }

    private func handle(fd: Int32, events ev: UInt32) {
        let i = Int(fd)
        guard i < watches.count else { return }
        let w = watches[i]
        let readable = ev & (CU_EPOLLIN | CU_EPOLLHUP | CU_EPOLLERR | CU_EPOLLRDHUP) != 0
        let writable = ev & (CU_EPOLLOUT | CU_EPOLLHUP | CU_EPOLLERR) != 0
        if readable, let tag = w.acceptTag {
            for _ in 0..<64 {
                let c = cu_accept_nonblocking(fd)
                if c >= 0 {
                    ready.append(Completion(tag: tag, result: c, bufferID: nil, more: true))
                    continue
                }
                let e = -c
                if e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED { break }
                // Like a multishot accept that ends on an error: report and disarm.
                watches[i].acceptTag = nil
                ready.append(Completion(tag: tag, result: -e, bufferID: nil, more: false))
                break
            }
        }
        if readable, let tag = w.wakeTag, let into = w.wakeInto {
            let r = read(fd, into, 8)
            if r >= 0 || errno != EAGAIN {
                watches[i].wakeTag = nil
                watches[i].wakeInto = nil
                ready.append(Completion(tag: tag, result: r >= 0 ? Int32(r) : -errno, bufferID: nil, more: false))
            }
        }
        if readable, let tag = w.recvTag {
            if let id = freeBuffers.popLast() {
                let r = recv(fd, buffers + Int(id) * bufferSize, bufferSize, Int32(MSG_DONTWAIT))
                if r > 0 {
                    let keep = w.recvMultishot
                    if !keep { watches[i].recvTag = nil }
                    ready.append(Completion(tag: tag, result: Int32(r), bufferID: id, more: keep))
                } else {
                    freeBuffers.append(id)
                    if r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                        watches[i].recvTag = nil
                        ready.append(Completion(tag: tag, result: r == 0 ? 0 : -errno, bufferID: nil, more: false))
                    }
                }
            } else {
                starved = true
            }
        }
        if writable, let tag = w.sendTag, let msg = w.sendMessage {
            let n = sendmsg(fd, msg, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            if n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) {
                let e = errno
                watches[i].sendTag = nil
                watches[i].sendMessage = nil
                releaseOwned(msg)
                errno = e
                ready.append(Completion(tag: tag, result: n >= 0 ? Int32(n) : -errno, bufferID: nil, more: false))
            }
        }
        update(fd)
    }
}
