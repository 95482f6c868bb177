/* HTTP/1.1 server connections: request heads and bodies, routing, the
 * WebSocket upgrade, deadlines, shutdown. */
#include "server/httpd.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "base/map.h"
#include "base/util.h"

#define MAX_LISTENERS   8
#define IP_SWEEP_MS     60000
#define LOG_INTERVAL_MS 10000

typedef struct route {
    char *path;
    size_t path_len;
    bool prefix;
    phttpd_route_opts o; /* o.handler NULL for WebSocket routes */
    const phttpd_ws_endpoint *ws;
} route;

/* What is known about one client address (IPv4, or an IPv6 /64). */
typedef struct ipent {
    uint8_t key[8];
    uint8_t klen;
    uint32_t conns;
    prate rate;
} ipent;

/* The connection's mode lives in a pconn flag bit reserved for owners. */
#define SC_WS_FLAG PCONN_OWNER1
#define IS_WS(sc)  (((sc)->c.flags & SC_WS_FLAG) != 0)
/* A WebSocket route's session (counted in the stats). */
#define SC_WSR_FLAG (PCONN_OWNER1 << 1)

typedef struct srv_conn srv_conn;

struct phttpd {
    parley_loop *loop;
    phttpd_opts opts;
    http_limits parse_limits; /* opts.limits with the body limit left to routes */
    route *routes;
    size_t nroutes;
    plistener *listeners[MAX_LISTENERS];
    size_t nlisteners;
    http_header *hdrs; /* scratch for parsing heads (single-threaded) */
    unsigned nconns;   /* open connections (found with uv_walk at shutdown) */
    bool shutting_down;
    void (*done)(phttpd *s, void *user);
    void *done_user;
    pmap ips;        /* address key -> ipent, while tracked */
    ptimer ip_sweep; /* frees idle, full entries */
    phttpd_stats st;
    plog_limit log_ip, log_budget, log_req;
};

/* Where a request is: reading its head, or its body one of three ways. */
enum { PH_HEAD, PH_BUFFER, PH_STREAM, PH_DISCARD };

/* HTTP state, allocated while the connection speaks HTTP (not kept by
 * WebSocket sessions, which need a third of it). */
typedef struct sc_http {
    srv_conn *sc;
    http_parser parser;
    http_body body;
    ptimer timer;
    uint8_t phase;
    bool idle;          /* keep-alive: waiting for the first byte of a request */
    bool awaiting;      /* a deferred response is pending */
    bool keep;          /* keep-alive decision of the deferred request */
    bool head_only;     /* the deferred request is HEAD */
    bool in_head;       /* inside a route's on_head */
    bool close_after;   /* an early answer: close once the body is dropped */
    size_t head_len;    /* PH_BUFFER: the head's bytes at the start of the input */
    size_t raw_pos;     /* PH_BUFFER: input offset up to which the body is decoded */
    size_t decoded;     /* PH_BUFFER: decoded body bytes, packed right after the head */
    uint64_t reserved;  /* bytes of the in-flight budget this request holds */
    uint64_t discarded; /* PH_DISCARD: body bytes dropped */
    const route *route; /* of the request whose body is being read */
    uint8_t *head_copy; /* PH_STREAM: the head, kept for the handler */
    void *state;        /* PH_STREAM: the route's */
    phttpd_abort_fn on_abort;
    void *abort_user;
    bool streaming; /* the deferred request is a phttpd_stream */
    phttpd_stream_close_fn stream_close;
    void *stream_user;
} sc_http;

/* 472 bytes: an idle WebSocket connection costs one allocation (480
 * bytes with malloc's header) and nothing else. */
struct srv_conn {
    pconn c;
    phttpd *srv;
    ipent *ip; /* NULL when addresses are not tracked */
    union {
        sc_http *http;
        wsconn ws;
    } u;
};

void phttpd_opts_init(phttpd_opts *o)
{
    memset(o, 0, sizeof *o);
    http_limits_init(&o->limits);
    o->head_timeout_ms = 10000;
    o->keepalive_timeout_ms = 60000;
    o->max_output = 8u << 20;
    o->max_body_inflight = 64u << 20;
    o->max_discard = 256u << 10;
    o->max_streams = 16;
    o->max_stream_queue = 256u << 10;
}

static void count_status(phttpd *s, int status)
{
    if (status >= 100 && status < 600) s->st.responses[status / 100]++;
}

static void on_ip_sweep(ptimer *t);

static void set_parse_limits(phttpd *s)
{
    s->parse_limits = s->opts.limits;
    /* Each route checks its own limit once the head names the route. */
    s->parse_limits.max_body = UINT64_MAX;
}

int phttpd_new(parley_loop *loop, const phttpd_opts *opts, phttpd **out)
{
    phttpd *s = pcalloc(1, sizeof *s);
    if (!s) return PARLEY_ENOMEM;
    s->loop = loop;
    if (opts)
        s->opts = *opts;
    else
        phttpd_opts_init(&s->opts);
    if (s->opts.limits.max_headers == 0) s->opts.limits.max_headers = 64;
    s->hdrs = pcalloc(s->opts.limits.max_headers, sizeof *s->hdrs);
    if (!s->hdrs) {
        free(s);
        return PARLEY_ENOMEM;
    }
    set_parse_limits(s);
    ptimer_init(&s->ip_sweep, on_ip_sweep);
    *out = s;
    return 0;
}

int phttpd_set_opts(phttpd *s, const phttpd_opts *opts)
{
    phttpd_opts o = *opts;
    if (o.limits.max_headers == 0) o.limits.max_headers = 64;
    if (o.limits.max_body < s->opts.limits.max_body) o.limits.max_body = s->opts.limits.max_body;
    http_header *h = pcalloc(o.limits.max_headers, sizeof *h);
    if (!h) return PARLEY_ENOMEM;
    free(s->hdrs);
    s->hdrs = h;
    s->opts = o;
    set_parse_limits(s);
    return 0;
}

