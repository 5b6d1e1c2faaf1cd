// A guest with the shape of one built by Stateroom's Rust SDK (`stateroom-wasm` 0.4,
// `#[stateroom_wasm]`, `cargo build --target wasm32-wasi`), for hosts that cannot build Rust.
//
// What makes that shape, and is reproduced here by the same linker (wasm-ld):
//  - no `_initialize` and no `_start`: the module is linked as a command without an entry
//    point, so wasm-ld wraps every exported function in `__wasm_call_ctors` before and
//    `__wasm_call_dtors` after (`<name>.command_export`). Each call into the module, including
//    every `stateroom_malloc` and `stateroom_free`, runs the constructors again;
//  - the constructor is wasi-libc's eager environment set-up: `environ_sizes_get`, and when the
//    environment is not empty, a heap array filled by `environ_get`; any error ends the
//    process with `proc_exit(71)` (EX_OSERR);
//  - the destructor flushes buffered stdout through `fd_write` (wasi-libc's `__stdio_exit`);
//  - `STATEROOM_API_VERSION` / `STATEROOM_API_PROTOCOL` are exported data (`#[no_mangle] pub
//    static`), i.e. globals holding the address of the value; `__heap_base` and `__data_end`
//    are exported too;
//  - `stateroom_malloc(size)` / `stateroom_free(ptr, size)` go to the global allocator; the SDK
//    asks for alignment 0, which the allocator serves as plain `malloc(size)`, so `malloc(0)`
//    returns a real block;
//  - `stateroom_recv` decodes the bincode `MessageToProcess` into owned values (the text is
//    copied out of the event), and each send is a freshly allocated bincode
//    `MessageFromProcess` passed to `stateroom_send` and freed after it returns.
//
// The service, for tests and benchmarks:
//  - text `increment` / `decrement` -> broadcast `new value: N` (the seed's counter);
//  - text `ctors` -> to the sender, binary: constructor runs, environ count, environ size,
//    memory pages, bytes in use on the heap (u32 each);
//  - text `log` -> stdout `hello from the rust-shaped guest` (flushed by the destructor), then
//    text `logged` to the sender;
//  - text `panic` -> traps (a Rust panic aborts with `unreachable`);
//  - anything else, text or binary -> broadcast verbatim.
//
// Build: ./build.sh OUT.wasm (clang and wasm-ld from the Swift toolchain).

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long size_t;

#define WASI(name) __attribute__((import_module("wasi_snapshot_preview1"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

WASI("environ_sizes_get") u32 wasi_environ_sizes_get(size_t *count, size_t *size);
WASI("environ_get") u32 wasi_environ_get(char **environ, char *buffer);
WASI("fd_write") u32 wasi_fd_write(u32 fd, const void *iovs, size_t count, size_t *written);
WASI("proc_exit") _Noreturn void wasi_proc_exit(u32 code);
__attribute__((import_module("env"), import_name("stateroom_send"))) void stateroom_send(const void *ptr, size_t len);

// Rust: #[no_mangle] pub static STATEROOM_API_VERSION: i32 = 1; (and PROTOCOL = 0)
int STATEROOM_API_VERSION = 1;
int STATEROOM_API_PROTOCOL = 0;

extern unsigned char __heap_base;

// Rust's `copy_from_slice` / `to_vec`: one `memory.copy` (bulk memory, on by default).
static void *memcpy_(void *d, const void *s, size_t n) { return __builtin_memcpy(d, s, n); }
static int equal(const unsigned char *a, size_t n, const char *lit) {
    size_t i = 0;
    for (; lit[i]; i++) if (i >= n || a[i] != (unsigned char)lit[i]) return 0;
    return i == n;
}

// MARK: allocator: power-of-two size classes with free lists, 8-byte header, grows memory.

#define CLASSES 27
static void *free_lists[CLASSES];
static unsigned char *heap_top;
static unsigned char *heap_end;
static u32 heap_in_use;

static u32 class_of(size_t size) {
    u32 c = 4;  // 16 bytes, header included
    while (((size_t)1 << c) < size + 8) c++;
    return c;
}

static void *malloc(size_t size) {
    if (size > (1u << 30)) return 0;
    u32 c = class_of(size);
    if (c >= CLASSES) return 0;
    unsigned char *block;
    if (free_lists[c]) {
        block = free_lists[c];
        free_lists[c] = *(void **)(block + 8);
    } else {
        if (!heap_top) heap_top = heap_end = (unsigned char *)(((size_t)&__heap_base + 7) & ~(size_t)7);
        size_t need = (size_t)1 << c;
        if ((size_t)(heap_end - heap_top) < need) {
            size_t pages = (need - (size_t)(heap_end - heap_top) + 65535) / 65536;
            size_t old = __builtin_wasm_memory_grow(0, pages);
            if (old == (size_t)-1) return 0;
            if (heap_end != (unsigned char *)(old * 65536)) heap_top = (unsigned char *)(old * 65536);
            heap_end = (unsigned char *)((old + pages) * 65536);
        }
        block = heap_top;
        heap_top += need;
    }
    *(u32 *)block = c;
    heap_in_use += 1u << c;
    return block + 8;
}

