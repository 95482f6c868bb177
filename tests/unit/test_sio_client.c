/* The Socket.IO client against the library's own server (on a loop thread)
 * in three transport modes, through a TCP proxy that can cut the link, and
 * against scripted fake servers (HTTP 401, malformed packets). The client
 * runs on its own loop thread, as applications use it; the test thread
 * waits on a log the callbacks write. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/wait.h>

#include "client_helpers.h"
#include "tls_cert.h"
#include "codec/json.h"
#include "parley/client.h"

/* ---- the log ---- */

typedef struct tlog {
    pthread_mutex_t mu;
    char **lines;
    int n, cap;
} tlog;

static void tlog_init(tlog *l)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
}

static void tlog_free(tlog *l)
{
    for (int i = 0; i < l->n; i++) free(l->lines[i]);
    free(l->lines);
    pthread_mutex_destroy(&l->mu);
}

static void tlogf(tlog *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tlogf(tlog *l, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (getenv("PARLEY_TEST_LOG")) fprintf(stderr, "LOG %s\n", buf);
    pthread_mutex_lock(&l->mu);
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->lines = realloc(l->lines, (size_t)l->cap * sizeof *l->lines);
    }
    l->lines[l->n++] = strdup(buf);
    pthread_mutex_unlock(&l->mu);
}

/* Index of the first line at or after *from starting with prefix, waiting
 * up to ms; -1 when none. *from moves past it. */
static int tlog_wait(tlog *l, int *from, const char *prefix, int ms, char *out, size_t cap)
{
    uint64_t end = ptime_ms() + (uint64_t)ms;
    size_t plen = strlen(prefix);
    for (;;) {
        pthread_mutex_lock(&l->mu);
        for (int i = *from; i < l->n; i++) {
            if (!strncmp(l->lines[i], prefix, plen)) {
                if (out) snprintf(out, cap, "%s", l->lines[i]);
                pthread_mutex_unlock(&l->mu);
                *from = i + 1;
                return i;
            }
        }
        pthread_mutex_unlock(&l->mu);
        if (ptime_ms() >= end) return -1;
        usleep(2000);
    }
}

static int tlog_count(tlog *l, const char *prefix)
{
    int n = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++)
        if (!strncmp(l->lines[i], prefix, strlen(prefix))) n++;
    pthread_mutex_unlock(&l->mu);
    return n;
}

static int tlog_len(tlog *l)
{
    pthread_mutex_lock(&l->mu);
    int n = l->n;
    pthread_mutex_unlock(&l->mu);
    return n;
}

#define WAIT(l, from, prefix, ms)                                                                  \
    do {                                                                                           \
        if (tlog_wait((l), (from), (prefix), (ms), NULL, 0) < 0)                                   \
            fail_msg("no \"%s\" within %d ms (line %d)", (prefix), (ms), __LINE__);                \
    } while (0)

#define WAITL(l, from, prefix, ms, buf)                                                            \
    do {                                                                                           \
        if (tlog_wait((l), (from), (prefix), (ms), (buf), sizeof(buf)) < 0)                        \
            fail_msg("no \"%s\" within %d ms (line %d)", (prefix), (ms), __LINE__);                \
    } while (0)

/* ---- the server's handlers (run on the server loop) ---- */

#define MAX_IDS 512

typedef struct srv_state {
    pthread_mutex_t mu;
    char ids[MAX_IDS][64];
    int counts[MAX_IDS];
    int prio[MAX_IDS];
    int nids, total;
    bool recovery;
} srv_state;

static srv_state g_srv;

/* "limited" sends ([id, refusals, wait]): the first `refusals` attempts
 * of an id are answered ["wait", wait], later ones ["ok", id]; every
 * attempt is recorded with its time on the server. */
#define LIM_MAX 64

typedef struct lim_state {
    pthread_mutex_t mu;
    struct {
        char id[40];
        uint64_t at;
    } log[LIM_MAX];
    int n;
} lim_state;

static lim_state g_lim;

static void lim_reset(void)
{
    pthread_mutex_lock(&g_lim.mu);
    g_lim.n = 0;
    pthread_mutex_unlock(&g_lim.mu);
}

/* Attempts of id so far; their server times into at (up to cap). */
static int lim_attempts(const char *id, uint64_t *at, int cap)
{
    int k = 0;
    pthread_mutex_lock(&g_lim.mu);
    for (int i = 0; i < g_lim.n; i++) {
        if (strcmp(g_lim.log[i].id, id) != 0) continue;
        if (at && k < cap) at[k] = g_lim.log[i].at;
        k++;
    }
    pthread_mutex_unlock(&g_lim.mu);
    return k;
}

/* Position of the n-th (0-based) attempt of id in the server's log; -1. */
static int lim_pos(const char *id, int n)
{
    int pos = -1;
    pthread_mutex_lock(&g_lim.mu);
    for (int i = 0; i < g_lim.n && pos < 0; i++)
        if (!strcmp(g_lim.log[i].id, id) && n-- == 0) pos = i;
    pthread_mutex_unlock(&g_lim.mu);
    return pos;
}

static void emit_auth(parley_socket *s)
{
    size_t len;
    const char *auth = parley_socket_auth(s, &len);
    char buf[2048];
    snprintf(buf, sizeof buf, "[%.*s]", auth ? (int)len : 2, auth ? auth : "{}");
    parley_emit(s, "auth", buf, NULL, 0);
}

static void h_connection(parley_socket *s, void *user)
{
    (void)user;
    emit_auth(s);
}

static void h_ack_result(parley_socket *s, int err, const parley_args *a, void *user)
{
    (void)user;
    if (err == PARLEY_ECLOSED) return;
    char buf[4096];
    if (err == 0)
        snprintf(buf, sizeof buf, "[{\"ok\":true,\"args\":%.*s}]", (int)a->json_len, a->json);
    else
        snprintf(buf, sizeof buf, "[{\"ok\":false}]");
    parley_emit(s, "server-ack-result", buf, err == 0 ? a->bins : NULL, err == 0 ? a->nbins : 0);
}

/* The first string element of an args array. */
static bool first_string(const parley_args *a, char *out, size_t cap, json_val *rest_arr)
{
    json_val arr, e;
    if (json_parse(a->json, a->json_len, 32, &arr, NULL) != 0) return false;
    json_iter it;
    json_iter_init(&it, &arr);
    if (!json_array_next(&it, &e) || e.type != JSON_STRING) return false;
    long n = json_string_decode(&e, out, cap - 1);
    if (n < 0) return false;
    out[n] = 0;
    if (rest_arr) *rest_arr = arr;
    return true;
}

