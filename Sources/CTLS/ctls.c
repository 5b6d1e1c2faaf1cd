#include "ctls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// MARK: - The memory BIO: reads from io->in, appends to io->out

static BIO_METHOD *io_method;
static pthread_once_t io_method_once = PTHREAD_ONCE_INIT;

static int io_write(BIO *b, const char *data, int len) {
    ctls_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (io == NULL || len < 0) return -1;
    size_t need = io->out_len + (size_t)len;
    if (need > io->out_cap) {
        size_t cap = io->out_cap ? io->out_cap : 32 << 10;
        while (cap < need) cap *= 2;
        uint8_t *grown = realloc(io->out, cap);
        if (grown == NULL) return -1;
        io->out = grown;
        io->out_cap = cap;
    }
    memcpy(io->out + io->out_len, data, (size_t)len);
    io->out_len = need;
    return len;
}

static int io_read(BIO *b, char *data, int len) {
    ctls_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (io == NULL || io->in_len == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)len < io->in_len ? (size_t)len : io->in_len;
    memcpy(data, io->in, n);
    io->in += n;
    io->in_len -= n;
    return (int)n;
}

static long io_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)b; (void)num; (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: {
        ctls_io *io = BIO_get_data(b);
        return io ? (long)io->in_len : 0;
    }
    default: return 0;
    }
}

static int io_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

static void make_io_method(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "stateroom io");
    BIO_meth_set_write(m, io_write);
    BIO_meth_set_read(m, io_read);
    BIO_meth_set_ctrl(m, io_ctrl);
    BIO_meth_set_create(m, io_create);
    io_method = m;
}

// MARK: - Contexts

static void set_error(char *err, size_t err_len, const char *what, const char *path) {
    char reason[256] = "";
    unsigned long e = ERR_peek_last_error();
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (err && err_len) {
        if (reason[0]) snprintf(err, err_len, "%s %s: %s", what, path, reason);
        else snprintf(err, err_len, "%s %s", what, path);
    }
}

static void time_string(const ASN1_TIME *t, char *buf, size_t len) {
    buf[0] = 0;
    BIO *m = BIO_new(BIO_s_mem());
    if (!m) return;
    if (ASN1_TIME_print(m, t)) {
        int n = BIO_read(m, buf, (int)len - 1);
        buf[n > 0 ? n : 0] = 0;
    }
    BIO_free(m);
}

static const unsigned char alpn_http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    unsigned char *chosen = NULL;
    if (SSL_select_next_proto(&chosen, outlen, alpn_http11, sizeof alpn_http11, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
        *out = chosen;
        return SSL_TLSEXT_ERR_OK;
    }
    // A client that offers only other protocols (h2) gets HTTP/1.1 without ALPN.
    return SSL_TLSEXT_ERR_NOACK;
}

/// 0 if `path` can be opened for reading, else writes why (the system's reason) into `err`.
static int check_readable(const char *what, const char *path, char *err, size_t err_len) {
    FILE *f = fopen(path, "r");
    if (f) { fclose(f); return 0; }
    snprintf(err, err_len, "cannot read %s %s: %s", what, path, strerror(errno));
    return -1;
}

