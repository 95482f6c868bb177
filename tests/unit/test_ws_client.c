/* The resilient WebSocket client against the library's own server in
 * process: events, reconnection and backoff, non-retryable answers, the
 * heartbeat, statistics, the outbound queue (priorities, limits, TTL,
 * replay, persistence, ack_on_write), API errors, and calls from other
 * threads with a client loop of its own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"
#include "net/net.h"
#include "parley/ws.h"
#include "server/httpd.h"
#include "ws/wsconn.h"

#define MAX_REC 512

/* ---- server fixture: /echo (echo or record only) and /auth (refuses) ---- */

typedef struct srv {
    parley_loop *loop;
    phttpd *httpd;
    unsigned port;
    wsconn_opts wopts;
    pmd_config pmd;
    phttpd_ws_endpoint ep, ep_auth;
    bool echo;          /* echo messages back (else only record them) */
    bool pause_on_open; /* stop reading: pings are never answered */
    int auth_status;    /* /auth answers the upgrade with this */
    int auth_upgrades;  /* upgrade requests /auth saw */
    int opens;
    wsconn *sessions[16];
    int nsessions;
    char *rx[MAX_REC]; /* messages received, in order (NUL-terminated copies) */
    int nrx;
    bool shutdown_done;
} srv;

static void srv_message(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    srv *s = w->user;
    if (s->nrx < MAX_REC) s->rx[s->nrx++] = pmemdup_str(data, len);
    if (s->echo) wsconn_send(w, opcode, data, len);
}

static void srv_closed(wsconn *w, uint16_t code, const uint8_t *reason, size_t len, int err)
{
    (void)code;
    (void)reason;
    (void)len;
    (void)err;
    srv *s = w->user;
    for (int i = 0; i < s->nsessions; i++) {
        if (s->sessions[i] == w) {
            s->sessions[i] = s->sessions[--s->nsessions];
            break;
        }
    }
}

static void srv_open(wsconn *w, void *user)
{
    srv *s = user;
    s->opens++;
    if (s->nsessions < 16) s->sessions[s->nsessions++] = w;
    if (s->pause_on_open) pconn_pause(w->conn);
}

static int auth_upgrade(phttpd_req *req, const ws_upgrade *up, const char **protocol, void *user)
{
    (void)req;
    (void)up;
    (void)protocol;
    srv *s = user;
    s->auth_upgrades++;
    return s->auth_status;
}

static const wsconn_cbs srv_cbs = {.on_message = srv_message, .on_closed = srv_closed};

/* Listens on port (0 = any) on loop. */
static void srv_start(srv *s, parley_loop *loop, unsigned port)
{
    s->loop = loop;
    s->shutdown_done = false;
    s->nsessions = 0;
    phttpd_opts o;
    phttpd_opts_init(&o);
    assert_int_equal(phttpd_new(loop, &o, &s->httpd), 0);
    wsconn_opts_init(&s->wopts);
    pmd_config_init(&s->pmd);
    s->wopts.cbs = &srv_cbs;
    s->ep =
        (phttpd_ws_endpoint){.ws_opts = &s->wopts, .pmd = &s->pmd, .on_open = srv_open, .user = s};
    s->ep_auth = (phttpd_ws_endpoint){.ws_opts = &s->wopts, .on_upgrade = auth_upgrade, .user = s};
    assert_int_equal(phttpd_route_ws(s->httpd, "/echo", &s->ep), 0);
    assert_int_equal(phttpd_route_ws(s->httpd, "/auth", &s->ep_auth), 0);
    assert_int_equal(phttpd_listen(s->httpd, "127.0.0.1", port, NULL, &s->port), 0);
    assert_true(s->port > 0);
}

static void on_shutdown(phttpd *h, void *user)
{
    (void)h;
    ((srv *)user)->shutdown_done = true;
}

static void spin(parley_loop *l, uint64_t ms);

static void srv_stop(srv *s)
{
    phttpd_shutdown(s->httpd, on_shutdown, s);
    for (int i = 0; i < 2000 && !s->shutdown_done; i++) spin(s->loop, 1);
    assert_true(s->shutdown_done);
    phttpd_free(s->httpd);
    s->httpd = NULL;
}

static void srv_clear(srv *s)
{
    for (int i = 0; i < s->nrx; i++) free(s->rx[i]);
    s->nrx = 0;
}

/* Drops every session without a closing handshake (as a crash would). */
static void srv_drop_all(srv *s)
{
    for (int i = 0; i < s->nsessions; i++) pconn_close(s->sessions[i]->conn, false, 0);
}

/* Runs the loop for about ms. */
static void spin(parley_loop *l, uint64_t ms)
{
    uint64_t end = ptime_ms() + ms;
    do {
        uv_run(l->uv, UV_RUN_NOWAIT);
        usleep(200);
    } while (ptime_ms() < end);
}

#define RUN_UNTIL(loop, cond, ms)                                                                  \
    do {                                                                                           \
        uint64_t end_ = ptime_ms() + (ms);                                                         \
        while (!(cond) && ptime_ms() < end_) {                                                     \
            uv_run((loop)->uv, UV_RUN_NOWAIT);                                                     \
            if (!(cond)) usleep(200);                                                              \
        }                                                                                          \
    } while (0)

/* A port nothing listens on (bound, read, released). */
static unsigned dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- client fixture: records every event and status ---- */

typedef struct rec {
    parley_ws_event_type type;
    unsigned attempt;
    uint32_t delay_ms;
    char reason[32];
    int err, http_status, code, will_retry;
    char data[64]; /* MESSAGE text, cut */
    uint64_t at;   /* ptime_ms() */
} rec;

typedef struct st_rec {
    char id[37];
    int status, err;
} st_rec;

typedef struct cl {
    parley_ws *ws;
    rec ev[MAX_REC];
    int nev;
    st_rec st[MAX_REC * 2];
    int nst;
    int opens, closes;
    bool auto_ack;                 /* an echoed text starting with a queued id acks it */
    double rnd;                    /* < 0: the CSPRNG */
    parley_ws_event_type free_on;  /* free the handle inside this event */
    parley_ws_event_type close_on; /* parley_ws_close inside this event */
    int close_rc;
    int free_on_status; /* ... or inside this status report */
} cl;

static int count_ev(const cl *c, parley_ws_event_type t)
{
    int n = 0;
    for (int i = 0; i < c->nev; i++) n += c->ev[i].type == t;
    return n;
}

static const rec *last_ev(const cl *c, parley_ws_event_type t)
{
    for (int i = c->nev - 1; i >= 0; i--)
        if (c->ev[i].type == t) return &c->ev[i];
    return NULL;
}

