import Glibc
import IOCore
import Testing

/// The provided-buffer ring is kept stocked from the most recently used buffers, so a quiet
/// loop touches (and keeps resident) only a few of them, and grows its stock when a burst
/// empties the ring.
@Suite("io_uring receive buffer stock", .serialized)
struct BufferRingTests {
    private func loop(buffers: Int) throws -> UringEventLoop {
        var c = EventLoopConfiguration()
        c.ringEntries = 512
        c.receiveBufferCount = buffers
        c.receiveBufferSize = 4096
        return try UringEventLoop(c)
    }

    @Test func sequentialReceivesCycleThroughTheStockOnly() throws {
        let loop = try loop(buffers: 1024)
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { loop.forget(fd: fds[0]); close(fds[0]); close(fds[1]) }
        loop.armReceive(fd: fds[0], tag: IOCore.Tag(op: .recv, slot: 1, generation: 0), multishot: true)
        var used = Set<UInt16>()
        for i in 0..<600 {
            var b = UInt8(truncatingIfNeeded: i)
            #expect(write(fds[1], &b, 1) == 1)
            var got = false
            for _ in 0..<100 where !got {
                loop.poll(timeoutNanoseconds: 10_000_000) { c in
                    if let id = c.bufferID {
                        used.insert(id)
                        got = loop.buffer(id, count: Int(c.result)).first == b
                        loop.recycle(id)
                    } else if c.tag.op == .recv && !c.more {
                        loop.armReceive(fd: fds[0], tag: c.tag, multishot: true)
                    }
                }
            }
            #expect(got, "byte \(i)")
        }
        #expect(loop.stockTarget == UringEventLoop.initialStock)
        #expect(used.count <= UringEventLoop.initialStock, "600 reads touched \(used.count) of 1024 buffers")
    }

    @Test func aBurstLargerThanTheStockIsReceivedWholeAndTheStockGrows() throws {
        let loop = try loop(buffers: 1024)
        let pairs = 300   // more sockets with data at once than buffers stocked
        var ends: [(Int32, Int32)] = []
        defer { for (a, b) in ends { loop.forget(fd: a); close(a); close(b) } }
        // Every socket has a byte waiting before its receive is armed: the receives, issued in one
        // submit, find data at once and need more buffers than the ring holds.
        for _ in 0..<pairs {
            var fds: [Int32] = [0, 0]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
            ends.append((fds[0], fds[1]))
            var payload: [UInt8] = Array("x".utf8)
            #expect(write(fds[1], &payload, 1) == 1)
        }
        for (i, (a, _)) in ends.enumerated() {
            loop.armReceive(fd: a, tag: IOCore.Tag(op: .recv, slot: UInt32(i), generation: 0), multishot: true)
        }
        var got = Set<UInt32>()
        for _ in 0..<200 where got.count < pairs {
            loop.poll(timeoutNanoseconds: 10_000_000) { c in
                guard c.tag.op == .recv else { return }
                if let id = c.bufferID {
                    if c.result == 1 { got.insert(c.tag.slot) }
                    loop.recycle(id)
                }
                // A receive that found the ring empty ends (ENOBUFS); arm it again, as a shard does.
                if !c.more { loop.armReceive(fd: ends[Int(c.tag.slot)].0, tag: c.tag, multishot: true) }
            }
        }
        #expect(got.count == pairs)
        #expect(loop.stockTarget > UringEventLoop.initialStock, "the stock grew after the ring ran dry")
    }
}
