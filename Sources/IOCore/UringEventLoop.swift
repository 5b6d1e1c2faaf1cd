import CUring
import Glibc

/// The io_uring backend: one ring per thread, set up with SINGLE_ISSUER | DEFER_TASKRUN (the
/// ring is only ever entered from its own thread, and task work runs when we wait, not as an
/// interrupt), multishot accept and recv, and a provided buffer ring for receives.
///
/// This file and `EpollEventLoop.swift` are where IOCore touches raw memory handed to the
/// kernel. Custody rule for every submit below: the memory an SQE points at (provided buffers,
/// a `msghdr` and its iovecs, an eventfd read target) stays alive and untouched until that
/// operation's final completion (one without `IORING_CQE_F_MORE`).
public final class UringEventLoop: EventLoopBackend {
    public let backendName = "uring"
    private let ring: OpaquePointer
    private let bufRing: OpaquePointer
    private let bufferGroup: Int32 = 1
    private let bufferCount: Int
    private let bufferSize: Int
    private let bufferMask: Int32
    private let buffers: UnsafeMutableRawPointer
    /// Free receive buffers not in the ring, most recently used last. The ring is kept stocked
    /// with `stockTarget` of them, taken from the top, so a server touches only the
    /// `stockTarget` buffers the ring rotates through (and their pages) instead of all
    /// `bufferCount`: every buffer the kernel fills once stays in the process's resident memory.
    /// (The ring is first in, first out, so all stocked buffers do rotate; small receives touch
    /// only a buffer's first page, larger ones the rest, until the stock is resident.)
    private var stock: [UInt16]
    /// Buffers in the ring that no completion has named yet.
    private var inRing = 0
    /// How many buffers the ring is stocked with. Doubles (up to `bufferCount`) when the ring ran
    /// dry (a receive failed with ENOBUFS) or fell below a quarter of it in one poll.
    public private(set) var stockTarget: Int
    private var sawNoBuffers = false
    private let cqes: UnsafeMutablePointer<cu_cqe>
    private let batchSize = 512
    /// Registered-file table, indexed by descriptor number: a socket's receives and sends name
    /// its slot (IOSQE_FIXED_FILE), so the kernel skips looking up and reference-counting the
    /// file on every operation. Slots fill on a socket's first operation and empty in
    /// `forget(fd:)`, which the owner calls before it closes or hands the descriptor away.
    /// Size 0 when the table could not be registered: then descriptors are used as they are.
    private let fixedCount: Int
    private let fixed: UnsafeMutablePointer<Bool>
    /// Sends prepared since the last submit. A fan-out to a thousand sockets done in one
    /// `io_uring_enter` keeps the thread in the kernel for milliseconds with no point to
    /// reschedule: once something else wants the core, every send's network softirq stops early
    /// and its rest is handed to ksoftirqd, which runs only after the whole batch, late. Submitting
    /// every `sendBatch` sends returns to user space often enough that this does not happen.
    private var unsubmittedSends = 0
    public static let sendBatch = 32

