#include "cdeflate.h"

#include <libdeflate.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

// MARK: - zlib's allocations, counted

// Every block carries its size in a 16-byte header (keeping malloc's alignment), so the handle
// knows what zlib holds.
static voidpf counted_alloc(voidpf opaque, uInt items, uInt size) {
    size_t n = (size_t)items * size;
    size_t *block = malloc(n + 16);
    if (block == NULL) return Z_NULL;
    block[0] = n;
    *(size_t *)opaque += n;
    return (char *)block + 16;
}

static void counted_free(voidpf opaque, voidpf address) {
    if (address == Z_NULL) return;
    size_t *block = (size_t *)((char *)address - 16);
    *(size_t *)opaque -= block[0];
    free(block);
}

// MARK: - Compression

struct cdeflate_compressor {
    int use_zlib;
    struct libdeflate_compressor *ld;
    z_stream zs;
    size_t zmem;
};

cdeflate_compressor *cdeflate_compressor_new(int use_zlib, int level, int window_bits, int mem_level) {
    cdeflate_compressor *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->use_zlib = use_zlib;
    if (use_zlib) {
        // zlib >= 1.2.9 refuses raw deflate with an 8-bit window (it used to make it 9 silently).
        if (window_bits < 9 || window_bits > 15 || level < 0 || level > 9 || mem_level < 1 || mem_level > 9) {
            free(c);
            return NULL;
        }
        c->zs.zalloc = counted_alloc;
        c->zs.zfree = counted_free;
        c->zs.opaque = &c->zmem;
        if (deflateInit2(&c->zs, level, Z_DEFLATED, -window_bits, mem_level, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(c);
            return NULL;
        }
    } else {
        // libdeflate's window is fixed at 32 KiB: only for a 15-bit window.
        if (window_bits != 15 || level < 0 || level > 12) {
            free(c);
            return NULL;
        }
        c->ld = libdeflate_alloc_compressor(level);
        if (c->ld == NULL) {
            free(c);
            return NULL;
        }
    }
    return c;
}

void cdeflate_compressor_free(cdeflate_compressor *c) {
    if (c == NULL) return;
    if (c->use_zlib) deflateEnd(&c->zs);
    else libdeflate_free_compressor(c->ld);
    free(c);
}

size_t cdeflate_compressor_memory(const cdeflate_compressor *c) {
    return c->use_zlib ? c->zmem : 0;
}

size_t cdeflate_compress(cdeflate_compressor *c, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    if (in_len == 0 || in_len > UINT_MAX - 8) return 0;
    if (c->use_zlib) {
        // A sync flush ends the message with an empty stored block (its 3 header bits, byte
        // alignment, 0x00 0x00 0xff 0xff); the last four octets are removed (RFC 7692 §7.2.1). The
        // output space is capped at in_len + 4 so that a message that would not shrink stops early.
        size_t cap = out_cap < in_len + 4 ? out_cap : in_len + 4;
        if (cap < 5) return 0;
        deflateReset(&c->zs);
        c->zs.next_in = (Bytef *)in;
        c->zs.avail_in = (uInt)in_len;
        c->zs.next_out = out;
        c->zs.avail_out = (uInt)cap;
        int ret = deflate(&c->zs, Z_SYNC_FLUSH);
        // With avail_out == 0 the flush may be unfinished: the message did not fit.
        if (ret != Z_OK || c->zs.avail_in != 0 || c->zs.avail_out == 0) return 0;
        size_t n = cap - c->zs.avail_out;
        if (n < 5 || memcmp(out + n - 4, "\x00\x00\xff\xff", 4) != 0) return 0;
        n -= 4;
        return n < in_len ? n : 0;
    }
    // libdeflate ends the message with a block that has BFINAL set (RFC 7692 §7.2.3.4); one 0x00
    // octet follows it, the header of the empty stored block the receiver completes with its
    // 0x00 0x00 0xff 0xff. Decoders stop at BFINAL; those that reset and read on (Chromium,
    // WebKit) then read a whole empty stored block rather than a broken one.
    // libdeflate 1.14 wants up to 9 bytes of slack past what it writes (a 61-byte result needs 70
    // bytes of space), so it gets all of out_cap but the octet we append (in_len + 15 at most),
    // and the length is checked afterwards.
    if (in_len < 3 || out_cap < 2) return 0;
    size_t avail = in_len + 15 < out_cap - 1 ? in_len + 15 : out_cap - 1;
    size_t n = libdeflate_deflate_compress(c->ld, in, in_len, out, avail);
    if (n == 0 || n + 1 >= in_len) return 0;
    out[n] = 0x00;
    return n + 1;
}

size_t cdeflate_compress_keeping_context(cdeflate_compressor *c, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    if (!c->use_zlib || in_len > UINT_MAX - 64 || out_cap < 6) return 0;
    if (in_len == 0) {
        // An empty message: the header bits of an empty stored block. The stream is byte-aligned
        // after the previous message's flush, and zlib refuses a second flush with nothing new.
        out[0] = 0x00;
        return 1;
    }
    uInt cap = out_cap > UINT_MAX ? UINT_MAX : (uInt)out_cap;
    c->zs.next_in = (Bytef *)in;
    c->zs.avail_in = (uInt)in_len;
    c->zs.next_out = out;
    c->zs.avail_out = cap;
    int ret = deflate(&c->zs, Z_SYNC_FLUSH);
    size_t n = cap - c->zs.avail_out;
    if (ret != Z_OK || c->zs.avail_in != 0 || c->zs.avail_out == 0 || n < 4 ||
        memcmp(out + n - 4, "\x00\x00\xff\xff", 4) != 0) {
        deflateReset(&c->zs);
        return 0;
    }
    return n - 4;
}

// MARK: - Decompression

enum { PAYLOAD, TAIL, FINISHED };

struct cdeflate_inflater {
    z_stream zs;
    size_t zmem;
    int window_bits;
    int no_context_takeover;
    int initialized;
    int phase;
    int between_blocks;  // zlib was between blocks when it last moved
    const uint8_t *in;  // payload not yet handed to zlib
    size_t in_len;
};

static const uint8_t rfc7692_tail[4] = {0x00, 0x00, 0xff, 0xff};

cdeflate_inflater *cdeflate_inflater_new(int window_bits, int no_context_takeover) {
    if (window_bits < 8 || window_bits > 15) return NULL;
    cdeflate_inflater *inf = calloc(1, sizeof *inf);
    if (inf == NULL) return NULL;
    inf->window_bits = window_bits;
    inf->no_context_takeover = no_context_takeover;
    inf->phase = FINISHED;
    inf->zs.zalloc = counted_alloc;
    inf->zs.zfree = counted_free;
    inf->zs.opaque = &inf->zmem;
    return inf;
}

void cdeflate_inflater_release(cdeflate_inflater *inf) {
    if (inf->initialized) inflateEnd(&inf->zs);
    inf->initialized = 0;
    inf->phase = FINISHED;
    inf->zs.next_in = Z_NULL;
    inf->zs.avail_in = 0;
}

void cdeflate_inflater_free(cdeflate_inflater *inf) {
    if (inf == NULL) return;
    cdeflate_inflater_release(inf);
    free(inf);
}

size_t cdeflate_inflater_memory(const cdeflate_inflater *inf) {
    return sizeof *inf + inf->zmem;
}

void cdeflate_inflate_begin(cdeflate_inflater *inf, const uint8_t *in, size_t in_len) {
    if (inf->initialized && inf->no_context_takeover) inflateReset(&inf->zs);
    inf->in = in;
    inf->in_len = in_len;
    inf->zs.next_in = Z_NULL;
    inf->zs.avail_in = 0;
    inf->phase = PAYLOAD;
}

void cdeflate_inflate_abandon(cdeflate_inflater *inf) {
    if (inf->initialized) inflateReset(&inf->zs);
    inf->in = NULL;
    inf->in_len = 0;
    inf->zs.next_in = Z_NULL;
    inf->zs.avail_in = 0;
    inf->phase = FINISHED;
}

int cdeflate_inflate_continue(cdeflate_inflater *inf, uint8_t *out, size_t out_cap, size_t *produced) {
    *produced = 0;
    if (inf->phase == FINISHED) return CDEFLATE_DONE;
    z_stream *zs = &inf->zs;
    if (!inf->initialized) {
        // zlib allocates its state here and the window on the first output.
        if (inflateInit2(zs, -inf->window_bits) != Z_OK) return CDEFLATE_NOMEM;
        inf->initialized = 1;
    }
    uInt cap = out_cap > UINT_MAX ? UINT_MAX : (uInt)out_cap;
    zs->next_out = out;
    zs->avail_out = cap;
    for (;;) {
        if (zs->avail_in == 0 && inf->phase == PAYLOAD) {
            if (inf->in_len > 0) {
                uInt take = inf->in_len > UINT_MAX ? UINT_MAX : (uInt)inf->in_len;
                zs->next_in = (Bytef *)inf->in;
                zs->avail_in = take;
                inf->in += take;
                inf->in_len -= take;
            } else {
                zs->next_in = (Bytef *)rfc7692_tail;
                zs->avail_in = 4;
                inf->phase = TAIL;
            }
        }
        if (zs->avail_out == 0) {
            *produced = cap;
            return CDEFLATE_MORE;
        }
        uInt before_in = zs->avail_in, before_out = zs->avail_out;
        int ret = inflate(zs, Z_SYNC_FLUSH);
        if (ret == Z_STREAM_END) {
            // A block with BFINAL set ended the sender's stream (RFC 7692 §7.2.3.4); its window is
            // gone on both sides. What the payload still holds is a new stream (as Chromium reads it).
            inflateReset(zs);
            if (inf->phase == PAYLOAD && (zs->avail_in > 0 || inf->in_len > 0)) continue;
            inf->phase = FINISHED;
            zs->avail_in = 0;
            *produced = cap - zs->avail_out;
            return CDEFLATE_DONE;
        }
        if (ret == Z_MEM_ERROR) {
            *produced = cap - zs->avail_out;
            cdeflate_inflate_abandon(inf);
            return CDEFLATE_NOMEM;
        }
        if (ret != Z_OK && ret != Z_BUF_ERROR) {  // Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR
            *produced = cap - zs->avail_out;
            cdeflate_inflate_abandon(inf);
            return CDEFLATE_CORRUPT;
        }
        int progress = zs->avail_in != before_in || zs->avail_out != before_out;
        // Between blocks? zlib says so (data_type bit 7) only on return from the call that got
        // there: a later call without input turns that state into one it does not report.
        if (progress) inf->between_blocks = (zs->data_type & 128) != 0;
        if (zs->avail_out == 0) continue;  // full: MORE at the top
        if (zs->avail_in == 0 && inf->phase == TAIL) {
            // All of the message went in and inflate wants more. A message ends where the empty
            // stored block completed by the tail ends; anything else is a truncated block.
            *produced = cap - zs->avail_out;
            if (!inf->between_blocks) {
                cdeflate_inflate_abandon(inf);
                return CDEFLATE_CORRUPT;
            }
            inf->phase = FINISHED;
            return CDEFLATE_DONE;
        }
        if (!progress) {
            // Input and space left, and nothing moved: cannot happen with Z_SYNC_FLUSH; never spin.
            *produced = cap - zs->avail_out;
            cdeflate_inflate_abandon(inf);
            return CDEFLATE_CORRUPT;
        }
    }
}

// MARK: - A reference decoder

int cdeflate_reference_inflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len, int *stream_end) {
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    *out_len = 0;
    *stream_end = 0;
    if (in_len > UINT_MAX || out_cap > UINT_MAX) return 0;
    if (inflateInit2(&zs, -15) != Z_OK) return 0;
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)in_len;
    zs.next_out = out;
    zs.avail_out = (uInt)out_cap;
    int ret = inflate(&zs, Z_SYNC_FLUSH);
    *out_len = out_cap - zs.avail_out;
    *stream_end = ret == Z_STREAM_END;
    int ok = (ret == Z_OK || ret == Z_STREAM_END || (ret == Z_BUF_ERROR && zs.avail_in == 0)) &&
             (zs.avail_in == 0 || ret == Z_STREAM_END);
    inflateEnd(&zs);
    return ok;
}
