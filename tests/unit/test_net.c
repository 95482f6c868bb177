/* In-process tests of the network layer, the WebSocket session, the HTTP
 * server and the public client: a phttpd echo endpoint and parley_ws
 * clients on one loop, plain and TLS (certificate made at test time),
 * plus raw sockets for the misbehaving peers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "base/util.h"
#include "chop.h"
#include "tls_cert.h"
#include "net/net.h"
#include "parley/ws.h"
#include "server/httpd.h"
#include "ws/wsconn.h"

/* ---- server fixture ---- */

typedef struct srv {
    parley_loop *loop;
    phttpd *httpd;
    unsigned port;
    wsconn_opts wopts;
    pmd_config pmd;
    phttpd_ws_endpoint ep;
    int closed_count;
    int last_closed_err;
    uint16_t last_closed_code;
    bool shutdown_done;
} srv;

static void srv_echo(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    wsconn_send(w, opcode, data, len);
}

static void srv_closed(wsconn *w, uint16_t code, const uint8_t *reason, size_t len, int err)
{
    (void)reason;
    (void)len;
    srv *s = w->user;
    s->closed_count++;
    s->last_closed_err = err;
    s->last_closed_code = code;
}

static const wsconn_cbs srv_cbs = {.on_message = srv_echo, .on_closed = srv_closed};

static void route_hello(phttpd_req *req, void *user)
{
    (void)user;
    char body[64];
    int n = snprintf(body, sizeof body, "hello %zu", req->body_len);
    phttpd_respond(req, 200, "text/plain", NULL, 0, body, (size_t)n);
}

static void srv_start(srv *s, ptls_ctx *tls, size_t max_output)
{
    memset(s, 0, sizeof *s);
    s->loop = parley_loop_new();
    assert_non_null(s->loop);
    phttpd_opts o;
    phttpd_opts_init(&o);
    o.head_timeout_ms = 500;
    if (max_output) o.max_output = max_output;
    assert_int_equal(phttpd_new(s->loop, &o, &s->httpd), 0);
    wsconn_opts_init(&s->wopts);
    pmd_config_init(&s->pmd);
    s->wopts.cbs = &srv_cbs;
    s->ep = (phttpd_ws_endpoint){.ws_opts = &s->wopts, .pmd = &s->pmd, .user = s};
    assert_int_equal(phttpd_route_ws(s->httpd, "/echo", &s->ep), 0);
    assert_int_equal(phttpd_route(s->httpd, "/hello", route_hello, NULL), 0);
    assert_int_equal(phttpd_listen(s->httpd, "127.0.0.1", 0, tls, &s->port), 0);
    assert_true(s->port > 0);
}

static void on_shutdown(phttpd *h, void *user)
{
    (void)h;
    ((srv *)user)->shutdown_done = true;
}

static void srv_stop(srv *s)
{
    phttpd_shutdown(s->httpd, on_shutdown, s);
    for (int i = 0; i < 200 && !s->shutdown_done; i++) uv_run(s->loop->uv, UV_RUN_ONCE);
    assert_true(s->shutdown_done);
    phttpd_free(s->httpd);
    parley_loop_free(s->loop);
}

/* Runs the loop until *flag or ms pass; returns *flag. */
static bool run_until(parley_loop *l, volatile bool *flag, uint64_t ms)
{
    uint64_t end = ptime_ms() + ms;
    while (!*flag && ptime_ms() < end) {
        uv_run(l->uv, UV_RUN_NOWAIT);
        if (!*flag) usleep(200);
    }
    return *flag;
}

/* ---- client fixture ---- */

typedef struct cl {
    parley_ws *ws;
    bool opened, closed;
    int close_code, close_err;
    char close_reason[128];
    int messages;
    parley_ws_type last_type;
    uint8_t *last;
    size_t last_len;
    bool got_pong;
    bool free_in_message;
} cl;

