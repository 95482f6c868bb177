/*
 * The HTTP server's guards against hostile peers (server/httpd.h): HEAD
 * answers without a body, case-sensitive methods, answers given on the
 * head before the body is read (and 100 Continue only for requests that
 * go on), streamed bodies that are never buffered, route body limits,
 * the in-flight budget of buffered bodies, and per-address connection
 * caps and rates. Raw sockets in the test thread drive an in-process
 * server whose loop runs between reads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "base/util.h"
#include "net/net.h"
#include "server/httpd.h"
#include "ws/wsconn.h"

typedef struct upload {
    size_t bytes;
    uint32_t sum;
} upload;

typedef struct srv {
    parley_loop *loop;
    phttpd *h;
    unsigned port;
    wsconn_opts wopts;
    phttpd_ws_endpoint ep;
    /* the streaming route */
    int heads, bodies, handled, aborted;
    size_t last_bytes;
    uint32_t last_sum;
    size_t stop_after; /* on_body stops once this many bytes arrived (0: never) */
    bool shutdown_done;
} srv;

static void route_plain(phttpd_req *req, void *user)
{
    (void)user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    phttpd_respond(req, 200, "text/plain", NULL, 0, "hello", 5);
}

/* A handler that builds a header from data it should not have trusted. */
static void route_badhdr(phttpd_req *req, void *user)
{
    (void)user;
    const http_header h[] = {{"X-Name", 6, "a\r\nSet-Cookie: x=1", 19}};
    int rc = phttpd_respond(req, 200, "text/plain", h, 1, "hello", 5);
    assert_int_equal(rc, PARLEY_EINVAL);
}

static void route_buf(phttpd_req *req, void *user)
{
    (void)user;
    char body[64];
    int n = snprintf(body, sizeof body, "got %zu", req->body_len);
    phttpd_respond(req, 200, "text/plain", NULL, 0, body, (size_t)n);
}

static void route_rate(phttpd_req *req, void *user)
{
    srv *s = user;
    uint64_t retry = 0;
    if (!phttpd_ip_take(s->h, req->conn, &retry)) {
        phttpd_respond(req, 429, "text/plain", NULL, 0, "slow", 4);
        return;
    }
    phttpd_respond(req, 200, "text/plain", NULL, 0, "fine", 4);
}

/* /up: needs "X-Key: ok" and a Content-Type, streams the body. */
static void up_head(phttpd_req *req, void *user)
{
    srv *s = user;
    s->heads++;
    const http_header *k = http_find_header(req->head, "x-key");
    if (!k || k->value_len != 2 || memcmp(k->value, "ok", 2) != 0) {
        phttpd_respond(req, 401, "text/plain", NULL, 0, "who are you", 11);
        return;
    }
    if (!http_find_header(req->head, "content-type")) {
        phttpd_respond(req, 415, "text/plain", NULL, 0, "what is it", 10);
        return;
    }
    upload *u = calloc(1, sizeof *u);
    assert_non_null(u);
    req->stream = true;
    req->state = u;
}

static int up_body(void *state, const uint8_t *data, size_t len, void *user)
{
    srv *s = user;
    upload *u = state;
    s->bodies++;
    for (size_t i = 0; i < len; i++) u->sum = u->sum * 31 + data[i];
    u->bytes += len;
    return s->stop_after && u->bytes >= s->stop_after ? 7 : 0;
}

static void up_abort(void *state, void *user)
{
    srv *s = user;
    s->aborted++;
    free(state);
}

static void up_done(phttpd_req *req, void *user)
{
    srv *s = user;
    upload *u = req->state;
    s->handled++;
    assert_non_null(u);
    assert_null(req->body);
    s->last_bytes = u->bytes;
    s->last_sum = u->sum;
    free(u);
    char body[64];
    int n = snprintf(body, sizeof body, "stored %zu", req->body_len);
    if (req->body_error)
        phttpd_respond(req, 413, "text/plain", NULL, 0, "stopped", 7);
    else
        phttpd_respond(req, 201, "text/plain", NULL, 0, body, (size_t)n);
}

