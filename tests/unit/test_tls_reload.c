/* Reloading a server's TLS certificate (ptls_ctx_server_reload): a TLS
 * echo listener on the loop of the main thread, and blocking OpenSSL
 * clients on threads of their own that report the certificate subject
 * they were shown. New connections see the new certificate; a connection
 * opened before the reload goes on (through a TLS 1.3 key update too);
 * a failed reload keeps the old certificate. Certificates are made at
 * test time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "base/util.h"
#include "net/net.h"
#include "tls_cert.h"

/* ---- the echo server ---- */

typedef struct server {
    parley_loop *loop;
    int open;
} server;

typedef struct echo_conn {
    pconn c;
    server *s;
} echo_conn;

static size_t echo_data(pconn *c, uint8_t *data, size_t len)
{
    pconn_write(c, data, len);
    return len;
}

static void echo_close(pconn *c, int err)
{
    (void)err;
    echo_conn *e = PARLEY_CONTAINER_OF(c, echo_conn, c);
    e->s->open--;
    free(e);
}

static const pconn_cbs echo_cbs = {.on_data = echo_data, .on_close = echo_close};

static pconn *echo_accept(plistener *l, void *user)
{
    (void)l;
    server *s = user;
    echo_conn *e = malloc(sizeof *e);
    if (!e) return NULL;
    pconn_init(&e->c, s->loop, &echo_cbs, 0);
    e->s = s;
    s->open++;
    return &e->c;
}

/* ---- blocking clients ---- */

enum { ST_START, ST_FIRST_ECHO, ST_DONE, ST_FAILED };

typedef struct client {
    unsigned port;
    bool hold; /* after the first echo, wait for `go`, then echo again */
    atomic_bool go;
    atomic_int stage;
    char cn[64]; /* subject CN of the server's certificate */
    char why[160];
    pthread_t th;
} client;

static bool echo_once(SSL *ssl, const char *msg)
{
    size_t n = strlen(msg), got = 0;
    char buf[64];
    if (SSL_write(ssl, msg, (int)n) != (int)n) return false;
    while (got < n) {
        int r = SSL_read(ssl, buf + got, (int)(sizeof buf - got));
        if (r <= 0) return false;
        got += (size_t)r;
    }
    return got == n && memcmp(buf, msg, n) == 0;
}

static void *client_main(void *arg)
{
    client *c = arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int stage = ST_FAILED;
    if (!ctx || fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        snprintf(c->why, sizeof c->why, "connect failed");
        goto out;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* only the subject matters here */
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        snprintf(c->why, sizeof c->why, "handshake failed");
        goto out;
    }
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (peer)
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, c->cn, sizeof c->cn);
    X509_free(peer);
    if (!echo_once(ssl, "before")) {
        snprintf(c->why, sizeof c->why, "first echo failed");
        goto out;
    }
    if (c->hold) {
        atomic_store(&c->stage, ST_FIRST_ECHO);
        for (int i = 0; i < 20000 && !atomic_load(&c->go); i++) usleep(500);
        /* New traffic keys both ways: the server's SSL must still have
         * everything it needs from its (old) context. */
        if (SSL_version(ssl) == TLS1_3_VERSION &&
            SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) != 1) {
            snprintf(c->why, sizeof c->why, "key update failed");
            goto out;
        }
        if (!echo_once(ssl, "after the reload")) {
            snprintf(c->why, sizeof c->why, "second echo failed");
            goto out;
        }
    }
    SSL_shutdown(ssl);
    stage = ST_DONE;
out:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0) close(fd);
    ERR_clear_error();
    atomic_store(&c->stage, stage);
    return NULL;
}

static void client_start(client *c, unsigned port, bool hold)
{
    memset(c, 0, sizeof *c);
    c->port = port;
    c->hold = hold;
    atomic_init(&c->go, false);
    atomic_init(&c->stage, ST_START);
    assert_int_equal(pthread_create(&c->th, NULL, client_main, c), 0);
}

/* Runs the loop until the client reaches a stage at least `want` (or
 * fails); returns the stage. */
static int run_until_stage(server *s, client *c, int want)
{
    uint64_t end = ptime_ms() + 10000;
    int st;
    while ((st = atomic_load(&c->stage)) < want && ptime_ms() < end) {
        uv_run(s->loop->uv, UV_RUN_NOWAIT);
        usleep(200);
    }
    return st;
}

/* A client that connects, echoes once and leaves; returns the CN it saw. */
static void one_client(server *s, unsigned port, char *cn, size_t cap)
{
    client c;
    client_start(&c, port, false);
    int st = run_until_stage(s, &c, ST_DONE);
    pthread_join(c.th, NULL);
    if (st != ST_DONE) fail_msg("client: %s", c.why);
    snprintf(cn, cap, "%s", c.cn);
}