static void cl_open(parley_ws *ws, const char *protocol, void *user)
{
    (void)ws;
    (void)protocol;
    ((cl *)user)->opened = true;
}

static void cl_message(parley_ws *ws, parley_ws_type type, const void *data, size_t len, void *user)
{
    cl *c = user;
    c->messages++;
    c->last_type = type;
    free(c->last);
    c->last = malloc(len ? len : 1);
    memcpy(c->last, data, len);
    c->last_len = len;
    if (c->free_in_message) {
        parley_ws_free(ws);
        c->ws = NULL;
        c->closed = true; /* no on_close after free */
    }
}

static void cl_pong(parley_ws *ws, const void *data, size_t len, void *user)
{
    (void)ws;
    (void)data;
    (void)len;
    ((cl *)user)->got_pong = true;
}

static void cl_close(parley_ws *ws, int code, const char *reason, size_t len, int err, void *user)
{
    (void)ws;
    cl *c = user;
    c->closed = true;
    c->close_code = code;
    c->close_err = err;
    snprintf(c->close_reason, sizeof c->close_reason, "%.*s", (int)len, reason);
}

static void cl_opts(parley_ws_opts *o, cl *c, const char *url)
{
    parley_ws_opts_init(o);
    o->url = url;
    o->on_open = cl_open;
    o->on_message = cl_message;
    o->on_pong = cl_pong;
    o->on_close = cl_close;
    o->user = c;
}

static void cl_free(cl *c)
{
    if (c->ws) parley_ws_free(c->ws);
    free(c->last);
}

static void wait_messages(parley_loop *l, cl *c, int want)
{
    uint64_t end = ptime_ms() + 10000;
    while (c->messages < want && !c->closed && ptime_ms() < end) {
        uv_run(l->uv, UV_RUN_NOWAIT);
        if (c->messages < want) usleep(100);
    }
    assert_int_equal(c->messages, want);
}

/* ---- tests ---- */

static void echo_round_trips(srv *s, const char *url, const char *ca_file, bool deflate)
{
    cl c = {0};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    o.ca_file = ca_file;
    o.permessage_deflate = deflate;
    assert_int_equal(parley_ws_new(s->loop, &o, &c.ws), 0);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    assert_true(run_until(s->loop, &c.opened, 5000));

    assert_int_equal(parley_ws_send(c.ws, PARLEY_WS_TEXT, "héllo", 6), 0);
    int want = 1;
    wait_messages(s->loop, &c, want);
    assert_int_equal(c.last_type, PARLEY_WS_TEXT);
    assert_int_equal(c.last_len, 6);
    assert_memory_equal(c.last, "héllo", 6);

    /* 1 MiB of compressible and of random bytes, whole and fragmented. */
    size_t n = 1u << 20;
    uint8_t *big = malloc(n);
    uint64_t rng = chop_seed();
    for (size_t i = 0; i < n; i++) big[i] = (uint8_t)(i < n / 2 ? i % 7 : test_rand(&rng));
    assert_int_equal(parley_ws_send(c.ws, PARLEY_WS_BINARY, big, n), 0);
    want++;
    wait_messages(s->loop, &c, want);
    assert_int_equal(c.last_type, PARLEY_WS_BINARY);
    assert_int_equal(c.last_len, n);
    assert_memory_equal(c.last, big, n);

    assert_int_equal(parley_ws_send_fragment(c.ws, PARLEY_WS_BINARY, 1, 0, big, 1000), 0);
    assert_int_equal(parley_ws_ping(c.ws, "p", 1), 0);
    assert_int_equal(parley_ws_send_fragment(c.ws, PARLEY_WS_BINARY, 0, 0, big + 1000, 0), 0);
    assert_int_equal(parley_ws_send_fragment(c.ws, PARLEY_WS_BINARY, 0, 1, big + 1000, 5000), 0);
    want++;
    wait_messages(s->loop, &c, want);
    assert_int_equal(c.last_len, 6000);
    assert_memory_equal(c.last, big, 6000);
    assert_true(c.got_pong);
    free(big);

    /* Invalid UTF-8 is refused locally, the session stays usable. */
    assert_int_equal(parley_ws_send(c.ws, PARLEY_WS_TEXT, "\xc3\x28", 2), PARLEY_EINVAL);

    assert_int_equal(parley_ws_close(c.ws, 4000, "bye now"), 0);
    assert_true(run_until(s->loop, &c.closed, 5000));
    assert_int_equal(c.close_code, 4000);
    assert_int_equal(c.close_err, 0);
    assert_string_equal(c.close_reason, "bye now");
    assert_int_equal(parley_ws_send(c.ws, PARLEY_WS_TEXT, "x", 1), PARLEY_ECLOSED);
    cl_free(&c);
}