static void ws_echo(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    wsconn_send(w, opcode, data, len);
}
static const wsconn_cbs ws_cbs = {.on_message = ws_echo};

/* /sse: a streamed response (phttpd_stream_*). */
static phttpd_stream *sse_st;
static int sse_closed;

static void sse_gone(phttpd_stream *st, void *user)
{
    (void)user;
    if (st == sse_st) sse_st = NULL;
    sse_closed++;
}

static void route_sse(phttpd_req *req, void *user)
{
    (void)user;
    http_header h = {"Cache-Control", 13, "no-store", 8};
    phttpd_stream *st = phttpd_stream_start(req, 200, "text/event-stream", &h, 1, sse_gone, NULL);
    if (!st) return;
    sse_st = st;
    assert_int_equal(phttpd_stream_write(st, "hello\n", 6), 0);
}

static void srv_start(srv *s, const phttpd_opts *custom)
{
    memset(s, 0, sizeof *s);
    s->loop = parley_loop_new();
    assert_non_null(s->loop);
    phttpd_opts o;
    phttpd_opts_init(&o);
    if (custom) o = *custom;
    o.head_timeout_ms = 2000;
    assert_int_equal(phttpd_new(s->loop, &o, &s->h), 0);
    assert_int_equal(phttpd_route(s->h, "/plain", route_plain, s), 0);
    assert_int_equal(phttpd_route(s->h, "/buf", route_buf, s), 0);
    assert_int_equal(phttpd_route(s->h, "/badhdr", route_badhdr, s), 0);
    assert_int_equal(phttpd_route(s->h, "/rate", route_rate, s), 0);
    assert_int_equal(phttpd_route(s->h, "/sse", route_sse, s), 0);
    phttpd_route_opts up = {.handler = up_done,
                            .max_body = 8u << 20,
                            .on_head = up_head,
                            .on_body = up_body,
                            .on_abort = up_abort,
                            .user = s};
    assert_int_equal(phttpd_route_ex(s->h, "/up", false, &up), 0);
    wsconn_opts_init(&s->wopts);
    s->wopts.cbs = &ws_cbs;
    s->ep = (phttpd_ws_endpoint){.ws_opts = &s->wopts};
    assert_int_equal(phttpd_route_ws(s->h, "/ws", &s->ep), 0);
    assert_int_equal(phttpd_listen(s->h, "127.0.0.1", 0, NULL, &s->port), 0);
}

static void on_shutdown(phttpd *h, void *user)
{
    (void)h;
    ((srv *)user)->shutdown_done = true;
}

static void srv_stop(srv *s)
{
    phttpd_shutdown(s->h, on_shutdown, s);
    for (int i = 0; i < 400 && !s->shutdown_done; i++) uv_run(s->loop->uv, UV_RUN_ONCE);
    assert_true(s->shutdown_done);
    phttpd_stats st;
    phttpd_stats_get(s->h, &st);
    assert_int_equal(st.body_inflight, 0); /* every share went back */
    phttpd_free(s->h);
    parley_loop_free(s->loop);
}

static void spin(srv *s, unsigned ms)
{
    uint64_t end = ptime_ms() + ms;
    while (ptime_ms() < end) {
        uv_run(s->loop->uv, UV_RUN_NOWAIT);
        usleep(200);
    }
}

static int raw_connect(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void send_all(srv *s, int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            b += w;
            n -= (size_t)w;
        } else {
            assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
            uv_run(s->loop->uv, UV_RUN_NOWAIT);
        }
    }
}

/* What the server sent within ms (until `until` appears, when given);
 * *eof tells whether it closed. */
typedef struct got {
    char buf[65536];
    size_t len;
    bool eof;
} got;

