// Fuzz target: the TLS record path (Sources/CTLS/ctls.c, OpenSSL sessions over memory), driven
// the way the server drives it (Sources/StateroomServer/TLS.swift, tlsOpen): each received buffer
// goes to ctls_handshake until it returns 1, then to ctls_read until it wants input.
//
// The first input byte picks a mode:
// - even: the rest of the input is what a client sent (a ClientHello, records, garbage), cut into
//   chunks. No handshake can complete on made-up bytes, so the server session must never hand
//   out plaintext.
// - odd: a real client session (ctls_client_ctx_new, TLS 1.3 or 1.2) talks to the server through
//   a pipe that cuts the client's bytes into chunks chosen by the input and may flip one byte;
//   then the client seals the rest of the input as application data. Without the flip the
//   handshake completes and the server reads back exactly what was sent; with it the server
//   reads a prefix of what was sent, never altered bytes.
// In both modes: no plaintext before the handshake completes, a read never exceeds its buffer,
// and when a call wants input it has consumed every byte it was lent (the server drops what is
// left of a buffer then). ASan checks every lent buffer (an exact allocation, freed after the
// call); LSan checks that sessions free what they allocate.
//
// The certificate and key are made at start-up (P-256, self-signed, valid for a year) in
// temporary files that are removed once the contexts hold them: nothing secret is committed.
// Only ctls.c is compiled with coverage; OpenSSL itself is not instrumented (its own parsers are
// fuzzed by the OpenSSL project), so this target's cov: figure is that of the glue.
#include "ctls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ctls_ctx *server_ctx;
static ctls_ctx *client_ctx;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "PROPERTY FAILED (fuzz_tls.c:%d): ", __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
            abort();                                                       \
        }                                                                  \
    } while (0)

// MARK: - Start-up: a throwaway certificate and key