static int count_st(const cl *c, int status)
{
    int n = 0;
    for (int i = 0; i < c->nst; i++) n += c->st[i].status == status;
    return n;
}

static void cl_event(parley_ws *ws, const parley_ws_event *ev, void *user)
{
    cl *c = user;
    assert_ptr_equal(ws, c->ws);
    if (c->nev < MAX_REC) {
        rec *r = &c->ev[c->nev++];
        memset(r, 0, sizeof *r);
        r->type = ev->type;
        r->attempt = ev->attempt;
        r->delay_ms = ev->delay_ms;
        if (ev->reason) snprintf(r->reason, sizeof r->reason, "%s", ev->reason);
        r->err = ev->err;
        r->http_status = ev->http_status;
        r->code = ev->code;
        r->will_retry = ev->will_retry;
        r->at = ptime_ms();
        if (ev->type == PARLEY_WS_EV_MESSAGE)
            snprintf(r->data, sizeof r->data, "%.*s", (int)PARLEY_MIN(ev->len, 63),
                     (const char *)ev->data);
    }
    if (ev->type == PARLEY_WS_EV_MESSAGE && c->auto_ack && ev->len >= 36) {
        char id[37];
        memcpy(id, ev->data, 36);
        id[36] = 0;
        parley_ws_ack(ws, id);
    }
    if (c->close_on && ev->type == c->close_on) c->close_rc = parley_ws_close(ws, 0, NULL);
    if (c->free_on && ev->type == c->free_on) {
        parley_ws_free(ws);
        c->ws = NULL;
    }
}

static void cl_status(parley_ws *ws, const char *id, parley_ws_send_status status, int err,
                      void *user)
{
    cl *c = user;
    assert_ptr_equal(ws, c->ws);
    if (c->nst < MAX_REC * 2) {
        st_rec *r = &c->st[c->nst++];
        snprintf(r->id, sizeof r->id, "%s", id);
        r->status = (int)status;
        r->err = err;
    }
    if (c->free_on_status && (int)status == c->free_on_status) {
        parley_ws_free(ws);
        c->ws = NULL;
    }
}

static void cl_open(parley_ws *ws, const char *protocol, void *user)
{
    (void)ws;
    (void)protocol;
    ((cl *)user)->opens++;
}

static void cl_close(parley_ws *ws, int code, const char *reason, size_t len, int err, void *user)
{
    (void)ws;
    (void)code;
    (void)reason;
    (void)len;
    (void)err;
    ((cl *)user)->closes++;
}

static double cl_random(void *user)
{
    return ((cl *)user)->rnd;
}

static void cl_opts(parley_ws_opts *o, cl *c, const char *url)
{
    parley_ws_opts_init(o);
    o->url = url;
    o->on_event = cl_event;
    o->on_send_status = cl_status;
    o->on_open = cl_open;
    o->on_close = cl_close;
    o->user = c;
    o->reconnect_delay_ms = 10;
    o->reconnect_delay_max_ms = 80;
    if (c->rnd >= 0) o->reconnect_random = cl_random;
}

static void cl_new(cl *c, parley_loop *loop, parley_ws_opts *o)
{
    assert_int_equal(parley_ws_new(loop, o, &c->ws), 0);
}

static void make_id(char out[37], int n)
{
    snprintf(out, 37, "id-%033d", n);
}

/* Queues text `id` with id `id` (the server echoes the id back). */
static void push(cl *c, int n, int prio, uint32_t ttl)
{
    char id[37];
    make_id(id, n);
    assert_int_equal(parley_ws_send_queued_id(c->ws, PARLEY_WS_TEXT, id, 36, prio, ttl, id), 0);
}

static int rx_index(const srv *s, int n, int from)
{
    char id[37];
    make_id(id, n);
    for (int i = from; i < s->nrx; i++)
        if (!strcmp(s->rx[i], id)) return i;
    return -1;
}

/* ---- tests ---- */

static void test_options(void **state)
{
    (void)state;
    parley_ws_opts o;
    parley_ws_opts_init(&o);
    assert_int_equal(o.reconnect, 0);
    assert_int_equal(o.reconnect_delay_ms, 1000);
    assert_int_equal(o.reconnect_delay_max_ms, 30000);
    assert_int_equal(o.reconnect_attempts, 0);
    assert_int_equal(o.queue_max_count, 1000);
    assert_int_equal(o.queue_max_bytes, 8u << 20);
    assert_null(o.queue_path);
    assert_int_equal(o.ack_on_write, 0);
    assert_int_equal(o.ping_interval_ms, 0);
    assert_int_equal(o.ping_timeout_ms, 10000);

    parley_loop *loop = parley_loop_new();
    parley_ws *ws = NULL;
    o.url = "ws://127.0.0.1:1/x";
    o.reconnect = 1;
    o.reconnect_delay_ms = 0;
    assert_int_equal(parley_ws_new(loop, &o, &ws), PARLEY_EINVAL);
    o.reconnect_delay_ms = 500;
    o.reconnect_delay_max_ms = 499;
    assert_int_equal(parley_ws_new(loop, &o, &ws), PARLEY_EINVAL);
    o.reconnect_delay_max_ms = 500;
    o.queue_max_count = 0;
    assert_int_equal(parley_ws_new(loop, &o, &ws), PARLEY_EINVAL);
    o.queue_max_count = 1;
    o.queue_max_bytes = 0;
    assert_int_equal(parley_ws_new(loop, &o, &ws), PARLEY_EINVAL);
    o.queue_max_bytes = 1;
    o.queue_path = "/nonexistent-dir/q.db";
    assert_int_equal(parley_ws_new(loop, &o, &ws), PARLEY_EIO);
    assert_null(ws);
    o.queue_path = NULL;
    assert_int_equal(parley_ws_new(loop, &o, &ws), 0);
    parley_ws_free(ws);
    parley_loop_free(loop);
}

/* Connect, message, a dropped link, the reconnection, a clean close from
 * the server, and the application's close: every event in order. */