static void read_for(srv *s, int fd, got *g, unsigned ms, const char *until)
{
    uint64_t end = ptime_ms() + ms;
    while (ptime_ms() < end && !g->eof) {
        uv_run(s->loop->uv, UV_RUN_NOWAIT);
        ssize_t n = recv(fd, g->buf + g->len, sizeof g->buf - 1 - g->len, MSG_DONTWAIT);
        if (n > 0) g->len += (size_t)n;
        if (n == 0 || (n < 0 && errno == ECONNRESET)) g->eof = true;
        g->buf[g->len] = 0;
        if (until && strstr(g->buf, until)) return;
        if (n <= 0) usleep(200);
    }
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static void test_head_has_no_body(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    int fd = raw_connect(s.port);
    static const char req[] = "HEAD /plain HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(&s, fd, req, sizeof req - 1);
    got g = {0};
    read_for(&s, fd, &g, 2000, "hello");
    read_for(&s, fd, &g, 100, NULL);
    /* Two answers with the same head, one body. */
    assert_int_equal(count(g.buf, "HTTP/1.1 200 OK"), 2);
    assert_int_equal(count(g.buf, "Content-Length: 5\r\n"), 2);
    assert_int_equal(count(g.buf, "hello"), 1);
    const char *second = strstr(g.buf + 1, "HTTP/1.1 200");
    assert_non_null(second);
    /* Nothing between the first head's end and the second status line. */
    assert_true(strstr(g.buf, "\r\n\r\n") + 4 == second);
    assert_false(g.eof);
    close(fd);
    srv_stop(&s);
}

/* A header the writer refuses: the client gets a 500 and the connection
 * ends (before, nothing was sent and the client waited), and the
 * injected header never reaches the wire. */
static void test_bad_header_answers_500(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    int fd = raw_connect(s.port);
    static const char req[] = "GET /badhdr HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(&s, fd, req, sizeof req - 1);
    got g = {0};
    read_for(&s, fd, &g, 2000, NULL);
    assert_int_equal(count(g.buf, "HTTP/1.1 500 "), 1);
    assert_int_equal(count(g.buf, "Set-Cookie"), 0);
    assert_int_equal(count(g.buf, "hello"), 0);
    assert_true(g.eof);
    close(fd);
    srv_stop(&s);
}

static void test_methods_case_sensitive(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    int fd = raw_connect(s.port);
    static const char req[] = "get /plain HTTP/1.1\r\nHost: x\r\n\r\n"
                              "DELETE /plain HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(&s, fd, req, sizeof req - 1);
    got g = {0};
    read_for(&s, fd, &g, 2000, NULL);
    assert_int_equal(count(g.buf, "HTTP/1.1 405 "), 2);
    assert_int_equal(count(g.buf, "Allow: GET, HEAD\r\n"), 2);
    assert_int_equal(count(g.buf, "hello"), 0);
    close(fd);
    srv_stop(&s);
}

/* A request refused on its head: answered before any body byte is sent;
 * a large body ends the connection, the route never sees a byte. */
static void test_early_answer_large_body(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    int fd = raw_connect(s.port);
    static const char req[] = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                              "Content-Length: 5000000\r\n\r\n";
    send_all(&s, fd, req, sizeof req - 1);
    got g = {0};
    read_for(&s, fd, &g, 2000, "who are you");
    assert_non_null(strstr(g.buf, "HTTP/1.1 401 "));
    assert_non_null(strstr(g.buf, "Connection: close"));
    read_for(&s, fd, &g, 2000, NULL);
    assert_true(g.eof);
    assert_int_equal(s.heads, 1);
    assert_int_equal(s.bodies, 0);
    assert_int_equal(s.handled, 0);
    phttpd_stats st;
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.early_answers, 1);
    close(fd);
    srv_stop(&s);
}

/* A small body after an early answer is read and dropped: the connection
 * goes on with the next request. */
