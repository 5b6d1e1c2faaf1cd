import Glibc

/// One queued piece of outbound bytes: a slice of a pooled frame buffer.
@usableFromInline
struct Chunk {
    @usableFromInline var buffer: FrameBuffer
    @usableFromInline var offset: Int32
    @usableFromInline var length: Int32

    @inlinable init(buffer: FrameBuffer, offset: Int32, length: Int32) {
        self.buffer = buffer
        self.offset = offset
        self.length = length
    }
}

/// One socket's outbound queue. Its owner keeps it inline (32 bytes per connection); the queued
/// chunks sit in a ring of the ``Outbox``'s that the queue holds only while it is not empty, so
/// an idle connection holds no queue memory, and a busy one reads its chunks contiguously.
///
/// At most one send is in flight per queue; frames queued meanwhile gather behind it and leave
/// together in the next one.
public struct SendQueue {
    @usableFromInline var ring: UnsafeMutablePointer<Chunk>?
    @usableFromInline var queuedBytes = 0
    @usableFromInline var head: Int32 = 0
    @usableFromInline var queuedChunks: Int32 = 0
    /// The `msghdr` space held by a gathered send in flight (-1: none).
    @usableFromInline var space: Int32 = -1
    @usableFromInline var inFlightChunks: UInt8 = 0
    /// The ring holds `Outbox.minRing << ringClass` chunks. Without a ring, the size the next one
    /// starts at: the size the last one had grown to, so a socket that gets the same burst every
    /// turn does not grow its ring anew each time.
    @usableFromInline var ringClass: UInt8 = 0

    public init() {}

    /// Queued chunks: frames, or runs of small frames already copied together.
    @inlinable public var chunks: Int32 { queuedChunks }
    /// Chunks the send in flight carries; 0 when none is in flight.
    @inlinable public var inFlight: Int32 { Int32(inFlightChunks) }
    /// Bytes queued and not yet reported sent.
    @inlinable public var bytes: Int { queuedBytes }
    /// Nothing is queued.
    @inlinable public var isEmpty: Bool { queuedChunks == 0 }
    /// A send is in flight: its chunks and `msghdr` belong to the kernel until it completes.
    @inlinable public var sendInFlight: Bool { inFlightChunks > 0 }
    /// The queue holds ring memory (only while it is not empty).
    public var holdsRing: Bool { ring != nil }

    @inlinable var capacity: Int32 { ring == nil ? 0 : Outbox.minRing << Int32(ringClass) }
    @inlinable var mask: Int32 { capacity &- 1 }
}

/// The outbound half of a shard's I/O: per-socket chunk queues, small-frame flattening,
/// `msghdr`/iovec building, and the accounting of send completions.
///
/// A queued chunk holds one reference to a pooled ``FrameBuffer``, so a broadcast encoded once is
/// queued to a thousand sockets as a thousand 16-byte entries, not a thousand copies. A queue's
/// ring comes from this outbox's free lists (power-of-two sizes) when its first chunk arrives
/// and goes back when it empties: no allocation per message once the shard is warm, none held
/// by idle sockets. Single-threaded: one outbox per shard, touched only from its thread.
///
/// Custody: from ``submit(_:fd:tag:on:)`` until the matching ``complete(_:result:)``, the chunks the
/// send carries, the frame buffers they reference and the `msghdr` with its iovecs are the kernel's:
/// nothing here changes or frees them in between (``dropUnsent(_:)`` keeps them; ``releaseAll(_:)``
/// refuses while a send is in flight). A ring may move while a send is in flight: the kernel
/// reads the iovecs and the frame bytes, never the ring.
public final class Outbox {
    /// Most buffers one gathered send carries.
    public static let maxIOV = 64
    /// Frames up to this size are copied together into one send buffer of at most `flattenLimit`:
    /// the kernel pays per iovec (importing it, then a copy call per segment), which costs more
    /// than this copy for small frames.
    public static let smallChunk = 2048
    public static let flattenLimit = 16 << 10
    /// Chunks in the smallest ring.
    @usableFromInline static let minRing: Int32 = 8
    static let spaceSize = MemoryLayout<msghdr>.stride + maxIOV * MemoryLayout<iovec>.stride

    /// The pool the queued frames come from and go back to.
    public let pool: FramePool
    /// Free rings by size class.
    @exclusivity(unchecked) private var freeRings: [[UnsafeMutablePointer<Chunk>]] = []
    @exclusivity(unchecked) private var cachedRingBytes = 0
    private let maxCachedRingBytes: Int
    @exclusivity(unchecked) private var spaces: [UnsafeMutableRawPointer] = []
    @exclusivity(unchecked) private var freeSpaces: [Int32] = []
    /// Rings handed to queues and not yet back (for tests and leak checks).
    public private(set) var ringsInUse = 0

