import Glibc

/// SIGINT and SIGTERM (and SIGHUP, a reload request), blocked so that a thread can wait for them.
///
/// Create it before ``Server/start(factory:)``: the mask is inherited by the shard threads, so
/// the signals reach only the thread that calls ``wait(every:_:)``.
public struct StopSignals {
    private var set = sigset_t()

    /// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts afterwards);
    /// with `hangup`, SIGHUP too, which ``wait(every:_:)`` then returns like the others.
    public init(hangup: Bool = false) {
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        if hangup { sigaddset(&set, SIGHUP) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Blocks until a stop signal arrives and returns its number. With `every` (milliseconds),
    /// calls `tick` that often while waiting.
    @discardableResult
    public func wait(every milliseconds: Int? = nil, _ tick: () -> Void = {}) -> Int32 {
        var set = self.set
        guard let ms = milliseconds else {
            var sig: Int32 = 0
            sigwait(&set, &sig)
            return sig
        }
        while true {
            var ts = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
            let sig = sigtimedwait(&set, nil, &ts)
            if sig > 0 { return sig }
            tick()
        }
    }
}