static void test_early_answer_small_body_keeps_connection(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    int fd = raw_connect(s.port);
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "POST /up HTTP/1.1\r\nHost: x\r\nX-Key: ok\r\nContent-Length: 1000\r\n\r\n");
    memset(req + n, 'B', 1000);
    n += 1000;
    n += snprintf(req + n, sizeof req - (size_t)n, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
    send_all(&s, fd, req, (size_t)n);
    got g = {0};
    read_for(&s, fd, &g, 2000, "hello");
    assert_non_null(strstr(g.buf, "HTTP/1.1 415 "));
    assert_non_null(strstr(g.buf, "hello"));
    assert_false(g.eof);
    assert_int_equal(s.bodies, 0);
    close(fd);
    srv_stop(&s);
}

static void test_expect_continue_only_when_accepted(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    /* Refused: no 100 Continue, just the answer. */
    int fd = raw_connect(s.port);
    static const char bad[] = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: a/b\r\n"
                              "Expect: 100-continue\r\nContent-Length: 10\r\n\r\n";
    send_all(&s, fd, bad, sizeof bad - 1);
    got g = {0};
    read_for(&s, fd, &g, 2000, "who are you");
    assert_null(strstr(g.buf, "100 Continue"));
    assert_non_null(strstr(g.buf, "401"));
    close(fd);
    /* Accepted: 100 Continue first, then the body is taken. */
    fd = raw_connect(s.port);
    static const char good[] = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: a/b\r\nX-Key: ok\r\n"
                               "Expect: 100-continue\r\nContent-Length: 10\r\n\r\n";
    send_all(&s, fd, good, sizeof good - 1);
    got g2 = {0};
    read_for(&s, fd, &g2, 2000, "100 Continue\r\n\r\n");
    assert_non_null(strstr(g2.buf, "HTTP/1.1 100 Continue"));
    send_all(&s, fd, "0123456789", 10);
    read_for(&s, fd, &g2, 2000, "stored 10");
    assert_non_null(strstr(g2.buf, "HTTP/1.1 201 "));
    assert_int_equal(s.last_bytes, 10);
    close(fd);
    srv_stop(&s);
}

/* 3 MB in random pieces, chunked and not: streamed to the route, never
 * held by the server (which allows 1 MiB bodies by default). */
static void test_streamed_upload(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    size_t total = 3u << 20;
    uint8_t *body = malloc(total);
    assert_non_null(body);
    uint32_t sum = 0;
    for (size_t i = 0; i < total; i++) {
        body[i] = (uint8_t)(i * 7 + (i >> 11));
        sum = sum * 31 + body[i];
    }
    for (int chunked = 0; chunked < 2; chunked++) {
        int fd = raw_connect(s.port);
        char head[256];
        int n = snprintf(head, sizeof head,
                         chunked ? "POST /up HTTP/1.1\r\nHost: x\r\nX-Key: ok\r\n"
                                   "Content-Type: a/b\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 : "POST /up HTTP/1.1\r\nHost: x\r\nX-Key: ok\r\n"
                                   "Content-Type: a/b\r\nContent-Length: %zu\r\n\r\n",
                         total);
        send_all(&s, fd, head, (size_t)n);
        srand(7);
        size_t off = 0;
        phttpd_stats st;
        while (off < total) {
            size_t k = 1 + (size_t)rand() % 70000;
            if (k > total - off) k = total - off;
            if (chunked) {
                char sz[32];
                int m = snprintf(sz, sizeof sz, "%zx\r\n", k);
                send_all(&s, fd, sz, (size_t)m);
            }
            send_all(&s, fd, body + off, k);
            if (chunked) send_all(&s, fd, "\r\n", 2);
            off += k;
            uv_run(s.loop->uv, UV_RUN_NOWAIT);
            phttpd_stats_get(s.h, &st);
            assert_int_equal(st.body_inflight, 0);
        }
        if (chunked) send_all(&s, fd, "0\r\n\r\n", 5);
        got g = {0};
        read_for(&s, fd, &g, 5000, "stored");
        assert_non_null(strstr(g.buf, "HTTP/1.1 201 "));
        assert_int_equal(s.last_bytes, total);
        assert_int_equal(s.last_sum, sum);
        assert_true(s.bodies > 1);
        close(fd);
    }
    assert_int_equal(s.handled, 2);
    assert_int_equal(s.aborted, 0);
    free(body);
    srv_stop(&s);
}

