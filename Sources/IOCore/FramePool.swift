/// A handle to a pooled, reference-counted outbound buffer.
///
/// A broadcast is encoded once into one of these and queued to every recipient; each queued
/// reference holds a count, and the buffer returns to its pool when the last send that carries
/// it completes. Handles are plain pointers: no ARC traffic on the hot path.
public struct FrameBuffer: Hashable {
    @usableFromInline let header: UnsafeMutableRawPointer

    @inlinable init(header: UnsafeMutableRawPointer) { self.header = header }

    /// Start of the payload area.
    @inlinable public var bytes: UnsafeMutableRawPointer { header + FramePool.headerSize }
    /// Usable capacity in bytes.
    @inlinable public var capacity: Int { header.load(fromByteOffset: 8, as: Int.self) }
    /// Bytes written (set by the encoder).
    @inlinable public var count: Int {
        get { Int(header.load(fromByteOffset: 4, as: UInt32.self)) }
        nonmutating set { header.storeBytes(of: UInt32(newValue), toByteOffset: 4, as: UInt32.self) }
    }
    @inlinable var refCount: UInt32 {
        get { header.load(as: UInt32.self) }
        nonmutating set { header.storeBytes(of: newValue, as: UInt32.self) }
    }
}

/// A shard-local pool of ``FrameBuffer``s in power-of-four size classes (256 B … 1 MiB); larger
/// buffers are allocated exactly and freed when released. Single-threaded by design: each shard
/// owns one pool and only that shard touches it.
public final class FramePool {
    public static let headerSize = 16
    @usableFromInline static let classSizes = [256, 1024, 4096, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024]
    private var free: [[UnsafeMutableRawPointer]]
    private let maxCachedBytes: Int
    private var cachedBytes = 0
    /// Buffers handed out and not yet returned (for metrics and leak tests).
    public private(set) var outstanding = 0

    /// `maxCachedBytes` bounds the memory kept in free lists.
    public init(maxCachedBytes: Int = 64 << 20) {
        self.free = Array(repeating: [], count: FramePool.classSizes.count)
        self.maxCachedBytes = maxCachedBytes
    }

    deinit {
        for list in free { for p in list { p.deallocate() } }
    }

    @inline(__always)
    private static func sizeClass(for capacity: Int) -> Int {
        var i = 0
        while i < classSizes.count {
            if capacity <= classSizes[i] { return i }
            i += 1
        }
        return -1
    }

    /// A buffer of at least `capacity` bytes with a reference count of 1.
    public func allocate(capacity: Int) -> FrameBuffer {
        let cls = FramePool.sizeClass(for: capacity)
        let header: UnsafeMutableRawPointer
        let size: Int
        if cls >= 0, let p = free[cls].popLast() {
            header = p
            size = FramePool.classSizes[cls]
            cachedBytes -= size
        } else {
            size = cls >= 0 ? FramePool.classSizes[cls] : capacity
            header = .allocate(byteCount: size + FramePool.headerSize, alignment: 16)
        }
        header.storeBytes(of: UInt32(1), as: UInt32.self)
        header.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
        header.storeBytes(of: size, toByteOffset: 8, as: Int.self)
        outstanding += 1
        return FrameBuffer(header: header)
    }

    /// A buffer holding a copy of `bytes` (an HTTP response, a close frame), reference count 1.
    public func buffer(copying bytes: [UInt8]) -> FrameBuffer {
        let buffer = allocate(capacity: bytes.count)
        bytes.withUnsafeBytes { src in
            if let base = src.baseAddress, src.count > 0 { buffer.bytes.copyMemory(from: base, byteCount: src.count) }
        }
        buffer.count = bytes.count
        return buffer
    }

    /// Adds one reference.
    @inlinable @inline(__always)
    public func retain(_ buffer: FrameBuffer, count: UInt32 = 1) {
        buffer.refCount += count
    }

    /// Drops one reference; the last one returns the buffer to the pool.
    @inline(__always)
    public func release(_ buffer: FrameBuffer) {
        let rc = buffer.refCount
        precondition(rc > 0, "frame buffer over-released")
        if rc > 1 {
            buffer.refCount = rc - 1
            return
        }
        buffer.refCount = 0
        outstanding -= 1
        let size = buffer.capacity
        let cls = FramePool.sizeClass(for: size)
        if cls >= 0 && FramePool.classSizes[cls] == size && cachedBytes + size <= maxCachedBytes {
            free[cls].append(buffer.header)
            cachedBytes += size
        } else {
            buffer.header.deallocate()
        }
    }
}
