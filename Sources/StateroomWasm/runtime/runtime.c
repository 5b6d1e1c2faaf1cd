// The C runtime an Embedded Swift guest needs on wasm32-unknown-none-wasm: memory functions,
// an allocator, randomness and a stderr/stdout for `print`. Built by `stateroom build` with
// the toolchain's clang:
//   clang --target=wasm32 -nostdlib -ffreestanding -fno-builtin -mbulk-memory -Os -c runtime.c
// Nothing here is Stateroom-specific except the names of the two helpers Swift calls
// (`stateroom_log`, `stateroom_trap`); the ABI exports are in abi.c.

#include <stddef.h>
#include <stdint.h>

#define WASI_IMPORT(name) \
    __attribute__((import_module("wasi_snapshot_preview1"), import_name(#name)))

typedef struct { const void *buf; size_t len; } wasi_ciovec;
WASI_IMPORT(fd_write) int wasi_fd_write(int fd, const wasi_ciovec *iovs, size_t n, size_t *written);
WASI_IMPORT(random_get) int wasi_random_get(void *buf, size_t len);

_Noreturn void stateroom_trap(void) { __builtin_trap(); }
void stateroom_trap_c(void) { __builtin_trap(); }

// ---- memory functions (clang lowers these builtins to memory.copy / memory.fill) ----------

void *memcpy(void *restrict d, const void *restrict s, size_t n) { return __builtin_memcpy(d, s, n); }
void *memmove(void *d, const void *s, size_t n) { return __builtin_memmove(d, s, n); }
void *memset(void *d, int c, size_t n) { return __builtin_memset(d, c, n); }

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

// ---- allocator -------------------------------------------------------------------------
//
// Segregated free lists of power-of-two blocks (32 B .. 1 GiB), carved from the heap top
// (`__heap_base`, then `memory.grow`). Each block starts with a 16-byte header, so payloads are
// 16-byte aligned; larger alignments are served from a bigger block with the header moved up
// to sit right before the payload. A freed block goes back to its class's list (no splitting,
// no coalescing: a room's working set is small and repetitive). Out of memory traps: Embedded
// Swift does not check for a null allocation, so trapping is the only safe answer, and the host
// turns it into "room failed, clients closed with 1011".

extern unsigned char __heap_base;

#define HEADER 16u
#define MIN_CLASS 5u  // 32-byte blocks
#define MAX_CLASS 30u
#define MAGIC_USED 0x5354524du  // "STRM"
#define MAGIC_FREE 0x46524545u  // "FREE"

typedef struct {
    uint32_t cls;     // size class: the block is 1 << cls bytes
    uint32_t offset;  // payload - block start
    uint32_t magic;   // MAGIC_USED while allocated
    uint32_t size;    // requested size (for realloc)
} header_t;

static uintptr_t heap_top;
static void *free_lists[MAX_CLASS + 1];

static uintptr_t align_up(uintptr_t v, uintptr_t a) { return (v + a - 1) & ~(a - 1); }

static void *carve(uint32_t cls) {
    uintptr_t size = (uintptr_t)1 << cls;
    if (heap_top == 0) heap_top = align_up((uintptr_t)&__heap_base, 16);
    uintptr_t start = heap_top;
    if (start + size < start) stateroom_trap();
    uintptr_t end = start + size;
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uintptr_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) stateroom_trap();
    }
    heap_top = end;
    return (void *)start;
}

static void *allocate(size_t size, size_t align) {
    if (align < HEADER) align = HEADER;
    if (align & (align - 1)) return 0;
    size_t need = size + HEADER + (align > HEADER ? align : 0);
    if (need < size) stateroom_trap();
    uint32_t cls = MIN_CLASS;
    while (((size_t)1 << cls) < need) {
        if (++cls > MAX_CLASS) stateroom_trap();
    }
    void *block = free_lists[cls];
    if (block) {
        free_lists[cls] = *(void **)block;
    } else {
        block = carve(cls);
    }
    uintptr_t payload = align_up((uintptr_t)block + HEADER, align);
    header_t *h = (header_t *)(payload - HEADER);
    h->cls = cls;
    h->offset = (uint32_t)(payload - (uintptr_t)block);
    h->magic = MAGIC_USED;
    h->size = (uint32_t)size;
    return (void *)payload;
}

void *malloc(size_t size) { return allocate(size, HEADER); }

void free(void *p) {
    if (!p) return;
    header_t *h = (header_t *)((uintptr_t)p - HEADER);
    if (h->magic != MAGIC_USED || h->cls < MIN_CLASS || h->cls > MAX_CLASS) stateroom_trap();
    h->magic = MAGIC_FREE;
    void *block = (void *)((uintptr_t)p - h->offset);
    *(void **)block = free_lists[h->cls];
    free_lists[h->cls] = block;
}

int posix_memalign(void **out, size_t align, size_t size) {
    void *p = allocate(size, align);
    if (!p) return 22;  // EINVAL: alignment not a power of two
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t size) { return allocate(size, align); }

void *calloc(size_t n, size_t size) {
    size_t total = n * size;
    if (size && total / size != n) stateroom_trap();
    void *p = allocate(total, HEADER);
    __builtin_memset(p, 0, total);
    return p;
}

void *realloc(void *p, size_t size) {
    if (!p) return malloc(size);
    header_t *h = (header_t *)((uintptr_t)p - HEADER);
    if (h->magic != MAGIC_USED) stateroom_trap();
    size_t capacity = ((size_t)1 << h->cls) - h->offset;
    if (size <= capacity) {
        h->size = (uint32_t)size;
        return p;
    }
    void *q = allocate(size, HEADER);
    __builtin_memcpy(q, p, h->size);
    free(p);
    return q;
}

// ---- randomness (Dictionary/Set hash seeds): WASI random_get, which the host provides ------

void arc4random_buf(void *buf, size_t n) {
    if (wasi_random_get(buf, n) != 0) stateroom_trap();
}

// ---- output: `print` writes stdout through putchar; the host logs each line ----------------

static char line_buffer[256];
static size_t line_length;

static void write_fd(int fd, const void *p, size_t n) {
    while (n > 0) {
        wasi_ciovec v = {p, n};
        size_t written = 0;
        if (wasi_fd_write(fd, &v, 1, &written) != 0 || written == 0) return;
        p = (const char *)p + written;
        n -= written;
    }
}

int putchar(int c) {
    line_buffer[line_length++] = (char)c;
    if (c == '\n' || line_length == sizeof line_buffer) {
        write_fd(1, line_buffer, line_length);
        line_length = 0;
    }
    return c;
}

void stateroom_log(const void *p, size_t n) { write_fd(2, p, n); }
