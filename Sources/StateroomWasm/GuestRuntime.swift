#if !STATEROOM_GUEST
import Stateroom
#endif

/// Where a guest's requests go: in a wasm module, the host imports `env.stateroom_send` (and
/// `env.stateroom_client_connected` for ``isConnected(_:)``); in native tests, a recorder.
public protocol GuestOutput {
    /// Takes one bincode-encoded `MessageFromProcess`. The bytes are valid only during the call.
    func emit(_ encoded: UnsafeRawBufferPointer)
    /// The service gave up its room (``StateroomContext/closeRoom(reason:)``). The ABI has no
    /// message for it: a wasm guest logs `reason` to stderr and traps, which makes the host close
    /// the room's clients with 1011.
    func closeRoom(reason: String)
    /// Whether `client` has a connection now (``StateroomContext/isConnected(_:)``): false while
    /// it is away in its seat's grace, or not in the room. A wasm guest asks the host
    /// (`env.stateroom_client_connected`, the seats extension of IDENTITY.md).
    func isConnected(_ client: ClientId) -> Bool
}

extension GuestOutput {
    /// Every client counts as connected (outputs without a host behind them).
    public func isConnected(_ client: ClientId) -> Bool { true }
}

/// The scratch memory a context encodes into, reused for every message of a room: requests are
/// written with plain stores (no `Array` bookkeeping), which matters in an interpreted guest.
public typealias GuestEncodeBuffer = MessageBuffer

/// The identities of a room's clients, as the host delivered them (`ClientIdentity`, IDENTITY.md):
/// an entry from the `ClientIdentity` that precedes a client's `Connect` until that client's
/// `disconnect` callback has returned.
///
/// One array sorted by client id, searched by halves: ids grow, so an insert is (nearly always)
/// an append. Every guest links this code, so it is kept small: a `Dictionary` or two parallel
/// arrays made a module 1–3 KB larger than this.
public final class GuestIdentities {
    private struct Entry {
        var client: UInt32
        var identity: String
    }

    private var entries: [Entry] = []

    /// An empty table.
    public init() {}

    /// The number of clients with an identity.
    public var count: Int { entries.count }

    /// The identity `client` joined with; nil for an anonymous client or one not in the room.
    public func identity(of client: ClientId) -> String? {
        let (index, found) = search(client.rawValue)
        return found ? entries[index].identity : nil
    }

    /// Records (or replaces) `client`'s identity.
    public func set(_ identity: String, for client: ClientId) {
        let (index, found) = search(client.rawValue)
        if found {
            entries[index].identity = identity
        } else {
            entries.insert(Entry(client: client.rawValue, identity: identity), at: index)
        }
    }

    /// Forgets `client` (after its `disconnect` callback).
    public func remove(_ client: ClientId) {
        guard !entries.isEmpty else { return }
        let (index, found) = search(client.rawValue)
        if found { entries.remove(at: index) }
    }

    /// Where `id` is, or where it belongs.
    private func search(_ id: UInt32) -> (index: Int, found: Bool) {
        var lo = 0
        var hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[mid].client < id { lo = mid + 1 } else { hi = mid }
        }
        return (lo, lo < entries.count && entries[lo].client == id)
    }
}

/// The ``StateroomContext`` a guest's service receives: each call becomes one encoded
/// `MessageFromProcess` handed to the output; ``identity(of:)`` answers from the room's
/// ``GuestIdentities``, ``isConnected(_:)`` from the output.
public struct GuestContext<Output: GuestOutput>: StateroomContext {
    /// The output every request goes to.
    public let output: Output
    let buffer: GuestEncodeBuffer
    /// The identities the host delivered (`ClientIdentity`) for clients in the room.
    public let identities: GuestIdentities

    /// A context writing to `output`, encoding in `buffer`, answering identities from `identities`.
    public init(
        output: Output, buffer: GuestEncodeBuffer = GuestEncodeBuffer(),
        identities: GuestIdentities = GuestIdentities()
    ) {
        self.output = output
        self.buffer = buffer
        self.identities = identities
    }

    /// The identity `client` joined with (a verified token's `sub`), from the `ClientIdentity`
    /// the host delivered before its `Connect`; nil for an anonymous client, one not in the room,
    /// or a host that does not deliver identities. Valid in `connect`, every `message` and
    /// `disconnect` of that client.
    public func identity(of client: ClientId) -> String? {
        identities.identity(of: client)
    }

    /// Whether `client` has a connection now: false while it is away in its seat's grace (it
    /// dropped and may resume; the service has not had its `disconnect`), and for a client that
    /// is not in the room. Asked of the output: in a wasm module, the host import
    /// `env.stateroom_client_connected`.
    public func isConnected(_ client: ClientId) -> Bool {
        output.isConnected(client)
    }