static int add_route(phttpd *s, const char *path, const phttpd_route_opts *o,
                     const phttpd_ws_endpoint *ws, bool prefix)
{
    if (!path || path[0] != '/') return PARLEY_EINVAL;
    route *r = realloc(s->routes, (s->nroutes + 1) * sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    s->routes = r;
    r = &s->routes[s->nroutes];
    memset(r, 0, sizeof *r);
    r->path = strdup(path);
    if (!r->path) return PARLEY_ENOMEM;
    r->path_len = strlen(path);
    if (o) r->o = *o;
    r->ws = ws;
    r->prefix = prefix;
    s->nroutes++;
    return 0;
}

int phttpd_route(phttpd *s, const char *path, phttpd_handler h, void *user)
{
    phttpd_route_opts o = {.handler = h, .user = user};
    return phttpd_route_ex(s, path, false, &o);
}

int phttpd_route_prefix(phttpd *s, const char *prefix, phttpd_handler h, void *user)
{
    phttpd_route_opts o = {.handler = h, .user = user};
    return phttpd_route_ex(s, prefix, true, &o);
}

int phttpd_route_ex(phttpd *s, const char *path, bool prefix, const phttpd_route_opts *o)
{
    if (!o || !o->handler || (o->on_body && !o->on_head)) return PARLEY_EINVAL;
    return add_route(s, path, o, NULL, prefix);
}

int phttpd_route_ws(phttpd *s, const char *path, const phttpd_ws_endpoint *ep)
{
    if (!ep || !ep->ws_opts || !ep->ws_opts->cbs) return PARLEY_EINVAL;
    return add_route(s, path, NULL, ep, false);
}

bool phttpd_allow(phttpd_req *req, const char *allowed)
{
    const char *m = req->head->method;
    size_t n = req->head->method_len;
    for (const char *p = allowed; *p;) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        if ((size_t)(e - p) == n && n && memcmp(p, m, n) == 0) return true;
        p = e;
    }
    http_header allow = {"Allow", 5, allowed, strlen(allowed)};
    phttpd_respond(req, 405, "text/plain; charset=utf-8", &allow, 1, "method not allowed\n", 19);
    return false;
}

void phttpd_stats_get(const phttpd *s, phttpd_stats *st)
{
    *st = s->st;
    st->addresses = (unsigned)s->ips.n;
}

/* ---- client addresses ---- */

static bool tracking(const phttpd *s)
{
    return s->opts.max_conns_per_ip || s->opts.ip_rate.tokens;
}

/* IPv4 addresses (also IPv4-mapped IPv6) by their 4 bytes; IPv6 by the
 * /64 prefix, since one host commonly holds a whole /64. */
static size_t ip_key(const struct sockaddr *sa, uint8_t key[8])
{
    if (sa->sa_family == AF_INET) {
        memcpy(key, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 4;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            memcpy(key, a + 12, 4);
            return 4;
        }
        memcpy(key, a, 8);
        return 8;
    }
    return 0;
}

static void ip_maybe_free(phttpd *s, ipent *e)
{
    if (e->conns || !prate_full(&e->rate, &s->opts.ip_rate, ploop_now(s->loop))) {
        /* No sweep keeps a server that is shutting down alive. */
        if (!e->conns && !ptimer_armed(&s->ip_sweep) && !s->shutting_down)
            ploop_timer_start(s->loop, &s->ip_sweep, IP_SWEEP_MS);
        return;
    }
    pmap_del(&s->ips, (const char *)e->key, e->klen);
    free(e);
}

static void on_ip_sweep(ptimer *t)
{
    phttpd *s = PARLEY_CONTAINER_OF(t, phttpd, ip_sweep);
    uint64_t now = ploop_now(s->loop);
    bool left = false;
    size_t pos = 0;
    pmap_entry *me;
    while ((me = pmap_next(&s->ips, &pos))) {
        ipent *e = me->val;
        if (e->conns) continue;
        if (prate_full(&e->rate, &s->opts.ip_rate, now)) {
            pmap_del(&s->ips, (const char *)e->key, e->klen);
            free(e);
            pos--; /* a later entry may have moved into this slot */
        } else {
            left = true;
        }
    }
    if (left && !s->shutting_down) ploop_timer_start(s->loop, &s->ip_sweep, IP_SWEEP_MS);
}

static bool on_admit(plistener *l, pconn *c, const struct sockaddr *peer, void *user)
{
    (void)l;
    phttpd *s = user;
    srv_conn *sc = PARLEY_CONTAINER_OF(c, srv_conn, c);
    if (!tracking(s)) return true;
    uint8_t key[8];
    size_t klen = ip_key(peer, key);
    if (!klen) return true;
    ipent *e = pmap_get(&s->ips, (const char *)key, klen);
    if (!e) {
        e = pcalloc(1, sizeof *e);
        if (!e) return false;
        memcpy(e->key, key, klen);
        e->klen = (uint8_t)klen;
        if (pmap_put(&s->ips, (const char *)e->key, klen, e) != 0) {
            free(e);
            return false;
        }
    }
    if (s->opts.max_conns_per_ip && e->conns >= s->opts.max_conns_per_ip) {
        s->st.refused_conns_ip++;
        uint64_t held;
        if (plog_limit_ok(&s->log_ip, ploop_now(s->loop), LOG_INTERVAL_MS, &held)) {
            char peer_name[64];
            pconn_peer_name(c, peer_name, sizeof peer_name);
            plog_warn("http %s: over %u connections from one address: refused (%llu more "
                      "refusals not logged)",
                      peer_name, s->opts.max_conns_per_ip, (unsigned long long)held);
        }
        ip_maybe_free(s, e);
        return false;
    }
    e->conns++;
    sc->ip = e;
    return true;
}