static void free(void *ptr) {
    if (!ptr) return;
    unsigned char *block = (unsigned char *)ptr - 8;
    u32 c = *(u32 *)block;
    if (c < 4 || c >= CLASSES) __builtin_trap();  // heap corruption: abort like Rust would
    heap_in_use -= 1u << c;
    *(void **)(block + 8) = free_lists[c];
    free_lists[c] = block;
}

// MARK: wasi-libc start-up and shut-down, run around every export by the linker's wrappers.

static char *empty_environ[1];
static char **environ_;
static u32 ctor_runs;
static size_t environ_count_seen, environ_size_seen;

__attribute__((constructor)) static void initialize_environ(void) {
    ctor_runs++;
    size_t count, size;
    if (wasi_environ_sizes_get(&count, &size) != 0) wasi_proc_exit(71);
    environ_count_seen = count;
    environ_size_seen = size;
    if (count == 0) { environ_ = empty_environ; return; }
    char **array = malloc((count + 1) * sizeof(char *));
    char *buffer = malloc(size);
    if (!array || !buffer) wasi_proc_exit(71);
    if (wasi_environ_get(array, buffer) != 0) wasi_proc_exit(71);
    array[count] = 0;
    environ_ = array;
}

static char stdout_buffer[256];
static size_t stdout_used;

void __wasm_call_dtors(void) {
    if (stdout_used == 0) return;
    struct { const void *base; size_t len; } iov = { stdout_buffer, stdout_used };
    size_t written;
    wasi_fd_write(1, &iov, 1, &written);
    stdout_used = 0;
}

// MARK: the SDK's exports

EXPORT("stateroom_malloc") void *stateroom_malloc(u32 size) { return malloc(size); }
EXPORT("stateroom_free") void stateroom_free(void *ptr, u32 size) { (void)size; free(ptr); }

static u32 read_u32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }
static void put_u32(unsigned char *p, u32 v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }

// MessageFromProcess::Message { recipient, payload }, serialized into a fresh Vec, sent, dropped.
static void send(u32 recipient_kind, u32 client, u32 payload_kind, const unsigned char *bytes, size_t len) {
    size_t head = 4 + 4 + (recipient_kind == 0 ? 0 : 4) + 4 + 8;
    unsigned char *out = malloc(head + len);
    if (!out) __builtin_trap();
    unsigned char *p = out;
    put_u32(p, 0); p += 4;
    put_u32(p, recipient_kind); p += 4;
    if (recipient_kind != 0) { put_u32(p, client); p += 4; }
    put_u32(p, payload_kind); p += 4;
    put_u32(p, (u32)len); put_u32(p + 4, 0); p += 8;
    memcpy_(p, bytes, len);
    stateroom_send(out, head + len);
    free(out);
}

static int counter;

static void message(u32 sender, u32 kind, const unsigned char *bytes, size_t len) {
    if (kind == 1 && (equal(bytes, len, "increment") || equal(bytes, len, "decrement"))) {
        counter += bytes[0] == 'i' ? 1 : -1;
        unsigned char text[32];  // format!("new value: {}", counter)
        const char *prefix = "new value: ";
        size_t n = 0;
        while (prefix[n]) { text[n] = prefix[n]; n++; }
        unsigned int v = counter < 0 ? -(unsigned)counter : (unsigned)counter;
        if (counter < 0) text[n++] = '-';
        unsigned char digits[10]; int d = 0;
        do { digits[d++] = '0' + v % 10; v /= 10; } while (v);
        while (d) text[n++] = digits[--d];
        send(0, 0, 1, text, n);
    } else if (kind == 1 && equal(bytes, len, "ctors")) {
        unsigned char out[20];
        put_u32(out, ctor_runs);
        put_u32(out + 4, (u32)environ_count_seen);
        put_u32(out + 8, (u32)environ_size_seen);
        put_u32(out + 12, (u32)__builtin_wasm_memory_size(0));
        put_u32(out + 16, heap_in_use);
        send(1, sender, 0, out, sizeof out);
    } else if (kind == 1 && equal(bytes, len, "log")) {
        const char *line = "hello from the rust-shaped guest\n";
        for (size_t i = 0; line[i] && stdout_used < sizeof stdout_buffer; i++) stdout_buffer[stdout_used++] = line[i];
        send(1, sender, 1, (const unsigned char *)"logged", 6);
    } else if (kind == 1 && equal(bytes, len, "panic")) {
        __builtin_trap();
    } else {
        send(0, 0, kind, bytes, len);
    }
}

EXPORT("stateroom_recv") void stateroom_recv(const unsigned char *ptr, u32 len) {
    if (len < 4) __builtin_trap();  // bincode error: the SDK's `.expect` panics
    u32 tag = read_u32(ptr);
    if (tag == 3) {
        if (len < 20) __builtin_trap();
        u32 sender = read_u32(ptr + 4);
        u32 kind = read_u32(ptr + 8);
        u64 n = read_u32(ptr + 12) | (u64)read_u32(ptr + 16) << 32;
        if (kind > 1 || n > len - 20) __builtin_trap();
        unsigned char *owned = malloc(n);  // String / Vec<u8> owned by the decoded message
        if (!owned) __builtin_trap();
        memcpy_(owned, ptr + 20, n);
        message(sender, kind, owned, n);
        free(owned);
    } else if (tag > 4) {
        __builtin_trap();
    }
}
