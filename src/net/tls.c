/* TLS contexts and per-connection TLS state over memory BIOs. */
#include <arpa/inet.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "base/log.h"
#include "base/util.h"
#include "net/conn_internal.h"

const char *ptls__errstr(char *buf, size_t cap)
{
    unsigned long e = ERR_get_error();
    if (!e) {
        snprintf(buf, cap, "unknown TLS error");
    } else {
        ERR_error_string_n(e, buf, cap);
    }
    ERR_clear_error();
    return buf;
}

static void set_err(char *err, size_t cap, const char *what)
{
    if (!err || !cap) return;
    char tmp[200];
    snprintf(err, cap, "%s: %s", what, ptls__errstr(tmp, sizeof tmp));
}

static SSL_CTX *ctx_common(const SSL_METHOD *m)
{
    SSL_CTX *ctx = SSL_CTX_new(m);
    if (!ctx) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Memory BIOs take whole writes; partial writes and moving buffers are
     * fine and save copies. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    return ctx;
}

/* A server SSL_CTX holding the certificate chain and its key. */
static SSL_CTX *server_ssl_ctx(const char *cert_file, const char *key_file, char *err,
                               size_t errcap)
{
    SSL_CTX *ctx = ctx_common(TLS_server_method());
    if (!ctx) {
        set_err(err, errcap, "SSL_CTX_new");
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        set_err(err, errcap, cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        set_err(err, errcap, key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        set_err(err, errcap, "key does not match certificate");
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

ptls_ctx *ptls_ctx_server(const char *cert_file, const char *key_file, char *err, size_t errcap)
{
    ptls_ctx *t = pcalloc(1, sizeof *t);
    if (!t) return NULL;
    t->server = true;
    t->ctx = server_ssl_ctx(cert_file, key_file, err, errcap);
    if (!t->ctx) {
        free(t);
        return NULL;
    }
    return t;
}

int ptls_ctx_server_reload(ptls_ctx *t, const char *cert_file, const char *key_file, char *err,
                           size_t errcap)
{
    if (!t->server) {
        if (err && errcap) snprintf(err, errcap, "not a server TLS context");
        return PARLEY_EINVAL;
    }
    SSL_CTX *fresh = server_ssl_ctx(cert_file, key_file, err, errcap);
    if (!fresh) return PARLEY_ETLS;
    /* Every SSL made from the old context holds a reference to it
     * (SSL_new), so open connections keep it alive; ptls__new reads t->ctx
     * afresh for each new connection. */
    SSL_CTX_free(t->ctx);
    t->ctx = fresh;
    return 0;
}

ptls_ctx *ptls_ctx_client(const ptls_client_opts *o, char *err, size_t errcap)
{
    ptls_ctx *t = pcalloc(1, sizeof *t);
    if (!t) return NULL;
    t->ctx = ctx_common(TLS_client_method());
    if (!t->ctx) {
        set_err(err, errcap, "SSL_CTX_new");
        goto fail;
    }
    if (o && o->insecure) {
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
        return t;
    }
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    if (o && o->ca_file) {
        if (SSL_CTX_load_verify_locations(t->ctx, o->ca_file, NULL) != 1) {
            set_err(err, errcap, o->ca_file);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        set_err(err, errcap, "system CA store");
        goto fail;
    }
    return t;
fail:
    ptls_ctx_free(t);
    return NULL;
}

void ptls_ctx_free(ptls_ctx *t)
{
    if (!t) return;
    SSL_CTX_free(t->ctx);
    free(t);
}

static bool is_ip_literal(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

ptls *ptls__new(ptls_ctx *ctx, const char *host)
{
    ptls *t = pcalloc(1, sizeof *t);
    if (!t) return NULL;
    t->ssl = SSL_new(ctx->ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) goto fail;
    /* An empty read BIO means "no data yet", not EOF. */
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    if (ctx->server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (host && *host) {
            if (is_ip_literal(host)) {
                if (SSL_get_verify_mode(t->ssl) != SSL_VERIFY_NONE &&
                    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) != 1)
                    goto fail_bios_owned;
            } else {
                SSL_set_tlsext_host_name(t->ssl, host);
                if (SSL_get_verify_mode(t->ssl) != SSL_VERIFY_NONE &&
                    SSL_set1_host(t->ssl, host) != 1)
                    goto fail_bios_owned;
            }
        }
    }
    return t;
fail:
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    free(t);
    return NULL;
fail_bios_owned:
    SSL_free(t->ssl); /* frees the BIOs too */
    free(t);
    return NULL;
}

void ptls__free(ptls *t)
{
    if (!t) return;
    SSL_free(t->ssl);
    pbuf_free(&t->wire);
    free(t);
}

int ptls__drain(ptls *t)
{
    size_t pending;
    while ((pending = BIO_ctrl_pending(t->wbio)) > 0) {
        int rc = pbuf_reserve(&t->wire, pending);
        if (rc) return rc;
        int n = BIO_read(t->wbio, t->wire.ptr + t->wire.len,
                         (int)PARLEY_MIN(pending, (size_t)INT32_MAX));
        if (n <= 0) break;
        t->wire.len += (size_t)n;
    }
    return 0;
}
