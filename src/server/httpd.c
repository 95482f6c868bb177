/* HTTP/1.1 server connections: request heads and bodies, routing, the
 * WebSocket upgrade, deadlines, shutdown. */
#include "server/httpd.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"

#define MAX_LISTENERS 8

typedef struct route {
    char *path;
    size_t path_len;
    bool prefix;
    phttpd_handler handler;
    void *user;
    const phttpd_ws_endpoint *ws;
} route;

/* The connection's mode lives in a pconn flag bit reserved for owners. */
#define SC_WS_FLAG PCONN_OWNER1
#define IS_WS(sc)  (((sc)->c.flags & SC_WS_FLAG) != 0)

typedef struct srv_conn srv_conn;

struct phttpd {
    parley_loop *loop;
    phttpd_opts opts;
    route *routes;
    size_t nroutes;
    plistener *listeners[MAX_LISTENERS];
    size_t nlisteners;
    http_header *hdrs; /* scratch for parsing heads (single-threaded) */
    unsigned nconns; /* open connections (found with uv_walk at shutdown) */
    bool shutting_down;
    void (*done)(phttpd *s, void *user);
    void *done_user;
};

/* HTTP state, allocated while the connection speaks HTTP (not kept by
 * WebSocket sessions, which need a third of it). */
typedef struct sc_http {
    srv_conn *sc;
    http_parser parser;
    http_body body;
    ptimer timer;
    size_t head_len; /* > 0 once the head is parsed and the body is being read */
    size_t raw_pos;  /* input offset up to which the body is decoded */
    size_t decoded;  /* decoded body bytes, packed right after the head */
    bool idle;       /* keep-alive: waiting for the first byte of a request */
    bool awaiting;   /* a deferred response is pending */
    bool keep;       /* keep-alive decision of the deferred request */
    phttpd_abort_fn on_abort;
    void *abort_user;
} sc_http;

/* 464 bytes: an idle WebSocket connection costs one allocation (480
 * bytes with malloc's header) and nothing else. */
struct srv_conn {
    pconn c;
    phttpd *srv;
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
    return 0;
}