static void h_event(parley_socket *s, const char *event, size_t event_len, const parley_args *a,
                    int64_t ack_id, void *user)
{
    (void)event_len;
    (void)user;
    char *json = pmemdup_str(a->json, a->json_len);
    if (!strcmp(event, "message")) {
        parley_emit(s, "message-back", json, a->bins, a->nbins);
    } else if (!strcmp(event, "message-with-ack")) {
        if (ack_id >= 0) parley_ack(s, ack_id, json, a->bins, a->nbins);
    } else if (!strcmp(event, "volatile")) {
        parley_emit_opts o = {.size = sizeof o, .volatile_ = 1};
        parley_emit_opts_send(s, &o, "volatile-back", json, a->bins, a->nbins);
    } else if (!strcmp(event, "server-ack")) {
        parley_emit_opts o = {.size = sizeof o, .ack = h_ack_result, .timeout_ms = 500};
        parley_emit_opts_send(s, &o, "please-ack", json, a->bins, a->nbins);
    } else if (!strcmp(event, "disconnect-me")) {
        parley_disconnect(s, 0);
    } else if (!strcmp(event, "to-socket")) {
        char id[64];
        if (first_string(a, id, sizeof id, NULL)) {
            const char *room = id;
            parley_target to = {.rooms = &room, .nrooms = 1};
            parley_broadcast(parley_socket_nsp(s), &to, "pushed", "[\"while away\"]", NULL, 0);
        }
        if (ack_id >= 0) parley_ack(s, ack_id, "[]", NULL, 0);
    } else if (!strcmp(event, "limited")) {
        char id[40];
        json_val arr, e;
        int64_t refusals = 0, wait = 0;
        if (first_string(a, id, sizeof id, &arr)) {
            json_iter it;
            json_iter_init(&it, &arr);
            json_array_next(&it, &e);
            if (json_array_next(&it, &e)) json_int(&e, &refusals);
            if (json_array_next(&it, &e)) json_int(&e, &wait);
            pthread_mutex_lock(&g_lim.mu);
            int k = 0;
            for (int i = 0; i < g_lim.n; i++) k += !strcmp(g_lim.log[i].id, id);
            if (g_lim.n < LIM_MAX) {
                snprintf(g_lim.log[g_lim.n].id, sizeof g_lim.log[g_lim.n].id, "%s", id);
                g_lim.log[g_lim.n++].at = ptime_ms();
            }
            pthread_mutex_unlock(&g_lim.mu);
            char ack[128];
            if (k < refusals)
                snprintf(ack, sizeof ack, "[\"wait\",%lld]", (long long)wait);
            else
                snprintf(ack, sizeof ack, "[\"ok\",\"%s\"]", id);
            if (ack_id >= 0) parley_ack(s, ack_id, ack, NULL, 0);
        }
    } else if (!strcmp(event, "reliable")) {
        /* args: [id, priority] */
        char id[64];
        json_val arr;
        if (first_string(a, id, sizeof id, &arr)) {
            json_iter it;
            json_val e;
            int64_t prio = -1;
            json_iter_init(&it, &arr);
            json_array_next(&it, &e);
            if (json_array_next(&it, &e)) json_int(&e, &prio);
            pthread_mutex_lock(&g_srv.mu);
            g_srv.total++;
            int k = 0;
            while (k < g_srv.nids && strcmp(g_srv.ids[k], id) != 0) k++;
            if (k == g_srv.nids && k < MAX_IDS) {
                snprintf(g_srv.ids[k], sizeof g_srv.ids[k], "%s", id);
                g_srv.prio[k] = (int)prio;
                g_srv.nids++;
            }
            if (k < MAX_IDS) g_srv.counts[k]++;
            pthread_mutex_unlock(&g_srv.mu);
            char ack[128];
            snprintf(ack, sizeof ack, "[\"%s\"]", id);
            if (ack_id >= 0) parley_ack(s, ack_id, ack, NULL, 0);
        }
    }
    free(json);
}

static int h_check(parley_socket *s, const char *auth, size_t len, parley_connect_error *err,
                   void *user)
{
    (void)s;
    (void)user;
    json_val obj, tok;
    if (auth && json_parse(auth, len, 32, &obj, NULL) == 0 && obj.type == JSON_OBJECT &&
        json_object_get(&obj, "token", &tok) && json_string_eq(&tok, "ok"))
        return 0;
    err->message = "unauthorized";
    err->data_json = "{\"reason\":\"bad token\"}";
    return 1;
}

static void setup_handlers(th_server *t, void *user)
{
    (void)user;
    parley_nsp_handlers root = {.on_connection = h_connection, .on_event = h_event};
    parley_nsp_set_handlers(parley_server_of(t->srv, "/"), &root);
    parley_nsp_handlers ch = {.on_connection = h_connection, .on_event = h_event};
    parley_nsp_set_handlers(parley_server_of(t->srv, "/custom"), &ch);
    parley_nsp_handlers mh = {.on_connect_check = h_check, .on_connection = h_connection};
    parley_nsp_set_handlers(parley_server_of(t->srv, "/middleware"), &mh);
}

static void start_server(th_server *t, bool recovery, unsigned port)
{
    parley_server_opts o;
    parley_server_opts_init(&o);
    o.ping_interval_ms = 300;
    o.ping_timeout_ms = 200;
    o.recovery = recovery;
    assert_int_equal(th_server_start(t, &o, 0, setup_handlers, NULL, port), 0);
}

static void srv_reset(void)
{
    pthread_mutex_lock(&g_srv.mu);
    g_srv.nids = g_srv.total = 0;
    memset(g_srv.counts, 0, sizeof g_srv.counts);
    pthread_mutex_unlock(&g_srv.mu);
}

/* ---- the client side ---- */

typedef struct tc {
    tlog log;
    parley_client *c;
    const char *token; /* for the auth callback */
    char token_buf[32];
    int auth_calls;
    bool free_in_event;
} tc;

static const char *ev_name(parley_client_event_type t)
{
    switch (t) {
    case PARLEY_CLIENT_CONNECTING:
        return "CONNECTING";
    case PARLEY_CLIENT_OPEN:
        return "OPEN";
    case PARLEY_CLIENT_UPGRADE:
        return "UPGRADE";
    case PARLEY_CLIENT_CLOSE:
        return "CLOSE";
    case PARLEY_CLIENT_RECONNECTING:
        return "RECONNECTING";
    case PARLEY_CLIENT_RECONNECTED:
        return "RECONNECTED";
    case PARLEY_CLIENT_RECONNECT_FAILED:
        return "RECONNECT_FAILED";
    case PARLEY_CLIENT_ERROR:
        return "ERROR";
    }
    return "?";
}

static void on_client_event(parley_client *c, const parley_client_event *ev, void *user)
{
    (void)c;
    tc *t = user;
    switch (ev->type) {
    case PARLEY_CLIENT_OPEN:
    case PARLEY_CLIENT_UPGRADE:
        tlogf(&t->log, "ev %s %s", ev_name(ev->type), ev->transport);
        break;
    case PARLEY_CLIENT_CLOSE:
        tlogf(&t->log, "ev CLOSE %s", ev->reason);
        break;
    case PARLEY_CLIENT_RECONNECTING:
        tlogf(&t->log, "ev RECONNECTING %u %u", ev->attempt, ev->delay_ms);
        break;
    case PARLEY_CLIENT_RECONNECTED:
        tlogf(&t->log, "ev RECONNECTED %u", ev->attempt);
        break;
    case PARLEY_CLIENT_RECONNECT_FAILED:
        tlogf(&t->log, "ev RECONNECT_FAILED %d", ev->http_status);
        break;
    case PARLEY_CLIENT_ERROR:
        tlogf(&t->log, "ev ERROR %d %d", ev->err, ev->http_status);
        break;
    default:
        tlogf(&t->log, "ev %s", ev_name(ev->type));
        break;
    }
}

static char *auth_cb(parley_sock *s, void *user)
{
    (void)s;
    tc *t = user;
    t->auth_calls++;
    if (!t->token) return NULL;
    char buf[128];
    snprintf(buf, sizeof buf, "{\"token\":\"%s\",\"n\":%d}", t->token, t->auth_calls);
    return strdup(buf);
}

static void on_connect(parley_sock *s, int recovered, void *user)
{
    tc *t = user;
    char id[32];
    parley_sock_id(s, id);
    tlogf(&t->log, "connect %d %s", recovered, id);
}

static void on_disconnect(parley_sock *s, const char *reason, void *user)
{
    (void)s;
    tc *t = user;
    tlogf(&t->log, "disconnect %s", reason);
}

static void on_connect_error(parley_sock *s, const char *message, const char *data, void *user)
{
    (void)s;
    tc *t = user;
    tlogf(&t->log, "connect_error %s %s", message, data ? data : "-");
}

static void hexsum(const parley_args *a, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < a->nbins && o + 40 < cap; i++) {
        uint32_t sum = 0;
        const uint8_t *p = a->bins[i].data;
        for (size_t k = 0; k < a->bins[i].len; k++) sum = sum * 31 + p[k];
        o += (size_t)snprintf(out + o, cap - o, " bin%zu=%zu/%08x", i, a->bins[i].len, sum);
    }
}

static void on_event(parley_sock *s, const char *event, const parley_args *a, int64_t ack_id,
                     void *user)
{
    tc *t = user;
    char bins[512];
    hexsum(a, bins, sizeof bins);
    tlogf(&t->log, "event %s %.*s%s%s", event, (int)a->json_len, a->json, bins,
          ack_id >= 0 ? " ack" : "");
    if (!strcmp(event, "please-ack") && ack_id >= 0)
        assert_int_equal(parley_sock_ack(s, ack_id, "[\"acked\",{\"_placeholder\":true,\"num\":0}]",
                                         &(parley_bin){"\x01\x02", 2}, 1),
                         0);
    if (t->free_in_event && !strcmp(event, "message-back")) {
        parley_client_free(t->c);
        t->c = NULL;
    }
}

