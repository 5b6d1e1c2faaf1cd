import Glibc

/// One socket's outbound queue. Its owner keeps it inline (a few words per connection, nothing
/// allocated while it is empty); the queued chunks live in the node pool of the ``Outbox`` that
/// every call takes it to.
///
/// At most one send is in flight per queue; frames queued meanwhile gather behind it and leave
/// together in the next one.
public struct SendQueue {
    @usableFromInline var head: Int32 = -1
    @usableFromInline var tail: Int32 = -1
    @usableFromInline var queuedChunks: Int32 = 0
    @usableFromInline var inFlightChunks: Int32 = 0
    /// The `msghdr` space held by a gathered send in flight (-1: none).
    @usableFromInline var space: Int32 = -1
    @usableFromInline var queuedBytes: Int = 0

    public init() {}

    /// Queued chunks: frames, or runs of small frames already copied together.
    @inlinable public var chunks: Int32 { queuedChunks }
    /// Chunks the send in flight carries; 0 when none is in flight.
    @inlinable public var inFlight: Int32 { inFlightChunks }
    /// Bytes queued and not yet reported sent.
    @inlinable public var bytes: Int { queuedBytes }

    /// Nothing is queued.
    @inlinable public var isEmpty: Bool { chunks == 0 }
    /// A send is in flight: its chunks and `msghdr` belong to the kernel until it completes.
    @inlinable public var sendInFlight: Bool { inFlight > 0 }
}

/// The outbound half of a shard's I/O: per-socket chunk queues in one node pool, small-frame
/// flattening, `msghdr`/iovec building, and the accounting of send completions.
///
/// A queued chunk holds one reference to a pooled ``FrameBuffer``, so a broadcast encoded once is
/// queued to a thousand sockets as a thousand 24-byte nodes, not a thousand copies. Single-threaded:
/// one outbox per shard, touched only from its thread.
///
/// Custody: from ``submit(_:fd:tag:on:)`` until the matching ``complete(_:result:)``, the chunks the
/// send carries, the frame buffers they reference and the `msghdr` with its iovecs are the kernel's:
/// nothing here changes or frees them in between (``dropUnsent(_:)`` keeps them; ``releaseAll(_:)``
/// refuses while a send is in flight).
public final class Outbox {
    /// Most buffers one gathered send carries.
    public static let maxIOV = 64
    /// Frames up to this size are copied together into one send buffer of at most `flattenLimit`:
    /// the kernel pays per iovec (importing it, then a copy call per segment), which costs more
    /// than this copy for small frames.
    public static let smallChunk = 2048
    public static let flattenLimit = 16 << 10
    static let spaceSize = MemoryLayout<msghdr>.stride + maxIOV * MemoryLayout<iovec>.stride

    @usableFromInline struct Node {
        @usableFromInline var buffer: FrameBuffer
        @usableFromInline var offset: Int32
        @usableFromInline var length: Int32
        @usableFromInline var next: Int32

        @inlinable init(buffer: FrameBuffer, offset: Int32, length: Int32, next: Int32) {
            self.buffer = buffer
            self.offset = offset
            self.length = length
            self.next = next
        }
    }

    /// The pool the queued frames come from and go back to.
    public let pool: FramePool
    @usableFromInline var nodes: UnsafeMutablePointer<Node>
    private var nodeCapacity: Int
    @usableFromInline var freeNode: Int32 = -1
    @usableFromInline var usedNodes = 0
    /// Nodes holding a chunk (for tests and leak checks).
    public var nodesInUse: Int { usedNodes }
    private var spaces: [UnsafeMutableRawPointer] = []
    private var freeSpaces: [Int32] = []

    public init(pool: FramePool, initialNodes: Int = 256) {
        self.pool = pool
        nodeCapacity = max(initialNodes, 1)
        nodes = .allocate(capacity: nodeCapacity)
        threadFree(from: 0)
    }

    deinit {
        nodes.deallocate()
        for s in spaces { s.deallocate() }
    }

