// Fuzz target: the wasm ABI codec (Sources/StateroomWasm/ABICodec.swift) on arbitrary bytes —
// the host's decoder of guest output (`MessageFromProcess`, what `stateroom_send` hands it) and
// the guest SDK's event decoder (`MessageToProcess`, what `stateroom_recv` delivers), plus the
// guest runtime's dispatch and request encoding (GuestRuntime.swift).
//
// Properties, each decoder on an exact copy of the input:
// - It agrees with a plain reference decoder (below) on success or on the error, naming the
//   same field or variant tag.
// - A decoded payload is a view of the input, inside it, where the reference says.
// - Decode then encode gives back exactly the bytes decoded (`encodedCount` of them; the encoding
//   is canonical), written into an exact allocation.
// - Fed to `GuestRuntime.receive`, the event reaches the matching callback, and the requests
//   the service makes come out encoded as the host will decode them.
// - With the identity extension on (IDENTITY.md), a `ClientIdentity` (variant 5) is recorded
//   exactly when a reference decodes it, calls nothing, and lasts into the client's `connect`;
//   every other input is handled as in ABI v1.

import Stateroom
import StateroomWasm

// MARK: - Reference decoder

/// A decoded message as plain values; a payload is its kind tag and its place in the input.
enum RefMessage: Equatable {
    case initialize, timer
    case connect(UInt32), disconnect(UInt32)
    case message(sender: UInt32, kind: UInt32, at: Int, count: Int)
    case send(recipient: UInt32, client: UInt32?, kind: UInt32, at: Int, count: Int)
    case setTimer(UInt32)
}

struct RefReader {
    let b: [UInt8]
    var i = 0
    mutating func u32(_ field: StaticString) throws(ABIDecodeError) -> UInt32 {
        guard b.count - i >= 4 else { throw .truncated(field: field) }
        defer { i += 4 }
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[i + $1]) << (8 * UInt32($1)) }
    }
    mutating func u64(_ field: StaticString) throws(ABIDecodeError) -> UInt64 {
        guard b.count - i >= 8 else { throw .truncated(field: field) }
        defer { i += 8 }
        return (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[i + $1]) << (8 * UInt64($1)) }
    }
    mutating func payload() throws(ABIDecodeError) -> (kind: UInt32, at: Int, count: Int) {
        let kind = try u32("MessagePayload tag")
        if kind > 1 { throw .unknownVariant(type: "MessagePayload", tag: kind) }
        let n = try u64("MessagePayload length")
        if n > UInt64(b.count - i) { throw .truncated(field: "MessagePayload bytes") }
        defer { i += Int(n) }
        return (kind, i, Int(n))
    }
}

func referenceToProcess(_ b: [UInt8]) -> Result<(RefMessage, Int), ABIDecodeError> {
    var r = RefReader(b: b)
    do throws(ABIDecodeError) {
        let m: RefMessage
        switch try r.u32("MessageToProcess tag") {
        case 0: m = .initialize
        case 1: m = .connect(try r.u32("Connect.client"))
        case 2: m = .disconnect(try r.u32("Disconnect.client"))
        case 3:
            let sender = try r.u32("Message.sender")
            let p = try r.payload()
            m = .message(sender: sender, kind: p.kind, at: p.at, count: p.count)
        case 4: m = .timer
        case let tag: throw .unknownVariant(type: "MessageToProcess", tag: tag)
        }
        return .success((m, r.i))
    } catch {
        return .failure(error)
    }
}

