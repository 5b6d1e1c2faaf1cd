/// Why a module was refused at start-up. The description names the export or import at fault.
public enum WasmLoadError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file could not be read or is not a valid WebAssembly module.
    case invalidModule(path: String, reason: String)
    /// A required export is absent.
    case missingExport(name: String, expected: String)
    /// An export exists with the wrong kind (e.g. a global where a function is required).
    case wrongExportKind(name: String, expected: String, actual: String)
    /// An exported function or global has the wrong type.
    case wrongExportType(name: String, expected: String, actual: String)
    /// The module imports something the host does not provide.
    case unexpectedImport(module: String, name: String, kind: String)
    /// A known import is declared with the wrong type.
    case wrongImportType(module: String, name: String, expected: String, actual: String)
    /// `STATEROOM_API_VERSION`, `STATEROOM_API_PROTOCOL` or (if exported, for the identity
    /// extension) `STATEROOM_IDENTITY_VERSION` does not hold the supported value.
    case versionMismatch(global: String, expected: Int32, actual: Int32)
    /// An ABI global points outside the module's memory.
    case badGlobalAddress(global: String, address: UInt32, memoryBytes: Int)
    /// Instantiation, the start function or `_initialize` failed (trap, memory cap, fuel...).
    case instantiationFailed(reason: String)

    public var description: String {
        switch self {
        case .invalidModule(let path, let reason):
            return "cannot load wasm module \(path): \(reason)"
        case .missingExport(let name, let expected):
            return "wasm module lacks the required export `\(name)` (\(expected))"
        case .wrongExportKind(let name, let expected, let actual):
            return "wasm export `\(name)` must be a \(expected), but is a \(actual)"
        case .wrongExportType(let name, let expected, let actual):
            return "wasm export `\(name)` has type \(actual), expected \(expected)"
        case .unexpectedImport(let module, let name, let kind):
            return "wasm module imports \(kind) `\(module).\(name)`, which the host does not provide "
                + "(allowed: env.stateroom_send, env.stateroom_client_connected and wasi_snapshot_preview1 functions)"
        case .wrongImportType(let module, let name, let expected, let actual):
            return "wasm import `\(module).\(name)` has type \(actual), expected \(expected)"
        case .versionMismatch(let global, let expected, let actual):
            return "wasm module's \(global) is \(actual), this host supports \(expected)"
        case .badGlobalAddress(let global, let address, let memoryBytes):
            return "wasm module's \(global) points at \(address), outside its \(memoryBytes)-byte memory"
        case .instantiationFailed(let reason):
            return "wasm module failed to instantiate: \(reason)"
        }
    }
}
