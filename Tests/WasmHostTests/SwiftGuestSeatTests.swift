import Foundation
import Logging
import Stateroom
import Testing
@testable import WasmHost
import WasmKit

/// `stateroom`, built with the tests into the same products folder.
let stateroomCLI: URL? = {
    let url = Bundle.module.bundleURL.deletingLastPathComponent().appending(path: "stateroom")
    return FileManager.default.isExecutableFile(atPath: url.path) ? url : nil
}()

/// The seats extension through the Swift guest SDK: services built by `stateroom build` (the CLI
/// of this build, beside the test bundle) and served by this host. A service that asks
/// `context.isConnected` imports `env.stateroom_client_connected` and sees what the room's context
/// answers; one that does not (Examples/SharedCounter) imports exactly what SDK modules always
/// did, and loads and runs as before.
@Suite(.enabled(if: stateroomCLI != nil, "needs the stateroom CLI of this build"))
struct SwiftGuestSeatTests {
    /// Builds the `.swift` files of `folder`, copied into a folder called `name`, with
    /// `stateroom build` (debug) and returns the module's bytes (`dist/<name>.wasm`).
    static func build(_ folder: URL, name: String) throws -> [UInt8] {
        guard let cli = stateroomCLI else { throw WasmLoadError.invalidModule(path: name, reason: "no stateroom CLI") }
        let fm = FileManager.default
        let parent = fm.temporaryDirectory.appending(path: "seat-guest-\(getpid())-\(name)")
        let work = parent.appending(path: name)
        try? fm.removeItem(at: parent)
        try fm.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: parent) }
        for entry in try fm.contentsOfDirectory(atPath: folder.path) where entry.hasSuffix(".swift") {
            try fm.copyItem(at: folder.appending(path: entry), to: work.appending(path: entry))
        }
        // system(3) rather than Foundation's Process (see RustShapeTests).
        let status = system("'\(cli.path)' build --path '\(work.path)' >&2")
        guard status == 0 else {
            throw WasmLoadError.invalidModule(path: folder.path, reason: "stateroom build exited with status \(status)")
        }
        return [UInt8](try Data(contentsOf: work.appending(path: "dist/\(name).wasm")))
    }

    static let presence: Result<[UInt8], any Error> = Result {
        try build(Bundle.module.url(forResource: "swift_presence", withExtension: nil, subdirectory: "Fixtures")!,
                  name: "presence")
    }

    static let counter: Result<[UInt8], any Error> = Result {
        let examples = URL(filePath: #filePath).deletingLastPathComponent().appending(path: "../../Examples")
        return try build(examples.appending(path: "SharedCounter").standardized, name: "counter")
    }

    static func imports(_ bytes: [UInt8]) throws -> Set<String> {
        Set(try parseWasm(bytes: bytes).imports.map { "\($0.module).\($0.name)" })
    }

    @Test func aServiceThatAsksImportsTheFunctionAndSeesTheContextsAnswers() throws {
        let bytes = try Self.presence.get()
        #expect(try Self.imports(bytes).contains("env.stateroom_client_connected"))
        let factory = try WasmServiceFactory(bytes: bytes, name: "presence", limits: testLimits, logger: Logger(label: "wasm-test"))
        #expect(factory.importsClientConnected)
        let (room, ctx) = try makeRoom(factory)
        ctx.away = [ClientId(2)]
        room.connect(client: ClientId(1), context: ctx)
        room.connect(client: ClientId(2), context: ctx)
        room.send("who", from: 1, context: ctx)
        ctx.away = [ClientId(1), ClientId(3)]
        room.send("who", from: 2, context: ctx)
        #expect(ctx.events == [
            .send(.client(ClientId(1)), .text, Array("welcome".utf8)),
            .send(.client(ClientId(2)), .text, Array("welcome, away".utf8)),
            .send(.client(ClientId(1)), .text, Array("1:here 2:away 3:here".utf8)),
            .send(.client(ClientId(2)), .text, Array("1:away 2:here 3:away".utf8)),
        ])
        #expect(!room.isTerminated)
    }

    @Test func aServiceThatDoesNotAskImportsNothingNewAndRunsAsBefore() throws {
        let bytes = try Self.counter.get()
        #expect(try !Self.imports(bytes).contains("env.stateroom_client_connected"))
        #expect(try Self.imports(bytes).allSatisfy { $0 == "env.stateroom_send" || $0.hasPrefix("wasi_snapshot_preview1.") })
        let factory = try WasmServiceFactory(bytes: bytes, name: "counter", limits: testLimits, logger: Logger(label: "wasm-test"))
        #expect(!factory.importsClientConnected)
        let (room, ctx) = try makeRoom(factory)
        ctx.away = [ClientId(1)]
        room.connect(client: ClientId(1), context: ctx)
        room.send("increment", from: 1, context: ctx)
        room.send("increment", from: 1, context: ctx)
        #expect(ctx.texts == ["new value: 1", "new value: 2"])
        #expect(ctx.connectedQueries.isEmpty)
    }
}
