import Glibc

/// A value behind a POSIX mutex, for state that threads share (mailboxes, counters, queues).
///
/// Why not `Synchronization.Mutex`: on Linux it takes a contended lock through the kernel (a
/// priority-inheriting futex), a hand-over ThreadSanitizer cannot see, so under contention it
/// reports races on values the lock does protect. `pthread_mutex_lock` is one ThreadSanitizer
/// intercepts. None of these locks is on a per-message path.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the lock held.
    @inline(__always)
    public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
