import Glibc
import IOCore
import Testing

/// Focused tests of each event-loop feature, run against both backends: the io_uring one
/// (multishot accept, multishot recv into the provided buffer ring, gathered sendmsg, eventfd
/// wake, cancel) and the epoll one behind the same contract.

/// Repeats a socket call a signal interrupted: one with a receive timeout is never restarted
/// (signal(7)), and other suites in this process spawn processes whose SIGCHLD can land here.
private func retryingEINTR(_ call: () -> Int) -> Int {
    while true {
        let n = call()
        if n >= 0 || errno != EINTR { return n }
    }
}

private func connectClient(port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    precondition(rc == 0, "connect failed")
    return fd
}

private func makeLoop(_ backend: EventLoopConfiguration.Backend) throws -> any EventLoopBackend {
    var c = EventLoopConfiguration()
    c.backend = backend
    c.ringEntries = 64
    c.receiveBufferCount = 8
    c.receiveBufferSize = 4096
    return try makeEventLoop(c)
}

/// Polls until `match` has seen what it wants or the round limit is hit.
private func pollUntil(_ loop: any EventLoopBackend, rounds: Int = 200, _ match: (Completion) -> Bool) -> Bool {
    var done = false
    for _ in 0..<rounds where !done {
        loop.poll(timeoutNanoseconds: 20_000_000) { c in if match(c) { done = true } }
    }
    return done
}

private func expectPoll(_ loop: any EventLoopBackend, sourceLocation: SourceLocation = #_sourceLocation,
                        _ match: (Completion) -> Bool) {
    let ok = pollUntil(loop, match)
    #expect(ok, "the expected completion did not arrive", sourceLocation: sourceLocation)
}

/// A loopback listener with multishot accept armed on `loop`; the caller closes it.
private func armedListener(_ loop: any EventLoopBackend) throws -> (fd: Int32, port: UInt16) {
    let listener = try Socket.listen(host: "127.0.0.1", port: 0)
    loop.armAccept(fd: listener.fd, tag: IOCore.Tag(op: .accept, slot: 0, generation: 0))
    return listener
}

/// Polls until the next accepted connection and returns its descriptor (-1 if none came).
private func acceptNext(_ loop: any EventLoopBackend, sourceLocation: SourceLocation = #_sourceLocation) -> Int32 {
    var fd: Int32 = -1
    expectPoll(loop, sourceLocation: sourceLocation) { c in
        if c.tag.op == .accept, c.result >= 0, fd < 0 { fd = c.result }
        return fd >= 0
    }
    return fd
}

/// A loopback connection accepted through `loop`; `close()` forgets and closes all three ends.
private struct Connected {
    let loop: any EventLoopBackend
    let listener: Int32
    let client: Int32
    let server: Int32

    init(_ loop: any EventLoopBackend, sourceLocation: SourceLocation = #_sourceLocation) throws {
        self.loop = loop
        let l = try armedListener(loop)
        listener = l.fd
        client = connectClient(port: l.port)
        server = acceptNext(loop, sourceLocation: sourceLocation)
    }

    func close() {
        if server >= 0 { loop.forget(fd: server); Glibc.close(server) }
        Glibc.close(client)
        Socket.close(listener)
    }
}

@Suite("event loop", .serialized)
struct EventLoopTests {
    @Test("user_data tag round-trips op, slot and generation", arguments: [OpKind.accept, .recv, .send, .wake, .cancel])
    func tagLayout(op: OpKind) {
        IOCore.Tag.assertLayout()
        let t = IOCore.Tag(op: op, slot: 0xDEAD_BEEF, generation: 0xAB_CDEF)
        #expect(IOCore.Tag(rawValue: t.rawValue) == t)
        #expect(t.rawValue >> 56 == UInt64(op.rawValue))
        #expect(IOCore.Tag(rawValue: 0) == nil)
        // The generation wraps inside its 24 bits instead of spilling into the op byte.
        #expect(IOCore.Tag(op: op, slot: 1, generation: 0x1FF_FFFF).generation == 0xFF_FFFF)
    }