bool phttpd_ip_take(phttpd *s, pconn *c, uint64_t *retry_ms)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(c, srv_conn, c);
    if (!sc->ip || !s->opts.ip_rate.tokens) return true;
    if (prate_take(&sc->ip->rate, &s->opts.ip_rate, ploop_now(s->loop), 1, retry_ms)) return true;
    s->st.refused_rate_ip++;
    return false;
}

static const route *find_route(phttpd *s, const char *path, size_t len)
{
    const route *best = NULL;
    for (size_t i = 0; i < s->nroutes; i++) {
        const route *r = &s->routes[i];
        if (!r->prefix) {
            if (r->path_len == len && memcmp(r->path, path, len) == 0) return r;
        } else if (r->path_len <= len && memcmp(r->path, path, r->path_len) == 0 &&
                   (!best || r->path_len > best->path_len)) {
            best = r;
        }
    }
    return best;
}

parley_loop *phttpd_loop(const phttpd *s)
{
    return s->loop;
}

unsigned phttpd_connections(const phttpd *s)
{
    return s->nconns;
}

/* Connection plumbing. */

static size_t sc_on_data(pconn *c, uint8_t *data, size_t len);
static void sc_on_eof(pconn *c);
static void sc_on_close(pconn *c, int err);
static const pconn_cbs sc_cbs = {
    .on_data = sc_on_data, .on_eof = sc_on_eof, .on_close = sc_on_close};

/* The request whose body was being read is over, one way or another:
 * give back its share of the budget, and its state if a streaming route
 * never got to answer. */
static void body_release(srv_conn *sc, bool aborted)
{
    sc_http *h = sc->u.http;
    phttpd *s = sc->srv;
    s->st.body_inflight -= h->reserved;
    h->reserved = 0;
    if (aborted && h->state && h->route && h->route->o.on_abort)
        h->route->o.on_abort(h->state, h->route->o.user);
    h->state = NULL;
    free(h->head_copy);
    h->head_copy = NULL;
    h->route = NULL;
}

static void on_http_timeout(ptimer *t)
{
    sc_http *h = PARLEY_CONTAINER_OF(t, sc_http, timer);
    srv_conn *sc = h->sc;
    char peer[64];
    pconn_peer_name(&sc->c, peer, sizeof peer);
    uint64_t held;
    if (h->idle) {
        plog_debug("http %s: keep-alive idle timeout", peer);
    } else if (plog_limit_ok(&sc->srv->log_req, ploop_now(sc->c.loop), LOG_INTERVAL_MS, &held)) {
        plog_info("http %s: request not complete within %u ms (%llu more bad requests since the "
                  "last line)",
                  peer, sc->srv->opts.head_timeout_ms, (unsigned long long)held);
    }
    /* A request that is still arriving cannot be answered sensibly; the
     * peer is slow or hostile. */
    pconn_close(&sc->c, false, PARLEY_ETIMEDOUT);
}

static void http_start_request(srv_conn *sc, bool first)
{
    sc_http *h = sc->u.http;
    h->phase = PH_HEAD;
    h->head_len = h->raw_pos = h->decoded = 0;
    h->discarded = 0;
    h->close_after = false;
    http_parser_reset(&h->parser, false);
    if (first) {
        h->idle = false;
        ploop_timer_start(sc->c.loop, &h->timer, sc->srv->opts.head_timeout_ms);
    } else {
        h->idle = true;
        ploop_timer_start(sc->c.loop, &h->timer, sc->srv->opts.keepalive_timeout_ms);
    }
}

static pconn *on_accept(plistener *l, void *user)
{
    (void)l;
    phttpd *s = user;
    if (s->shutting_down) return NULL;
    srv_conn *sc = pcalloc(1, sizeof *sc);
    sc_http *h = pcalloc(1, sizeof *h);
    if (!sc || !h) {
        free(sc);
        free(h);
        return NULL;
    }
    sc->srv = s;
    sc->u.http = h;
    h->sc = sc;
    pconn_init(&sc->c, s->loop, &sc_cbs, s->opts.max_output);
    http_parser_init(&h->parser, false, &s->parse_limits);
    ptimer_init(&h->timer, on_http_timeout);
    http_start_request(sc, true);
    s->nconns++;
    return &sc->c;
}

int phttpd_listen(phttpd *s, const char *host, unsigned port, ptls_ctx *tls, unsigned *bound)
{
    if (s->nlisteners == MAX_LISTENERS) return PARLEY_ELIMIT;
    plistener *l;
    int rc = plisten(s->loop, host, port, tls, on_accept, s, &l);
    if (rc) return rc;
    plisten_set_admit(l, on_admit);
    s->listeners[s->nlisteners++] = l;
    if (bound) *bound = plistener_port(l);
    return 0;
}

int phttpd_listen_fd(phttpd *s, int fd, ptls_ctx *tls, unsigned *bound)
{
    if (s->nlisteners == MAX_LISTENERS) {
        close(fd);
        return PARLEY_ELIMIT;
    }
    plistener *l;
    int rc = plisten_fd(s->loop, fd, tls, on_accept, s, &l);
    if (rc) return rc;
    plisten_set_admit(l, on_admit);
    s->listeners[s->nlisteners++] = l;
    if (bound) *bound = plistener_port(l);
    return 0;
}

/* Responses. */

static bool is_head(const http_head *h)
{
    return h->method_len == 4 && memcmp(h->method, "HEAD", 4) == 0;
}