static void test_route_limit_and_stop(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    /* Over the route's limit: 413 on the head. */
    int fd = raw_connect(s.port);
    static const char big[] = "POST /up HTTP/1.1\r\nHost: x\r\nX-Key: ok\r\nContent-Type: a/b\r\n"
                              "Content-Length: 9000000\r\n\r\n";
    send_all(&s, fd, big, sizeof big - 1);
    got g = {0};
    read_for(&s, fd, &g, 2000, "\r\n\r\n");
    assert_non_null(strstr(g.buf, "HTTP/1.1 413 "));
    assert_int_equal(s.bodies, 0);
    assert_int_equal(s.aborted, 1); /* the state on_head made was released */
    close(fd);
    /* The route stops a body midway: its handler answers, the rest is
     * not read. */
    s.stop_after = 100000;
    fd = raw_connect(s.port);
    static const char req[] = "POST /up HTTP/1.1\r\nHost: x\r\nX-Key: ok\r\nContent-Type: a/b\r\n"
                              "Content-Length: 1000000\r\n\r\n";
    send_all(&s, fd, req, sizeof req - 1);
    static uint8_t chunk[200000];
    send_all(&s, fd, chunk, sizeof chunk);
    got g2 = {0};
    read_for(&s, fd, &g2, 2000, "stopped");
    assert_non_null(strstr(g2.buf, "HTTP/1.1 413 "));
    read_for(&s, fd, &g2, 2000, NULL);
    assert_true(g2.eof);
    close(fd);
    assert_int_equal(s.handled, 1);
    srv_stop(&s);
}

/* A client that goes away mid-body: on_abort once, no handler. */
static void test_stream_abort(void **state)
{
    (void)state;
    srv s;
    srv_start(&s, NULL);
    int fd = raw_connect(s.port);
    static const char req[] = "POST /up HTTP/1.1\r\nHost: x\r\nX-Key: ok\r\nContent-Type: a/b\r\n"
                              "Content-Length: 1000000\r\n\r\n";
    send_all(&s, fd, req, sizeof req - 1);
    static uint8_t chunk[10000];
    send_all(&s, fd, chunk, sizeof chunk);
    spin(&s, 50);
    close(fd);
    spin(&s, 100);
    assert_int_equal(s.aborted, 1);
    assert_int_equal(s.handled, 0);
    srv_stop(&s);
}

/* Buffered bodies share a budget: a head whose body cannot fit is 503. */
static void test_inflight_budget(void **state)
{
    (void)state;
    phttpd_opts o;
    phttpd_opts_init(&o);
    o.max_body_inflight = 100000;
    srv s;
    srv_start(&s, &o);
    int a = raw_connect(s.port);
    static const char head[] = "POST /buf HTTP/1.1\r\nHost: x\r\nContent-Length: 80000\r\n\r\n";
    send_all(&s, a, head, sizeof head - 1);
    static uint8_t part[60000];
    send_all(&s, a, part, sizeof part);
    spin(&s, 50);
    phttpd_stats st;
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.body_inflight, 60000);
    int b = raw_connect(s.port);
    send_all(&s, b, head, sizeof head - 1);
    got gb = {0};
    read_for(&s, b, &gb, 2000, "retry later");
    assert_non_null(strstr(gb.buf, "HTTP/1.1 503 "));
    assert_non_null(strstr(gb.buf, "Retry-After: 1"));
    /* The first one completes normally and gives its share back. */
    send_all(&s, a, part, 20000);
    got ga = {0};
    read_for(&s, a, &ga, 2000, "got 80000");
    assert_non_null(strstr(ga.buf, "got 80000"));
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.body_inflight, 0);
    assert_int_equal(st.refused_budget, 1);
    /* A chunked body that grows past the budget is cut off with 503. */
    int c = raw_connect(s.port);
    static const char ch[] = "POST /buf HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    send_all(&s, c, ch, sizeof ch - 1);
    for (int i = 0; i < 3; i++) {
        send_all(&s, c, "ea60\r\n", 6); /* 60000 */
        send_all(&s, c, part, sizeof part);
        send_all(&s, c, "\r\n", 2);
    }
    got gc = {0};
    read_for(&s, c, &gc, 2000, "retry later");
    assert_non_null(strstr(gc.buf, "HTTP/1.1 503 "));
    close(a);
    close(b);
    close(c);
    srv_stop(&s);
}

