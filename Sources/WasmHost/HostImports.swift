import Logging
import Stateroom
import StateroomWasm
@_spi(Fuzzing) import WasmKit
import enum WasmParser.ImportDescriptor
import enum WasmParser.ExportDescriptor

// The host side of the wasm boundary: every function a guest may import is declared here (plus
// the WASI preview 1 bridge in WASIBridge.swift), with the per-instance state they reach.

/// A host function ended the guest: the instance is discarded and the room closed.
enum GuestExit: Error, CustomStringConvertible {
    /// The guest called WASI `proc_exit(code)`.
    case procExit(code: UInt32)
    /// The guest broke the contract: a pointer range outside its memory, an undecodable
    /// `stateroom_send` payload, ...
    case fault(String)

    var description: String {
        switch self {
        case .procExit(let code): return "proc_exit(\(code))"
        case .fault(let reason): return reason
        }
    }
}

/// What a module imports, resolved once at load: each import is the host's `stateroom_send`, the
/// seats extension's `stateroom_client_connected` (StateroomWasm/IDENTITY.md), or a WASI
/// preview 1 function. Anything else refuses the module.
struct ImportPlan: Sendable {
    enum Provider: Sendable {
        case stateroomSend
        case clientConnected
        case wasi(WASIFunction)
    }

    struct Entry: Sendable {
        let module: String
        let name: String
        let type: FunctionType
        let provider: Provider
    }

    static let stateroomSendType = FunctionType(parameters: [.i32, .i32], results: [])
    /// `env.stateroom_client_connected(client: i32) -> i32`: optional; only a module that imports
    /// it gets it.
    static let clientConnectedType = FunctionType(parameters: [.i32], results: [.i32])

    let entries: [Entry]

    /// The module imports `env.stateroom_client_connected`.
    var importsClientConnected: Bool {
        entries.contains { if case .clientConnected = $0.provider { true } else { false } }
    }

    /// Checks every import of `module` against what the host provides.
    init(module: Module) throws(WasmLoadError) {
        var entries: [Entry] = []
        for item in module.imports {
            guard case .function(let typeIndex) = item.descriptor else {
                throw .unexpectedImport(module: item.module, name: item.name, kind: Self.kindName(item.descriptor))
            }
            let actual = module.functionType(at: typeIndex)
            let expected: FunctionType
            let provider: Provider
            switch item.module {
            case "env" where item.name == "stateroom_send":
                expected = Self.stateroomSendType
                provider = .stateroomSend
            case "env" where item.name == "stateroom_client_connected":
                expected = Self.clientConnectedType
                provider = .clientConnected
            case WASIFunction.moduleName:
                guard let function = WASIFunction(rawValue: item.name) else {
                    throw .unexpectedImport(module: item.module, name: item.name, kind: "function")
                }
                expected = function.type
                provider = .wasi(function)
            default:
                throw .unexpectedImport(module: item.module, name: item.name, kind: "function")
            }
            guard let actual, actual == expected else {
                throw .wrongImportType(
                    module: item.module, name: item.name,
                    expected: expected.signature, actual: actual?.signature ?? "an invalid type")
            }
            entries.append(Entry(module: item.module, name: item.name, type: expected, provider: provider))
        }
        self.entries = entries
    }

    static func kindName(_ descriptor: ImportDescriptor) -> String {
        switch descriptor {
        case .function: return "function"
        case .table: return "table"
        case .memory: return "memory"
        case .global: return "global"
        case .tag: return "tag"
        }
    }

    /// Creates this instance's host functions in `store`, bound to `state`.
    ///
    /// The closures hold `state` unowned: the store keeps them, and `state` must not keep the
    /// store alive through them (the ``GuestInstance`` owns both and outlives every call).
    func makeImports(store: Store, state: HostState) -> Imports {
        var imports = Imports()
        for entry in entries {
            let function: Function
            switch entry.provider {
            case .stateroomSend:
                function = Function(store: store, parameters: [.i32, .i32], results: []) {
                    [unowned state] _, args, _ in
                    try state.stateroomSend(pointer: args[0].i32, length: args[1].i32)
                }
            case .clientConnected:
                function = Function(store: store, parameters: [.i32], results: [.i32]) {
                    [unowned state] _, args, results in
                    results[0] = .i32(state.clientConnected(args[0].i32) ? 1 : 0)
                }
            case .wasi(let wasi):
                function = Function(
                    store: store, parameters: wasi.type.parameters, results: wasi.type.results
                ) { [unowned state] _, args, results in
                    let errno = try wasi.call(args, state: state)
                    if !results.isEmpty { results[0] = .i32(errno) }
                }
            }
            imports.define(module: entry.module, name: entry.name, function)
        }
        return imports
    }
}

