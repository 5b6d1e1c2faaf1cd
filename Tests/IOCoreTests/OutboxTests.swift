import Glibc
import IOCore
import Testing

/// A loop that only records the sends submitted to it (the outbox's side of the contract).
private final class RecordingLoop: EventLoopBackend {
    let backendName = "recording"
    /// The bytes of each submitted send, read at submit time from what the kernel would read.
    var sends: [[UInt8]] = []
    var iovecCounts: [Int] = []
    func armAccept(fd: Int32, tag: IOCore.Tag) {}
    func armReceive(fd: Int32, tag: IOCore.Tag, multishot: Bool) {}
    func send(fd: Int32, message: UnsafeMutablePointer<msghdr>, tag: IOCore.Tag) {
        var out: [UInt8] = []
        let m = message.pointee
        for i in 0..<m.msg_iovlen {
            let v = m.msg_iov[i]
            out += UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len)
        }
        sends.append(out)
        iovecCounts.append(m.msg_iovlen)
    }
    func send(fd: Int32, bytes: UnsafeRawPointer, count: Int, tag: IOCore.Tag) {
        sends.append(Array(UnsafeRawBufferPointer(start: bytes, count: count)))
        iovecCounts.append(1)
    }
    func readWake(fd: Int32, into: UnsafeMutableRawPointer, tag: IOCore.Tag) {}
    func cancel(_ target: IOCore.Tag) {}
    func forget(fd: Int32) {}
    func buffer(_ id: UInt16, count: Int) -> UnsafeMutableRawBufferPointer { fatalError("no buffers") }
    func recycle(_ id: UInt16) {}
    func poll(timeoutNanoseconds: Int64, _ body: (Completion) -> Void) {}
    func flush() {}
}

private let tag = IOCore.Tag(op: .send, slot: 1, generation: 1)

private func frame(_ pool: FramePool, _ byte: UInt8, _ count: Int) -> FrameBuffer {
    pool.buffer(copying: [UInt8](repeating: byte, count: count))
}