static void test_conns_per_ip(void **state)
{
    (void)state;
    phttpd_opts o;
    phttpd_opts_init(&o);
    o.max_conns_per_ip = 3;
    srv s;
    srv_start(&s, &o);
    int fds[3];
    for (int i = 0; i < 3; i++) fds[i] = raw_connect(s.port);
    spin(&s, 50);
    assert_int_equal(phttpd_connections(s.h), 3);
    int extra = raw_connect(s.port);
    got g = {0};
    read_for(&s, extra, &g, 2000, NULL);
    assert_true(g.eof);
    assert_int_equal(g.len, 0);
    close(extra);
    phttpd_stats st;
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.refused_conns_ip, 1);
    assert_int_equal(st.addresses, 1);
    /* The first three still work; after one leaves, a new one is let in. */
    send_all(&s, fds[0], "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", 32);
    got g0 = {0};
    read_for(&s, fds[0], &g0, 2000, "hello");
    assert_non_null(strstr(g0.buf, "hello"));
    close(fds[1]);
    spin(&s, 50);
    int again = raw_connect(s.port);
    send_all(&s, again, "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", 32);
    got g1 = {0};
    read_for(&s, again, &g1, 2000, "hello");
    assert_non_null(strstr(g1.buf, "hello"));
    close(again);
    close(fds[0]);
    close(fds[2]);
    spin(&s, 50);
    /* Idle and full again: nothing is kept for the address. */
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.addresses, 0);
    srv_stop(&s);
}

static void test_ip_rate(void **state)
{
    (void)state;
    phttpd_opts o;
    phttpd_opts_init(&o);
    o.ip_rate = prate_limit(2, 1000, 2);
    srv s;
    srv_start(&s, &o);
    int fd = raw_connect(s.port);
    static const char req[] = "GET /rate HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /rate HTTP/1.1\r\nHost: x\r\n\r\n"
                              "GET /rate HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(&s, fd, req, sizeof req - 1);
    got g = {0};
    read_for(&s, fd, &g, 2000, "slow");
    assert_int_equal(count(g.buf, "fine"), 2);
    assert_int_equal(count(g.buf, "slow"), 1);
    /* A WebSocket upgrade draws from the same bucket: 429 with a hint. */
    int w = raw_connect(s.port);
    static const char up[] =
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n";
    send_all(&s, w, up, sizeof up - 1);
    got gw = {0};
    read_for(&s, w, &gw, 2000, "retry later");
    assert_non_null(strstr(gw.buf, "HTTP/1.1 429 "));
    assert_non_null(strstr(gw.buf, "Retry-After: 1\r\n"));
    close(w);
    /* Half a second later one token is back. */
    spin(&s, 550);
    int w2 = raw_connect(s.port);
    send_all(&s, w2, up, sizeof up - 1);
    got gw2 = {0};
    read_for(&s, w2, &gw2, 2000, "\r\n\r\n");
    assert_non_null(strstr(gw2.buf, "HTTP/1.1 101 "));
    close(w2);
    close(fd);
    phttpd_stats st;
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.refused_rate_ip, 2);
    srv_stop(&s);
}