static void on_any(parley_sock *s, const char *event, const parley_args *a, int64_t ack_id,
                   void *user)
{
    (void)s;
    (void)ack_id;
    tc *t = user;
    tlogf(&t->log, "any %s %.*s", event, (int)a->json_len, a->json);
}

static void on_ack(parley_sock *s, int err, const parley_args *a, void *user)
{
    (void)s;
    tc *t = user;
    char bins[512] = "";
    if (a) hexsum(a, bins, sizeof bins);
    tlogf(&t->log, "ackres %d %.*s%s", err, a ? (int)a->json_len : 0, a ? a->json : "", bins);
}

static void on_status(parley_sock *s, const char *id, int status, int err, const parley_args *args,
                      void *user)
{
    (void)s;
    tc *t = user;
    tlogf(&t->log, "status %d %s %d %.*s", status, id, err, args ? (int)args->json_len : 0,
          args ? args->json : "");
}

static void client_opts(parley_client_opts *o, tc *t, unsigned port, unsigned transports)
{
    static char url[64];
    parley_client_opts_init(o);
    snprintf(url, sizeof url, "http://127.0.0.1:%u", port);
    o->url = url;
    o->transports = transports;
    o->reconnection_delay_ms = 100;
    o->reconnection_delay_max_ms = 300;
    o->timeout_ms = 3000;
    o->on_event = on_client_event;
    o->user = t;
    /* Sockets and handlers first, then connect: an event cannot arrive
     * before its handler is there. */
    o->auto_connect = 0;
}

static parley_sock *make_sock_opts(tc *t, const char *nsp, const char *queue_path, bool late);

/* A socket made before the client connects: it connects with the client. */
static parley_sock *make_sock(tc *t, const char *nsp, const char *queue_path)
{
    return make_sock_opts(t, nsp, queue_path, false);
}

static parley_sock *make_sock_opts(tc *t, const char *nsp, const char *queue_path, bool late)
{
    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.auth = auth_cb;
    so.on_connect = on_connect;
    so.on_disconnect = on_disconnect;
    so.on_connect_error = on_connect_error;
    so.user = t;
    so.queue_path = queue_path;
    /* late (the client is connected already): handlers first, then
     * CONNECT (client.h, auto_connect), or the server's "auth" greeting
     * could arrive before the handlers exist (seen under ASan in CI). */
    so.auto_connect = !late;
    parley_sock *s = parley_client_socket(t->c, nsp, &so);
    assert_non_null(s);
    assert_true(parley_sock_on_any(s, on_any, t) > 0);
    assert_true(parley_sock_on(s, "auth", on_event, t) > 0);
    if (late) parley_sock_connect(s);
    return s;
}

static void tc_init(tc *t)
{
    memset(t, 0, sizeof *t);
    tlog_init(&t->log);
}

static void tc_done(tc *t)
{
    if (t->c) parley_client_free(t->c);
    t->c = NULL;
    tlog_free(&t->log);
}

static const struct {
    const char *name;
    unsigned transports;
    const char *final;
} modes[] = {
    {"polling", PARLEY_TRANSPORT_POLLING, "polling"},
    {"websocket", PARLEY_TRANSPORT_WEBSOCKET, "websocket"},
    {"default", PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET, "websocket"},
};

static const char *const json_cases[] = {
    "[\"a string\"]",
    "[\"\"]",
    "[0,42,-17,3.14159,-0.5,1e-7,9007199254740991,-9007199254740991]",
    "[true,false,null,{},[]]",
    "[{\"a\":1,\"b\":\"two\",\"c\":[3,4,{\"d\":null}],\"quote\\\"back\\\\slash\":"
    "\"ctl\\u0001\\n\\t\"}]",
    "[\"h\xc3\xa9llo "
    "w\xc3\xb6rld\",\"\xe4\xb8\xad\xe6\x96\x87\",\"\xf0\x9f\x98\x80\xf0\x9f\x8e\x89\","
    "\"\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7\",\"\xe2\x80\xa8\"]",
    "[]",
};

/* ---- tests ---- */