@Suite struct OutboxTests {
    @Test func smallFramesAtTheHeadAreFlattenedAndTheRestGoAsIovecs() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        let loop = RecordingLoop()
        var q = SendQueue()
        let sizes = [10, 20, 30, 3000, 40, 50]   // 3000 > smallChunk: ends the flattened run
        for (i, n) in sizes.enumerated() { outbox.append(frame(pool, UInt8(i), n), to: &q) }
        #expect(q.chunks == 6 && q.bytes == sizes.reduce(0, +))
        let carried = outbox.submit(&q, fd: 0, tag: tag, on: loop)
        #expect(carried == 6, "the coalescer hears how many frames the send set out to carry")
        #expect(q.chunks == 4, "10+20+30 became one chunk")
        #expect(loop.iovecCounts == [4])
        let expected = sizes.enumerated().flatMap { i, n in [UInt8](repeating: UInt8(i), count: n) }
        #expect(loop.sends == [expected])
        #expect(q.sendInFlight && q.inFlight == 4)
        #expect(outbox.complete(&q, result: Int32(expected.count)))
        #expect(q.isEmpty && !q.sendInFlight && q.bytes == 0)
        #expect(pool.outstanding == 0 && outbox.ringsInUse == 0)
        #expect(!q.holdsRing, "an emptied queue gives its ring back")
    }

    @Test func aRingThatWrapsKeepsItsOrderWhenItGrows() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        let loop = RecordingLoop()
        var q = SendQueue()
        // Fill the first ring (8), send and complete part of it so the head moves, then queue
        // past the end so entries wrap, then past the capacity so it grows.
        for i in 0..<8 { outbox.append(frame(pool, UInt8(i), 2100), to: &q) }
        _ = outbox.submit(&q, fd: 0, tag: tag, on: loop)
        #expect(outbox.complete(&q, result: 3 * 2100))
        for i in 8..<30 { outbox.append(frame(pool, UInt8(i), 2100), to: &q) }
        #expect(q.chunks == 27)
        while !q.isEmpty {
            _ = outbox.submit(&q, fd: 0, tag: tag, on: loop)
            #expect(outbox.complete(&q, result: Int32(q.inFlight) * 2100))
        }
        let got = loop.sends.dropFirst().flatMap { $0 }
        #expect(got == (3..<30).flatMap { [UInt8](repeating: UInt8($0), count: 2100) })
        #expect(pool.outstanding == 0 && outbox.ringsInUse == 0)
    }

    @Test func aPartialSendIsTrimmedAndTheRestLeavesNext() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        let loop = RecordingLoop()
        var q = SendQueue()
        outbox.append(frame(pool, 1, 3000), to: &q)
        outbox.append(frame(pool, 2, 4000), to: &q)
        _ = outbox.submit(&q, fd: 0, tag: tag, on: loop)
        // Queued while the send is in flight: not part of it.
        outbox.append(frame(pool, 3, 5), to: &q)
        #expect(outbox.complete(&q, result: 3100))
        #expect(q.chunks == 2 && q.bytes == 3900 + 5)
        _ = outbox.submit(&q, fd: 0, tag: tag, on: loop)
        #expect(loop.sends[1] == [UInt8](repeating: 2, count: 3900) + [UInt8](repeating: 3, count: 5))
        #expect(outbox.complete(&q, result: 3905))
        #expect(q.isEmpty && pool.outstanding == 0 && outbox.ringsInUse == 0)
    }

    @Test func dropUnsentKeepsWhatTheKernelStillReads() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        let loop = RecordingLoop()
        var q = SendQueue()
        outbox.append(frame(pool, 1, 3000), to: &q)
        outbox.append(frame(pool, 2, 3000), to: &q)
        _ = outbox.submit(&q, fd: 0, tag: tag, on: loop)
        for i in 0..<10 { outbox.append(frame(pool, UInt8(i), 100), to: &q) }
        outbox.dropUnsent(&q)
        #expect(q.chunks == 2 && q.bytes == 6000 && q.inFlight == 2)
        // A queue can grow again after a drop, behind the chunks in flight.
        outbox.append(frame(pool, 9, 7), to: &q)
        #expect(outbox.complete(&q, result: 6000))
        #expect(q.chunks == 1 && q.bytes == 7)
        outbox.releaseAll(&q)
        #expect(pool.outstanding == 0 && outbox.ringsInUse == 0)
        // Nothing in flight: dropUnsent empties the queue.
        outbox.append(frame(pool, 1, 10), to: &q)
        outbox.dropUnsent(&q)
        #expect(q.isEmpty && pool.outstanding == 0)
    }

    @Test func dropUnsentKeepsTheRestOfAPartlySentFrame() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        let loop = RecordingLoop()
        var q = SendQueue()
        outbox.append(frame(pool, 1, 3000), to: &q)
        _ = outbox.submit(&q, fd: 0, tag: tag, on: loop)
        #expect(outbox.complete(&q, result: 1000))
        outbox.append(frame(pool, 2, 3000), to: &q)
        // No send in flight now, but 2000 bytes of the first frame are still owed to the peer:
        // dropping them would cut the frame in two on the wire.
        outbox.dropUnsent(&q)
        #expect(q.chunks == 1 && q.bytes == 2000)
        _ = outbox.submit(&q, fd: 0, tag: tag, on: loop)
        #expect(loop.sends[1] == [UInt8](repeating: 1, count: 2000))
        #expect(outbox.complete(&q, result: 2000))
        #expect(q.isEmpty && pool.outstanding == 0 && outbox.ringsInUse == 0)
    }

    @Test func gatherCopiesFromTheHeadUpToTheCapacityInOrder() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        var q = SendQueue()
        let sizes = [100, 5000, 20000, 7]
        for (i, n) in sizes.enumerated() { outbox.append(frame(pool, UInt8(i + 1), n), to: &q) }
        let expected = sizes.enumerated().flatMap { i, n in [UInt8](repeating: UInt8(i + 1), count: n) }
        let dest = UnsafeMutableRawPointer.allocate(byteCount: 16384, alignment: 16)
        defer { dest.deallocate() }
        var out: [UInt8] = []
        var pieces: [Int] = []
        while !q.isEmpty {
            let n = outbox.gather(&q, into: dest, capacity: 16384)
            pieces.append(n)
            out += UnsafeRawBufferPointer(start: dest, count: n)
            #expect(q.bytes == expected.count - out.count)
        }
        #expect(pieces == [16384, 25107 - 16384])
        #expect(out == expected)
        #expect(pool.outstanding == 0 && outbox.ringsInUse == 0)
    }

    @Test func aFailedSendReleasesEverything() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        var q = SendQueue()
        for _ in 0..<3 { outbox.append(frame(pool, 1, 10), to: &q) }
        _ = outbox.submit(&q, fd: 0, tag: tag, on: RecordingLoop())
        outbox.append(frame(pool, 1, 10), to: &q)
        #expect(!outbox.complete(&q, result: -EPIPE))
        #expect(q.isEmpty && q.bytes == 0 && pool.outstanding == 0 && outbox.ringsInUse == 0)
    }

    @Test func oneSendCarriesAtMostMaxIOVChunksAndTheRingGrows() {
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        let loop = RecordingLoop()
        var q = SendQueue()
        // Large frames are never flattened: 100 of them need two sends.
        for i in 0..<100 { outbox.append(frame(pool, UInt8(i), 2500), to: &q) }
        #expect(outbox.ringsInUse == 1 && q.holdsRing)
        #expect(outbox.submit(&q, fd: 0, tag: tag, on: loop) == Outbox.maxIOV)
        #expect(loop.iovecCounts == [Outbox.maxIOV])
        #expect(outbox.complete(&q, result: Int32(Outbox.maxIOV * 2500)))
        #expect(outbox.submit(&q, fd: 0, tag: tag, on: loop) == 100 - Outbox.maxIOV)
        #expect(outbox.complete(&q, result: Int32((100 - Outbox.maxIOV) * 2500)))
        #expect(q.isEmpty && pool.outstanding == 0 && outbox.ringsInUse == 0)
    }

    @Test("a random mix of frames reaches a real socket whole and in order", arguments: EventLoopConfiguration.Backend.allCases)
    func realSocket(backend: EventLoopConfiguration.Backend) throws {
        var c = EventLoopConfiguration()
        c.backend = backend
        c.ringEntries = 64
        c.receiveBufferCount = 8
        let loop = try makeEventLoop(c)
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { loop.forget(fd: fds[0]); close(fds[0]); close(fds[1]) }
        let pool = FramePool()
        let outbox = Outbox(pool: pool)
        var q = SendQueue()
        var rng = SystemRandomNumberGenerator()
        var expected: [UInt8] = []
        var received: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        for round in 0..<200 {
            for _ in 0..<Int.random(in: 0...12, using: &rng) {
                let n = Bool.random(using: &rng) ? Int.random(in: 2...200, using: &rng) : Int.random(in: 2000...9000, using: &rng)
                let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
                expected += bytes
                outbox.append(pool.buffer(copying: bytes), to: &q)
            }
            if !q.isEmpty && !q.sendInFlight { _ = outbox.submit(&q, fd: fds[0], tag: tag, on: loop) }
            var done = false
            for _ in 0..<100 where q.sendInFlight && !done {
                loop.poll(timeoutNanoseconds: 10_000_000) { c in
                    if c.tag.op == .send { #expect(outbox.complete(&q, result: c.result), "round \(round)"); done = true }
                }
                // Drain the peer so the socket never fills.
                while true {
                    let n = recv(fds[1], &buf, buf.count, Int32(MSG_DONTWAIT))
                    if n <= 0 { break }
                    received += buf[0..<n]
                }
            }
        }
        while !q.isEmpty || q.sendInFlight {
            if !q.sendInFlight { _ = outbox.submit(&q, fd: fds[0], tag: tag, on: loop) }
            loop.poll(timeoutNanoseconds: 10_000_000) { c in if c.tag.op == .send { outbox.complete(&q, result: c.result) } }
            while true {
                let n = recv(fds[1], &buf, buf.count, Int32(MSG_DONTWAIT))
                if n <= 0 { break }
                received += buf[0..<n]
            }
        }
        for _ in 0..<100 where received.count < expected.count {
            let n = recv(fds[1], &buf, buf.count, Int32(MSG_DONTWAIT))
            if n > 0 { received += buf[0..<n] } else { usleep(1000) }
        }
        #expect(received.count == expected.count)
        #expect(received == expected)
        #expect(pool.outstanding == 0 && outbox.ringsInUse == 0)
    }
}