static void send_error(srv_conn *sc, int status, const char *why)
{
    count_status(sc->srv, status);
    pbuf *out = pconn_out(&sc->c);
    if (out) {
        char body[200];
        int n = snprintf(body, sizeof body, "%s\n", why ? why : http_status_text(status));
        const http_header hdr[] = {{"Connection", 10, "close", 5}};
        if (http_write_response(out, status, "text/plain; charset=utf-8", hdr, 1, body,
                                (size_t)n) == 0)
            pconn_wrote(&sc->c);
    }
    pconn_close(&sc->c, true, 0);
}

static int respond(srv_conn *sc, bool keep, bool head_only, int status, const char *content_type,
                   const http_header *hdrs, size_t n, const void *body, size_t len)
{
    pbuf *out = pconn_out(&sc->c);
    if (!out) return PARLEY_ECLOSED;
    keep = keep && !sc->srv->shutting_down;
    http_header all[32];
    int rc = 0;
    size_t mark = out->len;
    if (n + 1 > PARLEY_ARRAY_LEN(all)) rc = PARLEY_EINVAL;
    if (rc == 0) {
        if (n) memcpy(all, hdrs, n * sizeof *hdrs);
        if (!keep) all[n++] = (http_header){"Connection", 10, "close", 5};
        /* A HEAD answer is the head a GET would get (its Content-Length)
         * and no body, so that the next response on the connection
         * parses. The head writer leaves nothing behind when it fails. */
        rc = http_write_response_head_ct(out, status, content_type, all, n, (int64_t)len);
    }
    if (rc == PARLEY_EINVAL) {
        /* A handler's header the writer refused (CR/LF or a bad name,
         * too many headers): the client gets a 500 and the connection
         * ends, instead of waiting for an answer that never comes. */
        uint64_t held;
        if (plog_limit_ok(&sc->srv->log_req, ploop_now(sc->c.loop), LOG_INTERVAL_MS, &held))
            plog_error("http: a %d response was refused by the header writer (bad header "
                       "from the handler); answered 500",
                       status);
        send_error(sc, 500, NULL);
        return rc;
    }
    count_status(sc->srv, status);
    if (rc == 0 && !head_only) {
        rc = pbuf_append(out, body, len);
        if (rc) out->len = (uint32_t)mark;
    }
    if (rc) return rc;
    rc = pconn_wrote(&sc->c);
    if (!keep) pconn_close(&sc->c, true, 0);
    return rc;
}

int phttpd_respond(phttpd_req *req, int status, const char *content_type, const http_header *hdrs,
                   size_t n, const void *body, size_t len)
{
    if (req->responded) return PARLEY_ESTATE;
    req->responded = true;
    srv_conn *sc = PARLEY_CONTAINER_OF(req->conn, srv_conn, c);
    bool keep = req->head->keep_alive;
    if (!IS_WS(sc) && sc->u.http->in_head) {
        /* An answer before the body was read: the body is dropped, when
         * it is small enough to be worth reading; otherwise the
         * connection ends with the answer. */
        sc_http *h = sc->u.http;
        sc->srv->st.early_answers++;
        if (req->head->body_kind == HTTP_BODY_CHUNKED ||
            (req->head->body_kind == HTTP_BODY_LENGTH &&
             req->head->content_length > sc->srv->opts.max_discard))
            keep = false;
        h->close_after = !keep;
    }
    return respond(sc, keep, is_head(req->head), status, content_type, hdrs, n, body, len);
}

phttpd_deferred *phttpd_defer(phttpd_req *req, phttpd_abort_fn on_abort, void *user)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(req->conn, srv_conn, c);
    if (req->responded || IS_WS(sc) || sc->u.http->in_head) return NULL;
    req->responded = true;
    sc->u.http->awaiting = true;
    sc->u.http->keep = req->head->keep_alive;
    sc->u.http->head_only = is_head(req->head);
    sc->u.http->on_abort = on_abort;
    sc->u.http->abort_user = user;
    return (phttpd_deferred *)sc;
}

pconn *phttpd_deferred_conn(phttpd_deferred *d)
{
    return &((srv_conn *)d)->c;
}

int phttpd_deferred_respond(phttpd_deferred *d, int status, const char *content_type,
                            const http_header *hdrs, size_t n, const void *body, size_t len)
{
    srv_conn *sc = (srv_conn *)d;
    sc_http *h = sc->u.http;
    if (IS_WS(sc) || !h->awaiting) return PARLEY_ESTATE;
    h->awaiting = false;
    h->on_abort = NULL;
    int rc = respond(sc, h->keep, h->head_only, status, content_type, hdrs, n, body, len);
    if (!(sc->c.flags & PCONN_CLOSING)) {
        http_start_request(sc, false);
        /* Requests that arrived meanwhile were kept: process them now. */
        pconn_redeliver(&sc->c);
    }
    return rc;
}

/* The client went away while a deferred response was pending. */
static void abort_deferred(srv_conn *sc)
{
    sc_http *h = sc->u.http;
    if (IS_WS(sc) || !h->awaiting) return;
    h->awaiting = false;
    phttpd_abort_fn fn = h->on_abort;
    h->on_abort = NULL;
    if (fn) fn((phttpd_deferred *)sc, h->abort_user);
}

/* ---- streamed responses ---- */

static void stream_ended(phttpd_deferred *d, void *user)
{
    (void)user;
    srv_conn *sc = (srv_conn *)d;
    sc_http *h = sc->u.http;
    phttpd_stream_close_fn fn = h->stream_close;
    void *u = h->stream_user;
    h->streaming = false;
    h->stream_close = NULL;
    sc->srv->st.streams--;
    if (fn) fn((phttpd_stream *)sc, u);
}