    /// Sends `Message { recipient, message }`, encoded by the ABI codec straight into the
    /// scratch memory.
    public func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        emit(.message(recipient: recipient, payload: message))
    }

    /// Sends the text `write` appends, written straight after the message's header in the
    /// scratch memory: no `String`, no copy before `stateroom_send`.
    public func sendText(to recipient: MessageRecipient, _ write: (inout TextWriter) -> Void) {
        withScratch { scratch in
            let header = MessageFromProcess.textHeaderCount(recipient)
            var writer = TextWriter(buffer: scratch, start: header)
            write(&writer)
            let p = scratch.base
            MessageFromProcess.encodeTextHeader(recipient, length: writer.count, at: p)
            output.emit(UnsafeRawBufferPointer(start: p, count: header + writer.count))
        }
    }

    /// Sends `SetTimer { ms_delay }`.
    public func setTimer(milliseconds: UInt32) {
        emit(.setTimer(milliseconds: milliseconds))
    }

    private func emit(_ request: MessageFromProcess) {
        withScratch { scratch in
            let p = scratch.reserve(request.encodedCount)
            let written = request.encodeUnchecked(at: p)
            output.emit(UnsafeRawBufferPointer(start: p, count: written))
        }
    }

    /// Runs `body` with the room's scratch memory, or — when a request is sent from inside a
    /// ``sendText(to:_:)`` closure, whose text is still being written there — with memory of its
    /// own, so the text in progress is not overwritten.
    private func withScratch(_ body: (MessageBuffer) -> Void) {
        if buffer.inUse {
            body(MessageBuffer())
            return
        }
        buffer.inUse = true
        body(buffer)
        buffer.inUse = false
    }

    /// Hands `reason` to the output (in a wasm module: logged, then a trap).
    public func closeRoom(reason: String) {
        output.closeRoom(reason: reason)
    }
}

/// One room's guest: its service and the dispatch of the ABI's events to it.
///
/// In a wasm module, `stateroom_recv` hands every delivered buffer to ``receive(_:)``; native
/// tests do the same with a recording output, so the dispatch tested natively is the one that
/// runs in the module.
///
/// A runtime made with `acceptsIdentities: true` (the wasm glue's, whose module exports
/// `STATEROOM_IDENTITY_VERSION`) also takes the identity extension's `ClientIdentity` event
/// (IDENTITY.md): it records the identity, which the context then answers in that client's
/// `connect`, messages and `disconnect`, and forgets it once `disconnect` has returned. Without
/// it, the runtime takes exactly ABI v1 (variant 5 is an unknown variant, as for any v1 guest).
public struct GuestRuntime<Service: StateroomService, Output: GuestOutput> {
    /// The room's service.
    public var service: Service
    /// The context every callback gets.
    public let context: GuestContext<Output>
    /// Whether ``receive(_:)`` takes `ClientIdentity` (variant 5) besides ABI v1's events.
    public let acceptsIdentities: Bool

    /// A runtime for `service` whose requests go to `output`; `acceptsIdentities` only where
    /// the module declares `STATEROOM_IDENTITY_VERSION` (the host sends variant 5 to no other).
    public init(service: Service, output: Output, acceptsIdentities: Bool = false) {
        self.service = service
        self.context = GuestContext(output: output)
        self.acceptsIdentities = acceptsIdentities
    }

    /// Decodes one event and calls the matching callback of the service: a `MessageToProcess`,
    /// or — if ``acceptsIdentities`` — a `ClientIdentity`, which calls nothing and is recorded
    /// for the `Connect` that follows. A payload is a view of `bytes`, valid during the callback
    /// only (as natively).
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) throws(ABIDecodeError) {
        if acceptsIdentities && ClientIdentity.isEncoded(in: bytes) {
            let event = try ClientIdentity.decode(bytes)
            context.identities.set(event.identity, for: event.client)
            return
        }
        dispatch(try MessageToProcess.decode(bytes))
    }

    /// Calls the callback matching `event`; after `disconnect`, the client's identity is dropped.
    public mutating func dispatch(_ event: MessageToProcess) {
        switch event {
        case .initialize: service.initialize(context: context)
        case .connect(let client): service.connect(client: client, context: context)
        case .disconnect(let client):
            service.disconnect(client: client, context: context)
            context.identities.remove(client)
        case .message(let client, let payload): service.message(client: client, message: payload, context: context)
        case .timer: service.timer(context: context)
        }
    }
}