ctls_ctx *ctls_server_ctx_new(const char *cert_path, const char *key_path, char *err, size_t err_len) {
    ERR_clear_error();
    if (check_readable("the certificate chain", cert_path, err, err_len) ||
        check_readable("the private key", key_path, err, err_len)) return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) { set_error(err, err_len, "cannot create a TLS context for", cert_path); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    // Idle sessions give their 16 KiB record buffers back.
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"stateroom", 9);
    // One TLS 1.3 ticket per full handshake (OpenSSL sends two by default).
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1) {
        set_error(err, err_len, "cannot read the certificate chain", cert_path);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            snprintf(err, err_len, "the private key %s does not match the certificate %s", key_path, cert_path);
        } else {
            set_error(err, err_len, "cannot read the private key", key_path);
        }
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, err_len, "the private key %s does not match the certificate %s", key_path, cert_path);
        SSL_CTX_free(ctx);
        return NULL;
    }
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    char when[64];
    if (leaf && X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
        time_string(X509_get0_notAfter(leaf), when, sizeof when);
        snprintf(err, err_len, "the certificate %s expired on %s", cert_path, when);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (leaf && X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        time_string(X509_get0_notBefore(leaf), when, sizeof when);
        snprintf(err, err_len, "the certificate %s is not valid before %s", cert_path, when);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return (ctls_ctx *)ctx;
}

ctls_ctx *ctls_client_ctx_new(const char *ca_path, char *err, size_t err_len) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { set_error(err, err_len, "cannot create a TLS context for", ca_path ? ca_path : "client"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof alpn_http11);
    if (ca_path) {
        if (SSL_CTX_load_verify_locations(ctx, ca_path, NULL) != 1) {
            set_error(err, err_len, "cannot read the CA file", ca_path);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return (ctls_ctx *)ctx;
}

void ctls_ctx_free(ctls_ctx *ctx) { SSL_CTX_free((SSL_CTX *)ctx); }

void ctls_ctx_describe(ctls_ctx *ctx, char *buf, size_t len) {
    X509 *leaf = SSL_CTX_get0_certificate((SSL_CTX *)ctx);
    if (!leaf) { snprintf(buf, len, "no certificate"); return; }
    char subject[256] = "", until[64] = "";
    X509_NAME_oneline(X509_get_subject_name(leaf), subject, sizeof subject);
    time_string(X509_get0_notAfter(leaf), until, sizeof until);
    snprintf(buf, len, "%s, valid until %s", subject, until);
}

// MARK: - Sessions

ctls_conn *ctls_conn_new(ctls_ctx *ctx, const char *server_name) {
    pthread_once(&io_method_once, make_io_method);
    SSL *ssl = SSL_new((SSL_CTX *)ctx);
    if (!ssl) return NULL;
    BIO *bio = BIO_new(io_method);
    if (!bio) { SSL_free(ssl); return NULL; }
    SSL_set_bio(ssl, bio, bio);  // one BIO both ways: SSL_set_bio takes our reference and adds the second itself
    if (server_name) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(param, server_name) != 1) {
            // A host name: sent as SNI and checked against the certificate. An IP address is
            // only checked (RFC 6066 does not allow one in SNI).
            ERR_clear_error();
            SSL_set_tlsext_host_name(ssl, server_name);
            SSL_set1_host(ssl, server_name);
        }
        SSL_set_connect_state(ssl);
    } else {
        SSL_set_accept_state(ssl);
    }
    return (ctls_conn *)ssl;
}

void ctls_conn_free(ctls_conn *conn) { SSL_free((SSL *)conn); }

// The reason of this thread's last failure, kept so that OpenSSL's error queue can be emptied at
// once: SSL_get_error needs an empty queue before each call, and emptying it after every call
// (rather than only after a failure) costs a thread-local lookup per record.
static __thread char last_error[256];

static void keep_error(void) {
    unsigned long e = ERR_peek_last_error();
    if (e) ERR_error_string_n(e, last_error, sizeof last_error);
    else snprintf(last_error, sizeof last_error, "unknown TLS failure");
    ERR_clear_error();
}

static inline SSL *bind_io(ctls_conn *conn, ctls_io *io) {
    SSL *ssl = (SSL *)conn;
    BIO_set_data(SSL_get_rbio(ssl), io);
    return ssl;
}

static inline void unbind_io(SSL *ssl) { BIO_set_data(SSL_get_rbio(ssl), NULL); }

int ctls_handshake(ctls_conn *conn, ctls_io *io) {
    SSL *ssl = bind_io(conn, io);
    int r = SSL_do_handshake(ssl);
    int result;
    if (r == 1) {
        result = 1;
    } else {
        int e = SSL_get_error(ssl, r);
        result = (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) ? CTLS_WANT_INPUT : CTLS_FAILED;
        if (result == CTLS_FAILED) keep_error();
    }
    unbind_io(ssl);
    return result;
}

int ctls_read(ctls_conn *conn, ctls_io *io, void *buf, int cap) {
    SSL *ssl = bind_io(conn, io);
    int r = SSL_read(ssl, buf, cap);
    int result = r;
    if (r <= 0) {
        switch (SSL_get_error(ssl, r)) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE: result = CTLS_WANT_INPUT; break;
        case SSL_ERROR_ZERO_RETURN: result = CTLS_CLOSED; break;
        default: result = CTLS_FAILED; keep_error(); break;
        }
    }
    unbind_io(ssl);
    return result;
}

int ctls_write(ctls_conn *conn, ctls_io *io, const void *buf, int len) {
    SSL *ssl = bind_io(conn, io);
    int r = len > 0 ? SSL_write(ssl, buf, len) : 0;
    unbind_io(ssl);
    if (r != len) { keep_error(); return CTLS_FAILED; }
    return len;
}

void ctls_close_notify(ctls_conn *conn, ctls_io *io) {
    SSL *ssl = bind_io(conn, io);
    if (SSL_shutdown(ssl) < 0) keep_error();
    unbind_io(ssl);
}

int ctls_handshake_done(ctls_conn *conn) { return SSL_is_init_finished((SSL *)conn); }

int ctls_resumed(ctls_conn *conn) { return SSL_session_reused((SSL *)conn); }

const char *ctls_protocol(ctls_conn *conn) { return SSL_get_version((SSL *)conn); }

void ctls_last_error(char *buf, size_t len) {
    if (ERR_peek_last_error()) keep_error();
    snprintf(buf, len, "%s", last_error);
}

void ctls_io_free(ctls_io *io) {
    free(io->out);
    io->out = NULL;
    io->out_len = io->out_cap = 0;
}