phttpd_stream *phttpd_stream_start(phttpd_req *req, int status, const char *content_type,
                                   const http_header *hdrs, size_t n,
                                   phttpd_stream_close_fn on_close, void *user)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(req->conn, srv_conn, c);
    phttpd *s = sc->srv;
    if (req->responded || IS_WS(sc) || sc->u.http->in_head) return NULL;
    if (is_head(req->head)) {
        phttpd_respond(req, status, content_type, hdrs, n, NULL, 0);
        return NULL;
    }
    if (s->shutting_down || s->st.streams >= s->opts.max_streams) {
        s->st.streams_refused++;
        static const char msg[] = "too many streams open: retry later\n";
        http_header ra = {"Retry-After", 11, "5", 1};
        phttpd_respond(req, 503, "text/plain; charset=utf-8", &ra, 1, msg, sizeof msg - 1);
        return NULL;
    }
    http_header all[32];
    if (n + 1 > PARLEY_ARRAY_LEN(all)) return NULL;
    if (n) memcpy(all, hdrs, n * sizeof *hdrs);
    all[n++] = (http_header){"Connection", 10, "close", 5};
    pbuf *out = pconn_out(&sc->c);
    if (!out || http_write_response_head_ct(out, status, content_type, all, n, -1) != 0) {
        req->responded = true;
        pconn_close(&sc->c, false, PARLEY_ENOMEM);
        return NULL;
    }
    pconn_wrote(&sc->c);
    count_status(s, status);
    req->responded = true;
    sc_http *h = sc->u.http;
    h->awaiting = true;
    h->keep = false;
    h->head_only = false;
    h->on_abort = stream_ended;
    h->abort_user = NULL;
    h->streaming = true;
    h->stream_close = on_close;
    h->stream_user = user;
    s->st.streams++;
    return (phttpd_stream *)sc;
}

int phttpd_stream_write(phttpd_stream *st, const void *data, size_t len)
{
    srv_conn *sc = (srv_conn *)st;
    if (sc->c.flags & PCONN_CLOSING) return PARLEY_ECLOSED;
    if (pconn_pending(&sc->c) + len > sc->srv->opts.max_stream_queue) {
        sc->srv->st.streams_dropped++;
        plog_debug("http: a stream's client is not reading: dropped");
        pconn_close(&sc->c, false, PARLEY_EFULL);
        return PARLEY_EFULL;
    }
    return pconn_write(&sc->c, data, len);
}

void phttpd_stream_close(phttpd_stream *st)
{
    srv_conn *sc = (srv_conn *)st;
    if (!(sc->c.flags & PCONN_CLOSING)) pconn_close(&sc->c, true, 0);
}

/* The WebSocket upgrade. */

static wsconn *upgrade(srv_conn *sc, phttpd_req *req, const phttpd_ws_endpoint *ep, void *user,
                       bool ask)
{
    const http_head *head = req->head;
    req->responded = true;
    ws_upgrade up;
    const char *why = NULL;
    int status = ws_check_upgrade(head, &up, &why);
    if (status) {
        count_status(sc->srv, status);
        pbuf *out = pconn_out(&sc->c);
        if (out && ws_write_reject(out, status, why) == 0) pconn_wrote(&sc->c);
        pconn_close(&sc->c, true, 0);
        return NULL;
    }
    const char *protocol = NULL;
    uint64_t retry_ms = 0;
    if (ask && !phttpd_ip_take(sc->srv, &sc->c, &retry_ms)) {
        char ra[24];
        int rl = snprintf(ra, sizeof ra, "%llu", (unsigned long long)(retry_ms + 999) / 1000);
        http_header hd[2] = {{"Retry-After", 11, ra, (size_t)rl}, {"Connection", 10, "close", 5}};
        pbuf *out = pconn_out(&sc->c);
        static const char msg[] = "too many connections from your address: retry later\n";
        count_status(sc->srv, 429);
        if (out && http_write_response(out, 429, "text/plain; charset=utf-8", hd, 2, msg,
                                       sizeof msg - 1) == 0)
            pconn_wrote(&sc->c);
        pconn_close(&sc->c, true, 0);
        return NULL;
    }
    if (ask && ep->on_upgrade) {
        status = ep->on_upgrade(req, &up, &protocol, ep->user);
        if (status) {
            send_error(sc, status, NULL);
            return NULL;
        }
    }
    pmd_params params;
    bool use_pmd = false;
    pbuf ext = {0}, resp = {0};
    if (ep->pmd && ep->pmd->enabled && up.has_extensions) {
        int rc = ws_header_join(head, "Sec-WebSocket-Extensions", &ext);
        if (rc == 0)
            rc = pmd_server_negotiate(ep->pmd, (const char *)ext.ptr, ext.len, &params, &resp);
        if (rc < 0) {
            pbuf_free(&ext);
            pbuf_free(&resp);
            send_error(sc, rc == PARLEY_ENOMEM ? 500 : 400, "malformed Sec-WebSocket-Extensions");
            return NULL;
        }
        use_pmd = rc == 1;
        if (use_pmd && pbuf_append(&resp, "", 1) != 0) use_pmd = false; /* NUL-terminate */
    }
    char proto[256];
    if (protocol) snprintf(proto, sizeof proto, "%s", protocol);
    pbuf *out = pconn_out(&sc->c);
    int rc = out ? ws_write_accept(out, up.key, up.key_len, protocol ? proto : NULL,
                                   use_pmd ? (const char *)resp.ptr : NULL, NULL, 0)
                 : PARLEY_ECLOSED;
    pbuf_free(&ext);
    pbuf_free(&resp);
    if (rc) {
        pconn_close(&sc->c, false, rc);
        return NULL;
    }
    pconn_wrote(&sc->c);
    count_status(sc->srv, 101);
    /* The session takes the HTTP state's place: retire that first. */
    sc_http *h = sc->u.http;
    ploop_timer_stop(sc->c.loop, &h->timer);
    sc->c.flags |= SC_WS_FLAG;
    rc =
        wsconn_init(&sc->u.ws, &sc->c, false, ep->ws_opts, use_pmd ? &params : NULL, ep->pmd, user);
    if (rc) {
        sc->c.flags &= ~SC_WS_FLAG;
        sc->u.http = h;
        pconn_close(&sc->c, false, rc);
        return NULL;
    }
    free(h);
    return &sc->u.ws;
}

