/* The Engine.IO client against the library's server (echo engine) in every
 * transport mode, and against a scripted fake server for answers a real
 * server does not give (chunked and until-close bodies, malformed packets,
 * HTTP errors, silence), with responses written whole, byte by byte and in
 * random pieces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>

#include "client/eio_client.h"
#include "client_helpers.h"
#include "parley/client.h"

#define MAXMSG 1024

typedef struct msg {
    bool binary;
    size_t len;
    uint8_t *data;
} msg;

typedef struct ectx {
    parley_loop *loop;
    eio_client *c;
    bool opened, closed, upgraded;
    char transport[16];
    char reason[64];
    int err, status;
    int opens, closes;
    msg msgs[MAXMSG];
    int nmsgs;
    bool msg_flag; /* set when want_msgs reached */
    int want_msgs;
    bool free_in_message;
    bool send_in_open; /* sends 3 messages from on_open */
} ectx;

static void on_open(eio_client *c, const char *transport)
{
    ectx *x = eio_client_user(c);
    x->opened = true;
    x->opens++;
    snprintf(x->transport, sizeof x->transport, "%s", transport);
    if (x->send_in_open)
        for (int i = 0; i < 3; i++) {
            char b[16];
            int n = snprintf(b, sizeof b, "early%d", i);
            assert_int_equal(eio_client_send(c, false, b, (size_t)n), 0);
        }
}

static void on_upgrade(eio_client *c)
{
    ectx *x = eio_client_user(c);
    x->upgraded = true;
    snprintf(x->transport, sizeof x->transport, "websocket");
}

static void on_message(eio_client *c, bool binary, const uint8_t *data, size_t len)
{
    ectx *x = eio_client_user(c);
    assert_true(x->nmsgs < MAXMSG);
    msg *m = &x->msgs[x->nmsgs++];
    m->binary = binary;
    m->len = len;
    m->data = malloc(len + 1);
    memcpy(m->data, data, len);
    m->data[len] = 0;
    if (x->want_msgs && x->nmsgs >= x->want_msgs) x->msg_flag = true;
    if (x->free_in_message) {
        eio_client_free(c);
        x->c = NULL;
    }
}

static void on_close(eio_client *c, const char *reason, int err, int status)
{
    ectx *x = eio_client_user(c);
    x->closed = true;
    x->closes++;
    snprintf(x->reason, sizeof x->reason, "%s", reason);
    x->err = err;
    x->status = status;
}

static const eio_client_cbs cbs = {
    .on_open = on_open, .on_upgrade = on_upgrade, .on_message = on_message, .on_close = on_close};

static void ectx_clear_msgs(ectx *x)
{
    for (int i = 0; i < x->nmsgs; i++) free(x->msgs[i].data);
    x->nmsgs = 0;
    x->msg_flag = false;
    x->want_msgs = 0;
}

static void ectx_init(ectx *x, unsigned port, const char *path, unsigned transports, bool upgrade,
                      bool ws_first)
{
    memset(x, 0, sizeof *x);
    x->loop = parley_loop_new();
    assert_non_null(x->loop);
    eio_client_opts o;
    memset(&o, 0, sizeof o);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/ignored?x=1", port);
    assert_int_equal(purl_parse(url, &o.url), 0);
    o.path = path;
    o.query = "y=2";
    o.transports = transports;
    o.upgrade = upgrade;
    o.websocket_first = ws_first;
    o.timeout_ms = 5000;
    x->c = eio_client_new(x->loop, &o, &cbs, x);
    assert_non_null(x->c);
}

static void ectx_done(ectx *x)
{
    if (x->c) eio_client_free(x->c);
    x->c = NULL;
    th_run_for(x->loop, 50);
    ectx_clear_msgs(x);
    parley_loop_free(x->loop);
}

static bool wait_msgs(ectx *x, int n, uint64_t ms)
{
    x->want_msgs = n;
    x->msg_flag = x->nmsgs >= n;
    return th_run_until(x->loop, &x->msg_flag, ms);
}

/* ---- against the library's server ---- */

typedef struct mode {
    const char *name;
    unsigned transports;
    bool upgrade, ws_first;
    const char *first, *final;
} mode;