static void test_reload(void **state)
{
    (void)state;
    char dir[] = "/tmp/parley-tls-reload-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cert1[128], key1[128], cert2[128], key2[128], junk[128];
    snprintf(cert1, sizeof cert1, "%s/first.pem", dir);
    snprintf(key1, sizeof key1, "%s/first.key", dir);
    snprintf(cert2, sizeof cert2, "%s/second.pem", dir);
    snprintf(key2, sizeof key2, "%s/second.key", dir);
    snprintf(junk, sizeof junk, "%s/junk.pem", dir);
    make_cert_cn(cert1, key1, "first");
    make_cert_cn(cert2, key2, "second");
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", f);
    fclose(f);

    char err[256];
    ptls_ctx *tls = ptls_ctx_server(cert1, key1, err, sizeof err);
    assert_non_null(tls);
    server s = {0};
    s.loop = parley_loop_new();
    assert_non_null(s.loop);
    plistener *l;
    assert_int_equal(plisten(s.loop, "127.0.0.1", 0, tls, echo_accept, &s, &l), 0);
    unsigned port = plistener_port(l);

    /* A connection that stays open across the reloads. */
    client old;
    client_start(&old, port, true);
    assert_int_equal(run_until_stage(&s, &old, ST_FIRST_ECHO), ST_FIRST_ECHO);
    assert_string_equal(old.cn, "first");

    /* Failed reloads: nothing changes. */
    err[0] = 0;
    assert_int_equal(ptls_ctx_server_reload(tls, "/nonexistent/cert.pem", key2, err, sizeof err),
                     PARLEY_ETLS);
    assert_non_null(strstr(err, "/nonexistent/cert.pem"));
    err[0] = 0;
    assert_int_equal(ptls_ctx_server_reload(tls, junk, key2, err, sizeof err), PARLEY_ETLS);
    assert_non_null(strstr(err, junk));
    err[0] = 0;
    assert_int_equal(ptls_ctx_server_reload(tls, cert2, "/nonexistent/key", err, sizeof err),
                     PARLEY_ETLS);
    assert_true(err[0] != 0);
    err[0] = 0;
    assert_int_equal(ptls_ctx_server_reload(tls, cert2, key1, err, sizeof err), PARLEY_ETLS);
    if (!strstr(err, "mismatch") || !strstr(err, key1)) fail_msg("%s", err);
    char cn[64];
    one_client(&s, port, cn, sizeof cn);
    assert_string_equal(cn, "first");

    /* A good reload: new connections get the new certificate. */
    assert_int_equal(ptls_ctx_server_reload(tls, cert2, key2, err, sizeof err), 0);
    one_client(&s, port, cn, sizeof cn);
    assert_string_equal(cn, "second");
    one_client(&s, port, cn, sizeof cn);
    assert_string_equal(cn, "second");

    /* The connection from before works on, with the old context (which
     * the server no longer holds). */
    atomic_store(&old.go, true);
    int st = run_until_stage(&s, &old, ST_DONE);
    pthread_join(old.th, NULL);
    if (st != ST_DONE) fail_msg("old connection: %s", old.why);
    assert_string_equal(old.cn, "first");

    /* And back. */
    assert_int_equal(ptls_ctx_server_reload(tls, cert1, key1, err, sizeof err), 0);
    one_client(&s, port, cn, sizeof cn);
    assert_string_equal(cn, "first");

    /* A client context cannot be reloaded as a server's. */
    ptls_client_opts co = {.insecure = true};
    ptls_ctx *client_ctx = ptls_ctx_client(&co, err, sizeof err);
    assert_non_null(client_ctx);
    assert_int_equal(ptls_ctx_server_reload(client_ctx, cert1, key1, err, sizeof err),
                     PARLEY_EINVAL);
    ptls_ctx_free(client_ctx);

    /* The server side of each connection closes after its client left. */
    uint64_t end = ptime_ms() + 10000;
    while (s.open > 0 && ptime_ms() < end) {
        uv_run(s.loop->uv, UV_RUN_NOWAIT);
        usleep(200);
    }
    assert_int_equal(s.open, 0);
    plistener_close(l);
    uv_run(s.loop->uv, UV_RUN_NOWAIT);
    parley_loop_free(s.loop);
    ptls_ctx_free(tls);
    unlink(cert1);
    unlink(key1);
    unlink(cert2);
    unlink(key2);
    unlink(junk);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