    @Test("accept, receive into provided buffers, gathered send", arguments: EventLoopConfiguration.Backend.allCases)
    func acceptReceiveSend(backend: EventLoopConfiguration.Backend) throws {
        let loop = try makeLoop(backend)
        let listener = try armedListener(loop)
        defer { Socket.close(listener.fd) }

        // Multishot accept: two connections, two completions, the accept stays armed.
        let c1 = connectClient(port: listener.port)
        let c2 = connectClient(port: listener.port)
        defer { close(c1); close(c2) }
        var accepted: [Int32] = []
        expectPoll(loop) { c in
            if c.tag.op == .accept, c.result >= 0 { accepted.append(c.result); #expect(c.more) }
            return accepted.count == 2
        }
        defer { for fd in accepted { close(fd) } }
        let server = accepted[0]

        // Multishot receive: each write arrives in a provided buffer; recycling keeps it going.
        loop.armReceive(fd: server, tag: IOCore.Tag(op: .recv, slot: 7, generation: 3), multishot: true)
        var received: [UInt8] = []
        for chunk in ["hello ", "io_uring ", "world"] {
            _ = chunk.utf8CString.withUnsafeBytes { write(c1, $0.baseAddress!, chunk.utf8.count) }
            let target = received.count + chunk.utf8.count
            expectPoll(loop) { c in
                guard c.tag.op == .recv else { return false }
                #expect(c.tag.slot == 7 && c.tag.generation == 3)
                if let id = c.bufferID, c.result > 0 {
                    received.append(contentsOf: loop.buffer(id, count: Int(c.result)))
                    loop.recycle(id)
                }
                return received.count >= target
            }
        }
        #expect(String(decoding: received, as: UTF8.self) == "hello io_uring world")

        // More writes than there are provided buffers, one at a time: recycling must keep up.
        for i in 0..<32 {
            var b = UInt8(i)
            _ = write(c1, &b, 1)
            var got = false
            expectPoll(loop) { c in
                if let id = c.bufferID {
                    got = loop.buffer(id, count: Int(c.result)).first == UInt8(i)
                    loop.recycle(id)
                }
                return got
            }
        }

        // Gathered send: three iovecs in one sendmsg arrive as one stream.
        let parts: [[UInt8]] = [Array("one,".utf8), Array("two,".utf8), Array("three".utf8)]
        let storage = parts.map { p -> UnsafeMutableRawPointer in
            let m = UnsafeMutableRawPointer.allocate(byteCount: p.count, alignment: 1)
            p.withUnsafeBytes { m.copyMemory(from: $0.baseAddress!, byteCount: p.count) }
            return m
        }
        let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 3)
        for (i, p) in parts.enumerated() { iov[i] = iovec(iov_base: storage[i], iov_len: p.count) }
        let msg = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)
        msg.pointee = msghdr()
        msg.pointee.msg_iov = iov
        msg.pointee.msg_iovlen = 3
        defer { msg.deallocate(); iov.deallocate(); storage.forEach { $0.deallocate() } }
        loop.send(fd: server, message: msg, tag: IOCore.Tag(op: .send, slot: 7, generation: 3))
        var sent: Int32 = -1
        expectPoll(loop) { c in
            if c.tag.op == .send { sent = c.result; return true }
            if let id = c.bufferID { loop.recycle(id) }
            return false
        }
        #expect(sent == 13)
        var buf = [UInt8](repeating: 0, count: 64)
        let n = read(c1, &buf, 64)
        #expect(String(decoding: buf[0..<max(n, 0)], as: UTF8.self) == "one,two,three")