static int add_route(phttpd *s, const char *path, phttpd_handler h, void *user,
                     const phttpd_ws_endpoint *ws, bool prefix)
{
    if (!path || path[0] != '/') return PARLEY_EINVAL;
    route *r = realloc(s->routes, (s->nroutes + 1) * sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    s->routes = r;
    r = &s->routes[s->nroutes];
    r->path = strdup(path);
    if (!r->path) return PARLEY_ENOMEM;
    r->path_len = strlen(path);
    r->handler = h;
    r->user = user;
    r->ws = ws;
    r->prefix = prefix;
    s->nroutes++;
    return 0;
}

int phttpd_route(phttpd *s, const char *path, phttpd_handler h, void *user)
{
    if (!h) return PARLEY_EINVAL;
    return add_route(s, path, h, user, NULL, false);
}

int phttpd_route_prefix(phttpd *s, const char *prefix, phttpd_handler h, void *user)
{
    if (!h) return PARLEY_EINVAL;
    return add_route(s, prefix, h, user, NULL, true);
}

int phttpd_route_ws(phttpd *s, const char *path, const phttpd_ws_endpoint *ep)
{
    if (!ep || !ep->ws_opts || !ep->ws_opts->cbs) return PARLEY_EINVAL;
    return add_route(s, path, NULL, NULL, ep, false);
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

static void on_http_timeout(ptimer *t)
{
    sc_http *h = PARLEY_CONTAINER_OF(t, sc_http, timer);
    srv_conn *sc = h->sc;
    char peer[64];
    pconn_peer_name(&sc->c, peer, sizeof peer);
    if (h->idle) {
        plog_debug("http %s: keep-alive idle timeout", peer);
    } else {
        plog_info("http %s: request not complete within %u ms", peer,
                  sc->srv->opts.head_timeout_ms);
    }
    /* A request that is still arriving cannot be answered sensibly; the
     * peer is slow or hostile. */
    pconn_close(&sc->c, false, PARLEY_ETIMEDOUT);
}

static void http_start_request(srv_conn *sc, bool first)
{
    sc_http *h = sc->u.http;
    h->head_len = h->raw_pos = h->decoded = 0;
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
    http_parser_init(&h->parser, false, &s->opts.limits);
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
    s->listeners[s->nlisteners++] = l;
    if (bound) *bound = plistener_port(l);
    return 0;
}

/* Responses. */

static void send_error(srv_conn *sc, int status, const char *why)
{
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

static int respond(srv_conn *sc, bool keep, int status, const char *content_type,
                   const http_header *hdrs, size_t n, const void *body, size_t len)
{
    pbuf *out = pconn_out(&sc->c);
    if (!out) return PARLEY_ECLOSED;
    keep = keep && !sc->srv->shutting_down;
    http_header all[32];
    if (n + 1 > PARLEY_ARRAY_LEN(all)) return PARLEY_EINVAL;
    if (n) memcpy(all, hdrs, n * sizeof *hdrs);
    if (!keep) all[n++] = (http_header){"Connection", 10, "close", 5};
    int rc;
    if (content_type) {
        rc = http_write_response(out, status, content_type, all, n, body, len);
    } else {
        rc = http_write_response_head(out, status, NULL, all, n, (int64_t)len);
        if (rc == 0) rc = pbuf_append(out, body, len);
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
    return respond(PARLEY_CONTAINER_OF(req->conn, srv_conn, c), req->head->keep_alive, status, content_type, hdrs, n, body,
                   len);
}

phttpd_deferred *phttpd_defer(phttpd_req *req, phttpd_abort_fn on_abort, void *user)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(req->conn, srv_conn, c);
    if (req->responded || IS_WS(sc)) return NULL;
    req->responded = true;
    sc->u.http->awaiting = true;
    sc->u.http->keep = req->head->keep_alive;
    sc->u.http->on_abort = on_abort;
    sc->u.http->abort_user = user;
    return (phttpd_deferred *)sc;
}

pconn *phttpd_deferred_conn(phttpd_deferred *d)
{
    return &((srv_conn *)d)->c;
}

static void http_start_request(srv_conn *sc, bool first);

int phttpd_deferred_respond(phttpd_deferred *d, int status, const char *content_type,
                            const http_header *hdrs, size_t n, const void *body, size_t len)
{
    srv_conn *sc = (srv_conn *)d;
    sc_http *h = sc->u.http;
    if (IS_WS(sc) || !h->awaiting) return PARLEY_ESTATE;
    h->awaiting = false;
    h->on_abort = NULL;
    int rc = respond(sc, h->keep, status, content_type, hdrs, n, body, len);
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
        pbuf *out = pconn_out(&sc->c);
        if (out && ws_write_reject(out, status, why) == 0) pconn_wrote(&sc->c);
        pconn_close(&sc->c, true, 0);
        return NULL;
    }
    const char *protocol = NULL;
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
        if (rc == 0) rc = pmd_server_negotiate(ep->pmd, (const char *)ext.ptr, ext.len, &params, &resp);
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
    /* The session takes the HTTP state's place: retire that first. */
    sc_http *h = sc->u.http;
    ploop_timer_stop(sc->c.loop, &h->timer);
    sc->c.flags |= SC_WS_FLAG;
    rc = wsconn_init(&sc->u.ws, &sc->c, false, ep->ws_opts, use_pmd ? &params : NULL, ep->pmd,
                     user);
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

static void dispatch(srv_conn *sc, const http_head *head, const uint8_t *body, size_t body_len)
{
    phttpd *s = sc->srv;
    sc_http *h = sc->u.http;
    /* The request is complete: its deadline no longer applies. */
    ploop_timer_stop(sc->c.loop, &h->timer);
    phttpd_req req = {.head = head, .body = body, .body_len = body_len, .conn = &sc->c};
    http_target_path(head->target, head->target_len, &req.path, &req.path_len);
    const route *r = find_route(s, req.path, req.path_len);
    if (!r) {
        send_error(sc, 404, "no such path");
        return;
    }
    if (r->ws) {
        wsconn *w = upgrade(sc, &req, r->ws, r->ws->user, true);
        if (w && r->ws->on_open) r->ws->on_open(w, r->ws->user);
        return;
    }
    r->handler(&req, r->user);
    if (!req.responded) {
        plog_error("handler for %s did not respond", r->path);
        send_error(sc, 500, NULL);
        return;
    }
    /* Upgraded, deferred or closing: not ready for the next request. */
    if (IS_WS(sc) || sc->u.http->awaiting || (sc->c.flags & PCONN_CLOSING)) return;
    http_start_request(sc, false);
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
    if (h->head_len == 0) {
        long r = http_parse_head(&h->parser, data, len, &head, s->hdrs, s->opts.limits.max_headers);
        if (r == 0) return 0;
        if (r < 0) {
            char peer[64];
            pconn_peer_name(&sc->c, peer, sizeof peer);
            plog_info("http %s: %d %s", peer, h->parser.error_status,
                      h->parser.error ? h->parser.error : "");
            send_error(sc, h->parser.error_status ? h->parser.error_status : 400,
                       h->parser.error);
            return len;
        }
        if (head.body_kind == HTTP_BODY_NONE) {
            dispatch(sc, &head, NULL, 0);
            return (size_t)r;
        }
        if (head.expect_continue) pconn_write(&sc->c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        http_body_init(&h->body, &head, s->opts.limits.max_body);
        h->head_len = (size_t)r;
        h->raw_pos = (size_t)r;
        h->decoded = 0;
    }
    size_t consumed = 0, out_len = 0;
    int rc = http_body_decode(&h->body, data + h->raw_pos, len - h->raw_pos, &consumed, &out_len);
    if (out_len) memmove(data + h->head_len + h->decoded, data + h->raw_pos, out_len);
    h->decoded += out_len;
    h->raw_pos += consumed;
    if (rc < 0) {
        send_error(sc, h->body.error_status ? h->body.error_status : 400, h->body.error);
        return len;
    }
    if (rc == 0) return 0;
    /* The head's pointers may be stale (the input buffer can move between
     * reads): parse it again from the same bytes. */
    size_t used = h->raw_pos;
    http_parser_reset(&h->parser, false);
    long r = http_parse_head(&h->parser, data, h->head_len, &head, s->hdrs,
                             s->opts.limits.max_headers);
    if (r != (long)h->head_len) {
        send_error(sc, 500, NULL);
        return len;
    }
    h->head_len = 0;
    dispatch(sc, &head, data + r, h->decoded);
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
                plog_info("http: too much pipelined input behind a pending response");
                abort_deferred(sc);
                pconn_close(c, false, PARLEY_ELIMIT);
                return len;
            }
            break;
        }
        size_t n = http_step(sc, data + off, len - off);
        if (n == 0) break;
        off += n;
    }
    return off;
}

static void sc_on_eof(pconn *c)
{
    srv_conn *sc = PARLEY_CONTAINER_OF(c, srv_conn, c);
    if (IS_WS(sc)) wsconn_lost(&sc->u.ws, PARLEY_ECLOSED);
    else abort_deferred(sc);
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
        ploop_timer_stop(c->loop, &sc->u.http->timer);
        free(sc->u.http);
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
    for (size_t i = 0; i < s->nlisteners; i++) plistener_close(s->listeners[i]);
    for (size_t i = 0; i < s->nroutes; i++) free(s->routes[i].path);
    free(s->routes);
    free(s->hdrs);
    free(s);
}
