import WasmKit

// MARK: - Encoding

/// The encoding, little-endian throughout:
///
/// ```
/// magic "SRWASMSN" (8) | format version u32 | module SHA-256 (32)
/// page count u32 | stored page count u32 | event buffer pointer u32, capacity u32
/// global count u32 | per global: name length u32, name (UTF-8), type u8 (wasm valtype: 7f i32,
///   7e i64, 7d f32, 7c f64), value u64 (32-bit types zero-extended)
/// page bitmap: ceil(page count / 8) bytes, bit i (byte i / 8, bit i % 8) set = page i stored
/// stored pages: stored page count × 65,536 bytes, ascending page order
/// ```
extension WasmSnapshot {
    /// The first 8 bytes of every encoding.
    static let magic: [UInt8] = Array("SRWASMSN".utf8)
    /// The most pages a wasm32 memory has (4 GiB).
    static let maxPageCount = 65_536

    /// The bytes to store (e.g. in Redis); ``init(decoding:)`` reads them back.
    public func encoded() -> [UInt8] {
        let bitmapCount = (memory.pageCount + 7) / 8
        var out: [UInt8] = []
        out.reserveCapacity(
            64 + globals.reduce(0) { $0 + 13 + $1.name.utf8.count } + bitmapCount + memory.bytes.count)
        func put(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) } }
        func put(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) } }
        out.append(contentsOf: Self.magic)
        put(formatVersion)
        out.append(contentsOf: moduleHash.bytes)
        put(UInt32(memory.pageCount))
        put(UInt32(memory.storedPages.count))
        put(eventBuffer.pointer)
        put(eventBuffer.capacity)
        put(UInt32(globals.count))
        for global in globals {
            put(UInt32(global.name.utf8.count))
            out.append(contentsOf: global.name.utf8)
            switch global.value {
            case .i32(let v): out.append(0x7f); put(UInt64(v))
            case .i64(let v): out.append(0x7e); put(v)
            case .f32(let v): out.append(0x7d); put(UInt64(v))
            case .f64(let v): out.append(0x7c); put(v)
            }
        }
        var bitmap = [UInt8](repeating: 0, count: bitmapCount)
        for page in memory.storedPages { bitmap[Int(page) / 8] |= 1 << (page % 8) }
        out.append(contentsOf: bitmap)
        out.append(contentsOf: memory.bytes)
        return out
    }

    /// Reads an encoding made by ``encoded()``, refusing anything that is not exactly one: bad
    /// magic, an unknown format version, a truncated input, trailing bytes, and any length,
    /// count or field that does not add up.
    public init(decoding bytes: [UInt8]) throws(WasmSnapshotError) {
        var reader = SnapshotReader(bytes: bytes)
        guard bytes.starts(with: Self.magic) else {
            // A prefix of the magic is a cut-off snapshot; anything else is not a snapshot.
            if bytes.count < Self.magic.count, Self.magic.starts(with: bytes) {
                throw .truncated(field: "magic", needed: Self.magic.count, available: bytes.count)
            }
            throw .badMagic
        }
        _ = try reader.take(Self.magic.count, "magic")
        let version = try reader.u32("format version")
        guard version == Self.currentFormatVersion else {
            throw .unsupportedVersion(version, supported: Self.currentFormatVersion)
        }
        let hash = WasmModuleHash(bytes: Array(try reader.take(32, "module hash")))
        let pageCount = Int(try reader.u32("page count"))
        let storedCount = Int(try reader.u32("stored page count"))
        guard pageCount <= Self.maxPageCount else {
            throw .inconsistent(reason: "\(pageCount) pages is more than a wasm32 memory has (\(Self.maxPageCount))")
        }
        guard storedCount <= pageCount else {
            throw .inconsistent(reason: "\(storedCount) stored pages of a \(pageCount)-page memory")
        }
        let buffer = EventBuffer(pointer: try reader.u32("event buffer"), capacity: try reader.u32("event buffer"))
        guard Self.eventBufferFits(buffer, imageBytes: pageCount * Self.pageSize) else {
            throw .inconsistent(reason: "event buffer \(buffer.pointer)+\(buffer.capacity) does not fit the \(pageCount)-page memory")
        }
        let globalCount = Int(try reader.u32("global count"))
        // Each global takes at least 13 bytes: a huge count is a truncation, not an allocation.
        guard globalCount <= reader.remaining / 13 else {
            throw .truncated(field: "globals", needed: globalCount * 13, available: reader.remaining)
        }
        var globals: [Global] = []
        globals.reserveCapacity(globalCount)
        for _ in 0..<globalCount {
            let nameCount = Int(try reader.u32("global name length"))
            guard let name = String(validating: try reader.take(nameCount, "global name"), as: UTF8.self) else {
                throw .inconsistent(reason: "a global's name is not UTF-8")
            }
            let type = try reader.u8("global type")
            let raw = try reader.u64("global value")
            let value: WasmGlobalValue
            switch type {
            case 0x7f, 0x7d:
                guard raw >> 32 == 0 else { throw .inconsistent(reason: "global `\(name)`: a 32-bit value with high bits set") }
                value = type == 0x7f ? .i32(UInt32(raw)) : .f32(bitPattern: UInt32(raw))
            case 0x7e: value = .i64(raw)
            case 0x7c: value = .f64(bitPattern: raw)
            default: throw .inconsistent(reason: "global `\(name)` has unknown type 0x\(String(type, radix: 16))")
            }
            globals.append(Global(name: name, value: value))
        }
        let bitmap = try reader.take((pageCount + 7) / 8, "page bitmap")
        var stored: [UInt32] = []
        stored.reserveCapacity(storedCount)
        for (index, byte) in bitmap.enumerated() where byte != 0 {
            for bit in 0..<8 where byte & (1 << bit) != 0 {
                let page = index * 8 + bit
                guard page < pageCount else {
                    throw .inconsistent(reason: "the page bitmap marks page \(page) of a \(pageCount)-page memory")
                }
                stored.append(UInt32(page))
            }
        }
        guard stored.count == storedCount else {
            throw .inconsistent(reason: "the page bitmap marks \(stored.count) pages, the header says \(storedCount)")
        }
        let pageBytes = storedCount * Self.pageSize
        guard reader.remaining <= pageBytes else { throw .trailingBytes(count: reader.remaining - pageBytes) }
        let data = try reader.take(pageBytes, "page data")
        self.init(
            formatVersion: version,
            moduleHash: hash,
            memory: MemoryImage(pageCount: pageCount, storedPages: stored, bytes: Array(data)),
            globals: globals,
            eventBuffer: buffer
        )
    }

    /// Whether `buffer` lies in an image of `imageBytes`, is sized as the host sizes it, and
    /// is either both 0 or neither: the host writes events there, so it must never point
    /// elsewhere.
    static func eventBufferFits(_ buffer: EventBuffer, imageBytes: Int) -> Bool {
        UInt64(buffer.pointer) + UInt64(buffer.capacity) <= UInt64(imageBytes)
            && (buffer.pointer == 0) == (buffer.capacity == 0)
            && buffer.capacity <= GuestInstance.maximumBufferCapacity
    }
}

/// Reads the encoding front to back; every read names its field, so a truncation says where.
private struct SnapshotReader {
    let bytes: [UInt8]
    var offset = 0

    var remaining: Int { bytes.count - offset }

    mutating func take(_ count: Int, _ field: String) throws(WasmSnapshotError) -> ArraySlice<UInt8> {
        guard count <= remaining else { throw .truncated(field: field, needed: count, available: remaining) }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    mutating func u8(_ field: String) throws(WasmSnapshotError) -> UInt8 {
        try take(1, field).first!
    }

    mutating func u32(_ field: String) throws(WasmSnapshotError) -> UInt32 {
        try take(4, field).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func u64(_ field: String) throws(WasmSnapshotError) -> UInt64 {
        try take(8, field).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }
}