static void test_echo_plain(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    echo_round_trips(&s, url, NULL, true);
    echo_round_trips(&s, url, NULL, false);
    /* localhost resolves to ::1 and 127.0.0.1: the client must fall back. */
    snprintf(url, sizeof url, "ws://localhost:%u/echo?x=1", s.port);
    echo_round_trips(&s, url, NULL, true);
    srv_stop(&s);
}

static void test_echo_tls(void **state)
{
    (void)state;
    char dir[] = "/tmp/parley-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cert[128], key[128];
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    make_cert(cert, key);
    char err[256];
    ptls_ctx *tls = ptls_ctx_server(cert, key, err, sizeof err);
    assert_non_null(tls);
    srv s;
    srv_start(&s, tls, 0);
    char url[64];
    snprintf(url, sizeof url, "wss://127.0.0.1:%u/echo", s.port);
    echo_round_trips(&s, url, cert, true);
    snprintf(url, sizeof url, "wss://localhost:%u/echo", s.port);
    echo_round_trips(&s, url, cert, false);

    /* Without trusting the certificate the handshake must fail. */
    cl c = {0};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    assert_int_equal(parley_ws_new(s.loop, &o, &c.ws), 0);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    assert_true(run_until(s.loop, &c.closed, 5000));
    assert_false(c.opened);
    assert_int_equal(c.close_err, PARLEY_ETLS);
    assert_int_equal(c.close_code, 1006);
    cl_free(&c);

    /* Trusted certificate, wrong name: also refused. */
    cl d = {0};
    unsigned port2;
    assert_int_equal(phttpd_listen(s.httpd, "127.0.0.2", 0, tls, &port2), 0);
    snprintf(url, sizeof url, "wss://127.0.0.2:%u/echo", port2);
    cl_opts(&o, &d, url);
    o.ca_file = cert;
    assert_int_equal(parley_ws_new(s.loop, &o, &d.ws), 0);
    assert_int_equal(parley_ws_connect(d.ws), 0);
    assert_true(run_until(s.loop, &d.closed, 5000));
    assert_int_equal(d.close_err, PARLEY_ETLS);
    cl_free(&d);

    srv_stop(&s);
    ptls_ctx_free(tls);
    unlink(cert);
    unlink(key);
    rmdir(dir);
}