    /// What a free node holds in place of a buffer; never dereferenced.
    private static var noBuffer: FrameBuffer { FrameBuffer(header: UnsafeMutableRawPointer(bitPattern: 0x10)!) }

    /// Links nodes `from..<nodeCapacity` into the free list.
    private func threadFree(from start: Int) {
        var i = nodeCapacity - 1
        while i >= start {
            (nodes + i).initialize(to: Node(buffer: Outbox.noBuffer, offset: 0, length: 0, next: freeNode))
            freeNode = Int32(i)
            i -= 1
        }
    }

    /// Doubles the node pool (the free list was empty).
    @usableFromInline func grow() {
        let old = nodeCapacity
        let grown = UnsafeMutablePointer<Node>.allocate(capacity: old * 2)
        grown.moveInitialize(from: nodes, count: old)
        nodes.deallocate()
        nodes = grown
        nodeCapacity = old * 2
        threadFree(from: old)
    }

    @inlinable @inline(__always)
    func takeNode() -> Int32 {
        if freeNode < 0 { grow() }
        let n = freeNode
        freeNode = nodes[Int(n)].next
        usedNodes += 1
        return n
    }

    @inline(__always)
    private func giveBack(_ n: Int32) {
        nodes[Int(n)].next = freeNode
        freeNode = n
        usedNodes -= 1
    }

    // MARK: - Queueing

    /// Queues `frame` at the back of `q`, taking over one reference the caller holds.
    @inlinable @inline(__always)
    public func append(_ frame: FrameBuffer, to q: inout SendQueue) {
        let n = takeNode()
        nodes[Int(n)] = Node(buffer: frame, offset: 0, length: Int32(frame.count), next: -1)
        if q.tail >= 0 { nodes[Int(q.tail)].next = n } else { q.head = n }
        q.tail = n
        q.queuedChunks += 1
        q.queuedBytes += frame.count
    }

    // MARK: - Sending

    /// Submits one send on `loop` with what `q` holds: up to ``maxIOV`` chunks, runs of small
    /// frames first copied together into one buffer; a single buffer goes as a plain `send`, more as
    /// one `sendmsg`. Returns how many queued chunks the send set out to carry (before
    /// flattening), which tells the coalescer how busy the socket is. `q` must be non-empty with no
    /// send in flight.
    public func submit(_ q: inout SendQueue, fd: Int32, tag: Tag, on loop: any EventLoopBackend) -> Int {
        precondition(!q.isEmpty && !q.sendInFlight, "submit needs queued bytes and no send in flight")
        let carried = min(Int(q.chunks), Outbox.maxIOV)
        if q.chunks > 1 { flattenSmallChunks(&q) }
        let first = nodes[Int(q.head)]
        if q.chunks == 1 {
            // One buffer: a plain send, no msghdr to build or for the kernel to copy.
            q.inFlightChunks = 1
            // Custody: the chunk keeps its frame buffer referenced until complete().
            loop.send(fd: fd, bytes: first.buffer.bytes + Int(first.offset), count: Int(first.length), tag: tag)
            return carried
        }
        let s = takeSpace()
        q.space = s
        let space = spaces[Int(s)]
        let msg = space.bindMemory(to: msghdr.self, capacity: 1)
        let iov = (space + MemoryLayout<msghdr>.stride).bindMemory(to: iovec.self, capacity: Outbox.maxIOV)
        var count = 0
        var n = q.head
        while n >= 0 && count < Outbox.maxIOV {
            let node = nodes[Int(n)]
            iov[count] = iovec(iov_base: node.buffer.bytes + Int(node.offset), iov_len: Int(node.length))
            count += 1
            n = node.next
        }
        msg.pointee = msghdr()
        msg.pointee.msg_iov = iov
        msg.pointee.msg_iovlen = count
        q.inFlightChunks = Int32(count)
        // Custody: msg, iov and the frame buffers they name stay alive and unchanged until this
        // send completes; the queued chunks keep their buffer references until complete().
        loop.send(fd: fd, message: msg, tag: tag)
        return carried
    }

