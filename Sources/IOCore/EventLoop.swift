import CUring
import Glibc

/// Why an event loop could not start.
public struct EventLoopError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Settings of one event loop.
public struct EventLoopConfiguration: Sendable {
    /// Which I/O backend.
    public enum Backend: String, Sendable, CaseIterable {
        case uring
        case epoll
    }
    public var backend: Backend = .uring
    /// Submission queue entries (the completion queue is twice as large).
    public var ringEntries: UInt32 = 4096
    /// Provided receive buffers (a power of two) and their size. Sockets hold none while idle.
    public var receiveBufferCount: Int = 1024
    public var receiveBufferSize: Int = 16 * 1024
    public init() {}
}

/// The contract every backend implements, used by one thread (its shard).
///
/// Operations are submitted with a ``Tag``; ``poll(timeoutNanoseconds:_:)`` delivers their
/// completions. Received bytes sit in a provided buffer, borrowed until ``recycle(_:)``.
public protocol EventLoopBackend: AnyObject {
    var backendName: String { get }
    /// Multishot accept on a listening socket: one `.accept` completion per connection.
    func armAccept(fd: Int32, tag: Tag)
    /// Receive into provided buffers: one completion per read; `multishot` keeps it armed.
    func armReceive(fd: Int32, tag: Tag, multishot: Bool)
    /// `sendmsg`; at most one in flight per socket. `message` and its iovecs must stay alive and
    /// untouched until the completion arrives (the kernel reads them until then).
    func send(fd: Int32, message: UnsafeMutablePointer<msghdr>, tag: Tag)
    /// `send` of one buffer (cheaper than `sendmsg` when one frame is queued). The bytes stay alive
    /// and untouched until the completion arrives.
    func send(fd: Int32, bytes: UnsafeRawPointer, count: Int, tag: Tag)
    /// Reads 8 bytes from an eventfd into `into` (kept alive by the caller until completion).
    func readWake(fd: Int32, into: UnsafeMutableRawPointer, tag: Tag)
    /// Cancels the operation(s) carrying `target`; the target then completes (with -ECANCELED).
    func cancel(_ target: Tag)
    /// Drops what the backend holds for `fd` (its epoll watch; its io_uring registered-file slot).
    /// Call it before closing `fd` or handing it to another shard.
    func forget(fd: Int32)
    /// The bytes of a provided buffer.
    func buffer(_ id: UInt16, count: Int) -> UnsafeMutableRawBufferPointer
    /// Gives a provided buffer back.
    func recycle(_ id: UInt16)
    /// Submits what is queued, waits up to `timeoutNanoseconds` (negative: forever) for at least one
    /// completion, then reaps a batch and hands each to `body`. Reap first, act after: the batch
    /// is copied out and the completion queue advanced before any handler runs.
    func poll(timeoutNanoseconds: Int64, _ body: (Completion) -> Void)
    /// Submits queued operations without waiting.
    func flush()
}

/// Makes the backend a configuration asks for.
public func makeEventLoop(_ config: EventLoopConfiguration) throws -> any EventLoopBackend {
    Tag.assertLayout()
    switch config.backend {
    case .uring: return try UringEventLoop(config)
    case .epoll: return try EpollEventLoop(config)
    }
}

/// Text for an errno value: `EPERM (Operation not permitted)`.
public func errnoDescription(_ code: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOMEM: "ENOMEM", ENOSYS: "ENOSYS", EINVAL: "EINVAL", EMFILE: "EMFILE",
        ENFILE: "ENFILE", EACCES: "EACCES", EADDRINUSE: "EADDRINUSE", ENOBUFS: "ENOBUFS",
        ECONNRESET: "ECONNRESET", EPIPE: "EPIPE", ECANCELED: "ECANCELED", EBADF: "EBADF",
        EAGAIN: "EAGAIN", EINTR: "EINTR", ETIME: "ETIME", EEXIST: "EEXIST",
    ]
    let name = names[code] ?? "errno \(code)"
    return "\(name) (\(String(cString: strerror(code))))"
}