static void test_connect_failures(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL, 0);
    char url[80];
    parley_ws_opts o;

    /* A path with no route: the handshake is refused with 404. */
    cl a = {0};
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/nope", s.port);
    cl_opts(&o, &a, url);
    assert_int_equal(parley_ws_new(s.loop, &o, &a.ws), 0);
    assert_int_equal(parley_ws_connect(a.ws), 0);
    assert_true(run_until(s.loop, &a.closed, 5000));
    assert_int_equal(a.close_err, PARLEY_EHANDSHAKE);
    assert_int_equal(parley_ws_http_status(a.ws), 404);
    cl_free(&a);

    /* Nothing listening. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    unsigned dead_port = ntohs(sa.sin_port);
    close(fd);
    cl b = {0};
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", dead_port);
    cl_opts(&o, &b, url);
    assert_int_equal(parley_ws_new(s.loop, &o, &b.ws), 0);
    assert_int_equal(parley_ws_connect(b.ws), 0);
    assert_true(run_until(s.loop, &b.closed, 5000));
    assert_int_equal(b.close_err, PARLEY_ECONNREFUSED);
    /* The handle can try again after a failure. */
    b.closed = false;
    assert_int_equal(parley_ws_connect(b.ws), 0);
    assert_true(run_until(s.loop, &b.closed, 5000));
    assert_int_equal(b.close_err, PARLEY_ECONNREFUSED);
    cl_free(&b);

    /* A server that accepts and never answers: the connect deadline. */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_port = 0;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 4), 0);
    sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    cl c = {0};
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", ntohs(sa.sin_port));
    cl_opts(&o, &c, url);
    o.connect_timeout_ms = 200;
    assert_int_equal(parley_ws_new(s.loop, &o, &c.ws), 0);
    uint64_t t0 = ptime_ms();
    assert_int_equal(parley_ws_connect(c.ws), 0);
    assert_true(run_until(s.loop, &c.closed, 5000));
    assert_int_equal(c.close_err, PARLEY_ETIMEDOUT);
    assert_true(ptime_ms() - t0 >= 190);
    cl_free(&c);
    close(fd);

    /* Bad URLs and options are refused up front. */
    parley_ws *ws;
    cl_opts(&o, &a, "http://127.0.0.1/x");
    assert_int_equal(parley_ws_new(s.loop, &o, &ws), PARLEY_EURL);
    cl_opts(&o, &a, "ws://user@127.0.0.1/x");
    assert_int_equal(parley_ws_new(s.loop, &o, &ws), PARLEY_EURL);
    const char *bad_hdr[] = {"X-Evil: a\r\nInjected: b"};
    cl_opts(&o, &a, "ws://127.0.0.1:1/x");
    o.headers = bad_hdr;
    o.nheaders = 1;
    assert_int_equal(parley_ws_new(s.loop, &o, &ws), PARLEY_EINVAL);
    srv_stop(&s);
}

static void test_free_inside_callback(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {.free_in_message = true};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    assert_int_equal(parley_ws_new(s.loop, &o, &c.ws), 0);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    assert_true(run_until(s.loop, &c.opened, 5000));
    assert_int_equal(parley_ws_send(c.ws, PARLEY_WS_TEXT, "x", 1), 0);
    assert_true(run_until(s.loop, &c.closed, 5000));
    assert_null(c.ws);
    /* The server sees the link drop without a close frame. */
    bool dummy = false;
    run_until(s.loop, &dummy, 100);
    assert_int_equal(s.closed_count, 1);
    assert_int_equal(s.last_closed_code, 1006);
    free(c.last);
    srv_stop(&s);
}

static void test_server_shutdown_closes_1001(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL, 0);
    char url[64];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/echo", s.port);
    cl c = {0};
    parley_ws_opts o;
    cl_opts(&o, &c, url);
    assert_int_equal(parley_ws_new(s.loop, &o, &c.ws), 0);
    assert_int_equal(parley_ws_connect(c.ws), 0);
    assert_true(run_until(s.loop, &c.opened, 5000));
    phttpd_shutdown(s.httpd, on_shutdown, &s);
    assert_true(run_until(s.loop, &c.closed, 5000));
    assert_int_equal(c.close_code, 1001);
    assert_int_equal(c.close_err, 0);
    assert_true(run_until(s.loop, &s.shutdown_done, 5000));
    cl_free(&c);
    phttpd_free(s.httpd);
    parley_loop_free(s.loop);
}

/* ---- raw peers ---- */