/// Per-instance host state that the imported functions reach: the guest's memory, the context of
/// the callback in progress, and the log streams.
///
/// Owned by one ``GuestInstance`` and used only on the thread that runs it.
final class HostState {
    /// The guest's exported memory, set right after instantiation.
    var memory: Memory?
    /// Logs of this room (metadata `room` once ``roomId`` is set), made on first use: a room
    /// that never logs does not pay for its logger (setting metadata on the standard handler
    /// renders its metadata text again, about 5 µs per room created).
    var logger: Logger {
        if let roomLogger { return roomLogger }
        var made = baseLogger
        if let roomId { made[metadataKey: "room"] = "\(roomId)" }
        roomLogger = made
        return made
    }
    private let baseLogger: Logger
    private var roomLogger: Logger?
    /// The room this instance serves (set when it is given to one).
    var roomId: String? {
        didSet { roomLogger = nil }
    }
    /// Where decoded `stateroom_send` messages go during a callback: set by
    /// ``GuestInstance/withSink(_:isConnected:_:)`` for exactly the duration of the call, `nil` otherwise.
    /// A message's payload borrows guest memory: it is valid only during the sink call.
    var sink: ((MessageFromProcess) -> Void)?
    /// What `stateroom_client_connected` asks during a callback: the callback's context
    /// (``StateroomContext/isConnected(_:)``), set next to ``sink`` for exactly the duration of
    /// the call, `nil` otherwise.
    var isConnected: ((ClientId) -> Bool)?

    /// Most log lines one callback may produce; further lines are counted and dropped.
    static let logLinesPerCallback = 64
    /// Longest log line kept, in bytes; the rest of a longer line is dropped.
    static let maxLogLineBytes = 1024

    private var stdoutLine: [UInt8] = []
    private var stderrLine: [UInt8] = []
    private var logLinesLeft = HostState.logLinesPerCallback
    private var droppedLogLines = 0

    init(logger: Logger) {
        self.baseLogger = logger
    }

    // MARK: Guest memory, bounds-checked

    /// `ptr ..< ptr + len` if it lies inside guest memory, else a fault naming `what`.
    ///
    /// WasmKit's `Memory.withUnsafe(Mutable)BufferPointer` enforce bounds with `precondition`
    /// (a bad guest range would kill the process), so every host access checks here first.
    @inline(__always)
    private func checkedMemory(_ ptr: UInt32, _ len: UInt32, _ what: StaticString) throws(GuestExit) -> Memory {
        guard let memory else { throw .fault("\(what): the instance has no memory") }
        let size = memory.byteCount
        guard UInt64(ptr) + UInt64(len) <= UInt64(size) else {
            throw .fault("\(what): range \(ptr)+\(len) is outside guest memory (\(size) bytes)")
        }
        return memory
    }