static const mode modes[] = {
    {"polling", PARLEY_TRANSPORT_POLLING, true, false, "polling", "polling"},
    {"websocket", PARLEY_TRANSPORT_WEBSOCKET, true, false, "websocket", "websocket"},
    {"default", PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET, true, false, "polling",
     "websocket"},
    {"websocket-first", PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET, true, true,
     "websocket", "websocket"},
    {"no upgrade", PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET, false, false, "polling",
     "polling"},
};

static void test_echo_modes(void **state)
{
    (void)state;
    th_server srv;
    assert_int_equal(th_server_start(&srv, NULL, 0, NULL, NULL, 0), 0);
    for (size_t m = 0; m < PARLEY_ARRAY_LEN(modes); m++) {
        const mode *md = &modes[m];
        ectx x;
        ectx_init(&x, srv.port, "/engine.io/", md->transports, md->upgrade, md->ws_first);
        x.send_in_open = true;
        assert_int_equal(eio_client_send(x.c, false, "x", 1), PARLEY_ESTATE);
        assert_int_equal(eio_client_open(x.c), 0);
        assert_int_equal(eio_client_open(x.c), PARLEY_ESTATE);
        assert_true(th_run_until(x.loop, &x.opened, 5000));
        assert_string_equal(x.transport, md->first);
        assert_non_null(eio_client_sid(x.c));
        assert_int_equal(strlen(eio_client_sid(x.c)), 20);
        assert_int_equal(eio_client_max_payload(x.c), 1000000);
        /* A stream of messages across the upgrade (when there is one):
         * every one arrives, in order. */
        uint8_t bin[256];
        for (int i = 0; i < 256; i++) bin[i] = (uint8_t)i;
        const char *uni = "h\xc3\xa9llo \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80";
        int sent = 3;
        for (int i = 0; i < 300; i++) {
            char b[32];
            int n = snprintf(b, sizeof b, "m%d", i);
            if (i % 3 == 1)
                assert_int_equal(eio_client_send(x.c, true, bin, (size_t)(i % 256)), 0);
            else if (i % 3 == 2)
                assert_int_equal(eio_client_send(x.c, false, uni, strlen(uni)), 0);
            else
                assert_int_equal(eio_client_send(x.c, false, b, (size_t)n), 0);
            sent++;
            if (i % 10 == 0) th_run_for(x.loop, 2);
        }
        assert_true(wait_msgs(&x, sent, 5000));
        assert_int_equal(x.nmsgs, sent);
        for (int i = 0; i < 3; i++) {
            char b[24];
            snprintf(b, sizeof b, "early%d", i);
            assert_false(x.msgs[i].binary);
            assert_string_equal((char *)x.msgs[i].data, b);
        }
        for (int i = 0; i < 300; i++) {
            msg *g = &x.msgs[i + 3];
            if (i % 3 == 1) {
                assert_true(g->binary);
                assert_int_equal(g->len, (size_t)(i % 256));
                assert_memory_equal(g->data, bin, g->len);
            } else if (i % 3 == 2) {
                assert_false(g->binary);
                assert_string_equal((char *)g->data, uni);
            } else {
                char b[32];
                snprintf(b, sizeof b, "m%d", i);
                assert_false(g->binary);
                assert_string_equal((char *)g->data, b);
            }
        }
        if (strcmp(md->first, md->final) != 0) assert_true(th_run_until(x.loop, &x.upgraded, 3000));
        assert_string_equal(x.transport, md->final);
        /* Heartbeat: the server pings every 300 ms and gives 200 ms. */
        th_run_for(x.loop, 1200);
        assert_false(x.closed);
        ectx_clear_msgs(&x);
        assert_int_equal(eio_client_send(x.c, false, "still", 5), 0);
        assert_true(wait_msgs(&x, 1, 3000));
        assert_string_equal((char *)x.msgs[0].data, "still");
        assert_true(eio_client_writable(x.c) || !strcmp(md->final, "polling"));
        eio_client_close(x.c);
        assert_true(x.closed);
        assert_string_equal(x.reason, "forced close");
        assert_int_equal(x.err, 0);
        assert_int_equal(x.closes, 1);
        assert_null(eio_client_sid(x.c));
        assert_int_equal(eio_client_send(x.c, false, "x", 1), PARLEY_ESTATE);
        ectx_clear_msgs(&x);
        /* The same object opens again. */
        x.opened = x.closed = false;
        x.send_in_open = false;
        assert_int_equal(eio_client_open(x.c), 0);
        assert_true(th_run_until(x.loop, &x.opened, 5000));
        assert_int_equal(eio_client_send(x.c, false, "again", 5), 0);
        assert_true(wait_msgs(&x, 1, 3000));
        assert_string_equal((char *)x.msgs[0].data, "again");
        ectx_done(&x);
    }
    th_server_stop(&srv);
}