static void test_events_in_order(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = true};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.rnd = 0.5};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.reconnect = 1;
    cl_new(&c, loop, &o);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    /* Nothing is reported inside the call. */
    assert_int_equal(c.nev, 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_CONNECTED) == 1, 5000);
    assert_int_equal(parley_ws_send(c.ws, PARLEY_WS_TEXT, "hello", 5), 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_MESSAGE) == 1, 5000);

    srv_drop_all(&s);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_CONNECTED) == 2, 5000);
    assert_int_equal(parley_ws_send(c.ws, PARLEY_WS_TEXT, "again", 5), 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_MESSAGE) == 2, 5000);

    /* A closing handshake started by the server is retried too. */
    assert_int_equal(s.nsessions, 1);
    wsconn_close(s.sessions[0], 1000, "restart");
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_CONNECTED) == 3, 5000);

    assert_int_equal(parley_ws_close(c.ws, 1000, "bye"), 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_DISCONNECTED) == 3, 5000);
    spin(loop, 100); /* nothing may follow */

    static const parley_ws_event_type want[] = {
        PARLEY_WS_EV_CONNECTING,   PARLEY_WS_EV_CONNECTED,    PARLEY_WS_EV_MESSAGE,
        PARLEY_WS_EV_DISCONNECTED, PARLEY_WS_EV_RECONNECTING, PARLEY_WS_EV_CONNECTING,
        PARLEY_WS_EV_CONNECTED,    PARLEY_WS_EV_MESSAGE,      PARLEY_WS_EV_DISCONNECTED,
        PARLEY_WS_EV_RECONNECTING, PARLEY_WS_EV_CONNECTING,   PARLEY_WS_EV_CONNECTED,
        PARLEY_WS_EV_DISCONNECTED,
    };
    assert_int_equal(c.nev, (int)PARLEY_ARRAY_LEN(want));
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(want); i++) assert_int_equal(c.ev[i].type, want[i]);
    /* Details. */
    assert_int_equal(c.ev[0].attempt, 0);
    assert_string_equal(c.ev[2].data, "hello");
    assert_string_equal(c.ev[3].reason, "connection lost");
    assert_int_equal(c.ev[3].code, 1006);
    assert_int_equal(c.ev[3].will_retry, 1);
    assert_int_equal(c.ev[4].attempt, 1);
    assert_int_equal(c.ev[4].delay_ms, 5); /* 0.5 * 10 */
    assert_int_equal(c.ev[5].attempt, 1);
    assert_int_equal(c.ev[6].attempt, 1);
    assert_true(c.ev[5].at - c.ev[4].at >= 4);
    assert_string_equal(c.ev[7].data, "again");
    assert_string_equal(c.ev[8].reason, "server closed");
    assert_int_equal(c.ev[8].code, 1000);
    assert_int_equal(c.ev[8].err, 0);
    /* The count started again after the connection opened. */
    assert_int_equal(c.ev[9].attempt, 1);
    assert_int_equal(c.ev[9].delay_ms, 5);
    assert_string_equal(c.ev[12].reason, "closed");
    assert_int_equal(c.ev[12].will_retry, 0);
    assert_int_equal(c.ev[12].code, 1000);
    /* The legacy callbacks ran for each connection. */
    assert_int_equal(c.opens, 3);
    assert_int_equal(c.closes, 3);

    parley_ws_stats st;
    parley_ws_get_stats(c.ws, &st);
    assert_int_equal(st.connections, 3);
    assert_int_equal(st.reconnects, 2);
    assert_int_equal(st.attempts, 3);
    assert_int_equal(st.errors, 1); /* the dropped link; clean closes are not errors */
    assert_int_equal(st.messages_out, 2);
    assert_int_equal(st.messages_in, 2);
    assert_int_equal(st.bytes_out, 10);
    assert_int_equal(st.bytes_in, 10);
    assert_int_equal(st.uptime_ms, 0);

    /* Closing again has nothing to close. */
    assert_int_equal(parley_ws_close(c.ws, 1000, NULL), PARLEY_ECLOSED);
    parley_ws_free(c.ws);
    srv_stop(&s);
    srv_clear(&s);
    parley_loop_free(loop);
}

/* Full jitter with a fixed random number: d_n = r * min(base * 2^(n-1),
 * max); the waits between RECONNECTING and CONNECTING match; the attempts
 * stop after reconnect_attempts; parley_ws_connect starts over. */
static void test_backoff_and_max_attempts(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", dead_port());
    cl c = {.rnd = 0.999};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.reconnect = 1;
    o.reconnect_attempts = 6;
    cl_new(&c, loop, &o);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_RECONNECT_FAILED) == 1, 5000);
    spin(loop, 200); /* no more attempts */
    assert_int_equal(count_ev(&c, PARLEY_WS_EV_CONNECTING), 7);
    assert_int_equal(count_ev(&c, PARLEY_WS_EV_ERROR), 7);
    assert_int_equal(count_ev(&c, PARLEY_WS_EV_RECONNECTING), 6);
    assert_int_equal(count_ev(&c, PARLEY_WS_EV_RECONNECT_FAILED), 1);
    static const uint32_t want[] = {9, 19, 39, 79, 79, 79};
    int k = 0;
    for (int i = 0; i < c.nev; i++) {
        const rec *r = &c.ev[i];
        if (r->type == PARLEY_WS_EV_ERROR) {
            assert_string_equal(r->reason, "connect failed");
            assert_int_equal(r->err, PARLEY_ECONNREFUSED);
            assert_int_equal(r->will_retry, k < 6);
        }
        if (r->type != PARLEY_WS_EV_RECONNECTING) continue;
        assert_int_equal(r->attempt, k + 1);
        assert_int_equal(r->delay_ms, want[k]);
        assert_int_equal(c.ev[i + 1].type, PARLEY_WS_EV_CONNECTING);
        assert_int_equal(c.ev[i + 1].attempt, k + 1);
        assert_true(c.ev[i + 1].at - r->at + 1 >= r->delay_ms);
        k++;
    }
    assert_int_equal(c.ev[c.nev - 1].type, PARLEY_WS_EV_RECONNECT_FAILED);
    assert_int_equal(c.ev[c.nev - 1].http_status, 0);
    parley_ws_stats st;
    parley_ws_get_stats(c.ws, &st);
    assert_int_equal(st.attempts, 7);
    assert_int_equal(st.errors, 7);
    assert_int_equal(st.connections, 0);
    assert_int_equal(c.closes, 7);

    /* Connecting again starts a new round from attempt 0. */
    c.nev = 0;
    assert_int_equal(parley_ws_connect(c.ws), 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_RECONNECT_FAILED) == 1, 5000);
    assert_int_equal(count_ev(&c, PARLEY_WS_EV_CONNECTING), 7);
    assert_int_equal(c.ev[0].attempt, 0);
    assert_int_equal(c.ev[2].type, PARLEY_WS_EV_RECONNECTING);
    assert_int_equal(c.ev[2].delay_ms, 9);
    parley_ws_free(c.ws);

    /* The CSPRNG: every delay within [0, min(10 * 2^(n-1), 80)], and they
     * differ (jittered). */
    cl d = {.rnd = -1};
    cl_opts(&o, &d, url);
    o.reconnect = 1;
    o.reconnect_attempts = 12;
    cl_new(&d, loop, &o);
    assert_int_equal(parley_ws_connect(d.ws), 0);
    RUN_UNTIL(loop, count_ev(&d, PARLEY_WS_EV_RECONNECT_FAILED) == 1, 10000);
    assert_int_equal(count_ev(&d, PARLEY_WS_EV_RECONNECTING), 12);
    uint32_t lo = UINT32_MAX, hi = 0, sum_late = 0;
    k = 0;
    for (int i = 0; i < d.nev; i++) {
        const rec *r = &d.ev[i];
        if (r->type != PARLEY_WS_EV_RECONNECTING) continue;
        uint32_t cap = k < 3 ? 10u << k : 80;
        assert_true(r->delay_ms <= cap);
        lo = PARLEY_MIN(lo, r->delay_ms);
        hi = PARLEY_MAX(hi, r->delay_ms);
        if (k >= 3) sum_late += r->delay_ms;
        k++;
    }
    assert_true(hi > lo);
    /* Nine draws from [0, 80]: a mean below 5 means no growth. */
    assert_true(sum_late > 45);
    parley_ws_free(d.ws);

    /* parley_ws_connect during a delay starts at once, from attempt 0. */
    cl e = {.rnd = 0.999};
    cl_opts(&o, &e, url);
    o.reconnect = 1;
    o.reconnect_delay_ms = 1000;
    o.reconnect_delay_max_ms = 1000;
    cl_new(&e, loop, &o);
    assert_int_equal(parley_ws_connect(e.ws), 0);
    RUN_UNTIL(loop, count_ev(&e, PARLEY_WS_EV_RECONNECTING) == 1, 5000);
    assert_int_equal(last_ev(&e, PARLEY_WS_EV_RECONNECTING)->delay_ms, 999);
    uint64_t t0 = ptime_ms();
    assert_int_equal(parley_ws_connect(e.ws), 0);
    RUN_UNTIL(loop, count_ev(&e, PARLEY_WS_EV_CONNECTING) == 2, 5000);
    assert_true(ptime_ms() - t0 < 500);
    assert_int_equal(last_ev(&e, PARLEY_WS_EV_CONNECTING)->attempt, 0);
    parley_ws_free(e.ws);

    /* parley_ws_close inside the ERROR event: no reconnection, no
     * RECONNECT_FAILED (the application decided). */
    cl f = {.rnd = 0.5, .close_on = PARLEY_WS_EV_ERROR, .close_rc = 1};
    cl_opts(&o, &f, url);
    o.reconnect = 1;
    cl_new(&f, loop, &o);
    assert_int_equal(parley_ws_connect(f.ws), 0);
    RUN_UNTIL(loop, count_ev(&f, PARLEY_WS_EV_ERROR) == 1, 5000);
    spin(loop, 100);
    assert_int_equal(f.close_rc, 0);
    assert_int_equal(f.nev, 2);
    assert_int_equal(f.ev[1].will_retry, 1); /* decided before the callback */
    assert_int_equal(count_ev(&f, PARLEY_WS_EV_CONNECTING), 1);
    parley_ws_free(f.ws);
    parley_loop_free(loop);
}