    /// `maxCachedRingBytes` bounds the ring memory kept in free lists.
    public init(pool: FramePool, maxCachedRingBytes: Int = 16 << 20) {
        self.pool = pool
        self.maxCachedRingBytes = maxCachedRingBytes
    }

    deinit {
        for list in freeRings { for r in list { r.deallocate() } }
        for s in spaces { s.deallocate() }
    }

    // MARK: - Rings

    private func takeRing(_ cls: Int) -> UnsafeMutablePointer<Chunk> {
        ringsInUse += 1
        if cls < freeRings.count, let r = freeRings[cls].popLast() {
            cachedRingBytes -= Self.ringBytes(cls)
            return r
        }
        return .allocate(capacity: Int(Outbox.minRing) << cls)
    }

    private func giveBack(_ ring: UnsafeMutablePointer<Chunk>, _ cls: Int) {
        ringsInUse -= 1
        let size = Self.ringBytes(cls)
        if cachedRingBytes + size > maxCachedRingBytes {
            ring.deallocate()
            return
        }
        while freeRings.count <= cls { freeRings.append([]) }
        freeRings[cls].append(ring)
        cachedRingBytes += size
    }

    private static func ringBytes(_ cls: Int) -> Int { (Int(Outbox.minRing) << cls) * MemoryLayout<Chunk>.stride }

    /// Gives `q` a ring twice as large (or its first one), its chunks moved to the front in order.
    @usableFromInline func grow(_ q: inout SendQueue) {
        guard let old = q.ring else {
            q.ring = takeRing(Int(q.ringClass))
            q.head = 0
            return
        }
        let cls = Int(q.ringClass)
        let fresh = takeRing(cls + 1)
        let cap = q.capacity
        for i in 0..<q.queuedChunks { fresh[Int(i)] = old[Int((q.head &+ i) & (cap &- 1))] }
        giveBack(old, cls)
        q.ring = fresh
        q.ringClass = UInt8(cls + 1)
        q.head = 0
    }

    /// An emptied queue's ring goes back to the free lists.
    @inline(__always)
    private func dropRingIfEmpty(_ q: inout SendQueue) {
        guard q.queuedChunks == 0, let ring = q.ring else { return }
        giveBack(ring, Int(q.ringClass))
        q.ring = nil
        q.head = 0
    }

    @inline(__always)
    private func chunk(_ q: SendQueue, _ i: Int32) -> UnsafeMutablePointer<Chunk> {
        q.ring.unsafelyUnwrapped + Int((q.head &+ i) & q.mask)
    }

    // MARK: - Queueing

    /// Queues `frame` at the back of `q`, taking over one reference the caller holds.
    @inlinable @inline(__always)
    public func append(_ frame: FrameBuffer, to q: inout SendQueue) {
        if q.queuedChunks == q.capacity { grow(&q) }
        let at = (q.head &+ q.queuedChunks) & q.mask
        q.ring.unsafelyUnwrapped[Int(at)] = Chunk(buffer: frame, offset: 0, length: Int32(frame.count))
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
        let carried = min(Int(q.queuedChunks), Outbox.maxIOV)
        if q.queuedChunks > 1 { flattenSmallChunks(&q) }
        if q.queuedChunks == 1 {
            // One buffer: a plain send, no msghdr to build or for the kernel to copy.
            let c = chunk(q, 0).pointee
            q.inFlightChunks = 1
            // Custody: the chunk keeps its frame buffer referenced until complete().
            loop.send(fd: fd, bytes: c.buffer.bytes + Int(c.offset), count: Int(c.length), tag: tag)
            return carried
        }
        let s = takeSpace()
        q.space = s
        let space = spaces[Int(s)]
        let msg = space.bindMemory(to: msghdr.self, capacity: 1)
        let iov = (space + MemoryLayout<msghdr>.stride).bindMemory(to: iovec.self, capacity: Outbox.maxIOV)
        let count = min(Int(q.queuedChunks), Outbox.maxIOV)
        for i in 0..<count {
            let c = chunk(q, Int32(i)).pointee
            iov[i] = iovec(iov_base: c.buffer.bytes + Int(c.offset), iov_len: Int(c.length))
        }
        msg.pointee = msghdr()
        msg.pointee.msg_iov = iov
        msg.pointee.msg_iovlen = count
        q.inFlightChunks = UInt8(count)
        // Custody: msg, iov and the frame buffers they name stay alive and unchanged until this
        // send completes; the queued chunks keep their buffer references until complete().
        loop.send(fd: fd, message: msg, tag: tag)
        return carried
    }

