import CLibCrypto
import WasmKit
import enum WasmParser.ExportDescriptor
import enum WasmParser.ImportDescriptor
import struct WasmParser.Parser

/// A wasm room's state, captured between callbacks, from which another instance of the same
/// module continues exactly where the room was (on this node or, later, on another one).
///
/// Between callbacks a guest's state is its linear memory and its mutable globals. Modules built
/// by LLVM toolchains (Stateroom's Rust SDK, the Swift guest SDK) keep their only non-exported
/// mutable global, the shadow-stack pointer, back at its initial value between callbacks, so a
/// fresh instance plus the memory image and the *exported* mutable globals reproduces the room.
/// (A hand-written module that keeps state in a non-exported mutable global is not captured:
/// WebAssembly gives the host no way to read one; ``WasmServiceFactory/hiddenMutableGlobalCount``
/// tells such a module apart.) The host's own per-instance state that lives in guest memory, the
/// event buffer, travels along: the guest's allocator, inside the image, still counts that block
/// as allocated.
///
/// A snapshot names the module it came from by its SHA-256 and is restored into no other
/// (``WasmServiceFactory/makeWasmService(roomId:shard:restoring:)``).
public struct WasmSnapshot: Sendable, Equatable {
    /// The encoding version this build writes, and the only one it reads.
    public static let currentFormatVersion: UInt32 = 1
    /// A WebAssembly page: the unit in which memory grows and in which the image is stored.
    public static let pageSize = 65_536

    /// An exported mutable global and its value when captured.
    public struct Global: Sendable, Equatable {
        /// The export's name.
        public let name: String
        /// Its value (the case is its type).
        public let value: WasmGlobalValue
    }

    /// A linear memory, stored compactly: only pages holding a non-zero byte are kept, since most
    /// of a guest's memory is zero (a 64 MiB-capped guest must not cost 64 MiB per snapshot).
    public struct MemoryImage: Sendable, Equatable {
        /// The memory's size when captured, in pages; restoring grows the memory to this size.
        public let pageCount: Int
        /// Indices of the stored pages, ascending; every other page is zero.
        public let storedPages: [UInt32]
        /// The stored pages' bytes, ``WasmSnapshot/pageSize`` each, in ``storedPages`` order.
        public let bytes: [UInt8]

        /// The memory's size when captured, in bytes (what counts against the memory cap).
        public var byteCount: Int { pageCount * WasmSnapshot.pageSize }
    }

    /// The host's event buffer (``GuestInstance/bufferPointer``): a block the guest allocated,
    /// which the restored instance adopts instead of allocating another.
    public struct EventBuffer: Sendable, Equatable {
        /// Its address in guest memory, 0 if the room had not received an event yet.
        public let pointer: UInt32
        /// Its size in bytes (0 with pointer 0).
        public let capacity: UInt32
    }

    /// The encoding version the snapshot was made with (a decoded one is always current).
    public let formatVersion: UInt32
    /// SHA-256 of the module's bytes.
    public let moduleHash: WasmModuleHash
    /// The guest's linear memory.
    public let memory: MemoryImage
    /// The module's exported mutable globals, in the module's export order.
    public let globals: [Global]
    /// The host's event buffer in guest memory.
    public let eventBuffer: EventBuffer
}

/// SHA-256 of a module's bytes: what ties a snapshot to the module it came from.
public struct WasmModuleHash: Sendable, Hashable, CustomStringConvertible {
    /// The 32 digest bytes.
    public let bytes: [UInt8]

    /// A digest read back from a snapshot (exactly 32 bytes).
    init(bytes: [UInt8]) {
        precondition(bytes.count == Int(SHA256_DIGEST_LENGTH))
        self.bytes = bytes
    }

    /// Hashes `module` with OpenSSL's libcrypto (once, when the factory loads the module).
    init(of module: [UInt8]) {
        var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
        module.withUnsafeBufferPointer { input in
            digest.withUnsafeMutableBufferPointer { output in
                _ = SHA256(input.baseAddress, input.count, output.baseAddress)
            }
        }
        self.init(bytes: digest)
    }

    /// The digest in lowercase hex.
    public var description: String { Self.hex(bytes[...]) }

    /// The first 6 bytes in hex: enough to tell modules apart in a log line or an error.
    public var shortHex: String { Self.hex(bytes.prefix(6)) }

    private static func hex(_ bytes: ArraySlice<UInt8>) -> String {
        let digits = Array("0123456789abcdef")
        var text = ""
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 15)])
        }
        return text
    }
}

/// The value of a captured global; the case is its WebAssembly type. Floats are kept as bit
/// patterns, so a NaN's payload survives the round trip.
public enum WasmGlobalValue: Sendable, Equatable {
    /// An `i32` (signedness is the guest's business).
    case i32(UInt32)
    /// An `i64`.
    case i64(UInt64)
    /// An `f32`, as its IEEE 754 bits.
    case f32(bitPattern: UInt32)
    /// An `f64`, as its IEEE 754 bits.
    case f64(bitPattern: UInt64)