/* 401, 403 and 404 are answered once: no more attempts; 503 is retried. */
static void test_non_retryable_status(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = true};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/auth", s.port);
    static const int codes[] = {401, 403, 404};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(codes); i++) {
        s.auth_status = codes[i];
        s.auth_upgrades = 0;
        cl c = {.rnd = 0.5};
        parley_ws_opts o;
        cl_opts(&o, &c, url);
        o.reconnect = 1;
        cl_new(&c, loop, &o);
        assert_int_equal(parley_ws_connect(c.ws), 0);
        RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_RECONNECT_FAILED) == 1, 5000);
        spin(loop, 300); /* 30 base delays */
        assert_int_equal(s.auth_upgrades, 1);
        assert_int_equal(c.nev, 3);
        assert_int_equal(c.ev[0].type, PARLEY_WS_EV_CONNECTING);
        assert_int_equal(c.ev[1].type, PARLEY_WS_EV_ERROR);
        assert_string_equal(c.ev[1].reason, "handshake refused");
        assert_int_equal(c.ev[1].err, PARLEY_EHANDSHAKE);
        assert_int_equal(c.ev[1].http_status, codes[i]);
        assert_int_equal(c.ev[1].will_retry, 0);
        assert_int_equal(c.ev[2].type, PARLEY_WS_EV_RECONNECT_FAILED);
        assert_int_equal(c.ev[2].http_status, codes[i]);
        assert_int_equal(parley_ws_http_status(c.ws), codes[i]);
        /* Only the application starts again. */
        assert_int_equal(parley_ws_connect(c.ws), 0);
        RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_RECONNECT_FAILED) == 2, 5000);
        spin(loop, 50);
        assert_int_equal(s.auth_upgrades, 2);
        parley_ws_free(c.ws);
    }
    s.auth_status = 503;
    s.auth_upgrades = 0;
    cl c = {.rnd = 0.5};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.reconnect = 1;
    cl_new(&c, loop, &o);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    spin(loop, 300);
    assert_true(s.auth_upgrades >= 4);
    assert_int_equal(count_ev(&c, PARLEY_WS_EV_RECONNECT_FAILED), 0);
    assert_int_equal(last_ev(&c, PARLEY_WS_EV_ERROR)->http_status, 503);
    /* Closing during the delay stops it without a callback. */
    int n = c.nev;
    int tries = s.auth_upgrades;
    if (last_ev(&c, PARLEY_WS_EV_RECONNECTING) != &c.ev[c.nev - 1]) {
        RUN_UNTIL(loop, c.ev[c.nev - 1].type == PARLEY_WS_EV_RECONNECTING, 2000);
        n = c.nev;
        tries = s.auth_upgrades;
    }
    assert_int_equal(parley_ws_close(c.ws, 0, NULL), 0);
    spin(loop, 200);
    assert_int_equal(c.nev, n);
    assert_int_equal(s.auth_upgrades, tries);
    parley_ws_free(c.ws);
    srv_stop(&s);
    parley_loop_free(loop);
}

/* Pings are answered: the round trip is measured and the link stays. */
static void test_heartbeat_rtt(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = true};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.rnd = 0.5};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.ping_interval_ms = 30;
    o.ping_timeout_ms = 100;
    cl_new(&c, loop, &o);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_CONNECTED) == 1, 5000);
    parley_ws_stats st;
    parley_ws_get_stats(c.ws, &st);
    assert_int_equal(st.last_rtt_us, 0);
    spin(loop, 400);
    parley_ws_get_stats(c.ws, &st);
    assert_true(st.last_rtt_us > 0);
    assert_true(st.last_rtt_us < 100000);
    assert_true(st.uptime_ms >= 400);
    assert_true(st.total_uptime_ms >= st.uptime_ms);
    assert_int_equal(count_ev(&c, PARLEY_WS_EV_DISCONNECTED), 0);
    parley_ws_free(c.ws);
    srv_stop(&s);
    parley_loop_free(loop);
}

