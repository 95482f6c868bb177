/* The binary interface other languages bind to: version numbers, the
 * allocation functions, option structs that carry their size (a caller
 * built against an older, smaller struct gets the defaults for what it
 * lacks and nothing past its struct is read: run under ASan, the truncated
 * structs live in heap blocks of exactly their size), and per-socket user
 * pointers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>

#include "client_helpers.h"
#include "parley/client.h"
#include "parley/parley.h"
#include "parley/store.h"
#include "parley/ws.h"

static void test_version(void **state)
{
    (void)state;
    assert_int_equal(parley_version_number(), PARLEY_VERSION_NUMBER);
    assert_int_equal(PARLEY_VERSION_NUMBER, PARLEY_VERSION_MAJOR * 10000 +
                                                PARLEY_VERSION_MINOR * 100 + PARLEY_VERSION_PATCH);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", PARLEY_VERSION_MAJOR, PARLEY_VERSION_MINOR,
             PARLEY_VERSION_PATCH);
    assert_string_equal(parley_version(), want);
}

static void test_alloc(void **state)
{
    (void)state;
    char *s = parley_strdup("hello");
    assert_non_null(s);
    assert_string_equal(s, "hello");
    parley_free(s);
    assert_null(parley_strdup(NULL));
    void *p = parley_alloc(0);
    assert_non_null(p);
    parley_free(p);
    p = parley_alloc(100);
    assert_non_null(p);
    memset(p, 1, 100);
    parley_free(p);
    parley_free(NULL);
}

/* A heap copy of the first n bytes of o with its size set to n: what a
 * program compiled against a header whose struct ended there passes. */
static void *truncated(const void *o, size_t n)
{
    void *p = malloc(n);
    assert_non_null(p);
    memcpy(p, o, n);
    memcpy(p, &n, sizeof n);
    return p;
}

static void test_opts_take(void **state)
{
    (void)state;
    parley_client_opts full;
    parley_client_opts_init(&full);
    assert_int_equal(full.size, sizeof full);
    full.url = "http://127.0.0.1:1";
    full.path = "/other/";
    full.timeout_ms = 5;
    size_t n = offsetof(parley_client_opts, path); /* size and url */
    parley_client_opts *old = truncated(&full, n);
    parley_client_opts got;
    assert_int_equal(POPTS_TAKE(parley_client_opts, parley_client_opts_init, &got, old, url), 0);
    assert_int_equal(got.size, sizeof got);
    assert_string_equal(got.url, "http://127.0.0.1:1");
    assert_string_equal(got.path, "/socket.io/"); /* the default, not full's */
    assert_int_equal(got.timeout_ms, 20000);
    assert_int_equal(got.reconnection, 1);
    free(old);

    /* A newer caller's larger struct: the known part is taken. */
    unsigned char big[sizeof full + 64];
    memset(big, 0x7f, sizeof big);
    memcpy(big, &full, sizeof full);
    size_t bn = sizeof big;
    memcpy(big, &bn, sizeof bn);
    assert_int_equal(POPTS_TAKE(parley_client_opts, parley_client_opts_init, &got, big, url), 0);
    assert_int_equal(got.timeout_ms, 5);
    assert_int_equal(got.size, sizeof got);

    /* Refused: no struct, size 0, smaller than the size and first field. */
    assert_int_equal(POPTS_TAKE(parley_client_opts, parley_client_opts_init, &got, NULL, url),
                     PARLEY_EINVAL);
    parley_client_opts z = full;
    z.size = 0;
    assert_int_equal(POPTS_TAKE(parley_client_opts, parley_client_opts_init, &got, &z, url),
                     PARLEY_EINVAL);
    z.size = sizeof(size_t);
    assert_int_equal(POPTS_TAKE(parley_client_opts, parley_client_opts_init, &got, &z, url),
                     PARLEY_EINVAL);
}

/* _opts_init_size on an older caller's smaller struct: the defaults of
 * the fields it has, nothing written past it, its size what it has. */