func referenceFromProcess(_ b: [UInt8]) -> Result<(RefMessage, Int), ABIDecodeError> {
    var r = RefReader(b: b)
    do throws(ABIDecodeError) {
        let m: RefMessage
        switch try r.u32("MessageFromProcess tag") {
        case 0:
            let rtag = try r.u32("MessageRecipient tag")
            var client: UInt32?
            switch rtag {
            case 0: break
            case 1: client = try r.u32("Client.client")
            case 2: client = try r.u32("EveryoneExcept.client")
            default: throw .unknownVariant(type: "MessageRecipient", tag: rtag)
            }
            let p = try r.payload()
            m = .send(recipient: rtag, client: client, kind: p.kind, at: p.at, count: p.count)
        case 1: m = .setTimer(try r.u32("SetTimer.ms_delay"))
        case let tag: throw .unknownVariant(type: "MessageFromProcess", tag: tag)
        }
        return .success((m, r.i))
    } catch {
        return .failure(error)
    }
}

// MARK: - The codec's answers as plain values

/// Where `payload`'s bytes are, as an offset into `base` (checked to lie inside it).
func place(_ payload: MessagePayload, in base: UnsafeRawBufferPointer) -> (kind: UInt32, at: Int, count: Int) {
    payload.withUnsafeBytes { view in
        let at = view.baseAddress.map { $0 - base.baseAddress! } ?? 0
        require(view.count == 0 || (at >= 0 && at + view.count <= base.count),
                "payload view [\(at), +\(view.count)) outside the input of \(base.count) bytes")
        return (payload.isText ? 1 : 0, at, view.count)
    }
}

func plain(_ m: MessageToProcess, in base: UnsafeRawBufferPointer) -> RefMessage {
    switch m {
    case .initialize: return .initialize
    case .timer: return .timer
    case .connect(let c): return .connect(c.rawValue)
    case .disconnect(let c): return .disconnect(c.rawValue)
    case .message(let sender, let payload):
        let p = place(payload, in: base)
        return .message(sender: sender.rawValue, kind: p.kind, at: p.at, count: p.count)
    }
}

func plain(_ m: MessageFromProcess, in base: UnsafeRawBufferPointer) -> RefMessage {
    switch m {
    case .setTimer(let ms): return .setTimer(ms)
    case .message(let recipient, let payload):
        let p = place(payload, in: base)
        switch recipient {
        case .broadcast: return .send(recipient: 0, client: nil, kind: p.kind, at: p.at, count: p.count)
        case .client(let c): return .send(recipient: 1, client: c.rawValue, kind: p.kind, at: p.at, count: p.count)
        case .everyoneExcept(let c): return .send(recipient: 2, client: c.rawValue, kind: p.kind, at: p.at, count: p.count)
        }
    }
}

/// Encodes into an exact allocation (a write past `encodedCount` is an ASan report).
func encodeExactly(count: Int, _ encode: (UnsafeMutableRawBufferPointer) -> Int) -> [UInt8] {
    let out = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
    defer { out.deallocate() }
    let written = encode(out)
    require(written == count, "encode wrote \(written) bytes, encodedCount is \(count)")
    return Array(out)
}

// MARK: - The guest runtime

/// Records what the guest hands the host.
final class Recorder: GuestOutput {
    var requests: [[UInt8]] = []
    var closed: [String] = []
    func emit(_ encoded: UnsafeRawBufferPointer) { requests.append(Array(encoded)) }
    func closeRoom(reason: String) { closed.append(reason) }
}

/// A service whose every callback makes requests that depend on what it was given.
struct Probe: StateroomService {
    var calls: [String] = []
    mutating func initialize(context: some StateroomContext) {
        calls.append("initialize")
        context.setTimer(milliseconds: 0)
    }
    mutating func connect(client: ClientId, context: some StateroomContext) {
        calls.append("connect \(client.rawValue)")
        context.send("hello \(client.rawValue)", to: .client(client))
    }
    mutating func disconnect(client: ClientId, context: some StateroomContext) {
        calls.append("disconnect \(client.rawValue)")
        context.send(binary: [1, 2, 3], to: .everyoneExcept(client))
    }
    mutating func message(client: ClientId, message: MessagePayload, context: some StateroomContext) {
        calls.append("message \(client.rawValue) \(message.isText ? 1 : 0) \(message.count)")
        context.send(message, to: .broadcast)                      // the borrowed payload, passed on
        context.send(message.copy(), to: .everyoneExcept(client))  // an owned copy
        _ = message.text                                            // repairs, never traps
        if message.isText { context.closeRoom(reason: "text from \(client.rawValue)") }
    }
    mutating func timer(context: some StateroomContext) {
        calls.append("timer")
    }
}