    public init(_ config: EventLoopConfiguration) throws {
        precondition(config.receiveBufferCount > 0 && config.receiveBufferCount & (config.receiveBufferCount - 1) == 0,
                     "receive buffer count must be a power of two")
        var err: Int32 = 0
        let flags = CU_SETUP_SINGLE_ISSUER | CU_SETUP_DEFER_TASKRUN | CU_SETUP_SUBMIT_ALL
        guard let ring = cu_queue_init(config.ringEntries, flags, &err) else {
            throw EventLoopError(
                "io_uring setup failed: \(errnoDescription(err)). io_uring may be disabled here "
                    + "(a seccomp profile such as a container runtime's default, or the sysctl "
                    + "kernel.io_uring_disabled), or the kernel is older than 6.1; run with --io epoll")
        }
        self.ring = ring
        guard let br = cu_setup_buf_ring(ring, UInt32(config.receiveBufferCount), bufferGroup, &err) else {
            cu_queue_exit(ring)
            throw EventLoopError("io_uring provided buffer ring registration failed: \(errnoDescription(err)) (needs Linux 5.19+)")
        }
        self.bufRing = br
        self.bufferCount = config.receiveBufferCount
        self.bufferSize = config.receiveBufferSize
        self.bufferMask = cu_buf_ring_mask(UInt32(config.receiveBufferCount))
        // Custody: these buffers belong to the kernel while they sit in the ring; a buffer is
        // ours from the completion that names it until recycle() hands it back.
        self.buffers = UnsafeMutableRawPointer.allocate(byteCount: bufferCount * bufferSize, alignment: 4096)
        self.stock = (0..<config.receiveBufferCount).reversed().map { UInt16($0) }
        self.stockTarget = min(config.receiveBufferCount, UringEventLoop.initialStock)
        self.cqes = .allocate(capacity: batchSize)
        var limit = rlimit()
        let wanted = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? min(Int(limit.rlim_cur), 1 << 16) : 0
        self.fixedCount = wanted > 0 && cu_register_files_sparse(ring, UInt32(wanted)) == 0 ? wanted : 0
        self.fixed = .allocate(capacity: max(fixedCount, 1))
        self.fixed.initialize(repeating: false, count: max(fixedCount, 1))
        fillRing()
    }

    /// Receive buffers the ring starts stocked with.
    public static let initialStock = 128

    deinit {
        cu_free_buf_ring(ring, bufRing, UInt32(bufferCount), bufferGroup)
        cu_queue_exit(ring)
        buffers.deallocate()
        cqes.deallocate()
        fixed.deallocate()
    }

    /// Points `s` at `fd`'s registered slot, registering it on first use; a descriptor beyond
    /// the table, or one the kernel would not take, is used unregistered.
    @inline(__always)
    private func useFixedFile(_ s: OpaquePointer, _ fd: Int32) {
        let i = Int(fd)
        guard i >= 0 && i < fixedCount else { return }
        if !fixed[i] {
            guard cu_register_file(ring, UInt32(i), fd) == 1 else { return }
            fixed[i] = true
        }
        cu_sqe_use_fixed_file(s)
    }

    @inline(__always)
    private func sqe() -> OpaquePointer {
        guard let s = cu_get_sqe(ring) else {
            fatalError("io_uring submission queue stayed full after a submit")
        }
        return s
    }

    public func armAccept(fd: Int32, tag: Tag) {
        let s = sqe()
        cu_prep_multishot_accept(s, fd, Int32(SOCK_CLOEXEC.rawValue))
        cu_sqe_set_data64(s, tag.rawValue)
    }

    public func armReceive(fd: Int32, tag: Tag, multishot: Bool) {
        let s = sqe()
        // Custody: the kernel picks a provided buffer per completion; none is tied to this socket
        // while it is idle.
        if multishot { cu_prep_recv_multishot(s, fd, bufferGroup) } else { cu_prep_recv_select(s, fd, bufferGroup) }
        useFixedFile(s, fd)
        cu_sqe_set_data64(s, tag.rawValue)
    }

    public func send(fd: Int32, message: UnsafeMutablePointer<msghdr>, tag: Tag) {
        let s = sqe()
        // Custody: `message`, its iovecs and the bytes they point at stay alive and unchanged until
        // this send completes; the connection owns them and frees them only after that.
        cu_prep_sendmsg(s, fd, message, UInt32(MSG_NOSIGNAL))
        useFixedFile(s, fd)
        cu_sqe_set_data64(s, tag.rawValue)
        submitIfBatchFull()
    }

    public func send(fd: Int32, bytes: UnsafeRawPointer, count: Int, tag: Tag) {
        let s = sqe()
        // Custody: `bytes` stay alive and unchanged until this send completes.
        cu_prep_send(s, fd, bytes, count, Int32(MSG_NOSIGNAL))
        useFixedFile(s, fd)
        cu_sqe_set_data64(s, tag.rawValue)
        submitIfBatchFull()
    }

