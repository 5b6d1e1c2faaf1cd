#if !STATEROOM_GUEST
import Stateroom
#endif

/// Where a guest's requests go: in a wasm module, the host import `env.stateroom_send`; in native
/// tests, a recorder.
public protocol GuestOutput {
    /// Takes one bincode-encoded `MessageFromProcess`. The bytes are valid only during the call.
    func emit(_ encoded: UnsafeRawBufferPointer)
    /// The service gave up its room (``StateroomContext/closeRoom(reason:)``). The ABI has no
    /// message for it: a wasm guest logs `reason` to stderr and traps, which makes the host close
    /// the room's clients with 1011.
    func closeRoom(reason: String)
}

/// The scratch memory a context encodes into, reused for every message of a room: requests are
/// written with plain stores (no `Array` bookkeeping), which matters in an interpreted guest.
public final class GuestEncodeBuffer {
    private var storage: UnsafeMutableRawPointer
    private var capacity: Int

    /// Scratch memory of `capacity` bytes (at least 64); it grows when a message needs more.
    public init(capacity: Int = 256) {
        self.capacity = max(64, capacity)
        storage = UnsafeMutableRawPointer.allocate(byteCount: self.capacity, alignment: 8)
    }

    deinit { storage.deallocate() }

    /// Memory for at least `count` bytes, valid until the next call.
    func reserve(_ count: Int) -> UnsafeMutableRawPointer {
        if count > capacity {
            storage.deallocate()
            capacity = max(count, capacity * 2)
            storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        }
        return storage
    }
}

/// The ``StateroomContext`` a guest's service receives: each call becomes one encoded
/// `MessageFromProcess` handed to the output.
public struct GuestContext<Output: GuestOutput>: StateroomContext {
    /// The output every request goes to.
    public let output: Output
    let buffer: GuestEncodeBuffer

    /// A context writing to `output`, encoding in `buffer`.
    public init(output: Output, buffer: GuestEncodeBuffer = GuestEncodeBuffer()) {
        self.output = output
        self.buffer = buffer
    }

    /// Sends `Message { recipient, message }`, encoded by the ABI codec straight into the
    /// scratch memory.
    public func send(_ message: MessagePayload, to recipient: MessageRecipient) {
        emit(.message(recipient: recipient, payload: message))
    }

    /// Sends `SetTimer { ms_delay }`.
    public func setTimer(milliseconds: UInt32) {
        emit(.setTimer(milliseconds: milliseconds))
    }

    private func emit(_ request: MessageFromProcess) {
        let p = buffer.reserve(request.encodedCount)
        let written = request.encodeUnchecked(at: p)
        output.emit(UnsafeRawBufferPointer(start: p, count: written))
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
public struct GuestRuntime<Service: StateroomService, Output: GuestOutput> {
    /// The room's service.
    public var service: Service
    /// The context every callback gets.
    public let context: GuestContext<Output>

    /// A runtime for `service` whose requests go to `output`.
    public init(service: Service, output: Output) {
        self.service = service
        self.context = GuestContext(output: output)
    }

    /// Decodes one `MessageToProcess` and calls the matching callback of the service.
    /// A payload is a view of `bytes`, valid during the callback only (as natively).
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) throws(ABIDecodeError) {
        dispatch(try MessageToProcess.decode(bytes))
    }

    /// Calls the callback matching `event`.
    public mutating func dispatch(_ event: MessageToProcess) {
        switch event {
        case .initialize: service.initialize(context: context)
        case .connect(let client): service.connect(client: client, context: context)
        case .disconnect(let client): service.disconnect(client: client, context: context)
        case .message(let client, let payload): service.message(client: client, message: payload, context: context)
        case .timer: service.timer(context: context)
        }
    }
}
