// Compiled only into the wasm SDK module (`stateroom build`), never natively.

/// `env.stateroom_send(ptr, len)`: hands one encoded `MessageFromProcess` to the host, which
/// reads it in place during the call (the bytes need to stay valid only until it returns).
@_extern(wasm, module: "env", name: "stateroom_send")
@_extern(c)
func stateroom_send(_ ptr: UnsafeRawPointer?, _ len: Int32)

/// `env.stateroom_client_connected(client)`: 1 if the host's room counts `client` as connected,
/// 0 while it is away in its seat's grace or not in the room (the seats extension, IDENTITY.md).
/// Imported only by a module whose service asks `context.isConnected(_:)` (such a module needs a
/// host that provides it); unused, the linker drops it and the module imports what it did before.
@_extern(wasm, module: "env", name: "stateroom_client_connected")
@_extern(c)
func stateroom_client_connected(_ client: UInt32) -> Int32

/// Writes `len` bytes to stderr through WASI `fd_write` (the host logs them); in runtime.c.
@_extern(c, "stateroom_log")
func stateroom_log(_ ptr: UnsafeRawPointer?, _ len: Int)

/// Traps (`unreachable`); in runtime.c. Never returns.
@_extern(c, "stateroom_trap")
func stateroom_trap_c()

/// Ends the instance with a trap (the host closes the room's clients with 1011).
func stateroom_trap() -> Never {
    stateroom_trap_c()
    fatalError()
}

/// The output of a guest in a wasm module: the host imports `env.stateroom_send` and
/// `env.stateroom_client_connected`.
public struct WasmGuestOutput: GuestOutput {
    public init() {}

    public func emit(_ encoded: UnsafeRawBufferPointer) {
        stateroom_send(encoded.baseAddress, Int32(truncatingIfNeeded: encoded.count))
    }

    /// Asks the host (`env.stateroom_client_connected`) whether `client` is connected.
    public func isConnected(_ client: ClientId) -> Bool {
        stateroom_client_connected(client.rawValue) != 0
    }

    /// Logs `reason` on stderr and traps: the host ends the room and closes its clients with 1011.
    public func closeRoom(reason: String) {
        var line = "closeRoom: " + reason + "\n"
        line.withUTF8 { stateroom_log($0.baseAddress, $0.count) }
        stateroom_trap()
    }
}

/// The body of `stateroom_recv` for service type `Service` (the one named by `StateroomMain`):
/// makes the service on the first event, then dispatches each event to it. An event that does
/// not decode traps, which ends the room (the host only sends well-formed events).
///
/// The runtime accepts the identity extension's `ClientIdentity` (IDENTITY.md) because every
/// SDK module declares it: runtime/abi.c exports `STATEROOM_IDENTITY_VERSION`.
@inline(__always)
public func stateroomReceive<Service: StateroomService>(
    _ runtime: inout GuestRuntime<Service, WasmGuestOutput>?,
    _ pointer: UnsafeRawPointer?, _ length: Int32,
    make: () -> Service
) {
    if runtime == nil {
        runtime = GuestRuntime(service: make(), output: WasmGuestOutput(), acceptsIdentities: true)
    }
    let bytes = UnsafeRawBufferPointer(start: pointer, count: Int(length))
    do {
        try runtime!.receive(bytes)
    } catch {
        var line = "stateroom_recv: undecodable event\n"
        line.withUTF8 { stateroom_log($0.baseAddress, $0.count) }
        stateroom_trap()
    }
}
