// `stateroom build` compiles this file together with a service's own sources (never natively).
// It exports `stateroom_recv` for the service named by the service's one registration line:
//
//     typealias StateroomMain = SharedCounter
//
import Stateroom

/// The room's guest, made on the first event the host delivers (`Init`).
nonisolated(unsafe) private var stateroomGuest: GuestRuntime<StateroomMain, WasmGuestOutput>? = nil

/// `stateroom_recv(ptr, len)`: one bincode-encoded `MessageToProcess` from the host.
@_expose(wasm, "stateroom_recv")
@_cdecl("stateroom_recv")
func stateroomRecv(_ pointer: UnsafeRawPointer?, _ length: Int32) {
    stateroomReceive(&stateroomGuest, pointer, length) { StateroomMain() }
}
