// A scripted conversation with a service, and the transcript of what it answered. Used to check
// that one service source behaves the same compiled natively and to wasm (`stateroom build
// --native` harness vs `stateroom replay` of the module), and to time one message. Native only.
import Stateroom

/// One step of a script.
public enum StateroomScriptStep: Equatable {
    /// A client joins; with an `identity`, as an authenticated client known as that.
    case connect(UInt32, identity: String? = nil)
    case disconnect(UInt32)
    case text(UInt32, String)
    case binary(UInt32, [UInt8])
    case timer
}

/// A conversation: `Init` first, then one step per line:
///
/// ```
/// connect 1
/// connect 2 as bob        # joins with identity "bob" (the rest of the line, verbatim)
/// text 1 increment        # the rest of the line, verbatim
/// binary 2 00ff10         # hex bytes
/// timer
/// disconnect 1
/// ```
/// Blank lines and lines starting with `#` are skipped.
public struct StateroomScript {
    public var steps: [StateroomScriptStep]

    /// A script of these steps.
    public init(steps: [StateroomScriptStep]) { self.steps = steps }

    /// Parses the text format above; throws a message naming the bad line.
    public init(parsing text: String) throws(StateroomScriptError) {
        steps = []
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            var line = Substring(raw)
            if line.hasSuffix("\r") { line = line.dropLast() }
            let trimmed = line.drop(while: { $0 == " " })
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let words = trimmed.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
            func client() throws(StateroomScriptError) -> UInt32 {
                guard words.count >= 2, let id = UInt32(words[1]), id > 0 else {
                    throw StateroomScriptError(line: number, message: "expected a client id (1, 2, ...)")
                }
                return id
            }
            switch words[0] {
            case "connect":
                let id = try client()
                if words.count > 2 {
                    guard words[2].hasPrefix("as "), words[2].count > 3 else {
                        throw StateroomScriptError(line: number, message: "expected 'connect N' or 'connect N as IDENTITY'")
                    }
                    steps.append(.connect(id, identity: String(words[2].dropFirst(3))))
                } else {
                    steps.append(.connect(id))
                }
            case "disconnect": steps.append(.disconnect(try client()))
            case "text": steps.append(.text(try client(), words.count > 2 ? String(words[2]) : ""))
            case "binary":
                let id = try client()
                let hex = words.count > 2 ? Array(words[2].utf8) : []
                var bytes: [UInt8] = []
                guard hex.count % 2 == 0 else { throw StateroomScriptError(line: number, message: "odd number of hex digits") }
                var i = 0
                while i < hex.count {
                    guard let hi = hexValue(hex[i]), let lo = hexValue(hex[i + 1]) else {
                        throw StateroomScriptError(line: number, message: "not a hex byte string")
                    }
                    bytes.append(hi << 4 | lo)
                    i += 2
                }
                steps.append(.binary(id, bytes))
            case "timer": steps.append(.timer)
            default:
                throw StateroomScriptError(
                    line: number,
                    message: "unknown step '\(words[0])' (connect, connect N as ID, disconnect, text, binary, timer)")
            }
        }
    }
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}

/// A script line that could not be parsed.
public struct StateroomScriptError: Error, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "script line \(line): \(message)" }
}

/// A context that writes everything a service does as transcript lines.
public final class StateroomTranscript: StateroomContext {
    /// The lines so far: inputs start with `>`, outputs with `<`.
    public private(set) var lines: [String] = []
    /// The identities of the clients that joined with one (`connect N as IDENTITY`), kept until
    /// their `disconnect` callback has returned, as the server does.
    public var identities: [ClientId: String] = [:]

    public init() {}

    /// The identity `client` joined with, as a server with authentication answers it.
    public func identity(of client: ClientId) -> String? { identities[client] }

    public func note(_ line: String) { lines.append(line) }

    public func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        let who: String
        switch recipient {
        case .broadcast: who = "broadcast"
        case .client(let c): who = "client \(c.rawValue)"
        case .everyoneExcept(let c): who = "everyone except \(c.rawValue)"
        }
        lines.append("< \(who): \(describe(message))")
    }

    public func setTimer(milliseconds: UInt32) { lines.append("< set timer \(milliseconds) ms") }

    /// The reason is left out: a wasm guest cannot pass it to the host (it traps instead).
    public func closeRoom(reason: String) { lines.append("< close room") }
}

/// `text "..."` or `binary 00ff...`.
public func describe(_ message: MessagePayload) -> String {
    if let text = message.text { return "text \(text.debugDescription)" }
    let digits: [Character] = Array("0123456789abcdef")
    var hex = ""
    for b in message.bytes {
        hex.append(digits[Int(b >> 4)])
        hex.append(digits[Int(b & 15)])
    }
    return "binary \(hex)"
}

/// Runs `script` against a fresh `service` (`Init` first) and returns the transcript.
public func runStateroomScript<S: StateroomService>(_ script: StateroomScript, service: inout S) -> [String] {
    runStateroomScript(script, service: &service, transcript: StateroomTranscript())
}