    /// Copies the run of small chunks at the head of `q` into one buffer. The run's frame
    /// references are dropped here, not at completion.
    private func flattenSmallChunks(_ q: inout SendQueue) {
        var total = 0
        var run = 0
        var n = q.head
        while n >= 0 {
            let len = Int(nodes[Int(n)].length)
            if len > Outbox.smallChunk || total + len > Outbox.flattenLimit { break }
            total += len
            run += 1
            n = nodes[Int(n)].next
        }
        guard run > 1 else { return }
        let flat = pool.allocate(capacity: total)
        var at = flat.bytes
        var node = q.head
        for _ in 0..<run - 1 {
            let c = nodes[Int(node)]
            at.copyMemory(from: c.buffer.bytes + Int(c.offset), byteCount: Int(c.length))
            at += Int(c.length)
            pool.release(c.buffer)
            let next = c.next
            giveBack(node)
            node = next
        }
        // The run's last node stays and carries the flattened buffer.
        let last = nodes[Int(node)]
        at.copyMemory(from: last.buffer.bytes + Int(last.offset), byteCount: Int(last.length))
        pool.release(last.buffer)
        flat.count = total
        nodes[Int(node)].buffer = flat
        nodes[Int(node)].offset = 0
        nodes[Int(node)].length = Int32(total)
        q.head = node
        q.queuedChunks -= Int32(run - 1)
    }

    /// Accounts the completion of `q`'s send in flight: chunks fully sent are released, a
    /// partly sent one is trimmed. Returns false when the send failed (`result <= 0`: the peer is
    /// gone or the socket was shut down); then everything queued is released.
    @discardableResult
    public func complete(_ q: inout SendQueue, result: Int32) -> Bool {
        let carried = Int(q.inFlight)
        q.inFlightChunks = 0
        if q.space >= 0 {
            freeSpaces.append(q.space)
            q.space = -1
        }
        if result <= 0 {
            releaseAll(&q)
            return false
        }
        var sent = Int(result)
        var done = 0
        while sent > 0, done < carried, q.head >= 0 {
            let n = q.head
            let len = Int(nodes[Int(n)].length)
            if len <= sent {
                sent -= len
                q.queuedBytes -= len
                pool.release(nodes[Int(n)].buffer)
                popHead(&q)
                done += 1
            } else {
                nodes[Int(n)].offset += Int32(sent)
                nodes[Int(n)].length -= Int32(sent)
                q.queuedBytes -= sent
                sent = 0
            }
        }
        return true
    }

    @inline(__always)
    private func popHead(_ q: inout SendQueue) {
        let n = q.head
        q.head = nodes[Int(n)].next
        if q.head < 0 { q.tail = -1 }
        q.queuedChunks -= 1
        giveBack(n)
    }

    /// Releases the queued chunks that are not part of the send in flight.
    public func dropUnsent(_ q: inout SendQueue) {
        let keep = Int(q.inFlight)
        guard Int(q.chunks) > keep else { return }
        var n = q.head
        var last: Int32 = -1
        for _ in 0..<keep {
            last = n
            n = nodes[Int(n)].next
        }
        while n >= 0 {
            let next = nodes[Int(n)].next
            q.queuedBytes -= Int(nodes[Int(n)].length)
            pool.release(nodes[Int(n)].buffer)
            giveBack(n)
            q.queuedChunks -= 1
            n = next
        }
        if last >= 0 { nodes[Int(last)].next = -1 } else { q.head = -1 }
        q.tail = last
    }

    /// Releases everything queued. Not while a send is in flight: the kernel still reads those
    /// chunks (release them when it completes).
    public func releaseAll(_ q: inout SendQueue) {
        precondition(!q.sendInFlight, "releasing chunks a send in flight still carries")
        while q.head >= 0 {
            pool.release(nodes[Int(q.head)].buffer)
            popHead(&q)
        }
        q.queuedBytes = 0
    }

    private func takeSpace() -> Int32 {
        if let s = freeSpaces.popLast() { return s }
        spaces.append(.allocate(byteCount: Outbox.spaceSize, alignment: 16))
        return Int32(spaces.count - 1)
    }
}
