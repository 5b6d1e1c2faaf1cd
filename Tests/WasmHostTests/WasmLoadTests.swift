import Logging
import Testing
@testable import WasmHost

/// Modules that cannot serve rooms are refused at start-up, with an error naming the fault.
@Suite struct WasmLoadTests {
    @Test func missingExportIsNamed() throws {
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(.missingExport) }
        #expect(error == .missingExport(name: "stateroom_free", expected: "function (i32, i32) -> ()"))
        #expect(error?.description.contains("stateroom_free") == true)
    }

    @Test func wrongVersionIsRefused() throws {
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(.wrongVersion) }
        #expect(error == .versionMismatch(global: "STATEROOM_API_VERSION", expected: 1, actual: 2))
    }

    @Test func wrongProtocolIsRefused() throws {
        let wat = minimalModule(recv: "").replacingOccurrences(
            of: #"(data (i32.const 16) "\01\00\00\00\00\00\00\00")"#,
            with: #"(data (i32.const 16) "\01\00\00\00\05\00\00\00")"#)
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .versionMismatch(global: "STATEROOM_API_PROTOCOL", expected: 0, actual: 5))
    }

    @Test func unknownImportIsNamed() throws {
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(.unknownImport) }
        #expect(error == .unexpectedImport(module: "env", name: "abort", kind: "function"))
        #expect(error?.description.contains("env.abort") == true)
    }

    @Test func unknownWASIFunctionIsRefused() throws {
        let wat = minimalModule(recv: "", imports: #"(import "wasi_snapshot_preview1" "thread_spawn" (func (param i32) (result i32)))"#)
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .unexpectedImport(module: "wasi_snapshot_preview1", name: "thread_spawn", kind: "function"))
    }

    @Test func wasiImportWithWrongTypeIsRefused() throws {
        let wat = minimalModule(recv: "", imports: #"(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))"#)
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .wrongImportType(module: "wasi_snapshot_preview1", name: "fd_write",
                                          expected: "(i32, i32, i32, i32) -> (i32)", actual: "(i32) -> (i32)"))
    }

    @Test func importedMemoryIsRefused() throws {
        let wat = minimalModule(recv: "", imports: #"(import "env" "table" (table 1 funcref))"#)
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .unexpectedImport(module: "env", name: "table", kind: "table"))
    }

    @Test func stateroomSendWithWrongTypeIsRefused() throws {
        let wat = """
            (module
              (import "env" "stateroom_send" (func (param i32 i32) (result i32)))
              (memory (export "memory") 1)
              (global (export "STATEROOM_API_VERSION") i32 (i32.const 16))
              (global (export "STATEROOM_API_PROTOCOL") i32 (i32.const 20))
              (func (export "stateroom_malloc") (param i32) (result i32) (i32.const 1024))
              (func (export "stateroom_free") (param i32 i32))
              (func (export "stateroom_recv") (param i32 i32)))
            """
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .wrongImportType(module: "env", name: "stateroom_send",
                                          expected: "(i32, i32) -> ()", actual: "(i32, i32) -> (i32)"))
    }

    @Test func exportWithWrongSignatureIsNamed() throws {
        let wat = minimalModule(recv: "").replacingOccurrences(
            of: #"(func (export "stateroom_free") (param i32 i32)"#,
            with: #"(func (export "stateroom_free") (param i32)"#)
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .wrongExportType(name: "stateroom_free", expected: "(i32, i32) -> ()", actual: "(i32) -> ()"))
    }

    @Test func exportOfWrongKindIsNamed() throws {
        let wat = minimalModule(recv: "").replacingOccurrences(
            of: #"(global (export "STATEROOM_API_PROTOCOL") i32 (i32.const 20))"#,
            with: #"(func (export "STATEROOM_API_PROTOCOL"))"#)
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .wrongExportKind(name: "STATEROOM_API_PROTOCOL", expected: "global", actual: "function"))
    }

    @Test func versionGlobalOutsideMemoryIsRefused() throws {
        let wat = minimalModule(recv: "").replacingOccurrences(
            of: #"(global (export "STATEROOM_API_VERSION") i32 (i32.const 16))"#,
            with: #"(global (export "STATEROOM_API_VERSION") i32 (i32.const 65534))"#)
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(wat: wat) }
        #expect(error == .badGlobalAddress(global: "STATEROOM_API_VERSION", address: 65534, memoryBytes: 65536))
    }

    @Test func initialMemoryOverTheCapIsRefused() throws {
        let limits = WasmLimits(maxMemoryBytes: 64 << 10)  // 1 page; the counter starts with 2
        let error = #expect(throws: WasmLoadError.self) { try makeFactory(.counter, limits: limits) }
        guard case .instantiationFailed = error else { Issue.record("got \(String(describing: error))"); return }
    }

    @Test func garbageBytesAreRefused() throws {
        #expect(throws: WasmLoadError.self) {
            try WasmServiceFactory(bytes: [0, 1, 2, 3], name: "garbage", logger: Logger(label: "t"))
        }
        let error = #expect(throws: WasmLoadError.self) {
            try WasmServiceFactory(path: "/nonexistent/module.wasm", logger: Logger(label: "t"))
        }
        #expect(error?.description.contains("/nonexistent/module.wasm") == true)
    }

    @Test func invalidFunctionBodyIsRefusedAtLoad() throws {
        // A body that fails validation only when translated: the eager probe catches it.
        let wat = minimalModule(recv: "", extra: "(func $bad (result i32) (i64.const 1))")
        #expect(throws: (any Error).self) { try makeFactory(wat: wat) }
    }

    @Test func loadsFromAFile() throws {
        let path = "/tmp/wasmhost-test-\(getpid()).wasm"
        let bytes = try Fixture.counter.wasm()
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let factory = try WasmServiceFactory(path: path, logger: Logger(label: "t"))
        let (room, ctx) = try makeRoom(factory)
        room.send("increment", context: ctx)
        #expect(ctx.texts == ["new value: 1"])
    }
}

import Foundation