wsconn *phttpd_upgrade(phttpd_req *req, const phttpd_ws_endpoint *ep, void *user)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(req->conn, srv_conn, c);
    if (req->responded || IS_WS(sc)) return NULL;
    return upgrade(sc, req, ep, user, false);
}

/* Runs the route's handler for a complete request. */
static void dispatch(srv_conn *sc, const route *r, const http_head *head, const uint8_t *body,
                     size_t body_len, void *state, bool stream, int body_error)
{
    sc_http *h = sc->u.http;
    /* The request is complete: its deadline no longer applies. */
    ploop_timer_stop(sc->c.loop, &h->timer);
    phttpd_req req = {.head = head,
                      .body = body,
                      .body_len = body_len,
                      .conn = &sc->c,
                      .state = state,
                      .stream = stream,
                      .body_error = body_error};
    http_target_path(head->target, head->target_len, &req.path, &req.path_len);
    if (r->ws) {
        wsconn *w = upgrade(sc, &req, r->ws, r->ws->user, true);
        if (w) {
            sc->c.flags |= SC_WSR_FLAG;
            sc->srv->st.ws_upgrades++;
            sc->srv->st.ws_open++;
        }
        if (w && r->ws->on_open) r->ws->on_open(w, r->ws->user);
        return;
    }
    r->o.handler(&req, r->o.user);
    if (!req.responded) {
        plog_error("handler for %s did not respond", r->path);
        send_error(sc, 500, NULL);
        return;
    }
    /* Upgraded, deferred or closing: not ready for the next request. */
    if (IS_WS(sc) || sc->u.http->awaiting || (sc->c.flags & PCONN_CLOSING)) return;
    http_start_request(sc, false);
}

/* 503: the server-wide budget for buffered bodies is spent. */
static void busy(srv_conn *sc)
{
    phttpd *s = sc->srv;
    s->st.refused_budget++;
    count_status(s, 503);
    uint64_t held;
    if (plog_limit_ok(&s->log_budget, ploop_now(s->loop), LOG_INTERVAL_MS, &held))
        plog_warn("http: request bodies in flight over %llu bytes: answering 503 (%llu more not "
                  "logged)",
                  (unsigned long long)s->opts.max_body_inflight, (unsigned long long)held);
    http_header hd[2] = {{"Retry-After", 11, "1", 1}, {"Connection", 10, "close", 5}};
    pbuf *out = pconn_out(&sc->c);
    static const char msg[] = "server busy: retry later\n";
    if (out &&
        http_write_response(out, 503, "text/plain; charset=utf-8", hd, 2, msg, sizeof msg - 1) == 0)
        pconn_wrote(&sc->c);
    pconn_close(&sc->c, true, 0);
}

/* The head of a request is complete (r bytes at data): finds the route,
 * lets it look at the head, and decides how the body is read. Returns the
 * bytes consumed, 0 when nothing more happens in this call (the request
 * was answered and the connection is closing, or waits). */