static void test_features(void **state)
{
    (void)state;
    th_server srv;
    start_server(&srv, false, 0);
    for (size_t m = 0; m < PARLEY_ARRAY_LEN(modes); m++) {
        tc t;
        tc_init(&t);
        parley_client_opts o;
        client_opts(&o, &t, srv.port, modes[m].transports);
        assert_int_equal(parley_client_new(&o, &t.c), 0);
        parley_sock *s = make_sock(&t, "/", NULL);
        assert_true(parley_sock_on(s, "message-back", on_event, &t) > 0);
        assert_true(parley_sock_on(s, "volatile-back", on_event, &t) > 0);
        assert_true(parley_sock_on(s, "please-ack", on_event, &t) > 0);
        assert_true(parley_sock_on(s, "server-ack-result", on_event, &t) > 0);
        assert_int_equal(parley_client_connect(t.c), 0);
        int at = 0;
        char line[8192];
        WAIT(&t.log, &at, "ev OPEN", 5000);
        WAIT(&t.log, &at, "connect 0 ", 5000);
        WAITL(&t.log, &at, "event auth ", 5000, line);
        assert_string_equal(line, "event auth [{}]");
        assert_int_equal(parley_sock_connected(s), 1);
        /* No recovery on the server: no offsets, the arguments as sent. */
        assert_int_equal(parley_sock_offsets(s), 0);
        char id[32];
        parley_sock_id(s, id);
        assert_int_equal(strlen(id), 20);
        /* JSON types and unicode, both ways. */
        for (size_t i = 0; i < PARLEY_ARRAY_LEN(json_cases); i++) {
            assert_int_equal(parley_sock_emit(s, "message", json_cases[i], NULL, 0), 0);
            WAITL(&t.log, &at, "event message-back ", 10000, line);
            char want[8192];
            json_val v;
            assert_int_equal(json_parse(json_cases[i], strlen(json_cases[i]), 32, &v, NULL), 0);
            pbuf cb = {0};
            json_compact(&cb, &v);
            snprintf(want, sizeof want, "event message-back %.*s", (int)cb.len, (char *)cb.ptr);
            pbuf_free(&cb);
            assert_string_equal(line, want);
        }
        /* Acks with arguments; the round trip is measured. */
        assert_int_equal(parley_sock_emit_ack(s, "message-with-ack", "[1,{\"x\":\"y\"}]", NULL, 0,
                                              2000, on_ack, &t),
                         0);
        WAITL(&t.log, &at, "ackres ", 10000, line);
        assert_string_equal(line, "ackres 0 [1,{\"x\":\"y\"}]");
        /* Binary, nested, several attachments, an empty one. */
        static uint8_t big[300000];
        for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 31 + 7);
        parley_bin bins[3] = {{"\x00\x01\x02\xff", 4}, {"", 0}, {big, sizeof big}};
        assert_int_equal(
            parley_sock_emit(s, "message",
                             "[{\"a\":[1,{\"_placeholder\":true,\"num\":0}]},\"x\","
                             "{\"_placeholder\":true,\"num\":1},{\"_placeholder\":true,\"num\":2}]",
                             bins, 3),
            0);
        WAITL(&t.log, &at, "event message-back ", 5000, line);
        parley_args want_args = {NULL, 0, bins, 3};
        char sums[512];
        hexsum(&want_args, sums, sizeof sums);
        char want[1024];
        snprintf(want, sizeof want,
                 "event message-back [{\"a\":[1,{\"_placeholder\":true,\"num\":0}]},\"x\","
                 "{\"_placeholder\":true,\"num\":1},{\"_placeholder\":true,\"num\":2}]%s",
                 sums);
        assert_string_equal(line, want);
        /* Binary acknowledgement. */
        assert_int_equal(parley_sock_emit_ack(s, "message-with-ack",
                                              "[{\"_placeholder\":true,\"num\":0}]", bins, 1, 2000,
                                              on_ack, &t),
                         0);
        WAITL(&t.log, &at, "ackres ", 10000, line);
        parley_args one = {NULL, 0, bins, 1};
        hexsum(&one, sums, sizeof sums);
        snprintf(want, sizeof want, "ackres 0 [{\"_placeholder\":true,\"num\":0}]%s", sums);
        assert_string_equal(line, want);
        /* The server asks for an ack (binary in ours). */
        assert_int_equal(parley_sock_emit(s, "server-ack", "[\"q\"]", NULL, 0), 0);
        WAITL(&t.log, &at, "event please-ack ", 10000, line);
        assert_string_equal(line, "event please-ack [\"q\"] ack");
        WAITL(&t.log, &at, "event server-ack-result ", 10000, line);
        assert_string_equal(line, "event server-ack-result [{\"ok\":true,\"args\":[\"acked\","
                                  "{\"_placeholder\":true,\"num\":0}]}] bin0=2/00000021");
        /* Volatile while connected goes through. */
        assert_int_equal(parley_sock_emit_volatile(s, "volatile", "[\"v\"]", NULL, 0), 0);
        WAITL(&t.log, &at, "event volatile-back ", 10000, line);
        assert_string_equal(line, "event volatile-back [\"v\"]");
        /* Ack timeout: nobody answers "ignored". */
        uint64_t t0 = ptime_ms();
        assert_int_equal(parley_sock_emit_ack(s, "ignored", "[]", NULL, 0, 200, on_ack, &t), 0);
        WAITL(&t.log, &at, "ackres ", 10000, line);
        assert_string_equal(line, "ackres -7 ");
        assert_true(ptime_ms() - t0 >= 190);
        /* Bad arguments. */
        assert_int_equal(parley_sock_emit(s, "connect", "[]", NULL, 0), PARLEY_EINVAL);
        assert_int_equal(parley_sock_emit(s, "disconnecting", NULL, NULL, 0), PARLEY_EINVAL);
        assert_int_equal(parley_sock_emit(s, "x", "{}", NULL, 0), PARLEY_EINVAL);
        assert_int_equal(parley_sock_emit(s, "x", "[1,", NULL, 0), PARLEY_EINVAL);
        assert_int_equal(parley_sock_emit(s, "", "[]", NULL, 0), PARLEY_EINVAL);
        assert_int_equal(parley_sock_emit(s, "x", "[{\"_placeholder\":true,\"num\":1}]", bins, 1),
                         PARLEY_EINVAL);
        assert_int_equal(parley_sock_emit(s, "bad\xff", "[]", NULL, 0), PARLEY_EINVAL);
        /* Namespaces on the same connection. */
        parley_sock *cs = make_sock_opts(&t, "/custom", NULL, true);
        assert_ptr_equal(parley_client_socket(t.c, "/custom", NULL), cs);
        WAITL(&t.log, &at, "any auth ", 10000, line);
        assert_string_equal(line, "any auth [{}]");
        /* Middleware: refused, then accepted with a fresh token. */
        parley_sock *ms = make_sock_opts(&t, "/middleware", NULL, true);
        WAITL(&t.log, &at, "connect_error ", 10000, line);
        assert_string_equal(line, "connect_error unauthorized {\"reason\":\"bad token\"}");
        assert_int_equal(parley_sock_connected(ms), 0);
        t.token = "ok";
        assert_int_equal(parley_sock_connect(ms), 0);
        WAITL(&t.log, &at, "any auth ", 10000, line);
        assert_true(strstr(line, "\"token\":\"ok\"") != NULL);
        /* The namespace socket leaves; the others stay. */
        assert_int_equal(parley_sock_disconnect(cs), 0);
        WAITL(&t.log, &at, "disconnect ", 10000, line);
        assert_string_equal(line, "disconnect io client disconnect");
        assert_int_equal(parley_sock_connected(s), 1);
        /* Server-side namespace disconnect: pending acks fail with ECLOSED. */
        assert_int_equal(parley_sock_emit_ack(s, "ignored", "[]", NULL, 0, 0, on_ack, &t), 0);
        assert_int_equal(parley_sock_emit(s, "disconnect-me", NULL, NULL, 0), 0);
        WAITL(&t.log, &at, "ackres ", 10000, line);
        assert_string_equal(line, "ackres -6 ");
        WAITL(&t.log, &at, "disconnect ", 10000, line);
        assert_string_equal(line, "disconnect io server disconnect");
        assert_int_equal(parley_sock_connected(s), 0);
        /* Not reconnected by itself; emits wait in the buffer. */
        assert_int_equal(parley_sock_emit(s, "message", "[\"buffered 1\"]", NULL, 0), 0);
        assert_int_equal(parley_sock_emit_volatile(s, "volatile", "[\"dropped\"]", NULL, 0), 0);
        assert_int_equal(parley_sock_emit(s, "message", "[\"buffered 2\"]", NULL, 0), 0);
        usleep(200000);
        assert_int_equal(tlog_count(&t.log, "event message-back [\"buffered"), 0);
        assert_int_equal(parley_sock_connect(s), 0);
        WAITL(&t.log, &at, "event message-back ", 10000, line);
        assert_string_equal(line, "event message-back [\"buffered 1\"]");
        WAITL(&t.log, &at, "event message-back ", 10000, line);
        assert_string_equal(line, "event message-back [\"buffered 2\"]");
        assert_int_equal(tlog_count(&t.log, "event volatile-back [\"dropped"), 0);
        /* The transport the session ended up on. */
        for (int k = 0;
             k < 300 && strcmp(parley_client_transport(t.c) ? parley_client_transport(t.c) : "",
                               modes[m].final);
             k++)
            usleep(10000);
        assert_string_equal(parley_client_transport(t.c), modes[m].final);
        if (!strcmp(modes[m].name, "default"))
            assert_true(tlog_count(&t.log, "ev UPGRADE websocket") == 1);
        /* Stats and counts. */
        parley_client_stats st;
        parley_client_get_stats(t.c, &st);
        assert_int_equal(st.connects, 1);
        assert_int_equal(st.reconnects, 0);
        assert_true(st.packets_in > 20 && st.packets_out > 20);
        assert_true(st.bytes_in > 300000 && st.bytes_out > 300000);
        assert_true(st.uptime_ms > 0 && st.total_uptime_ms >= st.uptime_ms);
        assert_true(st.last_rtt_ms < 2000);
        /* Client close: the sockets hear "io client disconnect". */
        assert_int_equal(parley_client_close(t.c), 0);
        WAIT(&t.log, &at, "ev CLOSE io client disconnect", 3000);
        assert_null(parley_client_transport(t.c));
        usleep(300000);
        assert_int_equal(tlog_count(&t.log, "ev RECONNECTING"), 0);
        parley_client_get_stats(t.c, &st);
        assert_int_equal(st.uptime_ms, 0);
        /* And connects again on request, with the sockets it had. */
        at = tlog_len(&t.log);
        assert_int_equal(parley_client_connect(t.c), 0);
        WAIT(&t.log, &at, "connect 0 ", 5000);
        tc_done(&t);
    }
    th_server_stop(&srv);
}

static void count_cb(const char *event, uint64_t in, uint64_t out, void *user)
{
    tc *t = user;
    tlogf(&t->log, "count %s %llu %llu", event, (unsigned long long)in, (unsigned long long)out);
}

/* The server goes away and comes back on the same port: emits buffered
 * meanwhile arrive once, in order; reconnect events and stats follow. */