/* A peer that stops reading never answers: detected within interval +
 * timeout (plus a little); input keeps the link alive meanwhile. */
static void test_heartbeat_dead_peer(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = true, .pause_on_open = true};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.rnd = 0.5};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.ping_interval_ms = 100;
    o.ping_timeout_ms = 150;
    cl_new(&c, loop, &o);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_CONNECTED) == 1, 5000);
    uint64_t t0 = ptime_ms();
    RUN_UNTIL(loop, count_ev(&c, PARLEY_WS_EV_DISCONNECTED) == 1, 5000);
    uint64_t took = ptime_ms() - t0;
    const rec *d = last_ev(&c, PARLEY_WS_EV_DISCONNECTED);
    assert_non_null(d);
    assert_string_equal(d->reason, "ping timeout");
    assert_int_equal(d->err, PARLEY_ETIMEDOUT);
    assert_int_equal(d->code, 1006);
    assert_true(took >= 240);
    assert_true(took <= 250 + 200);
    parley_ws_free(c.ws);

    /* The server sends every 50 ms but never reads (so never pongs): the
     * input counts as life; once it stops, the timeout runs out. */
    cl e = {.rnd = 0.5};
    cl_opts(&o, &e, url);
    o.ping_interval_ms = 50;
    o.ping_timeout_ms = 150;
    cl_new(&e, loop, &o);
    assert_int_equal(parley_ws_connect(e.ws), 0);
    /* The first session does not read, so it cannot notice its end. */
    srv_drop_all(&s);
    RUN_UNTIL(loop, s.nsessions == 0, 1000);
    RUN_UNTIL(loop, count_ev(&e, PARLEY_WS_EV_CONNECTED) == 1, 5000);
    RUN_UNTIL(loop, s.nsessions == 1, 1000);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(s.nsessions, 1);
        assert_int_equal(wsconn_send(s.sessions[0], WS_OP_TEXT, "tick", 4), 0);
        spin(loop, 50);
    }
    assert_int_equal(count_ev(&e, PARLEY_WS_EV_DISCONNECTED), 0);
    assert_int_equal(count_ev(&e, PARLEY_WS_EV_MESSAGE), 12);
    t0 = ptime_ms();
    RUN_UNTIL(loop, count_ev(&e, PARLEY_WS_EV_DISCONNECTED) == 1, 5000);
    took = ptime_ms() - t0;
    assert_string_equal(last_ev(&e, PARLEY_WS_EV_DISCONNECTED)->reason, "ping timeout");
    assert_true(took <= 200 + 200);
    parley_ws_free(e.ws);
    srv_drop_all(&s);
    srv_stop(&s);
    parley_loop_free(loop);
}

/* Queued while offline: sent in priority order (FIFO within one) once
 * connected, acknowledged by the echo; unacknowledged ones are sent
 * again after a drop, in the same order, with newer urgent ones first. */
static void test_queue_order_and_replay(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = false};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.rnd = 0.5, .auto_ack = true};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.reconnect = 1;
    cl_new(&c, loop, &o);
    enum {
        L = PARLEY_WS_PRIORITY_LOW,
        N = PARLEY_WS_PRIORITY_NORMAL,
        H = PARLEY_WS_PRIORITY_HIGH,
        U = PARLEY_WS_PRIORITY_URGENT
    };
    static const int prio[] = {L, N, U, H, N, L, U, H, N};
    for (int i = 0; i < 9; i++) push(&c, i, prio[i], 0);
    assert_int_equal(parley_ws_queued(c.ws), 9);
    spin(loop, 20);
    assert_int_equal(c.nst, 0); /* nothing happens offline */

    assert_int_equal(parley_ws_connect(c.ws), 0);
    RUN_UNTIL(loop, s.nrx == 9, 5000);
    static const int order[] = {2, 6, 3, 7, 1, 4, 8, 0, 5};
    for (int i = 0; i < 9; i++) assert_int_equal(rx_index(&s, order[i], 0), i);
    assert_int_equal(count_st(&c, PARLEY_WS_SEND_SENT), 9);
    assert_int_equal(parley_ws_queued(c.ws), 9); /* no acknowledgement yet */

    /* The link drops: everything sent is queued again... */
    srv_drop_all(&s);
    RUN_UNTIL(loop, count_st(&c, PARLEY_WS_SEND_QUEUED) == 9, 5000);
    /* ... and replayed after the reconnection, behind a new urgent one. */
    srv_clear(&s);
    s.echo = true;
    push(&c, 9, U, 0);
    RUN_UNTIL(loop, count_st(&c, PARLEY_WS_SEND_ACKED) == 10, 5000);
    assert_int_equal(s.nrx, 10);
    static const int order2[] = {2, 6, 9, 3, 7, 1, 4, 8, 0, 5};
    for (int i = 0; i < 10; i++) assert_int_equal(rx_index(&s, order2[i], 0), i);
    assert_int_equal(parley_ws_queued(c.ws), 0);
    assert_int_equal(count_st(&c, PARLEY_WS_SEND_SENT), 19);
    /* Each message was acknowledged exactly once. */
    for (int i = 0; i < 10; i++) {
        char id[37];
        make_id(id, i);
        int acks = 0;
        for (int k = 0; k < c.nst; k++)
            acks += c.st[k].status == PARLEY_WS_SEND_ACKED && !strcmp(c.st[k].id, id);
        assert_int_equal(acks, 1);
    }
    /* A second confirmation is harmless. */
    char id0[37];
    make_id(id0, 0);
    assert_int_equal(parley_ws_ack(c.ws, id0), PARLEY_EINVAL);

    /* While open, a push goes out from the loop, not inside the call. */
    int sent = count_st(&c, PARLEY_WS_SEND_SENT);
    char gen[37] = "";
    assert_int_equal(parley_ws_send_queued(c.ws, PARLEY_WS_BINARY, "\x00\x01", 2,
                                           PARLEY_WS_PRIORITY_NORMAL, 0, gen),
                     0);
    assert_int_equal(strlen(gen), 36);
    assert_int_equal(gen[14], '4'); /* UUID v4 */
    assert_int_equal(count_st(&c, PARLEY_WS_SEND_SENT), sent);
    RUN_UNTIL(loop, count_st(&c, PARLEY_WS_SEND_SENT) == sent + 1, 5000);
    assert_string_equal(c.st[c.nst - 1].id, gen);
    assert_int_equal(parley_ws_ack(c.ws, gen), 0);
    assert_int_equal(parley_ws_queued(c.ws), 0);

    parley_ws_stats st;
    parley_ws_get_stats(c.ws, &st);
    assert_int_equal(st.messages_out, 20);
    assert_int_equal(st.bytes_out, 19 * 36 + 2);
    assert_int_equal(st.queued, 0);
    parley_ws_free(c.ws);
    srv_stop(&s);
    srv_clear(&s);
    parley_loop_free(loop);
}

