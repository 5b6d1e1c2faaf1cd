// The Stateroom ABI's fixed exports (shared/ABI.md): version data and the host's allocator
// entry points. `stateroom_recv` is Swift (Entry/StateroomMain.swift); memory comes from
// runtime.c's allocator.

#include <stddef.h>
#include <stdint.h>

void *malloc(size_t size);
void free(void *p);

// wasm-ld --export=STATEROOM_API_VERSION turns each data symbol into an exported i32 global
// holding its address, which is what the ABI asks for.
__attribute__((used)) const int32_t STATEROOM_API_VERSION = 1;
__attribute__((used)) const int32_t STATEROOM_API_PROTOCOL = 0;

// The identity extension (StateroomWasm/IDENTITY.md): a module that exports this global gets
// `ClientIdentity { client, identity }` (variant 5) right before the `Connect` of a client that
// has an identity; the SDK's runtime decodes it (GuestRuntime, acceptsIdentities). Exported from
// the object itself (`.export_name` marks the data symbol exported, and wasm-ld turns it into an
// i32 global holding its address, as `--export=` does for the two above), so the link line
// needs no new flag.
__attribute__((used)) const int32_t STATEROOM_IDENTITY_VERSION = 1;
__asm__(".export_name STATEROOM_IDENTITY_VERSION, STATEROOM_IDENTITY_VERSION");

__attribute__((export_name("stateroom_malloc")))
void *stateroom_malloc(size_t size) {
    return size == 0 ? 0 : malloc(size);
}

__attribute__((export_name("stateroom_free")))
void stateroom_free(void *p, size_t size) {
    (void)size;
    free(p);
}