static void test_init_size(void **state)
{
    (void)state;
    /* parley_client_opts as an older header might have declared it. */
    typedef struct old_client_opts {
        size_t size;
        const char *url;
        const char *path;
    } old_client_opts;
    old_client_opts *o = malloc(sizeof *o); /* exactly the old struct */
    assert_non_null(o);
    parley_client_opts_init_size((parley_client_opts *)(void *)o, sizeof *o);
    assert_int_equal(o->size, sizeof *o);
    assert_null(o->url);
    assert_string_equal(o->path, "/socket.io/");
    o->url = "http://127.0.0.1:1";
    parley_client *c = NULL;
    assert_int_equal(parley_client_new((parley_client_opts *)(void *)o, &c), 0);
    parley_client_free(c);
    free(o);

    size_t *w = malloc(sizeof *w); /* too small to be valid */
    assert_non_null(w);
    parley_ws_opts_init_size((parley_ws_opts *)(void *)w, sizeof *w);
    assert_int_equal(*w, sizeof *w);
    parley_loop *loop = parley_loop_new();
    parley_ws *ws = NULL;
    assert_int_equal(parley_ws_new(loop, (parley_ws_opts *)(void *)w, &ws), PARLEY_EINVAL);
    parley_loop_free(loop);
    free(w);

    parley_store_opts big[2];
    parley_store_opts_init_size(big, sizeof big); /* a newer caller's */
    assert_int_equal(big[0].size, sizeof big[0]);
    assert_int_equal(big[0].max_messages, 200);

    /* parley_emit_opts: a struct of only size + volatile_ (an old caller)
     * is filled without writing past it and accepted; size 0 is refused
     * before the socket is looked at. */
    typedef struct {
        size_t size;
        int volatile_;
    } old_emit_opts;
    old_emit_opts *eo = malloc(sizeof *eo);
    assert_non_null(eo);
    parley_emit_opts_init_size((parley_emit_opts *)(void *)eo, sizeof *eo);
    assert_int_equal(eo->size, sizeof *eo);
    assert_int_equal(eo->volatile_, 0);
    eo->size = 0;
    assert_int_equal(parley_emit_opts_send(NULL, (parley_emit_opts *)(void *)eo, "x", NULL, NULL, 0),
                     PARLEY_EINVAL);
    free(eo);
    parley_emit_opts full;
    parley_emit_opts_init(&full);
    assert_int_equal(full.size, sizeof full);
    assert_null(full.ack);
}

static void server_down(parley_server *s, void *user)
{
    (void)s;
    *(bool *)user = true;
}

/* The public entry points with truncated and invalid structs. */
static void test_truncated_public(void **state)
{
    (void)state;
    parley_client_opts co;
    parley_client_opts_init(&co);
    co.url = "http://127.0.0.1:1";
    co.auto_connect = 0; /* beyond the truncation: the default (1) applies */
    parley_client_opts *old = truncated(&co, offsetof(parley_client_opts, path));
    parley_client *c = NULL;
    assert_int_equal(parley_client_new(old, &c), 0);
    assert_non_null(c);
    free(old);

    parley_sock_opts so;
    parley_sock_opts_init(&so);
    parley_sock_opts *sold = truncated(&so, offsetof(parley_sock_opts, on_connect));
    parley_sock *s = parley_client_socket(c, "/", sold);
    assert_non_null(s);
    free(sold);
    so.size = 0;
    assert_null(parley_client_socket(c, "/other", &so));
    parley_client_free(c);

    co.size = 0;
    c = NULL;
    assert_int_equal(parley_client_new(&co, &c), PARLEY_EINVAL);
    assert_null(c);
    co.size = sizeof(size_t);
    assert_int_equal(parley_client_new(&co, &c), PARLEY_EINVAL);

    parley_loop *loop = parley_loop_new();
    assert_non_null(loop);
    parley_server_opts sv;
    parley_server_opts_init(&sv);
    sv.path = "/rt/";
    parley_server_opts *svold = truncated(&sv, offsetof(parley_server_opts, ping_interval_ms));
    parley_server *srv = NULL;
    assert_int_equal(parley_server_new(loop, svold, &srv), 0);
    free(svold);
    bool down = false;
    parley_server_shutdown(srv, server_down, &down);
    th_run_until(loop, &down, 5000);
    assert_true(down);
    parley_server_free(srv);
    /* Freed without shutdown and without running the loop again (an
     * embedder that gives up before listening): LeakSanitizer in the
     * ASan stage fails this if the Engine.IO engine is left behind. */
    srv = NULL;
    assert_int_equal(parley_server_new(loop, &sv, &srv), 0);
    parley_server_free(srv);
    sv.size = 1;
    assert_int_equal(parley_server_new(loop, &sv, &srv), PARLEY_EINVAL);
    parley_loop_free(loop);

    parley_ws_opts wo;
    parley_ws_opts_init(&wo);
    wo.url = "ws://127.0.0.1:1/";
    wo.size = 0;
    loop = parley_loop_new();
    parley_ws *ws = NULL;
    assert_int_equal(parley_ws_new(loop, &wo, &ws), PARLEY_EINVAL);
    parley_loop_free(loop);
}