static size_t begin_request(srv_conn *sc, uint8_t *data, size_t len, size_t r, http_head *head)
{
    phttpd *s = sc->srv;
    sc_http *h = sc->u.http;
    const char *path;
    size_t path_len;
    http_target_path(head->target, head->target_len, &path, &path_len);
    const route *rt = find_route(s, path, path_len);
    if (!rt) {
        send_error(sc, 404, "no such path");
        return len;
    }
    uint64_t max_body = rt->o.max_body ? rt->o.max_body : s->opts.limits.max_body;
    bool has_body = head->body_kind != HTTP_BODY_NONE &&
                    !(head->body_kind == HTTP_BODY_LENGTH && head->content_length == 0);
    void *state = NULL;
    bool stream = false;
    if (rt->o.on_head) {
        phttpd_req req = {.head = head, .path = path, .path_len = path_len, .conn = &sc->c};
        h->in_head = true;
        rt->o.on_head(&req, rt->o.user);
        h->in_head = false;
        if (req.responded) {
            if (sc->c.flags & PCONN_CLOSING) return len;
            if (!has_body) {
                http_start_request(sc, false);
                return r;
            }
            /* Drop the body (bounded), then the next request. */
            http_body_init(&h->body, head, UINT64_MAX);
            h->phase = PH_DISCARD;
            return r;
        }
        stream = req.stream && rt->o.on_body;
        state = req.state;
    }
    if (!has_body || rt->ws) {
        /* Nothing to stream: the handler gets the state (a WebSocket
         * route has no use for it). */
        if (rt->ws && state && rt->o.on_abort) rt->o.on_abort(state, rt->o.user);
        if (rt->ws) state = NULL;
        bool get = head->method_len == 3 && memcmp(head->method, "GET", 3) == 0;
        if (has_body && get) {
            /* An upgrade with a body: what follows the head would be taken
             * for WebSocket frames. */
            send_error(sc, 400, "unexpected request body");
            return len;
        }
        if (has_body) {
            /* Refused by the upgrade's checks (405), body unread. */
            dispatch(sc, rt, head, NULL, 0, NULL, false, 0);
            if (!(sc->c.flags & PCONN_CLOSING)) pconn_close(&sc->c, true, 0);
            return len;
        }
        dispatch(sc, rt, head, NULL, 0, state, false, 0);
        return r;
    }
    if (head->body_kind == HTTP_BODY_LENGTH && head->content_length > max_body) {
        if (state && rt->o.on_abort) rt->o.on_abort(state, rt->o.user);
        send_error(sc, 413, "request body too large");
        return len;
    }
    h->route = rt;
    if (stream) {
        h->head_copy = malloc(r);
        if (!h->head_copy) {
            if (state && rt->o.on_abort) rt->o.on_abort(state, rt->o.user);
            h->route = NULL;
            send_error(sc, 500, NULL);
            return len;
        }
        memcpy(h->head_copy, data, r);
        h->head_len = r;
        h->state = state;
        h->phase = PH_STREAM;
    } else {
        /* Buffered: a declared length that cannot fit now is refused before
         * its body arrives; bytes are charged as they arrive (below). */
        uint64_t want = head->body_kind == HTTP_BODY_LENGTH ? head->content_length : 0;
        if (s->opts.max_body_inflight &&
            want > s->opts.max_body_inflight -
                       PARLEY_MIN(s->st.body_inflight, s->opts.max_body_inflight)) {
            h->route = NULL;
            if (state && rt->o.on_abort) rt->o.on_abort(state, rt->o.user);
            busy(sc);
            return len;
        }
        h->state = state;
        h->head_len = r;
        h->raw_pos = r;
        h->decoded = 0;
        h->phase = PH_BUFFER;
    }
    http_body_init(&h->body, head, max_body);
    if (head->expect_continue) pconn_write(&sc->c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    return stream ? r : 0;
}

/* Parses the head again from the bytes that hold it (the pointers of an
 * earlier parse may be stale: input buffers move between reads). */
static bool reparse_head(srv_conn *sc, const uint8_t *bytes, size_t n, http_head *head)
{
    phttpd *s = sc->srv;
    sc_http *h = sc->u.http;
    http_parser_reset(&h->parser, false);
    return http_parse_head(&h->parser, bytes, n, head, s->hdrs, s->opts.limits.max_headers) ==
           (long)n;
}

/* Consumes one request (or part of one) from data; returns bytes used, 0
 * when more input is needed. */
static size_t http_step(srv_conn *sc, uint8_t *data, size_t len)
{
    phttpd *s = sc->srv;
    sc_http *h = sc->u.http;
    if (h->idle) {
        /* First byte of the next request: its deadline starts now. */
        h->idle = false;
        ploop_timer_start(sc->c.loop, &h->timer, s->opts.head_timeout_ms);
    }
    http_head head;
    if (h->phase == PH_HEAD) {
        long r = http_parse_head(&h->parser, data, len, &head, s->hdrs, s->opts.limits.max_headers);
        if (r == 0) return 0;
        if (r < 0) {
            char peer[64];
            uint64_t held;
            if (plog_limit_ok(&s->log_req, ploop_now(sc->c.loop), LOG_INTERVAL_MS, &held)) {
                pconn_peer_name(&sc->c, peer, sizeof peer);
                plog_info("http %s: %d %s (%llu more bad requests since the last line)", peer,
                          h->parser.error_status, h->parser.error ? h->parser.error : "",
                          (unsigned long long)held);
            }
            send_error(sc, h->parser.error_status ? h->parser.error_status : 400, h->parser.error);
            return len;
        }
        size_t used = begin_request(sc, data, len, (size_t)r, &head);
        /* Upgraded: the HTTP state is gone. */
        if (IS_WS(sc) || h->phase != PH_BUFFER || (sc->c.flags & PCONN_CLOSING)) return used;
        /* PH_BUFFER keeps the head in the input: decode what is there. */
    }
    size_t consumed = 0, out_len = 0;
    if (h->phase == PH_DISCARD) {
        int rc = http_body_decode(&h->body, data, len, &consumed, &out_len);
        h->discarded += out_len;
        if (rc < 0 || h->discarded > s->opts.max_discard) {
            pconn_close(&sc->c, false, 0);
            return len;
        }
        if (rc == 0) return consumed;
        if (h->close_after) {
            pconn_close(&sc->c, true, 0);
            return len;
        }
        http_start_request(sc, false);
        return consumed;
    }
    if (h->phase == PH_STREAM) {
        const route *rt = h->route;
        int rc = http_body_decode(&h->body, data, len, &consumed, &out_len);
        int stop = 0;
        if (rc >= 0 && out_len) stop = rt->o.on_body(h->state, data, out_len, rt->o.user);
        if (rc < 0) {
            body_release(sc, true);
            send_error(sc, h->body.error_status ? h->body.error_status : 400, h->body.error);
            return len;
        }
        if (rc == 0 && !stop) return consumed;
        /* The body is complete (or the route stopped it): the handler. */
        void *state = h->state;
        uint8_t *copy = h->head_copy;
        h->head_copy = NULL;
        h->state = NULL;
        h->route = NULL;
        if (!reparse_head(sc, copy, h->head_len, &head)) {
            free(copy);
            if (rt->o.on_abort) rt->o.on_abort(state, rt->o.user);
            send_error(sc, 500, NULL);
            return len;
        }
        bool more = rc == 0;
        dispatch(sc, rt, &head, NULL, (size_t)h->body.total, state, true, stop);
        free(copy);
        if (more && !(sc->c.flags & PCONN_CLOSING)) {
            /* Stopped mid-body: the rest is not read. */
            pconn_close(&sc->c, true, 0);
            return len;
        }
        return consumed;
    }
    /* PH_BUFFER */
    int rc = http_body_decode(&h->body, data + h->raw_pos, len - h->raw_pos, &consumed, &out_len);
    if (out_len) memmove(data + h->head_len + h->decoded, data + h->raw_pos, out_len);
    h->decoded += out_len;
    h->raw_pos += consumed;
    if (rc < 0) {
        body_release(sc, true);
        send_error(sc, h->body.error_status ? h->body.error_status : 400, h->body.error);
        return len;
    }
    if (h->raw_pos - h->head_len > h->reserved) {
        /* What is held is the body's raw bytes so far. */
        uint64_t more = h->raw_pos - h->head_len - h->reserved;
        if (s->opts.max_body_inflight && s->st.body_inflight + more > s->opts.max_body_inflight) {
            body_release(sc, true);
            busy(sc);
            return len;
        }
        h->reserved += more;
        s->st.body_inflight += more;
    }
    if (rc == 0) return 0;
    size_t used = h->raw_pos;
    const route *rt = h->route;
    if (!reparse_head(sc, data, h->head_len, &head)) {
        body_release(sc, true);
        send_error(sc, 500, NULL);
        return len;
    }
    size_t head_len = h->head_len;
    size_t decoded = h->decoded;
    void *state = h->state;
    h->state = NULL; /* the handler's now */
    /* The body stays where it is until this returns: its share of the
     * budget goes back now, since nothing can arrive in between. */
    body_release(sc, false);
    h->head_len = 0;
    dispatch(sc, rt, &head, data + head_len, decoded, state, false, 0);
    return used;
}

static size_t sc_on_data(pconn *c, uint8_t *data, size_t len)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(c, srv_conn, c);
    size_t off = 0;
    while (off < len && !(c->flags & PCONN_CLOSING)) {
        if (IS_WS(sc)) {
            off += wsconn_feed(&sc->u.ws, data + off, len - off);
            break;
        }
        if (sc->u.http->awaiting) {
            /* Pipelined requests wait for the deferred answer, within the
             * bounds of one request. */
            const http_limits *l = &sc->srv->opts.limits;
            if (len - off > l->max_header_bytes + l->max_body) {
                plog_debug("http: too much pipelined input behind a pending response");
                abort_deferred(sc);
                pconn_close(c, false, PARLEY_ELIMIT);
                return len;
            }
            break;
        }
        sc_http *h = sc->u.http;
        uint8_t phase = h->phase;
        size_t n = http_step(sc, data + off, len - off);
        off += n;
        /* No progress: more input is needed, unless the phase changed
         * (a head answered early, a body that had nothing to drop yet). */
        if (n == 0 && (IS_WS(sc) || sc->u.http->phase == phase || sc->u.http->phase == PH_BUFFER))
            break;
    }
    return off;
}

