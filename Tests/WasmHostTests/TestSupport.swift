import Foundation
import Logging
import Stateroom
import Synchronization
import WAT
@testable import WasmHost
import Locking

/// A context that records what the service did.
final class RecordingContext: StateroomContext {
    enum Event: Equatable, CustomStringConvertible {
        case send(MessageRecipient, MessagePayload.Kind, [UInt8])
        case setTimer(UInt32)
        case closeRoom(String)

        var description: String {
            switch self {
            case .send(let r, .text, let b): return "send(\(r), text \(String(decoding: b, as: UTF8.self)))"
            case .send(let r, .binary, let b): return "send(\(r), binary \(b))"
            case .setTimer(let ms): return "setTimer(\(ms))"
            case .closeRoom(let reason): return "closeRoom(\(reason))"
            }
        }
    }

    var events: [Event] = []
    /// Who each client is, as a server with authentication would answer
    /// ``StateroomContext/identity(of:)``.
    var identities: [ClientId: String] = [:]

    func identity(of client: ClientId) -> String? { identities[client] }

    /// Clients away in their seat's grace (or not in the room): ``isConnected(_:)`` answers
    /// false for them, true for every other client.
    var away: Set<ClientId> = []
    /// Every client ``isConnected(_:)`` was asked about, in order.
    var connectedQueries: [ClientId] = []

    func isConnected(_ client: ClientId) -> Bool {
        connectedQueries.append(client)
        return !away.contains(client)
    }

    func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        events.append(.send(recipient, message.kind, message.bytes))
    }

    func setTimer(milliseconds: UInt32) { events.append(.setTimer(milliseconds)) }

    func closeRoom(reason: String) { events.append(.closeRoom(reason)) }

    /// Text messages sent, in order.
    var texts: [String] {
        events.compactMap {
            if case .send(_, .text, let b) = $0 { return String(decoding: b, as: UTF8.self) }
            return nil
        }
    }

    /// The closeRoom reason, if the room was closed.
    var closeReason: String? {
        events.lazy.compactMap { if case .closeRoom(let r) = $0 { return r } else { return nil } }.first
    }

    func take() -> [Event] {
        defer { events = [] }
        return events
    }
}

/// Log lines captured from a Logger.
final class LogRecorder: Sendable {
    struct Line: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }

    private let storage = Locked<[Line]>([])
    var lines: [Line] { storage.withLock { $0 } }

    func append(_ line: Line) { storage.withLock { $0.append(line) } }

    func logger() -> Logger {
        Logger(label: "wasm-test") { _ in Handler(recorder: self) }
    }

    struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var all = self.metadata
            if let metadata = event.metadata { all.merge(metadata) { $1 } }
            recorder.append(Line(level: event.level, message: event.message.description, metadata: all.mapValues { "\($0)" }))
        }
    }
}

enum Fixture: String, CaseIterable {
    case counter, relay, recipients, timer, wasi, trap, loop, grow
    case missingExport = "missing_export"
    case wrongVersion = "wrong_version"
    case badSend = "bad_send"
    case unknownImport = "unknown_import"
    case mallocFault = "malloc_fault"

    var url: URL {
        Bundle.module.url(forResource: rawValue, withExtension: "wat", subdirectory: "Fixtures")!
    }

    func wasm() throws -> [UInt8] {
        try wat2wasm(String(contentsOf: url, encoding: .utf8))
    }
}

/// A small memory cap and budget keep the faulty fixtures quick.
let testLimits = WasmLimits(callbackBudgetMilliseconds: 100, maxMemoryBytes: 8 << 20, spareInstances: 1)

func makeFactory(
    _ fixture: Fixture, limits: WasmLimits = testLimits, logger: Logger = Logger(label: "wasm-test")
) throws -> WasmServiceFactory {
    try WasmServiceFactory(bytes: fixture.wasm(), name: fixture.rawValue, limits: limits, logger: logger)
}

func makeFactory(wat: String, limits: WasmLimits = testLimits) throws -> WasmServiceFactory {
    try WasmServiceFactory(bytes: wat2wasm(wat), name: "inline", limits: limits, logger: Logger(label: "wasm-test"))
}

/// A room: service plus recording context, initialized.
func makeRoom(_ factory: WasmServiceFactory, id: String = "room") throws -> (WasmService, RecordingContext) {
    let service = try factory.makeWasmService(roomId: id, shard: 0)
    let context = RecordingContext()
    service.initialize(context: context)
    return (service, context)
}

extension WasmService {
    func send(_ text: String, from client: UInt32 = 1, context: RecordingContext) {
        message(client: ClientId(client), message: .text(text), context: context)
    }
}

/// Bytes from a hex string with optional spaces.
func hex(_ s: String) -> [UInt8] {
    let digits = s.filter { !$0.isWhitespace }
    var out: [UInt8] = []
    var i = digits.startIndex
    while i < digits.endIndex {
        let j = digits.index(i, offsetBy: 2)
        out.append(UInt8(digits[i..<j], radix: 16)!)
        i = j
    }
    return out
}