static void test_queue_limits(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    cl c = {.rnd = 0.5};
    parley_ws_opts o;
    cl_opts(&o, &c, "ws://127.0.0.1:1/x");
    o.queue_max_count = 3;
    cl_new(&c, loop, &o);
    char id[37];
    for (int i = 0; i < 3; i++) push(&c, i, PARLEY_WS_PRIORITY_NORMAL, 0);
    make_id(id, 3);
    assert_int_equal(
        parley_ws_send_queued_id(c.ws, PARLEY_WS_TEXT, "x", 1, PARLEY_WS_PRIORITY_URGENT, 0, id),
        PARLEY_EFULL);
    assert_int_equal(parley_ws_queued(c.ws), 3);
    parley_ws_free(c.ws);

    cl d = {.rnd = 0.5};
    cl_opts(&o, &d, "ws://127.0.0.1:1/x");
    o.queue_max_count = 100;
    o.queue_max_bytes = 40;
    cl_new(&d, loop, &o);
    char buf[40];
    memset(buf, 'a', sizeof buf);
    assert_int_equal(parley_ws_send_queued(d.ws, PARLEY_WS_TEXT, buf, 39, 1, 0, id), 0);
    /* 39 + 1 = 40: full. */
    assert_int_equal(parley_ws_send_queued(d.ws, PARLEY_WS_BINARY, "", 0, 3, 0, NULL),
                     PARLEY_EFULL);
    assert_int_equal(parley_ws_queued(d.ws), 1);
    /* Acknowledged messages make room. */
    assert_int_equal(parley_ws_ack(d.ws, id), 0);
    assert_int_equal(parley_ws_queued(d.ws), 0);
    assert_int_equal(parley_ws_send_queued(d.ws, PARLEY_WS_BINARY, buf, 39, 3, 0, NULL), 0);
    /* The ACKED report comes from the loop. */
    assert_int_equal(d.nst, 0);
    spin(loop, 5);
    assert_int_equal(d.nst, 1);
    assert_int_equal(d.st[0].status, PARLEY_WS_SEND_ACKED);
    assert_string_equal(d.st[0].id, id);
    parley_ws_free(d.ws);
    parley_loop_free(loop);
}

/* Expired messages are reported failed and never sent: waiting ones and
 * sent-but-unacknowledged ones (not resent after a reconnection). */
static void test_queue_ttl(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = false};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.rnd = 0.5, .auto_ack = true};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.reconnect = 1;
    cl_new(&c, loop, &o);
    push(&c, 0, PARLEY_WS_PRIORITY_URGENT, 50);
    push(&c, 1, PARLEY_WS_PRIORITY_NORMAL, 0);
    push(&c, 2, PARLEY_WS_PRIORITY_HIGH, 60000);
    RUN_UNTIL(loop, c.nst == 1, 2000);
    assert_int_equal(c.nst, 1);
    assert_int_equal(c.st[0].status, PARLEY_WS_SEND_FAILED);
    assert_int_equal(c.st[0].err, PARLEY_ETIMEDOUT);
    char id[37];
    make_id(id, 0);
    assert_string_equal(c.st[0].id, id);
    assert_int_equal(parley_ws_queued(c.ws), 2);

    assert_int_equal(parley_ws_connect(c.ws), 0);
    RUN_UNTIL(loop, s.nrx == 2, 5000);
    assert_int_equal(rx_index(&s, 2, 0), 0);
    assert_int_equal(rx_index(&s, 1, 0), 1);
    assert_int_equal(rx_index(&s, 0, 0), -1);

    /* Sent, never acknowledged, expires while offline: not sent again. */
    push(&c, 3, PARLEY_WS_PRIORITY_NORMAL, 150);
    RUN_UNTIL(loop, s.nrx == 3, 5000);
    assert_int_equal(rx_index(&s, 3, 0), 2);
    srv_stop(&s); /* closes with 1001; the client retries meanwhile */
    RUN_UNTIL(loop, count_st(&c, PARLEY_WS_SEND_FAILED) == 2, 2000);
    make_id(id, 3);
    assert_string_equal(c.st[c.nst - 1].id, id);
    assert_int_equal(c.st[c.nst - 1].err, PARLEY_ETIMEDOUT);
    srv_clear(&s);
    s.echo = true;
    srv_start(&s, loop, s.port);
    RUN_UNTIL(loop, count_st(&c, PARLEY_WS_SEND_ACKED) == 2, 5000);
    assert_int_equal(s.nrx, 2);
    assert_int_equal(rx_index(&s, 3, 0), -1);
    assert_int_equal(parley_ws_queued(c.ws), 0);
    parley_ws_free(c.ws);
    srv_stop(&s);
    srv_clear(&s);
    parley_loop_free(loop);
}

/* The queue survives the client: a new client on the same file sends
 * what the first had not seen acknowledged, in order, with the same ids. */
static void test_queue_persistence(void **state)
{
    (void)state;
    char dir[] = "/tmp/ws-client-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/q.db", dir);
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = false};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    parley_ws_opts o;

    cl a = {.rnd = 0.5};
    cl_opts(&o, &a, url);
    o.queue_path = path;
    cl_new(&a, loop, &o);
    /* Two go out (and stay unacknowledged), then three wait offline. */
    assert_int_equal(parley_ws_connect(a.ws), 0);
    RUN_UNTIL(loop, a.opens == 1, 5000);
    push(&a, 0, PARLEY_WS_PRIORITY_LOW, 0);
    push(&a, 1, PARLEY_WS_PRIORITY_NORMAL, 0);
    RUN_UNTIL(loop, s.nrx == 2, 5000);
    assert_int_equal(parley_ws_close(a.ws, 1000, NULL), 0);
    RUN_UNTIL(loop, a.closes == 1, 5000);
    push(&a, 2, PARLEY_WS_PRIORITY_LOW, 0);
    push(&a, 3, PARLEY_WS_PRIORITY_URGENT, 0);
    push(&a, 4, PARLEY_WS_PRIORITY_NORMAL, 0);
    assert_int_equal(parley_ws_queued(a.ws), 5);
    parley_ws_free(a.ws);

    /* The file is in use while a client has it open. */
    cl b = {.rnd = 0.5, .auto_ack = true};
    cl_opts(&o, &b, url);
    o.queue_path = path;
    cl_new(&b, loop, &o);
    parley_ws *other = NULL;
    assert_int_equal(parley_ws_new(loop, &o, &other), PARLEY_EIO);
    assert_int_equal(parley_ws_queued(b.ws), 5);
    srv_clear(&s);
    s.echo = true;
    assert_int_equal(parley_ws_connect(b.ws), 0);
    RUN_UNTIL(loop, count_st(&b, PARLEY_WS_SEND_ACKED) == 5, 5000);
    static const int order[] = {3, 1, 4, 0, 2};
    assert_int_equal(s.nrx, 5);
    for (int i = 0; i < 5; i++) assert_int_equal(rx_index(&s, order[i], 0), i);
    parley_ws_free(b.ws);

    cl c = {.rnd = 0.5};
    cl_opts(&o, &c, url);
    o.queue_path = path;
    cl_new(&c, loop, &o);
    assert_int_equal(parley_ws_queued(c.ws), 0);
    parley_ws_free(c.ws);

    srv_stop(&s);
    srv_clear(&s);
    parley_loop_free(loop);
    char p[96];
    static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(sfx); i++) {
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(dir), 0);
}