static void sc_on_eof(pconn *c)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(c, srv_conn, c);
    if (IS_WS(sc))
        wsconn_lost(&sc->u.ws, PARLEY_ECLOSED);
    else
        abort_deferred(sc);
    pconn_close(c, true, 0);
}

static void sc_on_close(pconn *c, int err)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(c, srv_conn, c);
    phttpd *s = sc->srv;
    if (IS_WS(sc)) {
        wsconn_lost(&sc->u.ws, err);
        wsconn_free(&sc->u.ws);
    } else {
        abort_deferred(sc);
        body_release(sc, true);
        ploop_timer_stop(c->loop, &sc->u.http->timer);
        free(sc->u.http);
    }
    if (sc->c.flags & SC_WSR_FLAG) s->st.ws_open--;
    if (sc->ip) {
        sc->ip->conns--;
        ip_maybe_free(s, sc->ip);
    }
    s->nconns--;
    free(sc);
    if (s->shutting_down && s->nconns == 0 && s->done) {
        void (*done)(phttpd *, void *) = s->done;
        s->done = NULL;
        done(s, s->done_user);
    }
}

/* Connections are not kept in a list (16 bytes each): shutdown visits the
 * loop's handles and picks this server's. */
static void shutdown_one(uv_handle_t *h, void *arg)
{
    phttpd *s = arg;
    if (h->type != UV_TCP || uv_is_closing(h) || !h->data) return;
    pconn *c = h->data;
    if (&c->tcp != (uv_tcp_t *)h || c->cbs != &sc_cbs) return;
    srv_conn *sc = PARLEY_CONTAINER_OF(c, srv_conn, c);
    if (sc->srv != s) return;
    if (IS_WS(sc)) {
        if (wsconn_close(&sc->u.ws, WS_CLOSE_GOING_AWAY, "server shutting down") != 0)
            pconn_close(&sc->c, true, 0);
    } else {
        pconn_close(&sc->c, true, 0);
    }
}

void phttpd_shutdown(phttpd *s, void (*done)(phttpd *s, void *user), void *user)
{
    s->shutting_down = true;
    s->done = done;
    s->done_user = user;
    ploop_timer_stop(s->loop, &s->ip_sweep);
    for (size_t i = 0; i < s->nlisteners; i++) plistener_close(s->listeners[i]);
    s->nlisteners = 0;
    uv_walk(s->loop->uv, shutdown_one, s);
    if (s->nconns == 0 && s->done) {
        s->done = NULL;
        done(s, user);
    }
}

void phttpd_free(phttpd *s)
{
    if (!s) return;
    ploop_timer_stop(s->loop, &s->ip_sweep);
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&s->ips, &pos))) free(e->val);
    pmap_free(&s->ips);
    for (size_t i = 0; i < s->nlisteners; i++) plistener_close(s->listeners[i]);
    for (size_t i = 0; i < s->nroutes; i++) free(s->routes[i].path);
    free(s->routes);
    free(s->hdrs);
    free(s);
}