static int raw_connect(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

typedef struct writer {
    int fd;
    size_t total;
    size_t written;
} writer;

/* Sends masked binary frames until the server gives up on us. */
static void *flood(void *arg)
{
    writer *w = arg;
    static const char req[] =
        "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n";
    if (write(w->fd, req, sizeof req - 1) < 0) return NULL;
    uint8_t frame[4 + 4 + 65535 - 4];
    size_t plen = sizeof frame - 8;
    frame[0] = 0x82;
    frame[1] = 0x80 | 126;
    frame[2] = (uint8_t)(plen >> 8);
    frame[3] = (uint8_t)plen;
    memset(frame + 4, 0, 4); /* zero mask: payload stays as is */
    memset(frame + 8, 'a', plen);
    while (w->written < w->total) {
        ssize_t n = send(w->fd, frame, sizeof frame, MSG_NOSIGNAL);
        if (n <= 0) break;
        w->written += (size_t)n;
    }
    return NULL;
}

static void test_slow_reader_is_dropped(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL, 256 * 1024);
    writer w = {.fd = raw_connect(s.port), .total = 256u << 20};
    /* Keep the kernel from absorbing everything. */
    int small = 64 * 1024;
    setsockopt(w.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, flood, &w), 0);
    bool dummy = false;
    uint64_t end = ptime_ms() + 20000;
    while (s.closed_count == 0 && ptime_ms() < end) run_until(s.loop, &dummy, 10);
    shutdown(w.fd, SHUT_RDWR);
    pthread_join(th, NULL);
    close(w.fd);
    assert_int_equal(s.closed_count, 1);
    assert_int_equal(s.last_closed_err, PARLEY_EFULL);
    /* It was dropped long before the flood ended. */
    assert_true(w.written < w.total);
    srv_stop(&s);
}

static void test_http_routes_and_deadline(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL, 0);
    int fd = raw_connect(s.port);
    /* Two pipelined requests, the second with a chunked body. */
    static const char req[] =
        "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
        "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n";
    assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
    char buf[2048];
    size_t got = 0;
    bool dummy = false;
    uint64_t end = ptime_ms() + 5000;
    while (ptime_ms() < end) {
        run_until(s.loop, &dummy, 5);
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, MSG_DONTWAIT);
        if (n > 0) got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, "hello 5")) break;
    }
    assert_non_null(strstr(buf, "hello 0"));
    assert_non_null(strstr(buf, "hello 5"));
    assert_true(strstr(buf, "hello 0") < strstr(buf, "hello 5"));
    /* Now idle, then a request that never completes: closed at the head
     * deadline (500 ms here), with no response. */
    assert_int_equal(write(fd, "GET /hel", 8), 8);
    uint64_t t0 = ptime_ms();
    got = 0;
    bool eof = false;
    while (!eof && ptime_ms() - t0 < 5000) {
        run_until(s.loop, &dummy, 5);
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) eof = true;
        if (n > 0) got += (size_t)n;
    }
    assert_true(eof);
    assert_int_equal(got, 0);
    assert_true(ptime_ms() - t0 >= 450);
    close(fd);
    srv_stop(&s);
}

/* ---- shared output blocks at the pconn level ---- */

typedef struct reader {
    int fd;
    uint8_t *buf;
    size_t len, cap;
    volatile bool done;
} reader;

static void *read_all(void *arg)
{
    reader *r = arg;
    for (;;) {
        if (r->len == r->cap) break;
        ssize_t n = recv(r->fd, r->buf + r->len, r->cap - r->len, 0);
        if (n <= 0) break;
        r->len += (size_t)n;
        /* Read slowly at first so that the server's writes go partial. */
        if (r->len < (1u << 20)) usleep(2000);
    }
    r->done = true;
    return NULL;
}

typedef struct shared_srv {
    parley_loop *loop;
    pconn *conn;
    bool closed;
} shared_srv;

static size_t ss_on_data(pconn *c, uint8_t *data, size_t len)
{
    (void)c;
    (void)data;
    return len;
}

typedef struct ss_conn {
    pconn c;
    shared_srv *s;
} ss_conn;

