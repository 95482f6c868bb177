/* Engine.IO v4 server sessions. */
#include "server/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/map.h"
#include "base/util.h"
#include "client/http_client.h"
#include "codec/eio.h"
#include "codec/ws.h"
#include "net/net.h"
#include "ws/wsconn.h"

#define POLL_CLOSE_TIMEOUT_MS 30000

enum { ES_OPEN = 0, ES_CLOSING, ES_CLOSED };

/* Engine.IO error codes and their messages (as the reference sends them). */
enum {
    EERR_UNKNOWN_TRANSPORT = 0,
    EERR_UNKNOWN_SID = 1,
    EERR_BAD_HANDSHAKE_METHOD = 2,
    EERR_BAD_REQUEST = 3,
    EERR_FORBIDDEN = 4,
    EERR_UNSUPPORTED_PROTOCOL_VERSION = 5,
};
static const char *const eerr_text[] = {
    "Transport unknown", "Session ID unknown", "Bad handshake method",
    "Bad request",       "Forbidden",          "Unsupported protocol version",
};

struct engine {
    phttpd *http;
    parley_loop *loop;
    engine_opts o;
    char *cors_origin;
    char *allowed_origins; /* our copy of o.allowed_origins */
    const engine_cbs *cbs;
    void *user;
    pmap sessions; /* sid -> esession */
    wsconn_opts wsopts;
    phttpd_ws_endpoint ep;
    pdefer reap; /* frees closed sessions at the end of the iteration */
    esession *dead;
    unsigned detached; /* let-go websockets still closing (they use wsopts) */
    bool freeing;
    char open_tail[160]; /* the constant end of every open packet */
    engine_stats st;     /* open[] is counted when asked */
    /* Cluster (engine_set_cluster). */
    char tag[5];
    engine_route_fn route;
    void *route_user;
    unsigned max_forwards;
    uint32_t relay_timeout_ms;
    struct relay *relays; /* in progress */
};

struct esession {
    engine *eng;
    esession *next_dead;
    void *user;
    char sid[21];
    uint8_t transport; /* ENGINE_POLLING / ENGINE_WEBSOCKET */
    uint8_t state;
    bool awaiting_pong;
    bool upgrading;           /* a probe websocket answered 3probe */
    bool poll_closing;        /* a close packet waits for the next GET */
    bool posting;             /* a POST's body is being read */
    ptimer timer;             /* heartbeat */
    ptimer aux;               /* upgrade deadline, or the polling close deadline */
    uint64_t last_rx;         /* loop time of the last packet received */
    char *origin;             /* allowed Origin to reflect in long-poll answers (CORS list mode) */
    const char *close_reason; /* for on_close once a server-side close completes */
    /* polling */
    phttpd_deferred *get; /* pending long-poll */
    pbuf pollq;           /* payload waiting for a GET */
    pdefer flush;
    /* websocket */
    wsconn *ws;    /* live websocket transport */
    wsconn *probe; /* websocket being upgraded to */
};

static void session_closed(esession *s, const char *reason);

void engine_opts_init(engine_opts *o)
{
    memset(o, 0, sizeof *o);
    o->ping_interval_ms = 25000;
    o->ping_timeout_ms = 20000;
    o->upgrade_timeout_ms = 10000;
    o->max_payload = 1000000;
    o->transports = ENGINE_POLLING | ENGINE_WEBSOCKET;
    o->allow_upgrades = true;
}

void *engine_user(const engine *e)
{
    return e->user;
}

parley_loop *engine_loop(const engine *e)
{
    return e->loop;
}

void engine_stats_get(const engine *e, engine_stats *st)
{
    *st = e->st;
    st->open[0] = st->open[1] = 0;
    size_t pos = 0;
    pmap_entry *ent;
    while ((ent = pmap_next(&e->sessions, &pos))) {
        const esession *s = ent->val;
        st->open[s->transport == ENGINE_WEBSOCKET]++;
    }
}

unsigned engine_sessions(const engine *e)
{
    return (unsigned)e->sessions.n;
}

const char *esession_id(const esession *s)
{
    return s->sid;
}

int esession_transport(const esession *s)
{
    return s->transport;
}

bool esession_writable(const esession *s)
{
    if (s->state != ES_OPEN) return false;
    if (s->transport == ENGINE_WEBSOCKET) return s->ws && pconn_pending(s->ws->conn) == 0;
    return s->get != NULL;
}

size_t esession_backlog(const esession *s)
{
    if (s->state != ES_OPEN) return 0;
    if (s->transport == ENGINE_WEBSOCKET) return s->ws ? pconn_pending(s->ws->conn) : 0;
    return s->pollq.len;
}

bool esession_closed(const esession *s)
{
    return s->state != ES_OPEN;
}

void esession_set_user(esession *s, void *user)
{
    s->user = user;
}

void *esession_user(const esession *s)
{
    return s->user;
}

engine *esession_engine(const esession *s)
{
    return s->eng;
}

/* ---- origins ---- */