/* ---- per-socket user pointers ---- */

typedef struct seen {
    pthread_mutex_t mu;
    void *user[3];
    char *auth_user[3];
    int n;
} seen;

static seen g_seen;
static int g_client_tag, g_a_tag, g_b_tag;

static parley_sock *g_socks[3]; /* /a, /b, /c: set before connecting */

static int slot(parley_sock *s)
{
    return s == g_socks[0] ? 0 : s == g_socks[1] ? 1 : 2;
}

static void on_connect(parley_sock *s, int recovered, void *user)
{
    (void)recovered;
    pthread_mutex_lock(&g_seen.mu);
    g_seen.user[slot(s)] = user;
    g_seen.n++;
    pthread_mutex_unlock(&g_seen.mu);
}

static char *auth(parley_sock *s, void *user)
{
    pthread_mutex_lock(&g_seen.mu);
    g_seen.auth_user[slot(s)] = user;
    pthread_mutex_unlock(&g_seen.mu);
    return parley_strdup("{\"k\":1}"); /* freed by the library with parley_free */
}

static void setup_nsps(th_server *t, void *user)
{
    (void)user;
    parley_nsp_handlers h = {0};
    parley_nsp_set_handlers(parley_server_of(t->srv, "/a"), &h);
    parley_nsp_set_handlers(parley_server_of(t->srv, "/b"), &h);
    parley_nsp_set_handlers(parley_server_of(t->srv, "/c"), &h);
}

static void test_sock_user(void **state)
{
    (void)state;
    pthread_mutex_init(&g_seen.mu, NULL);
    th_server srv;
    assert_int_equal(th_server_start(&srv, NULL, 0, setup_nsps, NULL, 0), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", srv.port);
    parley_client_opts co;
    parley_client_opts_init(&co);
    co.url = url;
    co.user = &g_client_tag;
    co.auto_connect = 0;
    parley_client *c = NULL;
    assert_int_equal(parley_client_new(&co, &c), 0);
    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.on_connect = on_connect;
    so.auth = auth;
    so.user = &g_a_tag;
    parley_sock *a = parley_client_socket(c, "/a", &so);
    so.user = NULL;
    parley_sock *b = parley_client_socket(c, "/b", &so);
    parley_sock *d = parley_client_socket(c, "/c", &so); /* the client's */
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(d);
    g_socks[0] = a;
    g_socks[1] = b;
    g_socks[2] = d;
    parley_sock_set_user(b, &g_b_tag);
    assert_ptr_equal(parley_sock_user(a), &g_a_tag);
    assert_ptr_equal(parley_sock_user(b), &g_b_tag);
    assert_ptr_equal(parley_sock_user(d), &g_client_tag);
    assert_int_equal(parley_client_connect(c), 0);
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&g_seen.mu);
        int n = g_seen.n;
        pthread_mutex_unlock(&g_seen.mu);
        if (n >= 3) break;
        usleep(10000);
    }
    pthread_mutex_lock(&g_seen.mu);
    assert_int_equal(g_seen.n, 3);
    assert_ptr_equal(g_seen.user[0], &g_a_tag);
    assert_ptr_equal(g_seen.user[1], &g_b_tag);
    assert_ptr_equal(g_seen.user[2], &g_client_tag);
    assert_ptr_equal(g_seen.auth_user[0], &g_a_tag);
    assert_ptr_equal(g_seen.auth_user[1], &g_b_tag);
    assert_ptr_equal(g_seen.auth_user[2], &g_client_tag);
    pthread_mutex_unlock(&g_seen.mu);
    parley_client_free(c);
    th_server_stop(&srv);
    pthread_mutex_destroy(&g_seen.mu);
}

int main(void)
{
    /* As every program using the library must (README, "Using the
     * library"): a write to a connection the peer reset is EPIPE, not
     * a fatal signal. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version),          cmocka_unit_test(test_alloc),
        cmocka_unit_test(test_opts_take),        cmocka_unit_test(test_init_size),
        cmocka_unit_test(test_truncated_public), cmocka_unit_test(test_sock_user),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