func u32le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
func u64le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
func payloadBytes(_ kind: UInt32, _ bytes: ArraySlice<UInt8>) -> [UInt8] { u32le(kind) + u64le(UInt64(bytes.count)) + bytes }

/// What `Probe` must do for `m` (decoded from `input`): its call log line and the encoded
/// requests, in order.
func expectedGuest(_ m: RefMessage, _ input: [UInt8]) -> (String, [[UInt8]], [String]) {
    switch m {
    case .initialize: return ("initialize", [u32le(1) + u32le(0)], [])
    case .timer: return ("timer", [], [])
    case .connect(let c):
        return ("connect \(c)", [u32le(0) + u32le(1) + u32le(c) + payloadBytes(1, ArraySlice("hello \(c)".utf8))], [])
    case .disconnect(let c):
        return ("disconnect \(c)", [u32le(0) + u32le(2) + u32le(c) + payloadBytes(0, [1, 2, 3])], [])
    case let .message(sender, kind, at, count):
        let body = input[at..<at + count]
        // An owned copy of text is a String: bytes that are not UTF-8 come out repaired.
        let copied = kind == 1 ? ArraySlice(String(decoding: body, as: UTF8.self).utf8) : body
        return ("message \(sender) \(kind) \(count)",
                [u32le(0) + u32le(0) + payloadBytes(kind, body), u32le(0) + u32le(2) + u32le(sender) + payloadBytes(kind, copied)],
                kind == 1 ? ["text from \(sender)"] : [])
    case .send, .setTimer:
        fail("not a MessageToProcess")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))

    // Guest → host.
    let wantFrom = referenceFromProcess(input)
    withFreshCopy(input) { buffer in
        let base = UnsafeRawBufferPointer(buffer)
        do throws(ABIDecodeError) {
            let m = try MessageFromProcess.decode(base)
            guard case .success(let (ref, consumed)) = wantFrom else { fail("MessageFromProcess decoded what the reference refuses: \(wantFrom)") }
            require(plain(m, in: base) == ref, "MessageFromProcess: \(plain(m, in: base)), reference \(ref)")
            require(m.encodedCount == consumed, "encodedCount \(m.encodedCount), decoded \(consumed) bytes")
            let again = encodeExactly(count: m.encodedCount) { m.encode(into: $0) }
            require(again == Array(input[..<consumed]), "MessageFromProcess: encode(decode(x)) != x")
            require(m.encoded() == again, "encoded() and encode(into:) differ")
        } catch {
            guard case .failure(let want) = wantFrom else { fail("MessageFromProcess refused \(error), reference decodes it") }
            require(error == want, "MessageFromProcess: \(error), reference \(want)")
        }
    }

    // Host → guest, decoded and dispatched by the guest runtime.
    let wantTo = referenceToProcess(input)
    withFreshCopy(input) { buffer in
        let base = UnsafeRawBufferPointer(buffer)
        do throws(ABIDecodeError) {
            let m = try MessageToProcess.decode(base)
            guard case .success(let (ref, consumed)) = wantTo else { fail("MessageToProcess decoded what the reference refuses: \(wantTo)") }
            require(plain(m, in: base) == ref, "MessageToProcess: \(plain(m, in: base)), reference \(ref)")
            require(m.encodedCount == consumed, "encodedCount \(m.encodedCount), decoded \(consumed) bytes")
            let again = encodeExactly(count: m.encodedCount) { m.encode(into: $0) }
            require(again == Array(input[..<consumed]), "MessageToProcess: encode(decode(x)) != x")
            require(m.encoded() == again, "encoded() and encode(into:) differ")
        } catch {
            guard case .failure(let want) = wantTo else { fail("MessageToProcess refused \(error), reference decodes it") }
            require(error == want, "MessageToProcess: \(error), reference \(want)")
        }

        let output = Recorder()
        var runtime = GuestRuntime(service: Probe(), output: output)
        do throws(ABIDecodeError) {
            try runtime.receive(base)
            guard case .success(let (ref, _)) = wantTo else { fail("receive accepted what the reference refuses") }
            let (call, requests, closed) = expectedGuest(ref, input)
            require(runtime.service.calls == [call], "callbacks \(runtime.service.calls), expected \(call)")
            require(output.requests == requests, "requests \(output.requests), expected \(requests)")
            require(output.closed == closed, "closeRoom \(output.closed), expected \(closed)")
            // What the guest sent decodes, on the host side, to what it meant.
            for r in output.requests {
                let decoded = r.withUnsafeBytes { raw -> Bool in (try? MessageFromProcess.decode(raw)) != nil }
                require(decoded, "the host cannot decode a request the guest encoded")
            }
        } catch {
            guard case .failure(let want) = wantTo, want == error else { fail("receive: \(error), reference \(wantTo)") }
            require(runtime.service.calls.isEmpty && output.requests.isEmpty, "a refused event reached the service")
        }
    }

    // Host → guest with the identity extension on (IDENTITY.md): variant 5 is a ClientIdentity,
    // recorded (nothing called) exactly when the reference decodes it; a following Connect sees it.
    let wantIdentity = referenceClientIdentity(input)
    withFreshCopy(input) { buffer in
        let base = UnsafeRawBufferPointer(buffer)
        let output = Recorder()
        var runtime = GuestRuntime(service: Probe(), output: output, acceptsIdentities: true)
        do throws(ABIDecodeError) {
            try runtime.receive(base)
            if let (client, identity) = wantIdentity {
                require(runtime.service.calls.isEmpty && output.requests.isEmpty, "ClientIdentity called the service")
                require(runtime.context.identity(of: ClientId(client)) == identity,
                        "identity \(String(describing: runtime.context.identity(of: ClientId(client)))), expected \(identity)")
                let connect = u32le(1) + u32le(client)
                let event = MessageToProcess.connect(ClientId(client))
                require(connect.withUnsafeBytes { (try? MessageToProcess.decode($0))?.encoded() } == connect, "Connect encoding")
                runtime.dispatch(event)
                require(runtime.service.calls == ["connect \(client)"], "the Connect after ClientIdentity: \(runtime.service.calls)")
                require(runtime.context.identity(of: ClientId(client)) == identity, "the identity did not last into connect")
            } else {
                guard case .success = wantTo else { fail("receive (identities on) accepted what the reference refuses") }
            }
        } catch {
            if input.count >= 4 && input[0] == 5 && input[1] == 0 && input[2] == 0 && input[3] == 0 {
                require(wantIdentity == nil, "receive refused a ClientIdentity the reference decodes: \(error)")
            } else {
                guard case .failure(let want) = wantTo, want == error else { fail("receive (identities on): \(error), reference \(wantTo)") }
            }
            require(runtime.service.calls.isEmpty && output.requests.isEmpty, "a refused event reached the service")
        }
    }
    return 0
}

/// The reference for `ClientIdentity` (`5:u32 client:u32 len:u64 utf8`; bytes past the string are
/// ignored, as for every event): the client and the identity, or nil.
func referenceClientIdentity(_ input: [UInt8]) -> (UInt32, String)? {
    func le(_ at: Int, _ n: Int) -> UInt64 { (0..<n).reduce(UInt64(0)) { $0 | UInt64(input[at + $1]) << (8 * UInt64($1)) } }
    guard input.count >= 16, le(0, 4) == 5 else { return nil }
    let length = le(8, 8)
    guard length <= UInt64(input.count - 16) else { return nil }
    return (UInt32(le(4, 4)), String(decoding: input[16..<16 + Int(length)], as: UTF8.self))
}