    /// Copies the run of small chunks at the head of `q` into one buffer, which takes the place
    /// of the run's last chunk. The run's frame references are dropped here, not at completion.
    private func flattenSmallChunks(_ q: inout SendQueue) {
        var total = 0
        var run: Int32 = 0
        while run < q.queuedChunks {
            let len = Int(chunk(q, run).pointee.length)
            if len > Outbox.smallChunk || total + len > Outbox.flattenLimit { break }
            total += len
            run += 1
        }
        guard run > 1 else { return }
        let flat = pool.allocate(capacity: total)
        var at = flat.bytes
        for i in 0..<run {
            let c = chunk(q, i).pointee
            at.copyMemory(from: c.buffer.bytes + Int(c.offset), byteCount: Int(c.length))
            at += Int(c.length)
            pool.release(c.buffer)
        }
        flat.count = total
        chunk(q, run - 1).pointee = Chunk(buffer: flat, offset: 0, length: Int32(total))
        q.head = (q.head &+ run - 1) & q.mask
        q.queuedChunks -= run - 1
    }

    /// Accounts the completion of `q`'s send in flight: chunks fully sent are released, a
    /// partly sent one is trimmed. Returns false when the send failed (`result <= 0`: the peer is
    /// gone or the socket was shut down); then everything queued is released.
    @discardableResult
    public func complete(_ q: inout SendQueue, result: Int32) -> Bool {
        let carried = Int(q.inFlightChunks)
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
        while sent > 0, done < carried, q.queuedChunks > 0 {
            let c = chunk(q, 0)
            let len = Int(c.pointee.length)
            if len <= sent {
                sent -= len
                q.queuedBytes -= len
                pool.release(c.pointee.buffer)
                q.head = (q.head &+ 1) & q.mask
                q.queuedChunks -= 1
                done += 1
            } else {
                c.pointee.offset += Int32(sent)
                c.pointee.length -= Int32(sent)
                q.queuedBytes -= sent
                sent = 0
            }
        }
        dropRingIfEmpty(&q)
        return true
    }

    /// Releases the queued chunks that are not part of the send in flight, nor the rest of a
    /// chunk the kernel took only part of (dropping that would cut a frame in two on the wire).
    public func dropUnsent(_ q: inout SendQueue) {
        var keep = Int32(q.inFlightChunks)
        if keep == 0 && q.queuedChunks > 0 && chunk(q, 0).pointee.offset > 0 { keep = 1 }
        guard q.queuedChunks > keep else { return }
        for i in keep..<q.queuedChunks {
            let c = chunk(q, i).pointee
            q.queuedBytes -= Int(c.length)
            pool.release(c.buffer)
        }
        q.queuedChunks = keep
        dropRingIfEmpty(&q)
    }

    /// Copies bytes from the head of `q` into `destination`, up to `capacity`, and takes them off
    /// the queue (chunks copied whole are released, a chunk copied in part is trimmed). Returns the
    /// bytes copied. For a queue that is never submitted itself (plaintext waiting to be sealed).
    public func gather(_ q: inout SendQueue, into destination: UnsafeMutableRawPointer, capacity: Int) -> Int {
        precondition(!q.sendInFlight, "gathering from a queue with a send in flight")
        var copied = 0
        while copied < capacity && q.queuedChunks > 0 {
            let c = chunk(q, 0)
            let len = Int(c.pointee.length)
            let n = min(len, capacity - copied)
            (destination + copied).copyMemory(from: c.pointee.buffer.bytes + Int(c.pointee.offset), byteCount: n)
            copied += n
            q.queuedBytes -= n
            if n == len {
                pool.release(c.pointee.buffer)
                q.head = (q.head &+ 1) & q.mask
                q.queuedChunks -= 1
            } else {
                c.pointee.offset += Int32(n)
                c.pointee.length -= Int32(n)
            }
        }
        dropRingIfEmpty(&q)
        return copied
    }

    /// Releases everything queued. Not while a send is in flight: the kernel still reads those
    /// chunks (release them when it completes).
    public func releaseAll(_ q: inout SendQueue) {
        precondition(!q.sendInFlight, "releasing chunks a send in flight still carries")
        for i in 0..<q.queuedChunks { pool.release(chunk(q, i).pointee.buffer) }
        q.queuedChunks = 0
        q.queuedBytes = 0
        dropRingIfEmpty(&q)
    }

    private func takeSpace() -> Int32 {
        if let s = freeSpaces.popLast() { return s }
        spaces.append(.allocate(byteCount: Outbox.spaceSize, alignment: 16))
        return Int32(spaces.count - 1)
    }
}