static void test_restart(void **state)
{
    (void)state;
    for (size_t m = 0; m < PARLEY_ARRAY_LEN(modes); m++) {
        th_server srv;
        start_server(&srv, false, 0);
        unsigned port = srv.port;
        tc t;
        tc_init(&t);
        parley_client_opts o;
        client_opts(&o, &t, port, modes[m].transports);
        assert_int_equal(parley_client_new(&o, &t.c), 0);
        parley_sock *s = make_sock(&t, "/", NULL);
        assert_true(parley_sock_on(s, "message-back", on_event, &t) > 0);
        assert_int_equal(parley_client_connect(t.c), 0);
        int at = 0;
        char line[512];
        WAIT(&t.log, &at, "event auth", 5000);
        assert_int_equal(t.auth_calls, 1);
        th_server_stop(&srv);
        WAITL(&t.log, &at, "disconnect ", 10000, line);
        assert_true(!strcmp(line, "disconnect transport close") ||
                    !strcmp(line, "disconnect transport error"));
        WAIT(&t.log, &at, "ev RECONNECTING 1 ", 3000);
        for (int i = 0; i < 10; i++) {
            char a[32];
            snprintf(a, sizeof a, "[%d]", i);
            assert_int_equal(parley_sock_emit(s, "message", a, NULL, 0), 0);
        }
        WAIT(&t.log, &at, "ev RECONNECTING 2 ", 3000);
        start_server(&srv, false, port);
        WAIT(&t.log, &at, "ev RECONNECTED ", 5000);
        for (int i = 0; i < 10; i++) {
            char want[64];
            snprintf(want, sizeof want, "event message-back [%d]", i);
            WAITL(&t.log, &at, "event message-back", 10000, line);
            assert_string_equal(line, want);
        }
        usleep(200000);
        assert_int_equal(tlog_count(&t.log, "event message-back"), 10);
        assert_int_equal(t.auth_calls, 2); /* asked again on reconnection */
        parley_client_stats st;
        parley_client_get_stats(t.c, &st);
        assert_int_equal(st.connects, 2);
        assert_int_equal(st.reconnects, 1);
        assert_true(st.errors >= 1);
        parley_sock_event_counts(s, count_cb, &t);
        at = 0;
        WAITL(&t.log, &at, "count message ", 100, line);
        assert_string_equal(line, "count message 0 10");
        at = 0;
        WAITL(&t.log, &at, "count message-back ", 100, line);
        assert_string_equal(line, "count message-back 10 0");
        tc_done(&t);
        th_server_stop(&srv);
    }
}

/* Connection-state recovery through a proxy that cuts the link. */
static void test_recovery(void **state)
{
    (void)state;
    th_server srv;
    start_server(&srv, true, 0);
    for (size_t m = 0; m < PARLEY_ARRAY_LEN(modes); m++) {
        th_proxy px;
        assert_int_equal(proxy_start(&px, srv.port), 0);
        tc t, u;
        tc_init(&t);
        tc_init(&u);
        parley_client_opts o;
        client_opts(&o, &t, px.port, modes[m].transports);
        assert_int_equal(parley_client_new(&o, &t.c), 0);
        parley_sock *s = make_sock(&t, "/", NULL);
        assert_true(parley_sock_on(s, "pushed", on_event, &t) > 0);
        client_opts(&o, &u, srv.port, PARLEY_TRANSPORT_WEBSOCKET);
        assert_int_equal(parley_client_new(&o, &u.c), 0);
        parley_sock *us = make_sock(&u, "/", NULL);
        assert_int_equal(parley_client_connect(t.c), 0);
        assert_int_equal(parley_client_connect(u.c), 0);
        int at = 0, uat = 0;
        char line[512];
        WAIT(&t.log, &at, "connect 0 ", 5000);
        WAITL(&t.log, &at, "event auth ", 5000, line);
        /* The offset is handed to the application as the last argument,
         * and parley_sock_offsets says so. */
        assert_non_null(strstr(line, "[{},\""));
        assert_int_equal(parley_sock_offsets(s), 1);
        WAIT(&u.log, &uat, "event auth", 5000);
        char id[32];
        parley_sock_id(s, id);
        if (m == 2) WAIT(&t.log, &at, "ev UPGRADE", 3000);
        atomic_fetch_add(&px.drop, 1);
        WAITL(&t.log, &at, "disconnect ", 10000, line);
        assert_true(!strcmp(line, "disconnect transport close") ||
                    !strcmp(line, "disconnect transport error"));
        /* While it is away, an event for it is stored. */
        atomic_store(&px.refuse, true);
        char args[128];
        snprintf(args, sizeof args, "[\"%s\"]", id);
        usleep(100000);
        assert_int_equal(parley_sock_emit_ack(us, "to-socket", args, NULL, 0, 2000, on_ack, &u), 0);
        WAIT(&u.log, &uat, "ackres 0", 3000);
        atomic_store(&px.refuse, false);
        WAIT(&t.log, &at, "connect 1 ", 5000);
        char id2[32];
        parley_sock_id(s, id2);
        assert_string_equal(id, id2);
        assert_int_equal(parley_sock_recovered(s), 1);
        at = 0;
        WAITL(&t.log, &at, "event pushed ", 10000, line);
        assert_non_null(strstr(line, "[\"while away\",\""));
        /* The replayed event came before the connect callback. */
        int at2 = 0;
        int i_push = tlog_wait(&t.log, &at2, "event pushed", 0, NULL, 0);
        at2 = 0;
        int i_conn = tlog_wait(&t.log, &at2, "connect 1", 0, NULL, 0);
        assert_true(i_push < i_conn);
        tc_done(&t);
        tc_done(&u);
        proxy_stop(&px);
    }
    th_server_stop(&srv);
}

/* ---- fake servers ---- */

typedef struct fscript {
    atomic_int handshakes;
    atomic_int polls;
    const char *bad; /* the poll answer after the CONNECT reply */
} fscript;