    /// The WebAssembly type's name, for errors.
    public var typeName: String {
        switch self {
        case .i32: return "i32"
        case .i64: return "i64"
        case .f32: return "f32"
        case .f64: return "f64"
        }
    }

    /// The snapshot form of a WasmKit value; `nil` for types a snapshot cannot carry
    /// (vectors, references).
    init?(_ value: Value) {
        switch value {
        case .i32(let v): self = .i32(v)
        case .i64(let v): self = .i64(v)
        case .f32(let v): self = .f32(bitPattern: v)
        case .f64(let v): self = .f64(bitPattern: v)
        case .v128, .ref: return nil
        }
    }

    /// The WasmKit value to assign.
    var wasmValue: Value {
        switch self {
        case .i32(let v): return .i32(v)
        case .i64(let v): return .i64(v)
        case .f32(let v): return .f32(v)
        case .f64(let v): return .f64(v)
        }
    }
}

/// Why a room could not be captured, a snapshot could not be decoded, or a snapshot could not be
/// restored. The description says what is wrong in a way an operator can act on.
public enum WasmSnapshotError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The room's guest failed (trap, budget, `proc_exit`...) and was discarded: nothing to capture.
    case roomTerminated(roomId: String)
    /// A snapshot was asked for while the guest was running (from inside a callback).
    case insideCallback(roomId: String)
    /// An exported mutable global has a type a snapshot cannot carry.
    case unsupportedGlobal(name: String, type: String)
    /// The guest's memory has a size that is not whole pages.
    case unsupportedMemory(byteCount: Int)
    /// The encoding does not start with the snapshot magic.
    case badMagic
    /// The encoding's format version is not one this build reads.
    case unsupportedVersion(UInt32, supported: UInt32)
    /// The encoding ends inside `field`.
    case truncated(field: String, needed: Int, available: Int)
    /// Bytes follow the last stored page.
    case trailingBytes(count: Int)
    /// A length, count or field that does not add up.
    case inconsistent(reason: String)
    /// The snapshot was made from another module.
    case moduleMismatch(snapshot: WasmModuleHash, module: WasmModuleHash)
    /// The memory image is larger than the room's memory cap (``WasmLimits/maxMemoryBytes``).
    case memoryOverCap(imageBytes: Int, maxMemoryBytes: Int)
    /// Growing the fresh instance's memory to the image's size was refused (memory cap or the
    /// module's declared maximum).
    case memoryGrowthRefused(fromPages: Int, toPages: Int, reason: String)
    /// A global in the snapshot does not match the module's exported mutable globals.
    case globalMismatch(name: String, reason: String)
    /// The fresh instance for the restored room could not be made.
    case instanceFailed(reason: String)

    /// What went wrong, naming the room, field, global or modules involved.
    public var description: String {
        switch self {
        case .roomTerminated(let roomId):
            return "room \(roomId) cannot be snapshotted: its wasm guest failed and was discarded"
        case .insideCallback(let roomId):
            return "room \(roomId) cannot be snapshotted while its wasm guest is running (only between callbacks)"
        case .unsupportedGlobal(let name, let type):
            return "wasm export `\(name)` is a mutable global of type \(type), which snapshots cannot carry"
        case .unsupportedMemory(let byteCount):
            return "wasm memory of \(byteCount) bytes is not whole 64 KiB pages"
        case .badMagic:
            return "not a wasm room snapshot (bad magic)"
        case .unsupportedVersion(let version, let supported):
            return "wasm room snapshot format version \(version) is unknown (this build reads \(supported))"
        case .truncated(let field, let needed, let available):
            return "wasm room snapshot is truncated in \(field): needs \(needed) bytes, \(available) left"
        case .trailingBytes(let count):
            return "wasm room snapshot has \(count) unexpected bytes after its last page"
        case .inconsistent(let reason):
            return "wasm room snapshot is inconsistent: \(reason)"
        case .moduleMismatch(let snapshot, let module):
            return "wasm room snapshot is of module \(snapshot.shortHex), not of this module \(module.shortHex)"
        case .memoryOverCap(let imageBytes, let maxMemoryBytes):
            return "wasm room snapshot's memory of \(imageBytes) bytes exceeds the room's cap of \(maxMemoryBytes) bytes"
        case .memoryGrowthRefused(let fromPages, let toPages, let reason):
            return "growing the restored room's memory from \(fromPages) to \(toPages) pages failed: \(reason)"
        case .globalMismatch(let name, let reason):
            return "wasm room snapshot's global `\(name)` does not fit the module: \(reason)"
        case .instanceFailed(let reason):
            return "cannot make an instance for the restored room: \(reason)"
        }
    }
}