/// ``runStateroomScript(_:service:)`` into `t`, which afterwards also holds the identities of
/// the clients still in the room.
@discardableResult
public func runStateroomScript<S: StateroomService>(
    _ script: StateroomScript, service: inout S, transcript t: StateroomTranscript
) -> [String] {
    t.note("> init")
    service.initialize(context: t)
    for step in script.steps {
        switch step {
        case .connect(let c, let identity):
            if let identity {
                t.note("> connect \(c) as \(identity.debugDescription)")
                t.identities[ClientId(c)] = identity
            } else {
                t.note("> connect \(c)")
            }
            service.connect(client: ClientId(c), context: t)
        case .disconnect(let c):
            t.note("> disconnect \(c)")
            service.disconnect(client: ClientId(c), context: t)
            t.identities[ClientId(c)] = nil
        case .text(let c, let s):
            t.note("> text \(c) \(s.debugDescription)")
            withBorrowed(Array(s.utf8), kind: .text) { service.message(client: ClientId(c), message: $0, context: t) }
        case .binary(let c, let b):
            t.note("> \(describeBinary(c, b))")
            withBorrowed(b, kind: .binary) { service.message(client: ClientId(c), message: $0, context: t) }
        case .timer:
            t.note("> timer")
            service.timer(context: t)
        }
    }
    return t.lines
}

private func describeBinary(_ c: UInt32, _ b: [UInt8]) -> String {
    "binary \(c) " + describe(.binary(b)).dropFirst(7)
}

/// Calls `body` with a payload borrowing `bytes`, as the server hands payloads to services.
func withBorrowed(_ bytes: [UInt8], kind: MessagePayload.Kind, _ body: (MessagePayload) -> Void) {
    bytes.withUnsafeBytes { body(MessagePayload(borrowing: $0, kind: kind)) }
}

/// A context that only counts what it is given (for timing).
public final class StateroomCountingContext: StateroomContext {
    public private(set) var messages = 0
    public private(set) var bytes = 0
    public private(set) var timers = 0
    /// The identities of the clients in the room (from the setup script).
    public var identities: [ClientId: String] = [:]
    public init() {}
    public func identity(of client: ClientId) -> String? { identities[client] }
    public func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        messages += 1
        bytes += message.count
    }
    private let scratch = MessageBuffer()
    /// Written in memory kept from one message to the next, as the server does.
    public func sendText(to recipient: MessageRecipient, _ write: (inout TextWriter) -> Void) {
        scratch.withText(write) { send($0, to: recipient) }
    }
    public func setTimer(milliseconds: UInt32) { timers += 1 }
    public func closeRoom(reason: String) {}
}

/// The cost of one message: `script` sets the room up, then each of `rounds` rounds delivers
/// `text` from `client` `count` times. Returns the nanoseconds per message of every round.
public func benchStateroomService<S: StateroomService>(
    service: inout S, setup script: StateroomScript, text: String, client: UInt32,
    count: Int, rounds: Int
) -> [Double] {
    let setup = StateroomTranscript()
    runStateroomScript(script, service: &service, transcript: setup)
    let ctx = StateroomCountingContext()
    ctx.identities = setup.identities
    let bytes = Array(text.utf8)
    var results: [Double] = []
    let clock = ContinuousClock()
    bytes.withUnsafeBytes { raw in
        let payload = MessagePayload(borrowing: raw, kind: .text)
        for _ in 0..<max(1, rounds) {
            let start = clock.now
            for _ in 0..<count {
                service.message(client: ClientId(client), message: payload, context: ctx)
            }
            let elapsed = clock.now - start
            let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
            results.append(ns / Double(max(1, count)))
        }
    }
    return results
}

/// The median of `values` (0 if empty).
public func median(_ values: [Double]) -> Double {
    let s = values.sorted()
    guard !s.isEmpty else { return 0 }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// The command line shared by the native harness (`stateroom build --native`) and
/// `stateroom replay`: `SCRIPT` prints the transcript (`connect N as IDENTITY` joins a client
/// with an identity, which a native service reads with `context.identity(of:)` and a wasm module
/// that declares `STATEROOM_IDENTITY_VERSION` receives as `ClientIdentity`);
/// `--bench TEXT [--client N] [--count N] [--rounds N] [SCRIPT]` prints the median time of one
/// message.
public func stateroomScriptMain<S: StateroomService>(arguments: [String], name: String, makeService: () -> S) -> Int32 {
    var args = arguments[...]
    var benchText: String?
    var client: UInt32 = 1
    var count = 20_000
    var rounds = 9
    var scriptPath: String?
    while let a = args.popFirst() {
        switch a {
        case "--bench": benchText = args.popFirst()
        case "--client": client = args.popFirst().flatMap { UInt32($0) } ?? 1
        case "--count": count = args.popFirst().flatMap { Int($0) } ?? count
        case "--rounds": rounds = args.popFirst().flatMap { Int($0) } ?? rounds
        default: scriptPath = a
        }
    }
    var scriptText = ""
    if let scriptPath {
        guard let text = readTextFile(scriptPath) else {
            printError("\(name): cannot read \(scriptPath)")
            return 1
        }
        scriptText = text
    } else if benchText == nil {
        while let line = readLine() { scriptText += line + "\n" }
    }
    let script: StateroomScript
    do {
        script = try StateroomScript(parsing: scriptText)
    } catch {
        printError("\(name): \(error)")
        return 1
    }
    var service = makeService()
    if let benchText {
        let setup = script.steps.isEmpty ? StateroomScript(steps: [.connect(client)]) : script
        let r = benchStateroomService(service: &service, setup: setup, text: benchText, client: client,
                                      count: count, rounds: rounds)
        let med = median(r), best = r.min() ?? 0
        print("\(name): \(formatNs(med)) ns/message median of \(r.count) rounds x \(count) (min \(formatNs(best)))")
    } else {
        for line in runStateroomScript(script, service: &service) { print(line) }
    }
    return 0
}

func formatNs(_ v: Double) -> String {
    let tenths = Int((v * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}