static bool f401(fake_srv *s, int fd, const fake_req *r, void *user)
{
    (void)r;
    fscript *f = user;
    atomic_fetch_add(&f->handshakes, 1);
    fake_sendf(s, fd, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\nUnauthorized");
    return true;
}

static const char open_pkt[] = "0{\"sid\":\"fakesid\",\"upgrades\":[],\"pingInterval\":5000,"
                               "\"pingTimeout\":5000,\"maxPayload\":100000}";

static bool fbad(fake_srv *s, int fd, const fake_req *r, void *user)
{
    fscript *f = user;
    if (!strstr(r->target, "sid=")) {
        atomic_fetch_add(&f->handshakes, 1);
        fake_ok(s, fd, open_pkt, strlen(open_pkt));
        return true;
    }
    if (!strcmp(r->method, "POST")) {
        fake_ok(s, fd, "ok", 2);
        return true;
    }
    int n = atomic_fetch_add(&f->polls, 1);
    (void)n;
    /* Each session: first poll CONNECT reply, second the bad packet. */
    static _Thread_local int per_conn = 0;
    per_conn++;
    if (per_conn % 2 == 1) {
        usleep(50000);
        const char *c = "40{\"sid\":\"fakesock\"}";
        fake_ok(s, fd, c, strlen(c));
    } else {
        fake_ok(s, fd, f->bad, strlen(f->bad));
    }
    return true;
}

static void test_fake_servers(void **state)
{
    (void)state;
    /* 401: one attempt, RECONNECT_FAILED, no retry storm. */
    for (size_t m = 0; m < 2; m++) {
        fscript f = {0};
        fake_srv fs;
        assert_int_equal(fake_start(&fs, f401, &f, CHOP_WHOLE), 0);
        tc t;
        tc_init(&t);
        parley_client_opts o;
        client_opts(&o, &t, fs.port, m ? PARLEY_TRANSPORT_WEBSOCKET : PARLEY_TRANSPORT_POLLING);
        assert_int_equal(parley_client_new(&o, &t.c), 0);
        make_sock(&t, "/", NULL);
        assert_int_equal(parley_client_connect(t.c), 0);
        int at = 0;
        char line[256];
        WAITL(&t.log, &at, "ev ERROR", 10000, line);
        assert_string_equal(line, "ev ERROR -11 401");
        WAITL(&t.log, &at, "ev RECONNECT_FAILED", 10000, line);
        assert_string_equal(line, "ev RECONNECT_FAILED 401");
        usleep(800000);
        assert_int_equal(atomic_load(&f.handshakes), 1);
        assert_int_equal(tlog_count(&t.log, "ev RECONNECTING"), 0);
        /* Until asked again. */
        assert_int_equal(parley_client_connect(t.c), 0);
        WAIT(&t.log, &at, "ev RECONNECT_FAILED", 3000);
        usleep(300000);
        assert_int_equal(atomic_load(&f.handshakes), 2);
        tc_done(&t);
        fake_stop(&fs);
    }
    /* Bad input: an error event, a clean reconnect, never a crash. */
    static const char *const bad[] = {
        "42[",          /* invalid JSON */
        "bAAEC",        /* binary nobody announced (bad base64 too) */
        "bAAEC/w==",    /* binary nobody announced */
        "4511-[\"x\"]", /* too many attachments */
        "451-[\"x\",{\"_placeholder\":true,\"num\":5}]\x1e"
        "bAA==", /* placeholder out of range */
        "452-[\"x\"]\x1e"
        "bAA==\x1e"
        "42[\"y\"]",       /* text where an attachment belongs */
        "42[\"connect\"]", /* reserved name */
        "47",              /* unknown packet type */
        "43[\"ev\"]\x1e"
        "41x", /* junk after the namespace */
        "5",   /* an Engine.IO upgrade packet from the server */
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        fscript f = {0};
        f.bad = bad[i];
        fake_srv fs;
        assert_int_equal(fake_start(&fs, fbad, &f, CHOP_RANDOM), 0);
        tc t;
        tc_init(&t);
        parley_client_opts o;
        client_opts(&o, &t, fs.port, PARLEY_TRANSPORT_POLLING);
        assert_int_equal(parley_client_new(&o, &t.c), 0);
        make_sock(&t, "/", NULL);
        assert_int_equal(parley_client_connect(t.c), 0);
        int at = 0;
        char line[256];
        WAIT(&t.log, &at, "connect 0 fakesock", 3000);
        WAITL(&t.log, &at, "ev ", 10000, line);
        if (strcmp(line, "ev ERROR -3 0") != 0) fail_msg("bad input %zu: %s", i, line);
        WAITL(&t.log, &at, "ev CLOSE ", 10000, line);
        assert_string_equal(line, "ev CLOSE parse error");
        WAITL(&t.log, &at, "disconnect ", 10000, line);
        assert_string_equal(line, "disconnect parse error");
        WAIT(&t.log, &at, "ev RECONNECTED", 3000);
        WAIT(&t.log, &at, "connect 0 fakesock", 3000);
        assert_true(atomic_load(&f.handshakes) >= 2);
        tc_done(&t);
        fake_stop(&fs);
    }
}

/* ---- reliable sends ---- */

static void srv_counts(int *distinct, int *total, int *dups)
{
    pthread_mutex_lock(&g_srv.mu);
    *distinct = g_srv.nids;
    *total = g_srv.total;
    *dups = 0;
    for (int i = 0; i < g_srv.nids; i++) *dups += g_srv.counts[i] - 1;
    pthread_mutex_unlock(&g_srv.mu);
}

static void reliable_send(parley_sock *s, tc *t, int i, int prio)
{
    char id[37], args[128];
    assert_int_equal(parley_new_id(id), 0);
    snprintf(args, sizeof args, "[\"%s\",%d,%d]", id, prio, i);
    assert_int_equal(parley_sock_send(s, "reliable", args, prio, 0, id, on_status, t), 0);
}

static void test_reliable(void **state)
{
    (void)state;
    th_server srv;
    start_server(&srv, false, 0);
    for (size_t m = 0; m < PARLEY_ARRAY_LEN(modes); m++) {
        srv_reset();
        th_proxy px;
        assert_int_equal(proxy_start(&px, srv.port), 0);
        atomic_store(&px.refuse, true);
        tc t;
        tc_init(&t);
        parley_client_opts o;
        client_opts(&o, &t, px.port, modes[m].transports);
        assert_int_equal(parley_client_new(&o, &t.c), 0);
        parley_sock *s = make_sock(&t, "/", NULL);
        assert_int_equal(parley_client_connect(t.c), 0);
        /* Queued while the server is unreachable: priority order later. */
        const int N1 = 40;
        for (int i = 0; i < N1; i++) reliable_send(s, &t, i, i % 4);
        assert_int_equal(parley_sock_queued(s), N1);
        assert_int_equal(tlog_count(&t.log, "status 1 "), N1);
        atomic_store(&px.refuse, false);
        int at = 0;
        WAIT(&t.log, &at, "connect 0", 8000);
        for (int k = 0; k < 300 && tlog_count(&t.log, "status 3 ") < N1; k++) usleep(10000);
        assert_int_equal(tlog_count(&t.log, "status 3 "), N1);
        pthread_mutex_lock(&g_srv.mu);
        for (int i = 1; i < g_srv.nids; i++) assert_true(g_srv.prio[i - 1] >= g_srv.prio[i]);
        pthread_mutex_unlock(&g_srv.mu);
        /* Mid-stream cuts while sending more. */
        const int N2 = 160;
        for (int i = 0; i < N2; i++) {
            reliable_send(s, &t, N1 + i, i % 4);
            if (i % 40 == 20) atomic_fetch_add(&px.drop, 1);
            if (i % 10 == 0) usleep(5000);
        }
        for (int k = 0; k < 1000 && parley_sock_queued(s) > 0; k++) usleep(10000);
        assert_int_equal(parley_sock_queued(s), 0);
        int distinct, total, dups;
        srv_counts(&distinct, &total, &dups);
        assert_int_equal(distinct, N1 + N2);
        assert_int_equal(tlog_count(&t.log, "status 3 "), N1 + N2); /* acked once each */
        assert_int_equal(tlog_count(&t.log, "status 4 "), 0);
        assert_true(tlog_count(&t.log, "ev RECONNECTED") >= 1);
        print_message("reliable %s: sent %d, received %d, duplicates on the wire %d, "
                      "reconnections %d\n",
                      modes[m].name, N1 + N2, total, dups, tlog_count(&t.log, "ev RECONNECTED"));
        /* Expiry: a message with a TTL while unreachable fails. */
        atomic_store(&px.refuse, true);
        atomic_fetch_add(&px.drop, 1);
        at = tlog_len(&t.log);
        WAIT(&t.log, &at, "disconnect", 3000);
        char id[37];
        assert_int_equal(parley_new_id(id), 0);
        assert_int_equal(parley_sock_send(s, "reliable", "[\"x\",0]", PARLEY_PRIORITY_LOW, 150, id,
                                          on_status, &t),
                         0);
        char want[128];
        snprintf(want, sizeof want, "status 4 %s -7", id);
        WAIT(&t.log, &at, want, 3000);
        assert_int_equal(parley_sock_queued(s), 0);
        assert_int_equal(parley_sock_send(s, "reliable", "[]", 9, 0, NULL, NULL, NULL),
                         PARLEY_EINVAL);
        assert_int_equal(parley_sock_send(s, "reliable", "[]", 1, 0, "short", NULL, NULL),
                         PARLEY_EINVAL);
        tc_done(&t);
        proxy_stop(&px);
    }
    th_server_stop(&srv);
}

/* send_retry: ["wait", ms] answers keep the send (a wait, then a resend,
 * alone first); any other answer, and a wait of 0 or less, is final. */
static int retry_cb(parley_sock *s, const char *id, const parley_args *a, void *user)
{
    (void)s;
    tc *t = user;
    char first[16];
    json_val arr, e;
    int64_t ms = 0;
    if (first_string(a, first, sizeof first, &arr) && !strcmp(first, "wait")) {
        json_iter it;
        json_iter_init(&it, &arr);
        json_array_next(&it, &e);
        if (json_array_next(&it, &e)) json_int(&e, &ms);
    }
    tlogf(&t->log, "retry %s %lld", id, (long long)ms);
    return (int)ms;
}

/* Sends a "limited" message refused `refusals` times with ["wait", wait]. */
static void limited_send(parley_sock *s, tc *t, char id[37], int refusals, int wait,
                         uint32_t ttl_ms)
{
    char args[128];
    assert_int_equal(parley_new_id(id), 0);
    snprintf(args, sizeof args, "[\"%s\",%d,%d]", id, refusals, wait);
    assert_int_equal(
        parley_sock_send(s, "limited", args, PARLEY_PRIORITY_NORMAL, ttl_ms, id, on_status, t), 0);
}

/* The status codes one send went through, e.g. "1213" (QUEUED, SENT,
 * QUEUED again, ACKED). */
static void status_trail(tlog *l, const char *id, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n && o + 2 < cap; i++) {
        int st;
        char sid[40];
        if (sscanf(l->lines[i], "status %d %39s", &st, sid) == 2 && !strcmp(sid, id))
            out[o++] = (char)('0' + st), out[o] = 0;
    }
    pthread_mutex_unlock(&l->mu);
}