    public func readWake(fd: Int32, into: UnsafeMutableRawPointer, tag: Tag) {
        let s = sqe()
        // Custody: `into` (8 bytes) belongs to the kernel until the read completes.
        cu_prep_read(s, fd, into, 8, 0)
        cu_sqe_set_data64(s, tag.rawValue)
    }

    public func cancel(_ target: Tag) {
        let s = sqe()
        cu_prep_cancel64(s, target.rawValue, 0)
        cu_sqe_set_data64(s, Tag(op: .cancel, slot: 0, generation: 0).rawValue)
    }

    /// Empties `fd`'s registered slot: the table holds a reference to the socket, so without this
    /// a `close` would not close it, and a reused descriptor number would reach the old socket.
    public func forget(fd: Int32) {
        let i = Int(fd)
        guard i >= 0 && i < fixedCount && fixed[i] else { return }
        fixed[i] = false
        _ = cu_register_file(ring, UInt32(i), -1)
    }

    @inline(__always)
    public func buffer(_ id: UInt16, count: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: buffers + Int(id) * bufferSize, count: count)
    }

    @inline(__always)
    public func recycle(_ id: UInt16) {
        stock.append(id)
    }

    /// Tops the ring up to `stockTarget` from the most recently used free buffers, doubling the
    /// target first if the ring ran dry or low since the last call.
    private func restock() {
        if (sawNoBuffers || inRing < stockTarget / 4) && stockTarget < bufferCount {
            stockTarget = min(bufferCount, stockTarget * 2)
        }
        sawNoBuffers = false
        fillRing()
    }

    private func fillRing() {
        var added: Int32 = 0
        while inRing < stockTarget, let id = stock.popLast() {
            cu_buf_ring_add(bufRing, buffers + Int(id) * bufferSize, UInt32(bufferSize), id, bufferMask, added)
            added += 1
            inRing += 1
        }
        if added > 0 { cu_buf_ring_advance(bufRing, added) }
    }

    @inline(__always)
    private func submitIfBatchFull() {
        unsubmittedSends += 1
        if unsubmittedSends >= UringEventLoop.sendBatch {
            unsubmittedSends = 0
            _ = cu_submit(ring)
        }
    }

    public func flush() {
        restock()
        unsubmittedSends = 0
        _ = cu_submit(ring)
    }

    public func poll(timeoutNanoseconds: Int64, _ body: (Completion) -> Void) {
        restock()
        unsubmittedSends = 0
        let r = cu_submit_and_wait_timeout(ring, 1, timeoutNanoseconds)
        if r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY {
            // Nothing sensible to do but report; the loop goes on.
            cu_write_stderr("stateroom: io_uring_submit_and_wait_timeout: \(errnoDescription(-r))\n")
        }
        // Take every completion already posted (bounded), so a whole burst of incoming messages
        // is handled before the shard flushes: more frames per socket per send.
        var rounds = 0
        while rounds < 8 {
            rounds += 1
            let n = Int(cu_reap(ring, cqes, UInt32(batchSize)))
            for i in 0..<n {
                let c = cqes[i]
                guard let tag = Tag(rawValue: c.user_data) else { continue }
                let hasBuffer = c.flags & CU_CQE_F_BUFFER != 0
                if hasBuffer { inRing -= 1 } else if c.res == -ENOBUFS { sawNoBuffers = true }
                body(Completion(
                    tag: tag, result: c.res,
                    bufferID: hasBuffer ? UInt16(truncatingIfNeeded: c.flags >> CU_CQE_BUFFER_SHIFT) : nil,
                    more: c.flags & CU_CQE_F_MORE != 0))
            }
            if n < batchSize { break }
            restock()
        }
    }
}
