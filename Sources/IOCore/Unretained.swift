/// Calls `body` with each element of `objects` without retaining and releasing it.
///
/// The caller's copy of the array keeps every element alive for the whole call, even if the
/// collection it came from changes meanwhile. A fan-out to a thousand sockets otherwise spends
/// more on reference counting than on queueing.
@inlinable @inline(__always)
public func forEachUnretained<T: AnyObject>(_ objects: [T], _ body: (T) -> Void) {
    objects.withUnsafeBufferPointer { buf in
        buf.withMemoryRebound(to: Unmanaged<T>.self) { refs in
            for r in refs { r._withUnsafeGuaranteedRef(body) }
        }
    }
}