static void test_send_retry(void **state)
{
    (void)state;
    lim_reset();
    th_server srv;
    start_server(&srv, false, 0);
    th_proxy px;
    assert_int_equal(proxy_start(&px, srv.port), 0);
    tc t;
    tc_init(&t);
    parley_client_opts o;
    client_opts(&o, &t, px.port, PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET);
    assert_int_equal(parley_client_new(&o, &t.c), 0);
    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.auth = auth_cb;
    so.on_connect = on_connect;
    so.on_disconnect = on_disconnect;
    so.send_retry = retry_cb;
    so.user = &t;
    parley_sock *s = parley_client_socket(t.c, "/", &so);
    assert_non_null(s);
    assert_int_equal(parley_client_connect(t.c), 0);
    int at = 0;
    WAIT(&t.log, &at, "connect 0", 5000);
    char want[128];

    /* Kept twice, then accepted; B and C, sent during the first wait,
     * go out only after A's accepted resend (the resend after a wait
     * goes alone, and A's second attempt is refused too). */
    char a[37], b[37], c[37];
    limited_send(s, &t, a, 2, 300, 0);
    snprintf(want, sizeof want, "retry %s 300", a);
    WAIT(&t.log, &at, want, 3000);
    limited_send(s, &t, b, 0, 0, 0);
    limited_send(s, &t, c, 0, 0, 0);
    snprintf(want, sizeof want, "status 3 %s", c);
    WAIT(&t.log, &at, want, 5000);
    uint64_t ta[4];
    assert_int_equal(lim_attempts(a, ta, 4), 3);
    assert_true(ta[1] - ta[0] >= 300);
    assert_true(ta[2] - ta[1] >= 300);
    assert_int_equal(lim_attempts(b, NULL, 0), 1);
    assert_int_equal(lim_attempts(c, NULL, 0), 1);
    assert_true(lim_pos(a, 2) < lim_pos(b, 0));
    assert_true(lim_pos(b, 0) < lim_pos(c, 0));
    char trail[32];
    status_trail(&t.log, a, trail, sizeof trail);
    assert_string_equal(trail, "1212123");
    snprintf(want, sizeof want, "status 1 %s 0 [\"wait\",300]", a);
    assert_int_equal(tlog_count(&t.log, want), 2);
    status_trail(&t.log, b, trail, sizeof trail);
    assert_string_equal(trail, "123");
    parley_client_stats st;
    parley_client_get_stats(t.c, &st);
    assert_int_equal(st.send_retries, 2);

    /* Accepted as final: a wait of 0 (or less) from the callback. */
    char d[37], e[37];
    limited_send(s, &t, d, 1, 0, 0);
    limited_send(s, &t, e, 1, -5, 0);
    snprintf(want, sizeof want, "status 3 %s 0 [\"wait\",0]", d);
    WAIT(&t.log, &at, want, 3000);
    snprintf(want, sizeof want, "status 3 %s 0 [\"wait\",-5]", e);
    WAIT(&t.log, &at, want, 3000);
    assert_int_equal(lim_attempts(d, NULL, 0), 1);
    assert_int_equal(lim_attempts(e, NULL, 0), 1);

    /* A wait spans a lost connection: the replay after the reconnection
     * waits for its end. */
    char f[37];
    limited_send(s, &t, f, 1, 600, 0);
    snprintf(want, sizeof want, "retry %s 600", f);
    WAIT(&t.log, &at, want, 3000);
    atomic_fetch_add(&px.drop, 1);
    WAIT(&t.log, &at, "connect 0", 3000);
    uint64_t reconnected = ptime_ms();
    snprintf(want, sizeof want, "status 3 %s", f);
    WAIT(&t.log, &at, want, 5000);
    uint64_t tf[2];
    assert_int_equal(lim_attempts(f, tf, 2), 2);
    assert_true(reconnected < tf[0] + 600); /* the wait was still on */
    assert_true(tf[1] - tf[0] >= 600);

    /* The time to live runs during a wait: it expires unsent. */
    char g[37];
    limited_send(s, &t, g, 1, 800, 200);
    snprintf(want, sizeof want, "status 4 %s -7", g);
    WAIT(&t.log, &at, want, 3000);
    status_trail(&t.log, g, trail, sizeof trail);
    assert_string_equal(trail, "1214");
    assert_int_equal(lim_attempts(g, NULL, 0), 1);
    assert_int_equal(parley_sock_queued(s), 0);
    parley_client_get_stats(t.c, &st);
    assert_int_equal(st.send_retries, 4);
    /* Nothing sent after the expiry, and the queue works after the wait. */
    char h[37];
    limited_send(s, &t, h, 0, 0, 0);
    snprintf(want, sizeof want, "status 3 %s", h);
    WAIT(&t.log, &at, want, 3000);
    usleep(200 * 1000);
    assert_int_equal(lim_attempts(g, NULL, 0), 1);
    tc_done(&t);
    proxy_stop(&px);
    th_server_stop(&srv);
}

/* A process killed with SIGKILL restarts with the same queue file:
 * nothing lost, nothing duplicated. */
static void test_reliable_crash(void **state)
{
    (void)state;
    srv_reset();
    th_server srv;
    start_server(&srv, false, 0);
    th_proxy px;
    assert_int_equal(proxy_start(&px, srv.port), 0);
    char path[] = "/tmp/parley-sio-queue-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    const int N = 400;
    atomic_store(&px.refuse, true);
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        tc t;
        tc_init(&t);
        parley_client_opts o;
        client_opts(&o, &t, px.port, PARLEY_TRANSPORT_WEBSOCKET);
        if (parley_client_new(&o, &t.c) != 0) _exit(2);
        parley_sock *s = make_sock(&t, "/", path);
        parley_client_connect(t.c);
        for (int i = 0; i < N; i++) {
            char id[37], args[128];
            parley_new_id(id);
            snprintf(args, sizeof args, "[\"%s\",%d,%d]", id, i % 4, i);
            if (parley_sock_send(s, "reliable", args, i % 4, 0, id, NULL, NULL) != 0) _exit(3);
        }
        /* Everything is in the queue file: tell the parent. */
        if (write(ready[1], "r", 1) != 1) _exit(4);
        for (;;) pause();
    }
    /* Once the child has queued everything, let some go out before the
     * kill. */
    close(ready[1]);
    char r;
    assert_int_equal(read(ready[0], &r, 1), 1);
    close(ready[0]);
    atomic_store(&px.refuse, false);
    for (int k = 0; k < 50000; k++) {
        int d, tot, dup;
        srv_counts(&d, &tot, &dup);
        if (d >= 1) break;
        usleep(100);
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st));
    int d1, t1, dup1;
    srv_counts(&d1, &t1, &dup1);
    /* The restarted process sends what was not acknowledged. */
    tc t;
    tc_init(&t);
    parley_client_opts o;
    client_opts(&o, &t, px.port, PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET);
    assert_int_equal(parley_client_new(&o, &t.c), 0);
    parley_sock *s = make_sock(&t, "/", path);
    assert_int_equal(parley_client_connect(t.c), 0);
    for (int k = 0; k < 3000 && parley_sock_queued(s) > 0; k++) usleep(10000);
    assert_int_equal(parley_sock_queued(s), 0);
    int distinct, total, dups;
    srv_counts(&distinct, &total, &dups);
    print_message("crash: %d sent, %d received before the kill, %d distinct after the restart, "
                  "%d duplicates on the wire\n",
                  N, d1, distinct, dups);
    assert_int_equal(distinct, N);
    tc_done(&t);
    unlink(path);
    char wal[64];
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(wal);
    snprintf(wal, sizeof wal, "%s-shm", path);
    unlink(wal);
    proxy_stop(&px);
    th_server_stop(&srv);
}