/// What a snapshot of one module holds besides its memory: the module's hash and its exported
/// mutable globals. Worked out once, when the factory loads the module.
struct SnapshotLayout: Sendable {
    /// SHA-256 of the module's bytes.
    let moduleHash: WasmModuleHash
    /// Exported mutable globals (name and type) in export order; one global exported under two
    /// names appears twice, which is harmless (same value).
    let mutableGlobals: [(name: String, type: ValueType)]
    /// Mutable globals the module does not export, which no snapshot can carry. LLVM-built
    /// modules have one, the shadow-stack pointer (back at its initial value between callbacks);
    /// more means state that a restored room would lose.
    let hiddenMutableGlobals: Int

    /// Hashes `bytes` and lists the module's exported mutable globals. WasmKit's `Module` does
    /// not make a defined global's type public, so the import, global and export sections are
    /// read again here (parsing stops after the export section).
    init(moduleBytes bytes: [UInt8], name: String) throws(WasmLoadError) {
        moduleHash = WasmModuleHash(of: bytes)
        var globalTypes: [GlobalType] = []
        var exported: [(name: String, type: ValueType)] = []
        var exportedIndices = Set<UInt32>()
        var parser = WasmParser.Parser(bytes: bytes)
        do {
            parsing: while let payload = try parser.parseNext() {
                switch payload {
                case .importSection(let imports):
                    for entry in imports {
                        if case .global(let type) = entry.descriptor { globalTypes.append(type) }
                    }
                case .globalSection(let globals):
                    globalTypes.append(contentsOf: globals.map(\.type))
                case .exportSection(let exports):
                    for export in exports {
                        guard case .global(let index) = export.descriptor, Int(index) < globalTypes.count else { continue }
                        exportedIndices.insert(index)
                        let type = globalTypes[Int(index)]
                        if type.mutability == .variable { exported.append((export.name, type.valueType)) }
                    }
                    break parsing
                default:
                    continue
                }
            }
        } catch {
            throw .invalidModule(path: name, reason: "\(error)")
        }
        mutableGlobals = exported
        hiddenMutableGlobals = globalTypes.indices.count {
            globalTypes[$0].mutability == .variable && !exportedIndices.contains(UInt32($0))
        }
    }

    /// Refuses, before any instance is touched, a snapshot this module cannot take: another
    /// module's, one over the memory cap, one whose globals or event buffer do not fit.
    func check(_ snapshot: WasmSnapshot, limits: WasmLimits) throws(WasmSnapshotError) {
        guard snapshot.moduleHash == moduleHash else {
            throw .moduleMismatch(snapshot: snapshot.moduleHash, module: moduleHash)
        }
        guard snapshot.memory.byteCount <= limits.maxMemoryBytes else {
            throw .memoryOverCap(imageBytes: snapshot.memory.byteCount, maxMemoryBytes: limits.maxMemoryBytes)
        }
        for global in snapshot.globals {
            guard let expected = mutableGlobals.first(where: { $0.name == global.name }) else {
                throw .globalMismatch(name: global.name, reason: "the module exports no mutable global of that name")
            }
            let expectedType = expected.type.name
            guard expectedType == global.value.typeName else {
                throw .globalMismatch(name: global.name, reason: "it is \(global.value.typeName), the module's is \(expectedType)")
            }
        }
        for expected in mutableGlobals where !snapshot.globals.contains(where: { $0.name == expected.name }) {
            throw .globalMismatch(name: expected.name, reason: "the snapshot lacks it")
        }
        // Decoding and capture make these hold; checked again because the restore writes guest
        // memory from them.
        let image = snapshot.memory
        guard image.bytes.count == image.storedPages.count * WasmSnapshot.pageSize,
            zip(image.storedPages, image.storedPages.dropFirst()).allSatisfy({ $0 < $1 }),
            image.storedPages.last.map({ Int($0) < image.pageCount }) ?? true
        else {
            throw .inconsistent(reason: "the stored pages do not fit the \(image.pageCount)-page memory")
        }
        let buffer = snapshot.eventBuffer
        guard WasmSnapshot.eventBufferFits(buffer, imageBytes: snapshot.memory.byteCount) else {
            throw .inconsistent(reason: "event buffer \(buffer.pointer)+\(buffer.capacity) does not fit the \(snapshot.memory.byteCount)-byte image")
        }
    }
}

/// A tiny module that imports a memory and grows it: the restore grows a fresh instance's memory
/// through `memory.grow`, the same path (module maximum, store memory cap) the guest's own growth
/// takes, since WasmKit has no host-side grow.
///
/// ```wat
/// (module
///   (import "env" "memory" (memory 0))
///   (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
/// ```
enum MemoryGrower {
    /// The module's binary, pinned against the WAT above by a test.
    static let bytes: [UInt8] = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
        0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f,  // type: (i32) -> i32
        0x02, 0x0f, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x00,  // env.memory, min 0
        0x03, 0x02, 0x01, 0x00,  // one function of type 0
        0x07, 0x08, 0x01, 0x04, 0x67, 0x72, 0x6f, 0x77, 0x00, 0x00,  // export "grow"
        0x0a, 0x08, 0x01, 0x06, 0x00, 0x20, 0x00, 0x40, 0x00, 0x0b,  // local.get 0, memory.grow 0
    ]
}