    /// Calls `body` with the guest bytes `ptr ..< ptr + len`, valid only inside `body`.
    func read<R>(
        _ ptr: UInt32, _ len: UInt32, _ what: StaticString,
        _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        let memory = try checkedMemory(ptr, len, what)
        if len == 0 { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        return try memory.withUnsafeBufferPointer(offset: UInt(ptr), count: Int(len), body)
    }

    /// Calls `body` with writable guest bytes `ptr ..< ptr + len`, valid only inside `body`.
    func write<R>(
        _ ptr: UInt32, _ len: UInt32, _ what: StaticString,
        _ body: (UnsafeMutableRawBufferPointer) throws -> R
    ) throws -> R {
        let memory = try checkedMemory(ptr, len, what)
        if len == 0 { return try body(UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
        return try memory.withUnsafeMutableBufferPointer(offset: UInt(ptr), count: Int(len), body)
    }

    func readU32(_ ptr: UInt32, _ what: StaticString) throws -> UInt32 {
        try read(ptr, 4, what) { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
    }

    func storeU32(_ value: UInt32, at ptr: UInt32, _ what: StaticString) throws {
        try write(ptr, 4, what) { $0.storeBytes(of: value.littleEndian, as: UInt32.self) }
    }

    func storeU64(_ value: UInt64, at ptr: UInt32, _ what: StaticString) throws {
        try write(ptr, 8, what) { $0.storeBytes(of: value.littleEndian, as: UInt64.self) }
    }

    // MARK: env.stateroom_send

    /// `env.stateroom_send(ptr, len)`: decodes one `MessageFromProcess` in place and hands it to
    /// the callback's sink. The payload borrows guest memory (checked to lie inside it first),
    /// which is valid only during this call: the sink gets it while the bytes are still
    /// borrowed, so the context encodes its frame straight from them, with no copy in between.
    func stateroomSend(pointer: UInt32, length: UInt32) throws {
        try read(pointer, length, "stateroom_send") { bytes in
            let message: MessageFromProcess
            do {
                message = try MessageFromProcess.decode(bytes)
            } catch {
                throw GuestExit.fault("stateroom_send: undecodable payload (\(length) bytes): \(error)")
            }
            if case .message(_, let payload) = message, payload.isText, !payload.withUnsafeBytes(Self.isUTF8) {
                throw GuestExit.fault("stateroom_send: undecodable payload (\(length) bytes): Text payload is not valid UTF-8")
            }
            guard let sink else {
                // Only reachable from `_initialize` or a start function, before any room context.
                logger.warning("wasm guest called stateroom_send outside a callback; message dropped")
                return
            }
            sink(message)
        }
    }

    // MARK: env.stateroom_client_connected

    /// `env.stateroom_client_connected(client)`: whether the callback's context counts `client`
    /// as connected (false while it is away in its seat's grace, or not in the room). Outside a
    /// callback (only `_initialize` or a start function can call it then) there is no room to
    /// ask: every client counts as connected, as for a context without seats.
    func clientConnected(_ client: UInt32) -> Bool {
        guard let isConnected else { return true }
        return isConnected(ClientId(client))
    }

    /// Whether `bytes` are valid UTF-8, checked in place by the standard library.
    private static func isUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        (try? UTF8Span(validating: bytes.assumingMemoryBound(to: UInt8.self).span)) != nil
    }

    // MARK: Log streams (WASI stdout / stderr)

    /// Appends bytes written to fd 1 or 2; every complete line becomes a log line.
    func appendLog(fd: UInt32, _ bytes: UnsafeRawBufferPointer) {
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                emitLine(fd: fd)
            } else if fd == 1 {
                if stdoutLine.count < Self.maxLogLineBytes { stdoutLine.append(byte) }
            } else {
                if stderrLine.count < Self.maxLogLineBytes { stderrLine.append(byte) }
            }
        }
    }

    private func emitLine(fd: UInt32) {
        let line = String(decoding: fd == 1 ? stdoutLine : stderrLine, as: UTF8.self)
        if fd == 1 { stdoutLine.removeAll(keepingCapacity: true) } else { stderrLine.removeAll(keepingCapacity: true) }
        guard logLinesLeft > 0 else {
            droppedLogLines += 1
            return
        }
        logLinesLeft -= 1
        logger.info("\(line)", metadata: ["stream": fd == 1 ? "stdout" : "stderr"])
    }

    /// Starts a callback's log allowance.
    func beginCallback() {
        logLinesLeft = Self.logLinesPerCallback
    }

    /// Reports lines dropped by the cap during the callback that just ended.
    func endCallback() {
        if droppedLogLines > 0 {
            logger.warning("wasm guest log output capped: \(droppedLogLines) lines dropped")
            droppedLogLines = 0
        }
    }

    /// Logs unterminated output (the instance is going away).
    func flushLogs() {
        if !stdoutLine.isEmpty { emitLine(fd: 1) }
        if !stderrLine.isEmpty { emitLine(fd: 2) }
        endCallback()
    }
}

extension FunctionType {
    /// `(i32, i32) -> ()`, the way errors print a signature.
    var signature: String {
        func list(_ types: [ValueType]) -> String {
            "(" + types.map(\.name).joined(separator: ", ") + ")"
        }
        return list(parameters) + " -> " + list(results)
    }
}

extension ValueType {
    /// The type's name as errors print it (signatures, snapshot globals).
    var name: String {
        switch self {
        case .i32: return "i32"
        case .i64: return "i64"
        case .f32: return "f32"
        case .f64: return "f64"
        case .v128: return "v128"
        case .ref: return "ref"
        }
    }
}