typedef struct origin_parts {
    const char *scheme, *host;
    size_t scheme_len, host_len;
    long port; /* -1: none (a scheme without a default port) */
} origin_parts;

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_scheme_char(char c)
{
    return is_alpha(c) || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

/* Splits a serialized origin, scheme "://" host [ ":" port ]; false for
 * anything else (a path, user info, an empty host, a bad port, "null"). */
static bool origin_parse(const char *s, size_t len, origin_parts *o)
{
    size_t i = 0;
    if (len == 0 || !is_alpha(s[0])) return false;
    while (i < len && is_scheme_char(s[i])) i++;
    if (len - i < 3 || memcmp(s + i, "://", 3) != 0) return false;
    o->scheme = s;
    o->scheme_len = i;
    size_t h = i + 3, end = h;
    if (end < len && s[end] == '[') {
        while (end < len && s[end] != ']') end++;
        if (end == len) return false;
        end++;
    } else {
        while (end < len && s[end] != ':') end++;
    }
    o->host = s + h;
    o->host_len = end - h;
    if (o->host_len == 0) return false;
    for (size_t k = h; k < end; k++) {
        char c = s[k];
        if (c == '/' || c == '?' || c == '#' || c == '@' || c == '\\' || (unsigned char)c <= ' ')
            return false;
    }
    o->port = -1;
    if (end < len) {
        /* s[end] is ':' */
        size_t d = end + 1;
        if (d == len || len - d > 5) return false;
        long port = 0;
        for (; d < len; d++) {
            if (s[d] < '0' || s[d] > '9') return false;
            port = port * 10 + (s[d] - '0');
        }
        if (port > 65535) return false;
        o->port = port;
    } else if (pstr_ieqz(o->scheme, o->scheme_len, "http") ||
               pstr_ieqz(o->scheme, o->scheme_len, "ws")) {
        o->port = 80;
    } else if (pstr_ieqz(o->scheme, o->scheme_len, "https") ||
               pstr_ieqz(o->scheme, o->scheme_len, "wss")) {
        o->port = 443;
    }
    return true;
}

bool engine_origin_allowed(const char *list, const char *origin, size_t origin_len)
{
    origin_parts want;
    bool parsed = origin_parse(origin, origin_len, &want);
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *next = p + len + (comma ? 1 : 0);
        while (len && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        origin_parts have;
        if (len == 1 && *p == '*') return true;
        if (parsed && origin_parse(p, len, &have)) {
            if (pstr_ieq(have.scheme, have.scheme_len, want.scheme, want.scheme_len) &&
                pstr_ieq(have.host, have.host_len, want.host, want.host_len) &&
                have.port == want.port)
                return true;
        } else if (len && len == origin_len && memcmp(p, origin, len) == 0) {
            return true;
        }
        p = next;
    }
    return false;
}

/* False when an allow-list is configured and the request's Origin is
 * present and not in it. */
static bool origin_ok(const engine *e, const http_header *origin)
{
    return !e->allowed_origins || !origin ||
           engine_origin_allowed(e->allowed_origins, origin->value, origin->value_len);
}

/* ---- HTTP answers ---- */

/* CORS headers for a request, per the `cors` middleware the reference uses:
 * "*" answers "*", a list reflects a matching Origin (with Vary: Origin). */
static size_t cors_headers(engine *e, const http_head *head, http_header *h, size_t n)
{
    if (!e->cors_origin) return n;
    const http_header *origin = http_find_header(head, "Origin");
    /* An origin the allow-list refuses is never told that it may read. */
    bool refused = !origin_ok(e, origin);
    if (strcmp(e->cors_origin, "*") == 0) {
        if (!refused) h[n++] = (http_header){"Access-Control-Allow-Origin", 27, "*", 1};
    } else {
        h[n++] = (http_header){"Vary", 4, "Origin", 6};
        if (origin && !refused) {
            const char *p = e->cors_origin;
            while (*p) {
                const char *comma = strchr(p, ',');
                size_t len = comma ? (size_t)(comma - p) : strlen(p);
                if (len == origin->value_len && memcmp(p, origin->value, len) == 0) {
                    h[n++] = (http_header){"Access-Control-Allow-Origin", 27, origin->value,
                                           origin->value_len};
                    break;
                }
                p += len + (comma ? 1 : 0);
            }
        }
    }
    if (e->o.cors_credentials && !refused)
        h[n++] = (http_header){"Access-Control-Allow-Credentials", 32, "true", 4};
    return n;
}

static void respond(engine *e, phttpd_req *req, int status, const char *ctype, const void *body,
                    size_t len)
{
    http_header h[6];
    size_t n = 0;
    h[n++] = (http_header){"Cache-Control", 13, "no-store", 8};
    n = cors_headers(e, req->head, h, n);
    phttpd_respond(req, status, ctype, h, n, body, len);
}

static void respond_error(engine *e, phttpd_req *req, int code)
{
    char body[96];
    int n = snprintf(body, sizeof body, "{\"code\":%d,\"message\":\"%s\"}", code, eerr_text[code]);
    http_header h[6];
    size_t k = cors_headers(e, req->head, h, 0);
    phttpd_respond(req, code == EERR_FORBIDDEN ? 403 : 400, "application/json", h, k, body,
                   (size_t)n);
}

/* Errors on WebSocket upgrade requests are plain text, as the reference
 * writes them on the raw socket. */
static void respond_upgrade_error(phttpd_req *req, int code)
{
    const char *msg = eerr_text[code];
    const http_header h[] = {{"Connection", 10, "close", 5}};
    phttpd_respond(req, code == EERR_FORBIDDEN ? 403 : 400, "text/html", h, 1, msg, strlen(msg));
}

/* ---- sending ---- */

static void flush_poll(pdefer *d);

static void poll_answer(esession *s, const void *body, size_t len)
{
    phttpd_deferred *g = s->get;
    s->get = NULL;
    http_header h[6];
    size_t n = 0;
    h[n++] = (http_header){"Cache-Control", 13, "no-store", 8};
    /* The request's head is gone by now: CORS headers come from what was
     * decided for the session's origin at the handshake. */
    engine *e = s->eng;
    if (e->cors_origin) {
        if (strcmp(e->cors_origin, "*") == 0) {
            h[n++] = (http_header){"Access-Control-Allow-Origin", 27, "*", 1};
        } else {
            h[n++] = (http_header){"Vary", 4, "Origin", 6};
            if (s->origin)
                h[n++] =
                    (http_header){"Access-Control-Allow-Origin", 27, s->origin, strlen(s->origin)};
        }
        if (e->o.cors_credentials)
            h[n++] = (http_header){"Access-Control-Allow-Credentials", 32, "true", 4};
    }
    phttpd_deferred_respond(g, 200, "text/plain; charset=UTF-8", h, n, body, len);
}

static void flush_poll(pdefer *d)
{
    esession *s = PARLEY_CONTAINER_OF(d, esession, flush);
    if (!s->get || s->pollq.len == 0) return;
    poll_answer(s, s->pollq.ptr, s->pollq.len);
    s->pollq.len = 0;
    pbuf_reset(&s->pollq, 4096);
    if (s->poll_closing) {
        /* The close packet went out: the session is over. */
        session_closed(s, s->close_reason);
    }
}

static int queue_poll(esession *s, int type, bool binary, const void *data, size_t len)
{
    int rc = eio_payload_append(&s->pollq, s->pollq.len == 0, type, binary, data, len);
    if (rc) return rc;
    if (s->get) ploop_defer(s->eng->loop, &s->flush);
    return 0;
}

/* Sends one packet over the live transport. */
static int send_packet(esession *s, int type, bool binary, const void *data, size_t len)
{
    if (s->transport == ENGINE_WEBSOCKET && s->ws) {
        if (binary) return wsconn_send(s->ws, WS_OP_BINARY, data, len);
        uint8_t t = (uint8_t)('0' + type);
        return wsconn_send2(s->ws, WS_OP_TEXT, &t, 1, data, len);
    }
    return queue_poll(s, type, binary, data, len);
}

int esession_send(esession *s, bool binary, const void *data, size_t len)
{
    if (s->state != ES_OPEN) return PARLEY_ECLOSED;
    s->eng->st.messages_out++;
    s->eng->st.bytes_out += len;
    return send_packet(s, EIO_MESSAGE, binary, data, len);
}

int eframe_init(eframe *f, bool binary, const void *data, size_t len)
{
    size_t plen = len + (binary ? 0 : 1);
    uint8_t hdr[WS_MAX_HEADER];
    size_t hl = ws_frame_header(hdr, binary ? WS_OP_BINARY : WS_OP_TEXT, true, false, plen, NULL);
    f->blk = pshared_new(hl + plen);
    if (!f->blk) return PARLEY_ENOMEM;
    memcpy(f->blk->data, hdr, hl);
    uint8_t *p = f->blk->data + hl;
    if (!binary) *p++ = '0' + EIO_MESSAGE;
    if (len) memcpy(p, data, len);
    f->hdr_len = hl;
    f->binary = binary;
    return 0;
}

void eframe_release(eframe *f)
{
    pshared_unref(f->blk);
    f->blk = NULL;
}

int esession_send_frame(esession *s, const eframe *f)
{
    if (s->state != ES_OPEN) return PARLEY_ECLOSED;
    const uint8_t *pkt = f->blk->data + f->hdr_len;
    size_t plen = f->blk->len - f->hdr_len;
    s->eng->st.messages_out++;
    s->eng->st.bytes_out += plen - (f->binary ? 0 : 1);
    if (s->transport == ENGINE_WEBSOCKET && s->ws) {
        /* Below the threshold a compressing session sends the message
         * uncompressed, so the shared frame (RSV1 clear) is exactly it. */
        if (!s->ws->deflater || plen < s->ws->opts->deflate_threshold)
            return pconn_write_shared(s->ws->conn, f->blk, 0, f->blk->len);
        /* Above it, a compressing session deflates its own copy: with
         * context takeover the output depends on what this connection
         * sent before, so it cannot be shared. */
        return wsconn_send(s->ws, f->binary ? WS_OP_BINARY : WS_OP_TEXT, pkt, plen);
    }
    if (f->binary) return queue_poll(s, EIO_MESSAGE, true, pkt, plen);
    return queue_poll(s, EIO_MESSAGE, false, pkt + 1, plen - 1);
}

/* ---- heartbeat ---- */

static void on_heartbeat(ptimer *t)
{
    esession *s = PARLEY_CONTAINER_OF(t, esession, timer);
    engine *e = s->eng;
    if (s->state != ES_OPEN) return;
    uint64_t now = ploop_now(e->loop);
    if (s->awaiting_pong) {
        /* Any packet proves the client alive, even if its pong is queued
         * behind other traffic (as the reference does). */
        uint64_t since = now - s->last_rx;
        if (since < e->o.ping_timeout_ms) {
            ploop_timer_start(e->loop, &s->timer, e->o.ping_timeout_ms - since);
            return;
        }
        session_closed(s, "ping timeout");
        return;
    }
    if (send_packet(s, EIO_PING, false, NULL, 0) != 0) return;
    s->awaiting_pong = true;
    ploop_timer_start(e->loop, &s->timer, e->o.ping_timeout_ms);
}

/* ---- incoming packets (any transport) ---- */

/* Returns false when the session ended. */
static bool on_packet(esession *s, const eio_packet *p)
{
    engine *e = s->eng;
    if (s->state != ES_OPEN) return false;
    s->last_rx = ploop_now(e->loop);
    switch (p->type) {
    case EIO_PONG:
        if (s->awaiting_pong) {
            s->awaiting_pong = false;
            ploop_timer_start(e->loop, &s->timer, e->o.ping_interval_ms);
        }
        return true;
    case EIO_PING:
        /* v4: only the server pings. */
        session_closed(s, "transport error");
        return false;
    case EIO_MESSAGE:
        e->st.messages_in++;
        e->st.bytes_in += p->len;
        e->cbs->on_message(s, p->binary, p->data, p->len);
        return s->state == ES_OPEN;
    case EIO_CLOSE:
        if (s->get) {
            /* The client asked to close: its pending long-poll ends with a
             * noop, not a close packet (as the reference's polling
             * transport does). */
            const char noop = '0' + EIO_NOOP;
            poll_answer(s, &noop, 1);
        }
        session_closed(s, "transport close");
        return false;
    default:
        return true; /* open, upgrade, noop: nothing to do */
    }
}

/* ---- session lifetime ---- */

static void on_aux_timer(ptimer *t);

static void reap(pdefer *d)
{
    engine *e = PARLEY_CONTAINER_OF(d, engine, reap);
    while (e->dead) {
        esession *s = e->dead;
        e->dead = s->next_dead;
        pbuf_free(&s->pollq);
        free(s->origin);
        free(s);
    }
    if (e->freeing && e->sessions.n == 0 && e->detached == 0) {
        pmap_free(&e->sessions);
        free(e->cors_origin);
        free(e->allowed_origins);
        free(e);
    }
}

/* The user of a websocket the engine let go of while its closing
 * handshake runs. Such a socket still points at e->wsopts (its callbacks),
 * so the engine counts it and is not freed before it is gone. */
static char detached_tag;
#define DETACHED ((void *)&detached_tag)

static void detach_ws(wsconn *w)
{
    if (!w) return;
    if (!w->reported && w->user != DETACHED)
        PARLEY_CONTAINER_OF(w->opts, engine, wsopts)->detached++;
    w->user = DETACHED; /* its callbacks no longer reach the session */
    wsconn_close(w, 0, NULL);
}

/* The session is over: tell the layer above, release transports, and
 * free the memory at the end of the iteration. */
static void session_closed(esession *s, const char *reason)
{
    if (s->state == ES_CLOSED) return;
    engine *e = s->eng;
    s->state = ES_CLOSED;
    ploop_timer_stop(e->loop, &s->timer);
    ploop_timer_stop(e->loop, &s->aux);
    ploop_defer_cancel(e->loop, &s->flush);
    pmap_del(&e->sessions, s->sid, 20);
    if (s->get) {
        /* A waiting long-poll learns that the session is over. */
        const char close_pkt = '0' + EIO_CLOSE;
        poll_answer(s, &close_pkt, 1);
    }
    detach_ws(s->ws);
    detach_ws(s->probe);
    s->ws = s->probe = NULL;
    e->cbs->on_close(s, reason);
    s->next_dead = e->dead;
    e->dead = s;
    ploop_defer(e->loop, &e->reap);
}

void esession_close(esession *s)
{
    esession_close_why(s, "forced close");
}

void esession_close_why(esession *s, const char *reason)
{
    if (s->state != ES_OPEN) return;
    engine *e = s->eng;
    s->close_reason = reason;
    if (s->transport == ENGINE_WEBSOCKET && s->ws) {
        /* Queued frames are ahead of the close frame in the same buffer. */
        session_closed(s, reason);
        return;
    }
    s->state = ES_CLOSING;
    if (queue_poll(s, EIO_CLOSE, false, NULL, 0) != 0) {
        session_closed(s, reason);
        return;
    }
    s->poll_closing = true;
    if (s->get) {
        ploop_defer(e->loop, &s->flush);
    } else {
        s->aux.cb = on_aux_timer;
        ploop_timer_start(e->loop, &s->aux, POLL_CLOSE_TIMEOUT_MS);
    }
}

static void on_aux_timer(ptimer *t)
{
    esession *s = PARLEY_CONTAINER_OF(t, esession, aux);
    if (s->state == ES_CLOSING) {
        session_closed(s, s->close_reason);
        return;
    }
    if (s->probe) {
        /* The client did not finish the upgrade in time. */
        wsconn *w = s->probe;
        s->probe = NULL;
        s->upgrading = false;
        detach_ws(w);
    }
}

static esession *session_new(engine *e, int transport)
{
    esession *s = pcalloc(1, sizeof *s);
    if (!s) return NULL;
    uint8_t raw[15];
    if (prand_bytes(raw, sizeof raw) != 0) {
        free(s);
        return NULL;
    }
    base64_encode(raw, sizeof raw, s->sid);
    /* URL-safe, as the reference's base64id. */
    for (int i = 0; i < 20; i++) {
        if (s->sid[i] == '+') s->sid[i] = '-';
        if (s->sid[i] == '/') s->sid[i] = '_';
    }
    /* In a cluster, the first four characters name the node (96 random
     * bits remain). */
    if (e->route) memcpy(s->sid, e->tag, 4);
    s->eng = e;
    s->transport = (uint8_t)transport;
    ptimer_init(&s->timer, on_heartbeat);
    ptimer_init(&s->aux, on_aux_timer);
    s->flush.cb = flush_poll;
    s->last_rx = ploop_now(e->loop);
    if (pmap_put(&e->sessions, s->sid, 20, s) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* The open packet: 0{"sid":...,"upgrades":[...],"pingInterval":...}. */
static int write_open(engine *e, esession *s, pbuf *out, bool ws_only)
{
    return pbuf_appendf(out, "0{\"sid\":\"%s\",\"upgrades\":%s,%s", s->sid,
                        (!ws_only && e->o.allow_upgrades && (e->o.transports & ENGINE_WEBSOCKET))
                            ? "[\"websocket\"]"
                            : "[]",
                        e->open_tail);
}

/* ---- websocket transport ---- */

static void ws_message(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    esession *s = w->user;
    if (!s || s == DETACHED || s->state != ES_OPEN) return;
    eio_packet p;
    if (opcode == WS_OP_BINARY) {
        p = (eio_packet){.type = EIO_MESSAGE, .binary = true, .data = data, .len = len};
    } else if (eio_parse_text(data, len, &p) != 0) {
        if (w == s->probe) {
            s->probe = NULL;
            s->upgrading = false;
            detach_ws(w);
            return;
        }
        session_closed(s, "parse error");
        return;
    }
    if (w == s->probe) {
        /* Upgrade in progress: only 2probe and then 5 are expected here. */
        if (p.type == EIO_PING && p.len == 5 && memcmp(p.data, "probe", 5) == 0) {
            static const uint8_t pong[] = "3probe";
            wsconn_send(w, WS_OP_TEXT, pong, 6);
            s->upgrading = true;
            /* Have the client's pending long-poll return now (a noop), so
             * that it can send the upgrade packet. */
            if (s->get && s->pollq.len == 0) {
                const char noop = '0' + EIO_NOOP;
                poll_answer(s, &noop, 1);
            }
            return;
        }
        if (p.type == EIO_UPGRADE && s->upgrading) {
            ploop_timer_stop(s->eng->loop, &s->aux);
            s->probe = NULL;
            s->upgrading = false;
            s->ws = w;
            s->transport = ENGINE_WEBSOCKET;
            s->eng->st.upgrades++;
            if (s->get) {
                const char noop = '0' + EIO_NOOP;
                poll_answer(s, &noop, 1);
            }
            /* What was queued for polling goes out on the websocket, in
             * order. */
            if (s->pollq.len) {
                eio_payload it;
                eio_payload_init(&it, s->pollq.ptr, s->pollq.len);
                eio_packet q;
                while (eio_payload_next(&it, &q) == 1)
                    send_packet(s, q.type, q.binary, q.data, q.len);
                s->pollq.len = 0;
            }
            pbuf_free(&s->pollq);
            if (s->state == ES_OPEN && s->eng->cbs->on_upgrade) s->eng->cbs->on_upgrade(s);
            return;
        }
        s->probe = NULL;
        s->upgrading = false;
        detach_ws(w);
        return;
    }
    on_packet(s, &p);
}

static void ws_closed(wsconn *w, uint16_t code, const uint8_t *reason, size_t len, int err)
{
    (void)code;
    (void)reason;
    (void)len;
    esession *s = w->user;
    if (!s) return;
    w->user = NULL;
    if (s == DETACHED) {
        engine *e = PARLEY_CONTAINER_OF(w->opts, engine, wsopts);
        e->detached--;
        if (e->freeing) ploop_defer(e->loop, &e->reap);
        return;
    }
    if (w == s->probe) {
        s->probe = NULL;
        s->upgrading = false;
        ploop_timer_stop(s->eng->loop, &s->aux);
        return;
    }
    if (w == s->ws) {
        s->ws = NULL;
        session_closed(s, err == PARLEY_EPROTO ? "transport error" : "transport close");
    }
}

static const wsconn_cbs ws_cbs = {.on_message = ws_message, .on_closed = ws_closed};

/* ---- polling transport ---- */

static void on_get_abort(phttpd_deferred *d, void *user)
{
    (void)d;
    esession *s = user;
    s->get = NULL;
    if (s->state == ES_CLOSED) return;
    session_closed(s, "transport error");
}

static void poll_get(engine *e, esession *s, phttpd_req *req)
{
    if (s->get) {
        /* One long-poll at a time: overlapping ones end the session. */
        respond(e, req, 400, NULL, NULL, 0);
        session_closed(s, "transport error");
        return;
    }
    if (s->upgrading && s->pollq.len == 0) {
        const char noop = '0' + EIO_NOOP;
        respond(e, req, 200, "text/plain; charset=UTF-8", &noop, 1);
        return;
    }
    s->get = phttpd_defer(req, on_get_abort, s);
    if (!s->get) {
        respond(e, req, 500, NULL, NULL, 0);
        return;
    }
    if (s->pollq.len) ploop_defer(e->loop, &s->flush);
}

static void poll_post(engine *e, esession *s, phttpd_req *req)
{
    const http_header *ct = http_find_header(req->head, "Content-Type");
    if (ct && pstr_ieqz(ct->value, ct->value_len, "application/octet-stream")) {
        respond(e, req, 400, NULL, NULL, 0);
        session_closed(s, "transport error");
        return;
    }
    if (req->body_len > e->o.max_payload) {
        respond(e, req, 413, NULL, NULL, 0);
        return;
    }
    /* The payload is decoded in place: the body belongs to the request and
     * is writable until the handler returns. */
    eio_payload it;
    eio_payload_init(&it, (uint8_t *)req->body, req->body_len);
    eio_packet p;
    int rc;
    while ((rc = eio_payload_next(&it, &p)) == 1) {
        if (!on_packet(s, &p)) break;
    }
    if (rc < 0 && s->state == ES_OPEN) session_closed(s, "parse error");
    respond(e, req, 200, "text/html", "ok", 2);
}

/* ---- requests ---- */

static bool query_is(const phttpd_req *req, const char *key, const char *want)
{
    const char *v;
    size_t vl;
    if (!http_query_get(req->head->target, req->head->target_len, key, &v, &vl)) return false;
    return vl == strlen(want) && memcmp(v, want, vl) == 0;
}

static void handshake(engine *e, phttpd_req *req, int transport, bool upgrade)
{
    if (!query_is(req, "EIO", "4")) {
        if (upgrade)
            respond_upgrade_error(req, EERR_UNSUPPORTED_PROTOCOL_VERSION);
        else
            respond_error(e, req, EERR_UNSUPPORTED_PROTOCOL_VERSION);
        return;
    }
    esession *s = session_new(e, transport);
    if (!s) {
        respond(e, req, 500, NULL, NULL, 0);
        return;
    }
    if (e->cors_origin && strcmp(e->cors_origin, "*") != 0) {
        http_header hd[4];
        size_t n = cors_headers(e, req->head, hd, 0);
        for (size_t i = 0; i < n; i++)
            if (hd[i].name_len == 27) s->origin = pmemdup_str(hd[i].value, hd[i].value_len);
    }
    if (transport == ENGINE_WEBSOCKET) {
        wsconn *w = phttpd_upgrade(req, &e->ep, s);
        if (!w) {
            pmap_del(&e->sessions, s->sid, 20);
            free(s);
            return;
        }
        s->ws = w;
        pbuf open = {0};
        if (write_open(e, s, &open, true) == 0) wsconn_send(w, WS_OP_TEXT, open.ptr, open.len);
        pbuf_free(&open);
    } else {
        if (write_open(e, s, &s->pollq, false) != 0) {
            pmap_del(&e->sessions, s->sid, 20);
            free(s);
            respond(e, req, 500, NULL, NULL, 0);
            return;
        }
        /* The handshake GET is answered with the open packet at once (and
         * whatever on_open queues behind it). */
        s->get = phttpd_defer(req, on_get_abort, s);
        if (s->get) ploop_defer(e->loop, &s->flush);
    }
    ploop_timer_start(e->loop, &s->timer, e->o.ping_interval_ms);
    e->st.opened[transport == ENGINE_WEBSOCKET]++;
    e->cbs->on_open(s, req);
}

/* A POST names its session on the head: the reference refuses a second
 * one while the first one's body is still being read ("data request
 * overlap"), with 400, and ends the session. The token remembers which
 * session's flag to clear when the request ends either way. */
typedef struct post_token {
    engine *e;
    char sid[21];
} post_token;

static void post_end(post_token *t)
{
    esession *s = pmap_get(&t->e->sessions, t->sid, 20);
    if (s) s->posting = false;
    free(t);
}

static void handle_request(phttpd_req *req, engine *e);
static bool relay_start(engine *e, phttpd_req *req, const char *sid);

static void handle(phttpd_req *req, void *user)
{
    engine *e = user;
    post_token *t = req->state;
    /* The body is in: a later POST may come (the token is cleared first,
     * so that the handler's own answer does not see this one as open). */
    if (t) post_end(t);
    req->state = NULL;
    handle_request(req, e);
}

static void handle_request(phttpd_req *req, engine *e)
{
    const http_head *h = req->head;
    bool upgrade = http_header_has_token(h, "Upgrade", "websocket");
    bool is_get = h->method_len == 3 && memcmp(h->method, "GET", 3) == 0;
    if (e->cors_origin && h->method_len == 7 && memcmp(h->method, "OPTIONS", 7) == 0) {
        /* CORS preflight, answered like the `cors` middleware does. */
        http_header hd[8];
        size_t n = cors_headers(e, h, hd, 0);
        hd[n++] =
            (http_header){"Access-Control-Allow-Methods", 28, "GET,HEAD,PUT,PATCH,POST,DELETE", 30};
        const http_header *rh = http_find_header(h, "Access-Control-Request-Headers");
        if (rh) {
            hd[n++] = (http_header){"Access-Control-Allow-Headers", 28, rh->value, rh->value_len};
            hd[n++] = (http_header){"Vary", 4, "Access-Control-Request-Headers", 30};
        }
        phttpd_respond(req, 204, NULL, hd, n, NULL, 0);
        return;
    }
    const http_header *origin = http_find_header(h, "Origin");
    if (!origin_ok(e, origin)) {
        /* Before anything else: a refused page learns nothing, not even
         * whether a sid exists. */
        if (e->o.origin_refused) (*e->o.origin_refused)++;
        plog_debug("engine.io: Origin %.*s refused", (int)PARLEY_MIN(origin->value_len, 200),
                   origin->value);
        if (upgrade)
            respond_upgrade_error(req, EERR_FORBIDDEN);
        else
            respond_error(e, req, EERR_FORBIDDEN);
        return;
    }
    int transport = 0;
    if (query_is(req, "transport", "polling"))
        transport = ENGINE_POLLING;
    else if (query_is(req, "transport", "websocket"))
        transport = ENGINE_WEBSOCKET;
    if (!(transport & e->o.transports)) {
        if (upgrade)
            respond_upgrade_error(req, EERR_UNKNOWN_TRANSPORT);
        else
            respond_error(e, req, EERR_UNKNOWN_TRANSPORT);
        return;
    }
    const char *sid;
    size_t sid_len;
    if (http_query_get(h->target, h->target_len, "sid", &sid, &sid_len) && sid_len > 0) {
        esession *s = sid_len == 20 ? pmap_get(&e->sessions, sid, 20) : NULL;
        if (!s && sid_len == 20 && e->route && !upgrade && memcmp(sid, e->tag, 4) != 0 &&
            (is_get || (h->method_len == 4 && memcmp(h->method, "POST", 4) == 0)) &&
            !http_find_header(h, "X-Parley-Forwarded") && relay_start(e, req, sid))
            return;
        if (!s || s->state == ES_CLOSED) {
            if (upgrade)
                respond_upgrade_error(req, EERR_UNKNOWN_SID);
            else
                respond_error(e, req, EERR_UNKNOWN_SID);
            return;
        }
        if (upgrade && transport == ENGINE_WEBSOCKET) {
            wsconn *w = phttpd_upgrade(req, &e->ep, s);
            if (!w) return;
            if (s->transport != ENGINE_POLLING || s->probe || !e->o.allow_upgrades ||
                s->state != ES_OPEN) {
                /* Already upgraded or upgrading: the new socket goes. */
                detach_ws(w);
                return;
            }
            s->probe = w;
            s->aux.cb = on_aux_timer;
            ploop_timer_start(e->loop, &s->aux, e->o.upgrade_timeout_ms);
            return;
        }
        if (s->transport != transport) {
            respond_error(e, req, EERR_BAD_REQUEST);
            return;
        }
        if (is_get)
            poll_get(e, s, req);
        else if (h->method_len == 4 && memcmp(h->method, "POST", 4) == 0)
            poll_post(e, s, req);
        else
            respond(e, req, 500, NULL, NULL, 0);
        return;
    }
    if (!is_get) {
        respond_error(e, req, EERR_BAD_HANDSHAKE_METHOD);
        return;
    }
    if (transport == ENGINE_WEBSOCKET && !upgrade) {
        respond_error(e, req, EERR_BAD_REQUEST);
        return;
    }
    uint64_t retry_ms = 0;
    if (!phttpd_ip_take(e->http, req->conn, &retry_ms)) {
        /* New sessions per client address: a flood of handshakes costs
         * the flooder, not the server. */
        char ra[24], body[112];
        int rl = snprintf(ra, sizeof ra, "%llu", (unsigned long long)(retry_ms + 999) / 1000);
        int bl = snprintf(body, sizeof body,
                          "{\"code\":%d,\"message\":\"Too many new sessions from this address: "
                          "retry later\"}",
                          EERR_BAD_REQUEST);
        http_header hd[8];
        size_t n = cors_headers(e, req->head, hd, 0);
        hd[n++] = (http_header){"Retry-After", 11, ra, (size_t)rl};
        if (upgrade) hd[n++] = (http_header){"Connection", 10, "close", 5};
        phttpd_respond(req, 429, "application/json", hd, n, body, (size_t)bl);
        return;
    }
    handshake(e, req, transport, upgrade);
}

static void engine_head(phttpd_req *req, void *user)
{
    engine *e = user;
    const http_head *h = req->head;
    if (h->method_len != 4 || memcmp(h->method, "POST", 4) != 0) return;
    const char *sid;
    size_t sid_len;
    if (!http_query_get(h->target, h->target_len, "sid", &sid, &sid_len) || sid_len != 20) return;
    esession *s = pmap_get(&e->sessions, sid, 20);
    if (!s || s->state == ES_CLOSED || s->transport != ENGINE_POLLING) return;
    if (!origin_ok(e, http_find_header(h, "Origin"))) return; /* refused by handle() */
    if (h->body_kind == HTTP_BODY_LENGTH && h->content_length > e->o.max_payload) {
        /* Before the body, with the CORS headers; the session lives on. */
        respond(e, req, 413, NULL, NULL, 0);
        return;
    }
    if (s->posting) {
        respond(e, req, 400, NULL, NULL, 0);
        session_closed(s, "transport error");
        return;
    }
    post_token *t = malloc(sizeof *t);
    if (!t) return;
    t->e = e;
    memcpy(t->sid, s->sid, sizeof t->sid);
    s->posting = true;
    req->state = t;
}

static void engine_abort(void *state, void *user)
{
    (void)user;
    post_end(state);
}

int engine_attach(phttpd *http, const char *path, const engine_opts *o, const engine_cbs *cbs,
                  void *user, engine **out)
{
    engine *e = pcalloc(1, sizeof *e);
    if (!e) return PARLEY_ENOMEM;
    e->http = http;
    e->loop = phttpd_loop(http);
    if (o)
        e->o = *o;
    else
        engine_opts_init(&e->o);
    if (e->o.cors_origin) {
        e->cors_origin = strdup(e->o.cors_origin);
        if (!e->cors_origin) {
            free(e);
            return PARLEY_ENOMEM;
        }
        e->o.cors_origin = e->cors_origin;
    }
    if (e->o.allowed_origins) {
        e->allowed_origins = strdup(e->o.allowed_origins);
        if (!e->allowed_origins) {
            free(e->cors_origin);
            free(e);
            return PARLEY_ENOMEM;
        }
        e->o.allowed_origins = e->allowed_origins;
    }
    e->cbs = cbs;
    e->user = user;
    e->reap.cb = reap;
    wsconn_opts_init(&e->wsopts);
    e->wsopts.max_frame = e->wsopts.max_message = e->o.max_payload;
    if (e->o.pmd) e->wsopts.deflate_threshold = e->o.pmd->threshold;
    e->wsopts.ping_interval_ms = 0; /* Engine.IO has its own heartbeat */
    e->wsopts.cbs = &ws_cbs;
    e->ep = (phttpd_ws_endpoint){.ws_opts = &e->wsopts, .pmd = e->o.pmd};
    snprintf(e->open_tail, sizeof e->open_tail,
             "\"pingInterval\":%u,\"pingTimeout\":%u,\"maxPayload\":%zu}", e->o.ping_interval_ms,
             e->o.ping_timeout_ms, e->o.max_payload);
    /* POST bodies are limited to max_payload on their head (413), and
     * the head marks the session's POST in progress. */
    /* A chunked body is only known to be too large once read: room for
     * one byte more than allowed lets poll_post answer it the engine's
     * way (413 with the CORS headers, the session going on). */
    phttpd_route_opts ro = {.handler = handle,
                            .max_body = (uint64_t)e->o.max_payload + 1,
                            .on_head = engine_head,
                            .on_abort = engine_abort,
                            .user = e};
    int rc = phttpd_route_ex(http, path, true, &ro);
    if (rc) {
        free(e->cors_origin);
        free(e->allowed_origins);
        free(e);
        return rc;
    }
    *out = e;
    return 0;
}

static void relay_finish(struct relay *r, int status, const char *ctype, const void *body,
                         size_t len);

void engine_free(engine *e)
{
    if (!e) return;
    e->freeing = true;
    while (e->relays)
        relay_finish(e->relays, 503, "application/json",
                     "{\"code\":3,\"message\":\"Bad request\"}", 35);
    size_t pos = 0;
    pmap_entry *ent;
    /* session_closed removes entries: collect first. */
    while (e->sessions.n) {
        pos = 0;
        ent = pmap_next(&e->sessions, &pos);
        if (!ent) break;
        session_closed(ent->val, "server shutting down");
    }
    /* Nothing is left that a later loop iteration must see close (e.g. a
     * server that never listened, freed without running the loop again):
     * free now rather than leak when the loop does not run. */
    if (!e->dead && e->sessions.n == 0 && e->detached == 0) {
        ploop_defer_cancel(e->loop, &e->reap);
        reap(&e->reap);
        return;
    }
    ploop_defer(e->loop, &e->reap);
}

/* ---- relaying polling requests to the node that owns the session ---- */

typedef struct relay {
    engine *e;
    struct relay *prev, *next;
    hclient *hc;
    phttpd_deferred *d;
    ptimer timer;
    bool is_get;
    size_t ncors;
    http_header cors[4];
    char cors_buf[512]; /* copies of the CORS header values */
} relay;

static void relay_unlink(relay *r)
{
    engine *e = r->e;
    if (r->prev)
        r->prev->next = r->next;
    else
        e->relays = r->next;
    if (r->next) r->next->prev = r->prev;
    e->st.forwarding--;
    ploop_timer_stop(e->loop, &r->timer);
}

/* Answers the waiting client and frees the relay. */
static void relay_finish(relay *r, int status, const char *ctype, const void *body, size_t len)
{
    relay_unlink(r);
    if (r->hc) hclient_abort(r->hc);
    http_header h[6];
    size_t n = 0;
    h[n++] = (http_header){"Cache-Control", 13, "no-store", 8};
    for (size_t i = 0; i < r->ncors; i++) h[n++] = r->cors[i];
    if (status == 503) h[n++] = (http_header){"Retry-After", 11, "1", 1};
    phttpd_deferred_respond(r->d, status, ctype, h, n, body, len);
    free(r);
}

static void relay_done(hclient *hc, int err, int status, uint8_t *body, size_t len, void *user)
{
    (void)hc;
    relay *r = user;
    engine *e = r->e;
    r->hc = NULL;
    hclient_close(hc, 0);
    if (err) {
        e->st.forward_failures++;
        plog_debug("engine.io: relay to the session's node failed: %s", parley_strerror(err));
        relay_finish(r, 502, "application/json",
                     "{\"code\":1,\"message\":\"Session ID unknown\"}", 41);
        return;
    }
    /* The owner answers like any Engine.IO server: 200 with packets (GET)
     * or "ok" (POST), or an error object. */
    const char *ctype = status != 200 ? "application/json"
                        : r->is_get   ? "text/plain; charset=UTF-8"
                                      : "text/html";
    relay_finish(r, status, ctype, body, len);
}

static void relay_timeout(ptimer *t)
{
    relay *r = PARLEY_CONTAINER_OF(t, relay, timer);
    r->e->st.forward_failures++;
    relay_finish(r, 504, "application/json", "{\"code\":3,\"message\":\"Bad request\"}", 35);
}

static void relay_abort(phttpd_deferred *d, void *user)
{
    (void)d;
    /* The client went away: drop the relay without answering. */
    relay *r = user;
    relay_unlink(r);
    if (r->hc) hclient_abort(r->hc);
    free(r);
}

/* true when the request was taken (relayed, or answered 503). */
static bool relay_start(engine *e, phttpd_req *req, const char *sid)
{
    const http_head *h = req->head;
    char host[256];
    unsigned port = 0;
    char tag[5];
    memcpy(tag, sid, 4);
    tag[4] = 0;
    if (e->route(e->route_user, tag, host, sizeof host, &port) != 0) {
        e->st.forward_refused++;
        return false;
    }
    if (e->st.forwarding >= e->max_forwards) {
        e->st.forward_refused++;
        respond(e, req, 503, "application/json", "{\"code\":3,\"message\":\"Bad request\"}", 35);
        return true;
    }
    relay *r = pcalloc(1, sizeof *r);
    if (!r) return false;
    r->e = e;
    r->is_get = h->method_len == 3 && memcmp(h->method, "GET", 3) == 0;
    /* This node's CORS answer, computed now while the head exists. */
    http_header ch[4];
    size_t nc = cors_headers(e, h, ch, 0), used = 0;
    for (size_t i = 0; i < nc; i++) {
        if (used + ch[i].value_len > sizeof r->cors_buf) break;
        memcpy(r->cors_buf + used, ch[i].value, ch[i].value_len);
        r->cors[r->ncors++] = (http_header){ch[i].name, ch[i].name_len, r->cors_buf + used,
                                            ch[i].value_len};
        used += ch[i].value_len;
    }
    char hosthdr[300];
    snprintf(hosthdr, sizeof hosthdr, "%s:%u", host, port);
    hclient_opts ho = {.host = host,
                       .port = port,
                       .host_header = hosthdr,
                       .connect_timeout_ms = 5000,
                       .max_body = e->o.max_payload + 64};
    r->hc = hclient_new(e->loop, &ho, relay_done, r);
    if (!r->hc) {
        free(r);
        return false;
    }
    http_header fh[4];
    size_t nf = 0;
    fh[nf++] = (http_header){"X-Parley-Forwarded", 18, e->tag, 4};
    const http_header *origin = http_find_header(h, "Origin");
    if (origin) fh[nf++] = *origin;
    const http_header *ct = http_find_header(h, "Content-Type");
    if (ct) fh[nf++] = *ct;
    char target[2048];
    if (h->target_len >= sizeof target ||
        hclient_request(r->hc, r->is_get ? "GET" : "POST",
                        (memcpy(target, h->target, h->target_len), target[h->target_len] = 0,
                         target),
                        fh, nf, r->is_get ? NULL : req->body, r->is_get ? 0 : req->body_len) != 0) {
        hclient_abort(r->hc);
        free(r);
        return false;
    }
    r->d = phttpd_defer(req, relay_abort, r);
    if (!r->d) {
        hclient_abort(r->hc);
        free(r);
        return false;
    }
    r->next = e->relays;
    if (r->next) r->next->prev = r;
    e->relays = r;
    e->st.forwarding++;
    e->st.forwarded++;
    ptimer_init(&r->timer, relay_timeout);
    ploop_timer_start(e->loop, &r->timer, e->relay_timeout_ms);
    return true;
}

int engine_set_cluster(engine *e, const char *tag, engine_route_fn route, void *user,
                       unsigned max_forwards, uint32_t relay_timeout_ms)
{
    if (!tag || strlen(tag) != 4 || !route) return PARLEY_EINVAL;
    for (int i = 0; i < 4; i++) {
        char c = tag[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return PARLEY_EINVAL;
    }
    memcpy(e->tag, tag, 5);
    e->route = route;
    e->route_user = user;
    e->max_forwards = max_forwards ? max_forwards : 1024;
    e->relay_timeout_ms = relay_timeout_ms ? relay_timeout_ms
                                           : e->o.ping_interval_ms + e->o.ping_timeout_ms + 5000;
    return 0;
}
