import Glibc

/// A plain POSIX thread for an event loop, optionally pinned to one CPU. Event loops run on
/// threads of their own, not on Swift concurrency's pool: a loop blocks in the kernel between
/// turns, and its state is confined to it.
public final class LoopThread: Sendable {
    private let handle: pthread_t

    private final class Start {
        let body: @Sendable () -> Void
        let cpu: Int?
        init(body: @escaping @Sendable () -> Void, cpu: Int?) {
            self.body = body
            self.cpu = cpu
        }
    }

    /// Starts a thread that pins itself to `cpu` (if given) and runs `body`.
    public init(cpu: Int?, _ body: @escaping @Sendable () -> Void) {
        let start = Unmanaged.passRetained(Start(body: body, cpu: cpu))
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let start = Unmanaged<Start>.fromOpaque(arg!).takeRetainedValue()
            if let cpu = start.cpu { Socket.pinCurrentThread(to: cpu) }
            start.body()
            return nil
        }, start.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        handle = tid
    }

    /// Waits for the thread to end. Call once.
    public func join() {
        pthread_join(handle, nil)
    }

    /// Whether the calling thread is `thread` (for assertions that state is touched only on its loop).
    public static func isCurrent(_ thread: pthread_t) -> Bool {
        pthread_equal(thread, pthread_self()) != 0
    }

    /// The calling thread.
    public static var current: pthread_t { pthread_self() }
}