        // Peer EOF ends the multishot receive with result 0 and no MORE flag.
        shutdown(c1, Int32(SHUT_WR))
        var eof = false
        expectPoll(loop) { c in
            if let id = c.bufferID { loop.recycle(id) }
            if c.tag.op == .recv && c.result == 0 { eof = !c.more }
            return eof
        }
        loop.forget(fd: server)
    }

    @Test("cancel ends an armed receive", arguments: EventLoopConfiguration.Backend.allCases)
    func cancelReceive(backend: EventLoopConfiguration.Backend) throws {
        let loop = try makeLoop(backend)
        let conn = try Connected(loop)
        defer { conn.close() }
        let server = conn.server
        let tag = IOCore.Tag(op: .recv, slot: 1, generation: 9)
        loop.armReceive(fd: server, tag: tag, multishot: true)
        loop.poll(timeoutNanoseconds: 1_000_000) { _ in }
        loop.cancel(tag)
        var ended = false
        expectPoll(loop) { c in
            if c.tag == tag { ended = !c.more && c.result < 0 }
            return ended
        }
    }

    /// io_uring keeps a socket it has used in its registered-file table, which holds a reference:
    /// `forget` must empty the slot so that `close` really closes, and a reused descriptor number
    /// must reach the new socket, not the old one.
    @Test("forget, then close: the peer sees EOF and the descriptor number can be reused", arguments: EventLoopConfiguration.Backend.allCases)
    func forgetThenClose(backend: EventLoopConfiguration.Backend) throws {
        let loop = try makeLoop(backend)
        let listener = try armedListener(loop)
        defer { Socket.close(listener.fd) }
        let first = connectClient(port: listener.port)
        defer { close(first) }
        let server = acceptNext(loop)
        let hello: [UInt8] = Array("first".utf8)
        hello.withUnsafeBytes { loop.send(fd: server, bytes: $0.baseAddress!, count: $0.count, tag: IOCore.Tag(op: .send, slot: 1, generation: 1)) }
        expectPoll(loop) { c in c.tag.op == .send && c.result == Int32(hello.count) }

        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(first, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buf = [UInt8](repeating: 0, count: 64)
        #expect(retryingEINTR { recv(first, &buf, 64, 0) } == hello.count)
        // The next connection is accepted (in poll) after the close, so it gets the lowest free
        // descriptor number, the one just closed; a send on it must reach the new peer.
        let next = connectClient(port: listener.port)
        defer { close(next) }
        setsockopt(next, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        loop.forget(fd: server)
        close(server)
        #expect(retryingEINTR { recv(first, &buf, 64, 0) } == 0, "the peer saw no EOF after close")
        let second = acceptNext(loop)
        defer { loop.forget(fd: second); close(second) }
        #expect(second == server)
        let again: [UInt8] = Array("second".utf8)
        again.withUnsafeBytes { loop.send(fd: second, bytes: $0.baseAddress!, count: $0.count, tag: IOCore.Tag(op: .send, slot: 2, generation: 1)) }
        expectPoll(loop) { c in c.tag.op == .send && c.result == Int32(again.count) }
        #expect(retryingEINTR { recv(next, &buf, 64, 0) } == again.count)
        #expect(Array(buf[0..<again.count]) == again)
    }

    @Test("a long run of sends reaches the kernel before the loop next waits", arguments: EventLoopConfiguration.Backend.allCases)
    func longSendRunIsSubmittedInBatches(backend: EventLoopConfiguration.Backend) throws {
        let loop = try makeLoop(backend)
        let conn = try Connected(loop)
        defer { conn.close() }
        let (peer, server) = (conn.client, conn.server)
        let count = UringEventLoop.sendBatch + 8
        // Custody: the bytes stay alive until every send has completed (polled below).
        let bytes = UnsafeMutablePointer<UInt8>.allocate(capacity: count)
        defer { bytes.deallocate() }
        for i in 0..<count {
            bytes[i] = UInt8(truncatingIfNeeded: i)
            loop.send(fd: server, bytes: bytes + i, count: 1, tag: IOCore.Tag(op: .send, slot: 1, generation: UInt32(i)))
        }
        // No poll yet: at least the first full batch must already be on the wire.
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 256)
        while got.count < UringEventLoop.sendBatch {
            let n = retryingEINTR { recv(peer, &buf, buf.count, 0) }
            if n <= 0 { break }
            got += buf[0..<n]
        }
        #expect(got.count >= UringEventLoop.sendBatch, "only \(got.count) bytes arrived before the loop polled")
        #expect(got == (0..<got.count).map { UInt8(truncatingIfNeeded: $0) })
        var completed = 0
        expectPoll(loop) { c in
            if c.tag.op == .send && c.result == 1 { completed += 1 }
            return completed == count
        }
    }

    @Test("a mailbox post wakes the loop through its eventfd", arguments: EventLoopConfiguration.Backend.allCases)
    func mailboxWake(backend: EventLoopConfiguration.Backend) throws {
        let loop = try makeLoop(backend)
        let mailbox = try Mailbox<Int>()
        let into = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { into.deallocate() }
        let tag = IOCore.Tag(op: .wake, slot: 0, generation: 0)
        loop.armWake(mailbox, into: into, tag: tag)
        let poster = Thread { for i in 1...3 { mailbox.post(i) } }
        poster.join()
        var got: [Int] = []
        expectPoll(loop) { c in
            if c.tag == tag { got += mailbox.drain() }
            return got.count == 3
        }
        #expect(got == [1, 2, 3])
    }

    @Test("frame pool reuses buffers and counts references")
    func framePool() {
        let pool = FramePool(maxCachedBytes: 1 << 20)
        let a = pool.allocate(capacity: 100)
        #expect(a.capacity == 256)
        pool.retain(a, count: 2)
        pool.release(a)
        pool.release(a)
        #expect(pool.outstanding == 1)
        pool.release(a)
        #expect(pool.outstanding == 0)
        let b = pool.allocate(capacity: 200)
        #expect(b.bytes == a.bytes, "a released buffer of the same class is reused")
        pool.release(b)
        let big = pool.allocate(capacity: 3 << 20)
        #expect(big.capacity == 3 << 20)
        pool.release(big)
        #expect(pool.outstanding == 0)
    }
}

/// A plain pthread for tests that need a second thread.
final class Thread: @unchecked Sendable {
    private var tid = pthread_t()
    private let body: () -> Void
    init(_ body: @escaping () -> Void) {
        self.body = body
        let box = Unmanaged.passRetained(self)
        pthread_create(&tid, nil, { arg in
            let t = Unmanaged<Thread>.fromOpaque(arg!).takeRetainedValue()
            t.body()
            return nil
        }, box.toOpaque())
    }
    func join() { pthread_join(tid, nil) }
}

extension EventLoopBackend {
    func armWake<T>(_ mailbox: Mailbox<T>, into: UnsafeMutableRawPointer, tag: IOCore.Tag) {
        readWake(fd: mailbox.doorbell.fd, into: into, tag: tag)
    }
}