/* ---- threads, freeing, an application loop ---- */

typedef struct thr_arg {
    parley_sock *s;
    int k;
} thr_arg;

static void *emitter(void *arg)
{
    thr_arg *a = arg;
    for (int i = 0; i < 50; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "[\"t%d\",%d]", a->k, i);
        assert_int_equal(parley_sock_emit(a->s, "message", buf, NULL, 0), 0);
    }
    return NULL;
}

static void test_threads_and_free(void **state)
{
    (void)state;
    th_server srv;
    start_server(&srv, false, 0);
    tc t;
    tc_init(&t);
    parley_client_opts o;
    client_opts(&o, &t, srv.port, PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET);
    assert_int_equal(parley_client_new(&o, &t.c), 0);
    parley_sock *s = make_sock(&t, "/", NULL);
    assert_true(parley_sock_on(s, "message-back", on_event, &t) > 0);
    assert_int_equal(parley_client_connect(t.c), 0);
    int at = 0;
    WAIT(&t.log, &at, "event auth", 5000);
    pthread_t th[4];
    thr_arg args[4];
    for (int k = 0; k < 4; k++) {
        args[k] = (thr_arg){s, k};
        pthread_create(&th[k], NULL, emitter, &args[k]);
    }
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < 300 && tlog_count(&t.log, "event message-back") < 200; k++) usleep(10000);
    assert_int_equal(tlog_count(&t.log, "event message-back"), 200);
    /* Per-thread order is kept. */
    for (int k = 0; k < 4; k++) {
        int from = 0;
        for (int i = 0; i < 50; i++) {
            char want[64];
            snprintf(want, sizeof want, "event message-back [\"t%d\",%d]", k, i);
            WAIT(&t.log, &from, want, 10);
        }
    }
    /* once and off. */
    tc u;
    tc_init(&u);
    int h1 = parley_sock_once(s, "message-back", on_event, &u);
    int h2 = parley_sock_on(s, "message-back", on_event, &u);
    assert_true(h1 > 0 && h2 > 0 && h1 != h2);
    assert_int_equal(parley_sock_emit(s, "message", "[1]", NULL, 0), 0);
    assert_int_equal(parley_sock_emit(s, "message", "[2]", NULL, 0), 0);
    int uat = 0;
    WAIT(&u.log, &uat, "event message-back [2]", 3000);
    assert_int_equal(tlog_count(&u.log, "event message-back [1]"), 2);
    assert_int_equal(tlog_count(&u.log, "event message-back [2]"), 1);
    assert_int_equal(parley_sock_off(s, h2), 0);
    assert_int_equal(parley_sock_off(s, h2), PARLEY_EINVAL);
    assert_int_equal(parley_sock_off(s, h1), PARLEY_EINVAL);
    assert_int_equal(parley_sock_emit(s, "message", "[3]", NULL, 0), 0);
    WAIT(&t.log, &at, "event message-back [3]", 3000);
    usleep(50000);
    assert_int_equal(tlog_count(&u.log, "event message-back [3]"), 0);
    tlog_free(&u.log);
    /* Freed from inside its own callback. */
    t.free_in_event = true;
    assert_int_equal(parley_sock_emit(s, "message", "[\"bye\"]", NULL, 0), 0);
    for (int k = 0; k < 300 && t.c; k++) usleep(10000);
    assert_null(t.c);
    usleep(200000); /* the reaper thread joins the loop */
    tc_done(&t);

    /* On the application's loop, driven by this thread. */
    tc_init(&t);
    parley_loop *loop = parley_loop_new();
    client_opts(&o, &t, srv.port, PARLEY_TRANSPORT_WEBSOCKET);
    o.loop = loop;
    assert_int_equal(parley_client_new(&o, &t.c), 0);
    s = make_sock(&t, "/", NULL);
    assert_int_equal(parley_client_connect(t.c), 0);
    at = 0;
    for (int k = 0; k < 300 && tlog_count(&t.log, "event auth") == 0; k++) th_run_for(loop, 10);
    assert_int_equal(tlog_count(&t.log, "event auth"), 1);
    parley_client_free(t.c);
    t.c = NULL;
    th_run_for(loop, 50);
    parley_loop_free(loop);
    tc_done(&t);

    /* Errors from the constructor. */
    parley_client *c;
    parley_client_opts_init(&o);
    assert_int_equal(parley_client_new(&o, &c), PARLEY_EINVAL);
    o.url = "ftp://x";
    assert_int_equal(parley_client_new(&o, &c), PARLEY_EURL);
    o.url = "https://127.0.0.1:1";
    o.ca_file = "/nonexistent/ca.pem";
    assert_int_equal(parley_client_new(&o, &c), PARLEY_ETLS);
    th_server_stop(&srv);
}

/* ---- TLS: https:// and wss:// ---- */

static void test_tls(void **state)
{
    (void)state;
    char dir[] = "/tmp/parley-sio-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cert[128], key[128];
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    make_cert(cert, key);
    parley_server_opts so;
    parley_server_opts_init(&so);
    so.ping_interval_ms = 300;
    so.ping_timeout_ms = 200;
    so.tls_cert = cert;
    so.tls_key = key;
    th_server srv;
    assert_int_equal(th_server_start(&srv, &so, 0, setup_handlers, NULL, 0), 0);
    static const char *const schemes[] = {"https", "wss", "https"};
    for (size_t m = 0; m < PARLEY_ARRAY_LEN(modes); m++) {
        tc t;
        tc_init(&t);
        parley_client_opts o;
        client_opts(&o, &t, srv.port, modes[m].transports);
        char url[64];
        snprintf(url, sizeof url, "%s://localhost:%u", schemes[m], srv.port);
        o.url = url;
        o.ca_file = cert;
        assert_int_equal(parley_client_new(&o, &t.c), 0);
        parley_sock *s = make_sock(&t, "/", NULL);
        assert_true(parley_sock_on(s, "message-back", on_event, &t) > 0);
        assert_int_equal(parley_client_connect(t.c), 0);
        int at = 0;
        char line[256];
        WAIT(&t.log, &at, "event auth", 5000);
        assert_int_equal(parley_sock_emit(s, "message", "[\"over tls\"]", NULL, 0), 0);
        WAITL(&t.log, &at, "event message-back", 10000, line);
        assert_string_equal(line, "event message-back [\"over tls\"]");
        for (int k = 0; k < 300 && strcmp(parley_client_transport(t.c), modes[m].final); k++)
            usleep(10000);
        assert_string_equal(parley_client_transport(t.c), modes[m].final);
        tc_done(&t);
    }
    /* Without the CA the certificate is refused. */
    tc t;
    tc_init(&t);
    parley_client_opts o;
    client_opts(&o, &t, srv.port, PARLEY_TRANSPORT_WEBSOCKET);
    char url[64];
    snprintf(url, sizeof url, "wss://localhost:%u", srv.port);
    o.url = url;
    o.reconnection = 0;
    assert_int_equal(parley_client_new(&o, &t.c), 0);
    make_sock(&t, "/", NULL);
    assert_int_equal(parley_client_connect(t.c), 0);
    int at = 0;
    char line[256];
    WAITL(&t.log, &at, "ev ERROR", 5000, line);
    assert_string_equal(line, "ev ERROR -10 0");
    tc_done(&t);
    th_server_stop(&srv);
    unlink(cert);
    unlink(key);
    rmdir(dir);
}

int main(void)
{
    if (getenv("PARLEY_TEST_LOG")) parley_log_set(PARLEY_LOG_DEBUG, NULL, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (getenv("PARLEY_TEST_ONLY")) cmocka_set_test_filter(getenv("PARLEY_TEST_ONLY"));
    pthread_mutex_init(&g_srv.mu, NULL);
    pthread_mutex_init(&g_lim.mu, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features),         cmocka_unit_test(test_restart),
        cmocka_unit_test(test_recovery),         cmocka_unit_test(test_fake_servers),
        cmocka_unit_test(test_reliable),         cmocka_unit_test(test_reliable_crash),
        cmocka_unit_test(test_threads_and_free), cmocka_unit_test(test_tls),
        cmocka_unit_test(test_send_retry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