static void test_max_payload(void **state)
{
    (void)state;
    parley_server_opts so;
    parley_server_opts_init(&so);
    so.ping_interval_ms = 300;
    so.ping_timeout_ms = 200;
    so.max_payload = 2000;
    th_server srv;
    assert_int_equal(th_server_start(&srv, &so, 0, NULL, NULL, 0), 0);
    for (int m = 0; m < 2; m++) {
        ectx x;
        ectx_init(&x, srv.port, "/engine.io/",
                  m == 0 ? PARLEY_TRANSPORT_POLLING : PARLEY_TRANSPORT_WEBSOCKET, false, false);
        assert_int_equal(eio_client_open(x.c), 0);
        assert_true(th_run_until(x.loop, &x.opened, 5000));
        assert_int_equal(eio_client_max_payload(x.c), 2000);
        char big[2100];
        memset(big, 'a', sizeof big);
        /* 60 x 100 bytes in one loop iteration: over polling they must be
         * split into POSTs under 2000 bytes or the server answers 413. */
        for (int i = 0; i < 60; i++) {
            big[0] = (char)('A' + i % 26);
            assert_int_equal(eio_client_send(x.c, false, big, 100), 0);
        }
        assert_int_equal(eio_client_send(x.c, false, big, 2000), PARLEY_ELIMIT);
        assert_int_equal(eio_client_send(x.c, true, big, 1600),
                         m == 0 ? PARLEY_ELIMIT : 0); /* base64 on polling */
        assert_int_equal(eio_client_send(x.c, false, big, 1998), 0);
        assert_true(wait_msgs(&x, m == 0 ? 61 : 62, 5000));
        for (int i = 0; i < 60; i++) {
            assert_int_equal(x.msgs[i].len, 100);
            assert_int_equal(x.msgs[i].data[0], 'A' + i % 26);
        }
        assert_int_equal(x.msgs[x.nmsgs - 1].len, 1998);
        assert_false(x.closed);
        ectx_done(&x);
    }
    th_server_stop(&srv);
}

static void test_fallback_and_refusal(void **state)
{
    (void)state;
    th_server srv;
    assert_int_equal(th_server_start(&srv, NULL, ENGINE_POLLING, NULL, NULL, 0), 0);
    /* WebSocket first, refused: polling takes over. */
    ectx x;
    ectx_init(&x, srv.port, "/engine.io/", PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET,
              true, true);
    assert_int_equal(eio_client_open(x.c), 0);
    assert_true(th_run_until(x.loop, &x.opened, 5000));
    assert_string_equal(x.transport, "polling");
    assert_int_equal(eio_client_send(x.c, false, "fb", 2), 0);
    assert_true(wait_msgs(&x, 1, 3000));
    assert_false(x.upgraded);
    ectx_done(&x);
    /* WebSocket only: the refusal ends the attempt with its status. */
    ectx_init(&x, srv.port, "/engine.io/", PARLEY_TRANSPORT_WEBSOCKET, true, false);
    assert_int_equal(eio_client_open(x.c), 0);
    assert_true(th_run_until(x.loop, &x.closed, 5000));
    assert_false(x.opened);
    assert_string_equal(x.reason, "handshake refused");
    assert_int_equal(x.err, PARLEY_EHANDSHAKE);
    assert_int_equal(x.status, 400);
    ectx_done(&x);
    /* Wrong path: 404 on the polling handshake. */
    ectx_init(&x, srv.port, "/nothing/", PARLEY_TRANSPORT_POLLING, true, false);
    assert_int_equal(eio_client_open(x.c), 0);
    assert_true(th_run_until(x.loop, &x.closed, 5000));
    assert_string_equal(x.reason, "handshake refused");
    assert_int_equal(x.status, 404);
    ectx_done(&x);
    th_server_stop(&srv);
}

