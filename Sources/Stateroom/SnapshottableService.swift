/// A service whose whole state can be written down and read back: what lets a native room
/// outlive its process (saved when it empties or the server stops, restored on the next connect,
/// here or on another node). Wasm rooms need nothing of the kind: the host snapshots their memory.
///
/// A snapshot is taken between callbacks; `init(snapshot:)` makes a service that continues from
/// it, with no `initialize` call. ``snapshotFormat`` names the layout: a snapshot is only ever
/// given to a service type that declares the same format, so change it whenever the layout changes.
public protocol SnapshottableService: StateroomService {
    /// The name and version of the snapshot layout, e.g. `"stateroom.counter/1"`.
    static var snapshotFormat: String { get }
    /// The service's state as bytes.
    func snapshot() -> [UInt8]
    /// A service continuing from `snapshot` (made by ``snapshot()`` of the same format). Throws,
    /// rather than guessing, when the bytes do not decode.
    init(snapshot: [UInt8]) throws(SnapshotError)
}

/// Why a snapshot could not be read.
public struct SnapshotError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What was wrong, naming the field.
    public let description: String

    public init(_ description: String) { self.description = description }
}

/// Writes a snapshot: little-endian integers and length-prefixed strings and bytes.
public struct SnapshotWriter {
    /// The bytes so far.
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func write(_ value: Int64) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func write(_ value: Int) { write(Int64(value)) }

    public mutating func write(_ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func write(_ value: String) {
        write(bytes: Array(value.utf8))
    }

    public mutating func write(bytes value: [UInt8]) {
        write(Int64(value.count))
        bytes.append(contentsOf: value)
    }
}

/// Reads what ``SnapshotWriter`` wrote, refusing to read past the end or to accept what is not there.
public struct SnapshotReader {
    private let bytes: [UInt8]
    private var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// Bytes not read yet.
    public var remaining: Int { bytes.count - offset }

    public mutating func int64(_ field: String) throws(SnapshotError) -> Int64 {
        guard remaining >= 8 else { throw SnapshotError("snapshot ends inside \(field)") }
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        offset += 8
        return Int64(bitPattern: v)
    }

    public mutating func int(_ field: String) throws(SnapshotError) -> Int {
        let v = try int64(field)
        guard let i = Int(exactly: v) else { throw SnapshotError("\(field) out of range: \(v)") }
        return i
    }

    public mutating func uint32(_ field: String) throws(SnapshotError) -> UInt32 {
        guard remaining >= 4 else { throw SnapshotError("snapshot ends inside \(field)") }
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        offset += 4
        return v
    }

    public mutating func bytes(_ field: String) throws(SnapshotError) -> [UInt8] {
        let count = try int64("\(field) length")
        guard count >= 0, count <= Int64(remaining) else {
            throw SnapshotError("\(field) length \(count) does not fit the \(remaining) bytes left")
        }
        let out = Array(bytes[offset..<offset + Int(count)])
        offset += Int(count)
        return out
    }

    public mutating func string(_ field: String) throws(SnapshotError) -> String {
        let utf8 = try bytes(field)
        guard let s = String(validating: utf8, as: UTF8.self) else { throw SnapshotError("\(field) is not UTF-8") }
        return s
    }

    /// Fails if anything is left: a snapshot is read whole or not at all.
    public func finish() throws(SnapshotError) {
        guard remaining == 0 else { throw SnapshotError("\(remaining) bytes after the end of the snapshot") }
    }
}