static void test_streams(void **state)
{
    (void)state;
    phttpd_opts o;
    phttpd_opts_init(&o);
    o.max_streams = 1;
    o.max_stream_queue = 4096;
    srv s;
    srv_start(&s, &o);
    sse_st = NULL;
    sse_closed = 0;
    static const char req[] = "GET /sse HTTP/1.1\r\nHost: x\r\n\r\n";
    int a = raw_connect(s.port);
    send_all(&s, a, req, sizeof req - 1);
    got g = {0};
    read_for(&s, a, &g, 2000, "hello\n");
    assert_non_null(strstr(g.buf, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(g.buf, "Content-Type: text/event-stream\r\n"));
    assert_non_null(strstr(g.buf, "Connection: close\r\n"));
    assert_null(strstr(g.buf, "Content-Length"));
    assert_non_null(sse_st);
    /* Later writes arrive as they are made. */
    assert_int_equal(phttpd_stream_write(sse_st, "more\n", 5), 0);
    read_for(&s, a, &g, 2000, "more\n");
    assert_false(g.eof);
    /* One stream at most: the next request gets 503. */
    int b = raw_connect(s.port);
    send_all(&s, b, req, sizeof req - 1);
    got gb = {0};
    read_for(&s, b, &gb, 2000, "retry later");
    assert_non_null(strstr(gb.buf, "HTTP/1.1 503 "));
    close(b);
    phttpd_stats st;
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.streams, 1);
    assert_int_equal(st.streams_refused, 1);
    assert_true(st.responses[2] >= 1 && st.responses[5] >= 1);
    /* More unsent bytes than the stream may queue: dropped, on_close runs
     * once, the client sees the end. */
    static char big[8192];
    memset(big, 'x', sizeof big);
    assert_int_equal(phttpd_stream_write(sse_st, big, sizeof big), PARLEY_EFULL);
    read_for(&s, a, &g, 2000, NULL);
    assert_true(g.eof);
    assert_int_equal(sse_closed, 1);
    assert_null(sse_st);
    phttpd_stats_get(s.h, &st);
    assert_int_equal(st.streams, 0);
    assert_int_equal(st.streams_dropped, 1);
    close(a);
    /* A HEAD request gets the head and no stream. */
    int h = raw_connect(s.port);
    static const char head[] = "HEAD /sse HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(&s, h, head, sizeof head - 1);
    got gh = {0};
    read_for(&s, h, &gh, 2000, "\r\n\r\n");
    assert_non_null(strstr(gh.buf, "HTTP/1.1 200 "));
    assert_null(sse_st);
    close(h);
    /* Shutdown ends an open stream (on_close) and the client sees it. */
    int c = raw_connect(s.port);
    send_all(&s, c, req, sizeof req - 1);
    got gc = {0};
    read_for(&s, c, &gc, 2000, "hello\n");
    assert_non_null(sse_st);
    phttpd_shutdown(s.h, on_shutdown, &s);
    read_for(&s, c, &gc, 2000, NULL);
    assert_true(gc.eof);
    close(c); /* a graceful close completes when the peer's end comes */
    for (int i = 0; i < 400 && sse_closed < 2; i++) uv_run(s.loop->uv, UV_RUN_ONCE);
    assert_int_equal(sse_closed, 2);
    srv_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streams),
        cmocka_unit_test(test_head_has_no_body),
        cmocka_unit_test(test_bad_header_answers_500),
        cmocka_unit_test(test_methods_case_sensitive),
        cmocka_unit_test(test_early_answer_large_body),
        cmocka_unit_test(test_early_answer_small_body_keeps_connection),
        cmocka_unit_test(test_expect_continue_only_when_accepted),
        cmocka_unit_test(test_streamed_upload),
        cmocka_unit_test(test_route_limit_and_stop),
        cmocka_unit_test(test_stream_abort),
        cmocka_unit_test(test_inflight_budget),
        cmocka_unit_test(test_conns_per_ip),
        cmocka_unit_test(test_ip_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
