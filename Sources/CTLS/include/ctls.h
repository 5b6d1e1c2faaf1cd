// TLS over memory, for an event loop that owns every socket read and write (io_uring).
//
// A thin layer over OpenSSL (libssl 3): a session never touches a descriptor. Ciphertext the
// peer sent is lent to a call through `ctls_io.in`; ciphertext to send is appended to
// `ctls_io.out`, a growable buffer the caller owns (one per thread, reused). OpenSSL keeps a
// partly received record inside the session between calls, so the input needs to live only for
// the duration of one call.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ctls_ctx ctls_ctx;
typedef struct ctls_conn ctls_conn;

/// The bytes of one call: ciphertext in (consumed from the front) and ciphertext out (appended).
typedef struct ctls_io {
    const uint8_t *in;
    size_t in_len;
    uint8_t *out;
    size_t out_len;
    size_t out_cap;
} ctls_io;

/// A server context from a PEM certificate chain and a PEM private key (RSA or ECDSA): TLS 1.2
/// and 1.3, OpenSSL's default ciphers, no renegotiation, ALPN `http/1.1`, session tickets and
/// a session cache. Checks that the key matches and that the certificate is valid now. On
/// failure returns NULL and writes a one-line reason naming the file into `err`.
ctls_ctx *ctls_server_ctx_new(const char *cert_path, const char *key_path, char *err, size_t err_len);
/// A client context (for load generators and tests): verifies the server against `ca_path`
/// (PEM) unless it is NULL.
ctls_ctx *ctls_client_ctx_new(const char *ca_path, char *err, size_t err_len);
void ctls_ctx_free(ctls_ctx *ctx);
/// Subject and expiry of the context's certificate, for a log line.
void ctls_ctx_describe(ctls_ctx *ctx, char *buf, size_t len);

/// A session. For a client context `server_name` is sent as SNI and checked against the
/// certificate (a DNS name or an IP address); NULL for a server session.
ctls_conn *ctls_conn_new(ctls_ctx *ctx, const char *server_name);
void ctls_conn_free(ctls_conn *conn);

enum {
    CTLS_WANT_INPUT = 0,
    CTLS_FAILED = -1,
    /// The peer sent close_notify.
    CTLS_CLOSED = -2,
};

/// Runs the handshake with what `io->in` holds: 1 once complete, CTLS_WANT_INPUT, or CTLS_FAILED.
int ctls_handshake(ctls_conn *conn, ctls_io *io);
/// Opens the next record into `buf`: the plaintext length (> 0), CTLS_WANT_INPUT, CTLS_CLOSED or
/// CTLS_FAILED. A buffer of 16 KiB holds any record.
int ctls_read(ctls_conn *conn, ctls_io *io, void *buf, int cap);
/// Seals `len` bytes (records of up to 16 KiB) into `io->out`: `len`, or CTLS_FAILED.
int ctls_write(ctls_conn *conn, ctls_io *io, const void *buf, int len);
/// Appends close_notify to `io->out`.
void ctls_close_notify(ctls_conn *conn, ctls_io *io);
/// 1 once the handshake has completed.
int ctls_handshake_done(ctls_conn *conn);
/// 1 if the session was resumed (a ticket or the session cache).
int ctls_resumed(ctls_conn *conn);
/// "TLSv1.3", "TLSv1.2", …
const char *ctls_protocol(ctls_conn *conn);
/// The reason of the last failure on this thread (OpenSSL's error queue is emptied after each
/// failure, keeping the reason for this call).
void ctls_last_error(char *buf, size_t len);
/// Frees `io->out`.
void ctls_io_free(ctls_io *io);

#ifdef __cplusplus
}
#endif