/* ack_on_write: messages leave the queue once written, with no ack. */
static void test_ack_on_write(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = false};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.rnd = 0.5};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.ack_on_write = 1;
    cl_new(&c, loop, &o);
    for (int i = 0; i < 3; i++) push(&c, i, PARLEY_WS_PRIORITY_NORMAL, 0);
    spin(loop, 20);
    assert_int_equal(parley_ws_queued(c.ws), 3); /* not written while offline */
    assert_int_equal(parley_ws_connect(c.ws), 0);
    RUN_UNTIL(loop, count_st(&c, PARLEY_WS_SEND_ACKED) == 3, 5000);
    assert_int_equal(parley_ws_queued(c.ws), 0);
    RUN_UNTIL(loop, s.nrx == 3, 5000);
    for (int i = 0; i < 3; i++) assert_int_equal(rx_index(&s, i, 0), i);
    /* SENT precedes ACKED for each. */
    assert_int_equal(c.nst, 6);
    for (int i = 0; i < 3; i++) assert_int_equal(c.st[i].status, PARLEY_WS_SEND_SENT);
    for (int i = 3; i < 6; i++) assert_int_equal(c.st[i].status, PARLEY_WS_SEND_ACKED);

    /* Many messages, more than half the output limit at once: the queue
     * holds back instead of hitting max_output, and all arrive. */
    parley_ws_free(c.ws);
    cl d = {.rnd = 0.5};
    cl_opts(&o, &d, url);
    o.ack_on_write = 1;
    o.max_output = 64 * 1024;
    o.queue_max_bytes = 4u << 20;
    cl_new(&d, loop, &o);
    static uint8_t blob[8192];
    for (int i = 0; i < 200; i++) {
        blob[0] = (uint8_t)i;
        assert_int_equal(
            parley_ws_send_queued(d.ws, PARLEY_WS_BINARY, blob, sizeof blob, 1, 0, NULL), 0);
    }
    srv_clear(&s);
    assert_int_equal(parley_ws_connect(d.ws), 0);
    RUN_UNTIL(loop, count_st(&d, PARLEY_WS_SEND_ACKED) == 200, 10000);
    RUN_UNTIL(loop, s.nrx == 200, 5000);
    assert_int_equal(count_ev(&d, PARLEY_WS_EV_DISCONNECTED), 0);
    assert_int_equal(parley_ws_queued(d.ws), 0);
    parley_ws_free(d.ws);
    srv_stop(&s);
    srv_clear(&s);
    parley_loop_free(loop);
}