static void ss_on_close(pconn *c, int err)
{
    (void)err;
    ss_conn *x = PARLEY_CONTAINER_OF(c, ss_conn, c);
    x->s->closed = true;
    free(x);
}

static const pconn_cbs ss_cbs = {.on_data = ss_on_data, .on_close = ss_on_close};

static pconn *ss_accept(plistener *l, void *user)
{
    (void)l;
    shared_srv *s = user;
    ss_conn *x = malloc(sizeof *x);
    pconn_init(&x->c, s->loop, &ss_cbs, 64u << 20);
    x->s = s;
    s->conn = &x->c;
    return &x->c;
}

static void test_shared_output(void **state)
{
    (void)state;
    shared_srv s = {0};
    s.loop = parley_loop_new();
    plistener *l;
    assert_int_equal(plisten(s.loop, "127.0.0.1", 0, NULL, ss_accept, &s, &l), 0);
    unsigned port = plistener_port(l);
    int fd = raw_connect(port);
    bool dummy = false;
    uint64_t end = ptime_ms() + 5000;
    while (!s.conn && ptime_ms() < end) run_until(s.loop, &dummy, 5);
    assert_non_null(s.conn);

    /* Expected stream: owned, shared, owned, a shared slice, shared,
     * owned; the big block overflows the socket buffers. */
    size_t big_len = 6u << 20;
    pshared *big = pshared_new(big_len);
    uint64_t rng = chop_seed();
    for (size_t i = 0; i < big_len; i++) big->data[i] = (uint8_t)test_rand(&rng);
    pshared *small = pshared_from("shared-small", 12);
    pbuf want = {0};
    pconn *c = s.conn;
    assert_int_equal(pconn_write(c, "owned-1;", 8), 0);
    pbuf_append(&want, "owned-1;", 8);
    assert_int_equal(pconn_write_shared(c, big, 0, big_len), 0);
    pbuf_append(&want, big->data, big_len);
    assert_int_equal(pconn_write(c, "owned-2;", 8), 0);
    pbuf_append(&want, "owned-2;", 8);
    assert_int_equal(pconn_write_shared(c, big, 10, 100), 0);
    pbuf_append(&want, big->data + 10, 100);
    assert_int_equal(pconn_write_shared(c, small, 0, 12), 0);
    pbuf_append(&want, "shared-small", 12);
    /* More output while the first batch is still in flight. */
    run_until(s.loop, &dummy, 20);
    assert_int_equal(pconn_write_shared(c, small, 7, 5), 0);
    pbuf_append(&want, "small", 5);
    assert_int_equal(pconn_write(c, "owned-3", 7), 0);
    pbuf_append(&want, "owned-3", 7);
    /* The connection holds references; ours can go now. */
    pshared_unref(big);
    pshared_unref(small);
    pconn_close(c, true, 0);

    reader r = {.fd = fd, .cap = want.len + 16};
    r.buf = malloc(r.cap);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, read_all, &r), 0);
    end = ptime_ms() + 20000;
    while (!r.done && ptime_ms() < end) run_until(s.loop, &dummy, 5);
    pthread_join(th, NULL);
    assert_int_equal(r.len, want.len);
    assert_memory_equal(r.buf, want.ptr, want.len);
    free(r.buf);
    pbuf_free(&want);
    close(fd);
    end = ptime_ms() + 10000;
    while (!s.closed && ptime_ms() < end) run_until(s.loop, &dummy, 5);
    assert_true(s.closed);
    plistener_close(l);
    run_until(s.loop, &dummy, 10);
    parley_loop_free(s.loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_plain),
        cmocka_unit_test(test_echo_tls),
        cmocka_unit_test(test_connect_failures),
        cmocka_unit_test(test_free_inside_callback),
        cmocka_unit_test(test_server_shutdown_closes_1001),
        cmocka_unit_test(test_slow_reader_is_dropped),
        cmocka_unit_test(test_http_routes_and_deadline),
        cmocka_unit_test(test_shared_output),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
