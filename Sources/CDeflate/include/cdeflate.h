// permessage-deflate (RFC 7692) over zlib and libdeflate: what Swift cannot call directly.
//
// zlib's init functions are macros (deflateInit2, inflateInit2) and its z_stream wants custom
// allocators to report memory, so the streams live here behind opaque handles. Every function
// works on caller-owned buffers and allocates nothing after the handle exists (zlib's inflater
// allocates its window once, on the first message that needs it).
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: - Compression (one message at a time, no context takeover)

/// A raw-deflate compressor: zlib (window 2^9..2^15, level 0..9, memLevel 1..9) when `use_zlib`,
/// else libdeflate (window fixed at 2^15, level 0..12). NULL on bad parameters or out of memory.
typedef struct cdeflate_compressor cdeflate_compressor;
cdeflate_compressor *cdeflate_compressor_new(int use_zlib, int level, int window_bits, int mem_level);
void cdeflate_compressor_free(cdeflate_compressor *c);
/// Compresses one whole message from a fresh window into `out` as RFC 7692 §7.2.1 sends it (the
/// final 0x00 0x00 0xff 0xff removed). Returns its length, or 0 when it would not be shorter than
/// `in_len` (then nothing meaningful is in `out`). Writes at most `out_cap` bytes; every result
/// is found with `out_cap >= in_len + 16` (libdeflate wants slack past what it writes).
size_t cdeflate_compress(cdeflate_compressor *c, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);
/// zlib only: compresses the next message of a stream that keeps its window across messages
/// (context takeover, RFC 7692 §7.2.1 without a reset): a sync flush, the trailing 0x00 0x00 0xff
/// 0xff removed. Its output must be sent compressed whatever its size (the receiver's window
/// follows it). Returns the length, or 0 if `out_cap` was too small (the stream is then reset and
/// the receiver's window no longer matches: the connection cannot go on). `out_cap` of
/// in_len + in_len / 1000 + 32 is always enough.
size_t cdeflate_compress_keeping_context(cdeflate_compressor *c, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);
/// Bytes a zlib compressor holds (its state and tables); 0 for libdeflate, which does not say.
size_t cdeflate_compressor_memory(const cdeflate_compressor *c);

// MARK: - Decompression (zlib, streaming, bounded by the caller's output space)

typedef struct cdeflate_inflater cdeflate_inflater;
/// A raw inflater with a window of 2^window_bits (8..15). Allocates nothing of zlib's until the
/// first message. NULL when out of memory.
cdeflate_inflater *cdeflate_inflater_new(int window_bits, int no_context_takeover);
void cdeflate_inflater_free(cdeflate_inflater *inf);

enum {
    CDEFLATE_DONE = 0,        ///< the message is complete
    CDEFLATE_MORE = 1,        ///< the output space is full; call again with more
    CDEFLATE_CORRUPT = 2,     ///< not a valid permessage-deflate message
    CDEFLATE_NOMEM = 3,       ///< zlib could not allocate its state or window
};

/// Starts one message: its whole compressed payload (`in` must stay valid until the message is
/// done). Resets the window first when there is no context takeover.
void cdeflate_inflate_begin(cdeflate_inflater *inf, const uint8_t *in, size_t in_len);
/// Inflates the current message (with 0x00 0x00 0xff 0xff appended, RFC 7692 §7.2.2) into at most
/// `out_cap` bytes at `out`; `*produced` tells how many were written. CDEFLATE_MORE means the
/// space ran out with the message unfinished (it may still end without another byte: only a call
/// with more space tells).
int cdeflate_inflate_continue(cdeflate_inflater *inf, uint8_t *out, size_t out_cap, size_t *produced);
/// Drops the message in progress (after an error or a message that was too big): the next message
/// starts from an empty window.
void cdeflate_inflate_abandon(cdeflate_inflater *inf);
/// Frees zlib's state and window; the next message allocates them again. The window is lost, so
/// only for an inflater without context takeover or one whose connection is ending.
void cdeflate_inflater_release(cdeflate_inflater *inf);
/// Bytes the inflater holds now (the handle, zlib's state and its window once allocated).
size_t cdeflate_inflater_memory(const cdeflate_inflater *inf);

// MARK: - A reference decoder (for checks)

/// Plain zlib: raw inflate (32 KiB window) of `in` as one buffer into `out` with a fresh stream,
/// nothing appended. Returns 1 when all of `in` was consumed without error (the stream may end at a
/// block with BFINAL set: `*stream_end` is then 1), 0 otherwise; `*out_len` is what was written.
int cdeflate_reference_inflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len, int *stream_end);

#ifdef __cplusplus
}
#endif