/* Every error the header documents for the new calls. */
static void test_api_errors(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = true};
    srv_start(&s, loop, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.rnd = 0.5};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    cl_new(&c, loop, &o);
    parley_ws *ws = c.ws;
    assert_int_equal(parley_ws_send_queued(ws, 3, "x", 1, 1, 0, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_ws_send_queued(ws, PARLEY_WS_TEXT, "x", 1, 4, 0, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_ws_send_queued(ws, PARLEY_WS_TEXT, "x", 1, -1, 0, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_ws_send_queued(ws, PARLEY_WS_TEXT, NULL, 1, 1, 0, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_ws_send_queued(ws, PARLEY_WS_TEXT, "\xc3\x28", 2, 1, 0, NULL),
                     PARLEY_EINVAL);
    assert_int_equal(parley_ws_send_queued_id(ws, PARLEY_WS_TEXT, "x", 1, 1, 0, NULL),
                     PARLEY_EINVAL);
    assert_int_equal(parley_ws_send_queued_id(ws, PARLEY_WS_TEXT, "x", 1, 1, 0, "short"),
                     PARLEY_EINVAL);
    assert_int_equal(parley_ws_send_queued_id(ws, PARLEY_WS_TEXT, "x", 1, 1, 0,
                                              "id-00000000000000000000000000000 0x"),
                     PARLEY_EINVAL);
    char id[37];
    make_id(id, 7);
    assert_int_equal(parley_ws_send_queued_id(ws, PARLEY_WS_TEXT, "x", 1, 1, 0, id), 0);
    assert_int_equal(parley_ws_send_queued_id(ws, PARLEY_WS_TEXT, "y", 1, 2, 0, id), PARLEY_EINVAL);
    assert_int_equal(parley_ws_queued(ws), 1);
    assert_int_equal(parley_ws_ack(ws, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_ws_ack(ws, "nope"), PARLEY_EINVAL);
    make_id(id, 8);
    assert_int_equal(parley_ws_ack(ws, id), PARLEY_EINVAL);
    /* Binary and empty messages are fine. */
    assert_int_equal(parley_ws_send_queued(ws, PARLEY_WS_BINARY, NULL, 0, 0, 0, NULL), 0);

    /* Direct sends and state errors. */
    assert_int_equal(parley_ws_send(ws, PARLEY_WS_TEXT, "x", 1), PARLEY_ESTATE);
    assert_int_equal(parley_ws_close(ws, 1000, NULL), PARLEY_ECLOSED);
    assert_int_equal(parley_ws_connect(ws), 0);
    assert_int_equal(parley_ws_connect(ws), PARLEY_ESTATE);
    RUN_UNTIL(loop, c.opens == 1, 5000);
    assert_int_equal(parley_ws_connect(ws), PARLEY_ESTATE);
    assert_int_equal(parley_ws_close(ws, 999, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_ws_close(ws, 1000, NULL), 0);
    RUN_UNTIL(loop, c.closes == 1, 5000);
    assert_int_equal(parley_ws_send(ws, PARLEY_WS_TEXT, "x", 1), PARLEY_ECLOSED);
    /* Both queued messages went out while it was open. */
    assert_int_equal(count_st(&c, PARLEY_WS_SEND_SENT), 2);
    parley_ws_free(ws);
    srv_stop(&s);
    srv_clear(&s);
    parley_loop_free(loop);
}

/* Freeing inside each kind of callback is safe (ASan checks the rest). */
static void test_free_inside_callbacks(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    srv s = {.echo = true};
    srv_start(&s, loop, 0);
    char url[64], dead[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    snprintf(dead, sizeof dead, "ws://127.0.0.1:%u/echo", dead_port());
    static const struct {
        parley_ws_event_type ev;
        int status;
        bool alive;
    } cases[] = {
        {PARLEY_WS_EV_CONNECTING, 0, true},    {PARLEY_WS_EV_CONNECTED, 0, true},
        {PARLEY_WS_EV_MESSAGE, 0, true},       {PARLEY_WS_EV_ERROR, 0, false},
        {PARLEY_WS_EV_RECONNECTING, 0, false}, {PARLEY_WS_EV_RECONNECT_FAILED, 0, false},
        {0, PARLEY_WS_SEND_SENT, true},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(cases); i++) {
        cl c = {.rnd = 0.5, .free_on = cases[i].ev, .free_on_status = cases[i].status};
        parley_ws_opts o;
        cl_opts(&o, &c, cases[i].alive ? url : dead);
        o.reconnect = 1;
        o.reconnect_attempts = 1;
        cl_new(&c, loop, &o);
        assert_int_equal(parley_ws_send_queued(c.ws, PARLEY_WS_TEXT, "m", 1, 1, 0, NULL), 0);
        assert_int_equal(parley_ws_connect(c.ws), 0);
        RUN_UNTIL(loop, c.ws == NULL, 5000);
        assert_null(c.ws);
        int n = c.nev;
        spin(loop, 50);
        assert_int_equal(c.nev, n); /* nothing after the free */
    }
    srv_stop(&s);
    srv_clear(&s);
    parley_loop_free(loop);
}

/* ---- threads: a client loop of its own, calls from the test thread ---- */

typedef struct tcl {
    atomic_int connected, acked, messages, last_loop_thread_ok;
    parley_ws *ws;
    atomic_bool freed_inside;
    bool free_in_connected;
} tcl;

static void t_event(parley_ws *ws, const parley_ws_event *ev, void *user)
{
    tcl *t = user;
    if (ev->type == PARLEY_WS_EV_CONNECTED) {
        atomic_fetch_add(&t->connected, 1);
        if (t->free_in_connected) {
            parley_ws_free(ws);
            atomic_store(&t->freed_inside, true);
        }
    }
    if (ev->type == PARLEY_WS_EV_MESSAGE) {
        atomic_fetch_add(&t->messages, 1);
        char id[37];
        if (ev->len == 36) {
            memcpy(id, ev->data, 36);
            id[36] = 0;
            parley_ws_ack(ws, id);
        }
    }
}

static void t_status(parley_ws *ws, const char *id, parley_ws_send_status status, int err,
                     void *user)
{
    (void)ws;
    (void)id;
    (void)err;
    if (status == PARLEY_WS_SEND_ACKED) atomic_fetch_add(&((tcl *)user)->acked, 1);
}

static void srv_stop_call(void *arg)
{
    srv *s = arg;
    phttpd_shutdown(s->httpd, on_shutdown, s);
}

static bool wait_atomic(atomic_int *v, int want, uint64_t ms)
{
    uint64_t end = ptime_ms() + ms;
    while (atomic_load(v) < want && ptime_ms() < end) usleep(1000);
    return atomic_load(v) >= want;
}

static void test_threads(void **state)
{
    (void)state;
    /* The server runs on a loop thread of its own too. */
    parley_loop *sloop = parley_loop_new();
    srv s = {.echo = true};
    srv_start(&s, sloop, 0);
    assert_int_equal(parley_loop_start(sloop), 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);

    tcl t = {0};
    parley_ws_opts o;
    parley_ws_opts_init(&o);
    o.url = url;
    o.on_event = t_event;
    o.on_send_status = t_status;
    o.user = &t;
    o.ping_interval_ms = 20;
    assert_int_equal(parley_ws_new(NULL, &o, &t.ws), 0);
    assert_int_equal(parley_ws_connect(t.ws), 0);
    assert_true(wait_atomic(&t.connected, 1, 5000));
    for (int i = 0; i < 100; i++) {
        char id[37];
        make_id(id, i);
        assert_int_equal(parley_ws_send_queued_id(t.ws, PARLEY_WS_TEXT, id, 36, i % 4, 0, id), 0);
    }
    assert_true(wait_atomic(&t.acked, 100, 10000));
    usleep(100 * 1000);
    parley_ws_stats st;
    parley_ws_get_stats(t.ws, &st);
    assert_int_equal(st.messages_out, 100);
    assert_int_equal(st.messages_in, 100);
    assert_int_equal(st.queued, 0);
    assert_true(st.last_rtt_us > 0);
    assert_int_equal(parley_ws_queued(t.ws), 0);
    assert_int_equal(parley_ws_http_status(t.ws), 0);
    parley_ws_free(t.ws); /* joins the client's loop thread */

    /* Freed inside a callback on its own loop thread: the loop is stopped
     * and freed by a helper thread. */
    tcl u = {.free_in_connected = true};
    o.user = &u;
    assert_int_equal(parley_ws_new(NULL, &o, &u.ws), 0);
    assert_int_equal(parley_ws_connect(u.ws), 0);
    assert_true(wait_atomic(&u.connected, 1, 5000));
    for (int i = 0; i < 100 && !atomic_load(&u.freed_inside); i++) usleep(1000);
    assert_true(atomic_load(&u.freed_inside));
    usleep(200 * 1000); /* let the helper thread finish */

    assert_int_equal(ploop_call(sloop, srv_stop_call, &s), 0);
    for (int i = 0; i < 2000 && !s.shutdown_done; i++) usleep(1000);
    assert_true(s.shutdown_done);
    parley_loop_join(sloop);
    phttpd_free(s.httpd);
    srv_clear(&s);
    parley_loop_free(sloop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_events_in_order),
        cmocka_unit_test(test_backoff_and_max_attempts),
        cmocka_unit_test(test_non_retryable_status),
        cmocka_unit_test(test_heartbeat_rtt),
        cmocka_unit_test(test_heartbeat_dead_peer),
        cmocka_unit_test(test_queue_order_and_replay),
        cmocka_unit_test(test_queue_limits),
        cmocka_unit_test(test_queue_ttl),
        cmocka_unit_test(test_queue_persistence),
        cmocka_unit_test(test_ack_on_write),
        cmocka_unit_test(test_api_errors),
        cmocka_unit_test(test_free_inside_callbacks),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