static void die(const char *what) {
    fprintf(stderr, "fuzz_tls: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

static void write_pair(const char *cert_path, const char *key_path) {
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!key || !x) die("cannot make a key");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:localhost");
    if (!san || !X509_add_ext(x, san, -1)) die("cannot add the subjectAltName");
    X509_EXTENSION_free(san);
    if (!X509_sign(x, key, EVP_sha256())) die("cannot sign the certificate");
    FILE *c = fopen(cert_path, "w"), *k = fopen(key_path, "w");
    if (!c || !k) die("cannot write the pair");
    PEM_write_X509(c, x);
    PEM_write_PrivateKey(k, key, NULL, NULL, 0, NULL, NULL);
    fclose(c);
    fclose(k);
    X509_free(x);
    EVP_PKEY_free(key);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char cert[512], key[512], err[512] = "";
    snprintf(cert, sizeof cert, "%s/fuzz_tls_%d_cert.pem", tmp, (int)getpid());
    snprintf(key, sizeof key, "%s/fuzz_tls_%d_key.pem", tmp, (int)getpid());
    write_pair(cert, key);
    server_ctx = ctls_server_ctx_new(cert, key, err, sizeof err);
    if (!server_ctx) die(err);
    client_ctx = ctls_client_ctx_new(cert, err, sizeof err);
    if (!client_ctx) die(err);
    unlink(cert);
    unlink(key);
    return 0;
}

// MARK: - Helpers

typedef struct { uint64_t s; } rng_t;

static uint64_t next(rng_t *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t below(rng_t *r, size_t n) { return n ? (size_t)(next(r) % n) : 0; }

/// A chunk size for `left` bytes: often small, sometimes everything.
static size_t chunk(rng_t *r, size_t left) {
    switch (next(r) % 4) {
    case 0: return left;
    case 1: return 1 + below(r, left < 8 ? left : 8);
    default: return 1 + below(r, left);
    }
}

/// A growable byte queue (what one side sent and the other has not read yet).
typedef struct { uint8_t *b; size_t len, cap, head; } queue_t;

static void q_push(queue_t *q, const uint8_t *p, size_t n) {
    if (q->len + n > q->cap) {
        q->cap = (q->len + n) * 2;
        q->b = realloc(q->b, q->cap);
        if (!q->b) abort();
    }
    memcpy(q->b + q->len, p, n);
    q->len += n;
}

static size_t q_left(const queue_t *q) { return q->len - q->head; }

/// The server's side of one received buffer, as tlsOpen does it: handshake until done, then
/// read records until input runs out. Appends plaintext to `plain`. Returns 0 while the session
/// lives, -1 once it failed or was closed.
typedef struct {
    ctls_conn *conn;
    ctls_io io;
    int established;
    queue_t plain;
} server_t;

static int server_receive(server_t *s, const uint8_t *data, size_t n) {
    uint8_t *lent = malloc(n ? n : 1);  // an exact copy: ASan sees any read past it
    memcpy(lent, data, n);
    s->io.in = lent;
    s->io.in_len = n;
    int alive = 0;
    if (!s->established) {
        int r = ctls_handshake(s->conn, &s->io);
        CHECK(r == 1 || r == CTLS_WANT_INPUT || r == CTLS_FAILED, "ctls_handshake returned %d", r);
        CHECK(r != CTLS_WANT_INPUT || s->io.in_len == 0,
              "handshake wants input but left %zu of %zu bytes unread", s->io.in_len, n);
        CHECK((r == 1) == (ctls_handshake_done(s->conn) == 1), "handshake result %d, done flag %d", r,
              ctls_handshake_done(s->conn));
        if (r == CTLS_FAILED) alive = -1;
        if (r == 1) s->established = 1;
    }
    while (alive == 0 && s->established) {
        uint8_t opened[16384];
        int r = ctls_read(s->conn, &s->io, opened, (int)sizeof opened);
        if (r > 0) {
            CHECK(r <= (int)sizeof opened, "read %d bytes into %zu", r, sizeof opened);
            CHECK(ctls_handshake_done(s->conn), "plaintext before the handshake completed");
            q_push(&s->plain, opened, (size_t)r);
            continue;
        }
        CHECK(r == CTLS_WANT_INPUT || r == CTLS_CLOSED || r == CTLS_FAILED, "ctls_read returned %d", r);
        if (r == CTLS_WANT_INPUT) {
            CHECK(s->io.in_len == 0, "read wants input but left %zu bytes unread", s->io.in_len);
        } else {
            alive = -1;
        }
        break;
    }
    s->io.in = NULL;
    s->io.in_len = 0;
    memset(lent, 0xEE, n);
    free(lent);
    return alive;
}

// MARK: - Mode 0: made-up client bytes

static void raw(const uint8_t *data, size_t size, rng_t *r) {
    server_t s = {0};
    s.conn = ctls_conn_new(server_ctx, NULL);
    CHECK(s.conn != NULL, "ctls_conn_new failed");
    size_t at = 0;
    while (at < size) {
        size_t n = chunk(r, size - at);
        int alive = server_receive(&s, data + at, n);
        at += n;
        s.io.out_len = 0;  // what the server would send back
        if (alive < 0) break;
    }
    CHECK(!s.established, "a handshake completed on made-up bytes");
    CHECK(s.plain.len == 0, "%zu bytes of plaintext from made-up bytes", s.plain.len);
    ctls_conn_free(s.conn);
    ctls_io_free(&s.io);
    free(s.plain.b);
}

// MARK: - Mode 1: a real client through a cutting, maybe corrupting, pipe

static void piped(const uint8_t *data, size_t size, rng_t *r) {
    // Config: [flags] [flip position: 2 bytes] [flip mask], then the application data.
    uint8_t flags = size > 0 ? data[0] : 0;
    size_t flip_at = size > 2 ? ((size_t)data[1] << 8 | data[2]) : 0;
    uint8_t flip_mask = size > 3 ? data[3] : 0;
    int corrupt = (flags & 2) && flip_mask != 0;
    size_t skip = size < 4 ? size : 4;
    const uint8_t *message = data + skip;
    size_t message_len = size - skip;

    ctls_conn *client = ctls_conn_new(client_ctx, "localhost");
    CHECK(client != NULL, "ctls_conn_new (client) failed");
    // The harness knows a ctls_conn is an SSL (ctls.c): TLS 1.2 too, not only what OpenSSL prefers.
    if (flags & 4) SSL_set_max_proto_version((SSL *)client, TLS1_2_VERSION);
    server_t s = {0};
    s.conn = ctls_conn_new(server_ctx, NULL);
    CHECK(s.conn != NULL, "ctls_conn_new failed");
    ctls_io cio = {0};
    queue_t to_server = {0};   // client → server, through the pipe
    size_t sent = 0;           // bytes of to_server the pipe has passed on (for the flip)
    int client_done = 0, server_alive = 0, client_failed = 0, wrote = 0;

    for (int round = 0; round < 64 && server_alive == 0; round++) {
        // The client reads what the server sent and answers.
        if (!client_done || s.io.out_len) {
            cio.in = s.io.out;
            cio.in_len = s.io.out_len;
            if (!client_done) {
                int cr = ctls_handshake(client, &cio);
                if (cr == 1) client_done = 1;
                if (cr == CTLS_FAILED) client_failed = 1;
            }
            if (client_done) {
                uint8_t sink[16384];
                while (ctls_read(client, &cio, sink, (int)sizeof sink) > 0) {}  // tickets
            }
            s.io.out_len = 0;
            cio.in = NULL;
            cio.in_len = 0;
        }
        if (client_done && !wrote && s.established) {
            if (message_len) CHECK(ctls_write(client, &cio, message, (int)message_len) == (int)message_len, "ctls_write failed");
            wrote = 1;
        }
        q_push(&to_server, cio.out ? cio.out : (const uint8_t *)"", cio.out_len);
        cio.out_len = 0;
        // The pipe passes some of what is queued to the server.
        size_t left = q_left(&to_server);
        if (left == 0) {
            if (client_failed || (wrote && s.established)) break;
            continue;
        }
        size_t n = chunk(r, left);
        uint8_t *p = to_server.b + to_server.head;
        if (corrupt && flip_at >= sent && flip_at < sent + n) p[flip_at - sent] ^= flip_mask;
        server_alive = server_receive(&s, p, n);
        to_server.head += n;
        sent += n;
    }

    if (!corrupt) {
        CHECK(s.established && client_done, "an untouched handshake did not complete (server %d, client %d)",
              s.established, client_done);
        CHECK(s.plain.len == message_len && (message_len == 0 || memcmp(s.plain.b, message, message_len) == 0),
              "the server read %zu bytes, %zu were sent, or other bytes", s.plain.len, message_len);
    } else {
        CHECK(s.plain.len <= message_len && (s.plain.len == 0 || memcmp(s.plain.b, message, s.plain.len) == 0),
              "the server read bytes that were not sent (%zu of %zu)", s.plain.len, message_len);
    }
    ctls_conn_free(client);
    ctls_conn_free(s.conn);
    ctls_io_free(&cio);
    ctls_io_free(&s.io);
    free(to_server.b);
    free(s.plain.b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    rng_t r = { 0xcbf29ce484222325ULL };
    for (size_t i = 0; i < size; i++) r.s = (r.s ^ data[i]) * 0x100000001b3ULL;
    if (data[0] & 1) piped(data, size, &r);
    else raw(data + 1, size - 1, &r);
    ERR_clear_error();
    return 0;
}