static void test_connect_errors(void **state)
{
    (void)state;
    /* A port nobody listens on. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    unsigned port = ntohs(a.sin_port);
    close(fd);
    for (int m = 0; m < 2; m++) {
        ectx x;
        ectx_init(&x, port, "/engine.io/",
                  m ? PARLEY_TRANSPORT_WEBSOCKET : PARLEY_TRANSPORT_POLLING, true, false);
        assert_int_equal(eio_client_open(x.c), 0);
        assert_true(th_run_until(x.loop, &x.closed, 5000));
        assert_string_equal(x.reason, "transport error");
        assert_int_equal(x.err, PARLEY_ECONNREFUSED);
        assert_int_equal(x.closes, 1);
        ectx_done(&x);
    }
}

/* ---- against the fake server ---- */

typedef struct script {
    const char *handshake; /* full response to the handshake GET */
    const char *poll;      /* response body to the first poll (200), or NULL */
    const char *poll_raw;  /* full response to the first poll instead */
    bool hang_polls;       /* later polls never answered */
    char posts[8][256];    /* bodies received */
    atomic_int nposts;
    atomic_int npolls;
} script;

static bool fake_handler_fn(fake_srv *s, int fd, const fake_req *r, void *user)
{
    script *sc = user;
    bool handshake = !strstr(r->target, "sid=");
    if (handshake) {
        fake_send(s, fd, sc->handshake, strlen(sc->handshake));
        return !strstr(sc->handshake, "Connection: close");
    }
    if (!strcmp(r->method, "POST")) {
        int i = atomic_fetch_add(&sc->nposts, 1);
        if (i < 8) snprintf(sc->posts[i], sizeof sc->posts[i], "%.*s", (int)r->body_len, r->body);
        fake_ok(s, fd, "ok", 2);
        return true;
    }
    int n = atomic_fetch_add(&sc->npolls, 1);
    if (n == 0 && sc->poll_raw) {
        fake_send(s, fd, sc->poll_raw, strlen(sc->poll_raw));
        return true;
    }
    if (n == 0 && sc->poll) {
        fake_ok(s, fd, sc->poll, strlen(sc->poll));
        return true;
    }
    while (!atomic_load(&s->stop)) usleep(5000);
    return false;
}

#define OPEN_JSON(pi, pt)                                                                          \
    "0{\"sid\":\"abc\",\"upgrades\":[],\"pingInterval\":" #pi ",\"pingTimeout\":" #pt              \
    ",\"maxPayload\":100000}"

static const char hs_len[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 91\r\n\r\n" OPEN_JSON(5000, 5000) "\x1e"
                                                                          "4hi";

static const char hs_chunked[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "10\r\n"
                                 "0{\"sid\":\"abc\",\"u\r\n"
                                 "47\r\n"
                                 "pgrades\":[],\"pingInterval\":5000,\"pingTimeout\":5000,"
                                 "\"maxPayload\":100000}\r\n"
                                 "0\r\n\r\n";

static const char hs_until_close[] =
    "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" OPEN_JSON(5000, 5000);

static const char hs_fast_ping[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 85\r\n\r\n" OPEN_JSON(100, 100);

typedef struct fcase {
    const char *name;
    const char *handshake;
    const char *poll, *poll_raw;
    const char *reason; /* expected end, NULL = stays open */
    int err, status;
    int messages;      /* expected before the end */
    const char *post0; /* expected first POST body */
} fcase;

static const fcase fcases[] = {
    {"content-length + message", hs_len,
     "4there\x1e"
     "bAAEC/w==",
     NULL, NULL, 0, 0, 3, NULL},
    {"chunked", hs_chunked, "4x", NULL, NULL, 0, 0, 1, NULL},
    {"until close", hs_until_close, "4y", NULL, NULL, 0, 0, 1, NULL},
    {"ping answered", hs_len, "2", NULL, NULL, 0, 0, 1, "3"},
    {"401", "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", NULL, NULL,
     "handshake refused", PARLEY_EHANDSHAKE, 401, 0, NULL},
    {"403 until close", "HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nno", NULL, NULL,
     "handshake refused", PARLEY_EHANDSHAKE, 403, 0, NULL},
    {"bad open json", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0{\"sid\":1}", NULL, NULL,
     "parse error", PARLEY_EPROTO, 200, 0, NULL},
    {"open not first", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n4hi", NULL, NULL, "parse error",
     PARLEY_EPROTO, 200, 0, NULL},
    {"binary open", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nbAAA=", NULL, NULL, "parse error",
     PARLEY_EPROTO, 200, 0, NULL},
    {"malformed response", "HTTP/1.1 2x0 OK\r\n\r\n", NULL, NULL, "transport error", PARLEY_EPROTO,
     0, 0, NULL},
    {"huge body", "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n0", NULL, NULL,
     "transport error", PARLEY_ELIMIT, 0, 0, NULL},
    {"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", NULL, NULL,
     "transport error", PARLEY_EPROTO, 0, 0, NULL},
    {"empty packet in poll", hs_len,
     "4a\x1e\x1e"
     "4b",
     NULL, "parse error", PARLEY_EPROTO, 0, 2, NULL},
    {"bad type in poll", hs_len, "9x", NULL, "parse error", PARLEY_EPROTO, 0, 1, NULL},
    {"bad base64 in poll", hs_len, "b!!!!", NULL, "parse error", PARLEY_EPROTO, 0, 1, NULL},
    {"open again in poll", hs_len, OPEN_JSON(1, 1), NULL, "parse error", PARLEY_EPROTO, 0, 1, NULL},
    {"close packet", hs_len,
     "4last\x1e"
     "1",
     NULL, "transport close", PARLEY_ECLOSED, 0, 2, NULL},
    {"poll 400", hs_len, NULL, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
     "transport error", PARLEY_EPROTO, 400, 1, NULL},
    {"connection dropped", hs_len, NULL, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n4ab",
     "transport error", PARLEY_ECLOSED, 0, 1, NULL},
    {"ping timeout", hs_fast_ping, NULL, NULL, "ping timeout", PARLEY_ETIMEDOUT, 0, 0, NULL},
};

static bool poll_raw_closes(const fcase *fc)
{
    return fc->poll_raw && strstr(fc->poll_raw, "Content-Length: 50");
}

static bool fake_drop_handler(fake_srv *s, int fd, const fake_req *r, void *user)
{
    script *sc = user;
    bool keep = fake_handler_fn(s, fd, r, user);
    /* The truncated body case: the connection ends mid-body. */
    if (strstr(r->target, "sid=") && !strcmp(r->method, "GET") && atomic_load(&sc->npolls) == 1 &&
        sc->poll_raw && strstr(sc->poll_raw, "Content-Length: 50"))
        return false;
    return keep;
}

static void test_fake_server(void **state)
{
    (void)state;
    for (int cm = CHOP_WHOLE; cm <= CHOP_RANDOM; cm++) {
        for (size_t i = 0; i < PARLEY_ARRAY_LEN(fcases); i++) {
            const fcase *fc = &fcases[i];
            script sc;
            memset(&sc, 0, sizeof sc);
            sc.handshake = fc->handshake;
            sc.poll = fc->poll;
            sc.poll_raw = fc->poll_raw;
            fake_srv fs;
            assert_int_equal(fake_start(&fs,
                                        poll_raw_closes(fc) ? fake_drop_handler : fake_handler_fn,
                                        &sc, (chop_mode)cm),
                             0);
            ectx x;
            ectx_init(&x, fs.port, "/socket.io/", PARLEY_TRANSPORT_POLLING, true, false);
            assert_int_equal(eio_client_open(x.c), 0);
            if (fc->reason) {
                if (!th_run_until(x.loop, &x.closed, 5000))
                    fail_msg("case %s (mode %d): no end", fc->name, cm);
                if (strcmp(x.reason, fc->reason) != 0 || x.err != fc->err || x.status != fc->status)
                    fail_msg("case %s (mode %d): ended with %s/%d/%d", fc->name, cm, x.reason,
                             x.err, x.status);
            } else {
                if (!wait_msgs(&x, fc->messages, 5000) && !fc->post0)
                    fail_msg("case %s (mode %d): %d messages", fc->name, cm, x.nmsgs);
                if (fc->post0) {
                    for (int k = 0; k < 300 && atomic_load(&sc.nposts) == 0; k++)
                        th_run_for(x.loop, 10);
                    assert_int_equal(atomic_load(&sc.nposts), 1);
                    assert_string_equal(sc.posts[0], fc->post0);
                    th_run_for(x.loop, 50); /* its "ok" */
                }
                assert_false(x.closed);
            }
            if (fc->messages && !fc->post0) {
                assert_true(x.nmsgs >= fc->messages);
                if (i == 0) {
                    assert_string_equal((char *)x.msgs[0].data, "hi");
                    assert_string_equal((char *)x.msgs[1].data, "there");
                    assert_true(x.msgs[2].binary);
                    assert_int_equal(x.msgs[2].len, 4);
                    assert_memory_equal(x.msgs[2].data, "\x00\x01\x02\xff", 4);
                }
            }
            if (fc->reason && !strcmp(fc->reason, "ping timeout")) assert_true(x.opened);
            /* A polling session sends a close packet when closed by us. */
            if (!fc->reason && x.opened) {
                eio_client_close(x.c);
                assert_string_equal(x.reason, "forced close");
                for (int k = 0; k < 300; k++) {
                    bool seen = false;
                    for (int p = 0; p < atomic_load(&sc.nposts) && p < 8; p++)
                        if (!strcmp(sc.posts[p], "1")) seen = true;
                    if (seen) break;
                    th_run_for(x.loop, 10);
                }
                bool seen = false;
                for (int p = 0; p < atomic_load(&sc.nposts) && p < 8; p++)
                    if (!strcmp(sc.posts[p], "1") || strstr(sc.posts[p], "\x1e"
                                                                         "1"))
                        seen = true;
                if (!seen) fail_msg("case %s: no close packet posted", fc->name);
            }
            ectx_done(&x);
            fake_stop(&fs);
        }
    }
}

static void test_timeout_and_free_in_callback(void **state)
{
    (void)state;
    /* A server that accepts and never answers. */
    script sc;
    memset(&sc, 0, sizeof sc);
    sc.handshake = "";
    fake_srv fs;
    assert_int_equal(fake_start(&fs, fake_handler_fn, &sc, CHOP_WHOLE), 0);
    ectx x;
    ectx_init(&x, fs.port, "/socket.io/", PARLEY_TRANSPORT_POLLING, true, false);
    eio_client_free(x.c);
    eio_client_opts o;
    memset(&o, 0, sizeof o);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", fs.port);
    assert_int_equal(purl_parse(url, &o.url), 0);
    o.transports = PARLEY_TRANSPORT_POLLING;
    o.timeout_ms = 300;
    x.c = eio_client_new(x.loop, &o, &cbs, &x);
    uint64_t t0 = ptime_ms();
    assert_int_equal(eio_client_open(x.c), 0);
    assert_true(th_run_until(x.loop, &x.closed, 3000));
    uint64_t took = ptime_ms() - t0;
    assert_string_equal(x.reason, "timeout");
    assert_int_equal(x.err, PARLEY_ETIMEDOUT);
    assert_true(took >= 280 && took < 2000);
    ectx_done(&x);
    fake_stop(&fs);

    /* Freed inside on_message, in the middle of a payload of several. */
    th_server srv;
    assert_int_equal(th_server_start(&srv, NULL, 0, NULL, NULL, 0), 0);
    for (int m = 0; m < 2; m++) {
        ectx_init(&x, srv.port, "/engine.io/",
                  m ? PARLEY_TRANSPORT_WEBSOCKET : PARLEY_TRANSPORT_POLLING, false, false);
        assert_int_equal(eio_client_open(x.c), 0);
        assert_true(th_run_until(x.loop, &x.opened, 5000));
        x.free_in_message = true;
        for (int i = 0; i < 5; i++) assert_int_equal(eio_client_send(x.c, false, "z", 1), 0);
        assert_true(wait_msgs(&x, 1, 3000));
        assert_null(x.c);
        th_run_for(x.loop, 100);
        assert_int_equal(x.nmsgs, 1);
        assert_false(x.closed);
        ectx_done(&x);
    }
    th_server_stop(&srv);
}

int main(void)
{
    /* As every program using the library must (README, "Using the
     * library"): a write to a connection the peer reset is EPIPE, not
     * a fatal signal. */
    signal(SIGPIPE, SIG_IGN);
    if (getenv("PARLEY_TEST_LOG")) parley_log_set(PARLEY_LOG_DEBUG, NULL, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_modes),
        cmocka_unit_test(test_max_payload),
        cmocka_unit_test(test_fallback_and_refusal),
        cmocka_unit_test(test_connect_errors),
        cmocka_unit_test(test_fake_server),
        cmocka_unit_test(test_timeout_and_free_in_callback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
