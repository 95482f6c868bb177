/*
 * Engine.IO v4 client session (see eio_client.h).
 *
 * Transports are separate allocations (hclient for the two polling
 * connections, ews for a WebSocket) that the session lets go of when it
 * is done with them: a transport being closed finishes on its own and
 * frees itself, so the session can start its next attempt at once and can
 * be freed while old connections are still closing.
 *
 * Order across the upgrade: once the probe is answered the session stops
 * issuing GETs and POSTs, waits for the ones in flight, then sends 5 on
 * the WebSocket and writes what was queued meanwhile there, in order.
 */
#include "client/eio_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"
#include "client/http_client.h"
#include "codec/eio.h"
#include "codec/json.h"
#include "codec/pmd.h"
#include "codec/utf8.h"
#include "codec/ws_handshake.h"
#include "parley/client.h"
#include "ws/wsconn.h"

#define EC_MAX_HEADERS   64
#define EC_MAX_MESSAGE   (16u << 20) /* what we accept from the server */
#define EC_CLOSE_LINGER  1000        /* a last POST may finish within */
#define EC_DEFAULT_PAYLD 1000000

enum { EC_IDLE = 0, EC_OPENING, EC_OPEN, EC_CLOSED };
enum { T_NONE = 0, T_POLLING, T_WEBSOCKET };
enum { WS_CONNECTING = 0, WS_HANDSHAKE, WS_OPEN, WS_DONE };

typedef struct ews ews;

/* A packet waiting for a POST (or for the end of the upgrade). */
typedef struct wpkt {
    struct wpkt *next;
    uint8_t type;
    bool binary;
    size_t len;
    uint8_t data[];
} wpkt;

struct eio_client {
    parley_loop *loop;
    eio_client_opts o;
    char *path;
    char *extra_query; /* from the URL and o.query, joined, or NULL */
    http_header *headers;
    char *hdr_text;
    eio_client_cbs cbs;
    void *user;

    int state;
    int transport;
    bool ws_first_try; /* a websocket-first attempt is under way */
    char sid[64];
    uint32_t ping_interval, ping_timeout, max_payload;
    bool server_upgrades;

    hclient *get, *post;
    ews *ws;    /* the live WebSocket transport */
    ews *probe; /* the upgrade probe */
    /* Closed by us but still finishing (a last POST, a close handshake):
     * aborted when the session is freed. */
    hclient *linger_get, *linger_post;
    ews *linger_ws;
    bool upgrading; /* probe answered: polling pauses */

    wpkt *wq_head, **wq_tail;
    size_t wq_count;
    pdefer flush_defer;
    pbuf scratch;

    ptimer open_timer, ping_timer;
    int depth;
    bool free_pending;
};

struct ews {
    pconn c;
    eio_client *e; /* NULL once let go */
    ews **slot;    /* cleared when freed */
    int state;
    bool probe;
    bool tcp_up;
    char key[25];
    http_parser parser;
    http_header hdrs[EC_MAX_HEADERS];
    pmd_config pmd;
    wsconn_opts wso;
    wsconn ws;
    bool ws_live;
    int http_status;
    int proxy_status; /* the proxy refused the tunnel with it */
    int err;
};

static void finish(eio_client *e, const char *reason, int err, int status);
static void on_open_timeout(ptimer *t);
static void on_ping_timeout(ptimer *t);
static void on_flush_defer(pdefer *d);
static void start_poll(eio_client *e);
static void flush_posts(eio_client *e);
static void maybe_upgrade(eio_client *e);
static void probe_failed(eio_client *e);
static void start_polling_handshake(eio_client *e);

/* ---- user callbacks, re-entrancy ---- */

static void destroy(eio_client *e);

static void enter(eio_client *e)
{
    e->depth++;
}

/* True when the session must not be touched any more (freed). */
static bool leave(eio_client *e)
{
    e->depth--;
    if (e->depth == 0 && e->free_pending) {
        destroy(e);
        return true;
    }
    return e->free_pending;
}

/* ---- options ---- */

static int copy_headers(eio_client *e, const http_header *h, size_t n)
{
    if (n == 0) return 0;
    if (n > EC_MAX_HEADERS) return PARLEY_EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += h[i].name_len + h[i].value_len;
    e->hdr_text = malloc(total + 1);
    e->headers = pcalloc(n, sizeof *e->headers);
    if (!e->hdr_text || !e->headers) return PARLEY_ENOMEM;
    char *p = e->hdr_text;
    for (size_t i = 0; i < n; i++) {
        memcpy(p, h[i].name, h[i].name_len);
        e->headers[i].name = p;
        e->headers[i].name_len = h[i].name_len;
        p += h[i].name_len;
        memcpy(p, h[i].value, h[i].value_len);
        e->headers[i].value = p;
        e->headers[i].value_len = h[i].value_len;
        p += h[i].value_len;
    }
    e->o.nheaders = n;
    return 0;
}

eio_client *eio_client_new(parley_loop *loop, const eio_client_opts *o, const eio_client_cbs *cbs,
                           void *user)
{
    eio_client *e = pcalloc(1, sizeof *e);
    if (!e) return NULL;
    e->loop = loop;
    e->o = *o;
    e->o.headers = NULL;
    e->o.nheaders = 0;
    e->cbs = *cbs;
    e->user = user;
    e->wq_tail = &e->wq_head;
    e->flush_defer.cb = on_flush_defer;
    ptimer_init(&e->open_timer, on_open_timeout);
    ptimer_init(&e->ping_timer, on_ping_timeout);
    const char *path = o->path && *o->path ? o->path : "/engine.io/";
    pbuf q = {0};
    const char *uq = strchr(o->url.target, '?');
    int rc = 0;
    if (uq && uq[1]) rc = pbuf_append_str(&q, uq + 1);
    if (rc == 0 && o->query && *o->query) {
        const char *oq = o->query[0] == '?' || o->query[0] == '&' ? o->query + 1 : o->query;
        if (q.len && *oq) rc = pbuf_append(&q, "&", 1);
        if (rc == 0) rc = pbuf_append_str(&q, oq);
    }
    if (rc == 0 && q.len) {
        e->extra_query = pmemdup_str(q.ptr, q.len);
        if (!e->extra_query) rc = PARLEY_ENOMEM;
    }
    pbuf_free(&q);
    e->path = strdup(path);
    if (!e->path) rc = PARLEY_ENOMEM;
    if (rc == 0) rc = copy_headers(e, o->headers, o->nheaders);
    e->o.headers = e->headers;
    if (rc) {
        destroy(e);
        return NULL;
    }
    if (!(e->o.transports & (PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET)))
        e->o.transports = PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET;
    return e;
}

void *eio_client_user(const eio_client *c)
{
    return c->user;
}

const char *eio_client_sid(const eio_client *c)
{
    return c->state == EC_OPEN ? c->sid : NULL;
}

uint32_t eio_client_max_payload(const eio_client *c)
{
    return c->max_payload;
}

/* Request target for a transport, with the session id once known. */
static int make_target(eio_client *e, const char *transport, pbuf *out)
{
    out->len = 0;
    int rc = pbuf_appendf(out, "%s?EIO=4&transport=%s", e->path, transport);
    if (rc == 0 && e->sid[0]) rc = pbuf_appendf(out, "&sid=%s", e->sid);
    if (rc == 0 && e->extra_query) rc = pbuf_appendf(out, "&%s", e->extra_query);
    if (rc == 0) rc = pbuf_append(out, "", 1);
    return rc;
}

/* ---- write queue ---- */

static void wq_clear(eio_client *e)
{
    wpkt *p = e->wq_head;
    while (p) {
        wpkt *n = p->next;
        free(p);
        p = n;
    }
    e->wq_head = NULL;
    e->wq_tail = &e->wq_head;
    e->wq_count = 0;
}

static int wq_push(eio_client *e, int type, bool binary, const void *data, size_t len)
{
    if (len > SIZE_MAX - sizeof(wpkt)) return PARLEY_ENOMEM;
    wpkt *p = malloc(sizeof *p + len);
    if (!p) return PARLEY_ENOMEM;
    p->next = NULL;
    p->type = (uint8_t)type;
    p->binary = binary;
    p->len = len;
    if (len) memcpy(p->data, data, len);
    *e->wq_tail = p;
    e->wq_tail = &p->next;
    e->wq_count++;
    return 0;
}

static wpkt *wq_pop(eio_client *e)
{
    wpkt *p = e->wq_head;
    if (!p) return NULL;
    e->wq_head = p->next;
    if (!e->wq_head) e->wq_tail = &e->wq_head;
    e->wq_count--;
    return p;
}

/* ---- transports: teardown ---- */

static void ews_release(ews *w, bool graceful);

static void abort_lingering(eio_client *e)
{
    hclient_abort(e->linger_get);
    hclient_abort(e->linger_post);
    if (e->linger_ws) {
        e->linger_ws->slot = NULL;
        pconn_close(&e->linger_ws->c, false, 0);
        e->linger_ws = NULL;
    }
}

static void linger_hclient(hclient *h, hclient **slot)
{
    hclient_abort(*slot);
    *slot = h;
    hclient_set_slot(h, slot);
    hclient_close(h, EC_CLOSE_LINGER);
}

static void drop_transports(eio_client *e, bool graceful)
{
    if (e->get) {
        hclient_close(e->get, graceful ? EC_CLOSE_LINGER : 0);
        e->get = NULL;
    }
    if (e->post) {
        hclient_close(e->post, graceful ? EC_CLOSE_LINGER : 0);
        e->post = NULL;
    }
    if (e->ws) {
        ews_release(e->ws, graceful);
        e->ws = NULL;
    }
    if (e->probe) {
        ews_release(e->probe, false);
        e->probe = NULL;
    }
    e->upgrading = false;
    ploop_defer_cancel(e->loop, &e->flush_defer);
}

/* Ends the attempt or the session and reports it once. */
static void finish(eio_client *e, const char *reason, int err, int status)
{
    if (e->state != EC_OPENING && e->state != EC_OPEN) return;
    e->state = EC_CLOSED;
    ploop_timer_stop(e->loop, &e->open_timer);
    ploop_timer_stop(e->loop, &e->ping_timer);
    drop_transports(e, false);
    wq_clear(e);
    e->transport = T_NONE;
    e->ws_first_try = false;
    plog_info("engine.io %s: %s (%s, HTTP %d)", e->o.url.host_header, reason, parley_strerror(err),
              status);
    if (e->cbs.on_close) {
        enter(e);
        e->cbs.on_close(e, reason, err, status);
        leave(e);
    }
}

/* ---- packets from the server ---- */

static void reset_ping_timer(eio_client *e)
{
    ploop_timer_start(e->loop, &e->ping_timer, (uint64_t)e->ping_interval + e->ping_timeout);
}

static void on_ping_timeout(ptimer *t)
{
    eio_client *e = PARLEY_CONTAINER_OF(t, eio_client, ping_timer);
    finish(e, "ping timeout", PARLEY_ETIMEDOUT, 0);
}

static void on_open_timeout(ptimer *t)
{
    eio_client *e = PARLEY_CONTAINER_OF(t, eio_client, open_timer);
    finish(e, "timeout", PARLEY_ETIMEDOUT, 0);
}

static int send_packet(eio_client *e, int type, bool binary, const void *data, size_t len);

/* Reads the open packet's JSON. */
static int parse_open(eio_client *e, const uint8_t *data, size_t len)
{
    json_val v, sid, iv, to, mp, up;
    if (json_parse((const char *)data, len, 8, &v, NULL) != 0 || v.type != JSON_OBJECT)
        return PARLEY_EPROTO;
    if (!json_object_get(&v, "sid", &sid) || sid.type != JSON_STRING) return PARLEY_EPROTO;
    long n = json_string_decode(&sid, e->sid, sizeof e->sid - 1);
    if (n <= 0) return PARLEY_EPROTO;
    e->sid[n] = 0;
    for (long i = 0; i < n; i++) {
        char ch = e->sid[i];
        /* The id goes into query strings: refuse what would need escaping. */
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              ch == '-' || ch == '_' || ch == '.' || ch == '~'))
            return PARLEY_EPROTO;
    }
    int64_t x;
    if (!json_object_get(&v, "pingInterval", &iv) || !json_int(&iv, &x) || x <= 0 ||
        x > UINT32_MAX / 2)
        return PARLEY_EPROTO;
    e->ping_interval = (uint32_t)x;
    if (!json_object_get(&v, "pingTimeout", &to) || !json_int(&to, &x) || x <= 0 ||
        x > UINT32_MAX / 2)
        return PARLEY_EPROTO;
    e->ping_timeout = (uint32_t)x;
    e->max_payload = EC_DEFAULT_PAYLD;
    if (json_object_get(&v, "maxPayload", &mp)) {
        if (!json_int(&mp, &x) || x <= 0) return PARLEY_EPROTO;
        e->max_payload = x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
    }
    e->server_upgrades = false;
    if (json_object_get(&v, "upgrades", &up)) {
        if (up.type != JSON_ARRAY) return PARLEY_EPROTO;
        json_iter it;
        json_val u;
        json_iter_init(&it, &up);
        while (json_array_next(&it, &u))
            if (json_string_eq(&u, "websocket")) e->server_upgrades = true;
    }
    return 0;
}

static void start_probe(eio_client *e);

/* The session is open on transport t. */
static bool opened(eio_client *e, int t)
{
    e->state = EC_OPEN;
    e->transport = t;
    e->ws_first_try = false;
    ploop_timer_stop(e->loop, &e->open_timer);
    reset_ping_timer(e);
    if (e->cbs.on_open) {
        enter(e);
        e->cbs.on_open(e, t == T_POLLING ? "polling" : "websocket");
        if (leave(e)) return false;
    }
    return e->state == EC_OPEN;
}

/* One packet from the server, on the live transport. False when the
 * session ended (or was freed) while handling it. */
static bool handle_packet(eio_client *e, const eio_packet *p)
{
    switch (p->type) {
    case EIO_PING:
        reset_ping_timer(e);
        send_packet(e, EIO_PONG, false, p->data, p->len);
        return e->state == EC_OPEN;
    case EIO_MESSAGE:
        if (e->cbs.on_message) {
            enter(e);
            e->cbs.on_message(e, p->binary, p->data, p->len);
            if (leave(e)) return false;
        }
        return e->state == EC_OPEN;
    case EIO_CLOSE:
        finish(e, "transport close", PARLEY_ECLOSED, 0);
        return false;
    case EIO_NOOP:
    case EIO_PONG:
        return true;
    default:
        /* open or upgrade from the server after the handshake */
        finish(e, "parse error", PARLEY_EPROTO, 0);
        return false;
    }
}

/* ---- polling ---- */

static hclient *new_hclient(eio_client *e,
                            void (*cb)(hclient *, int, int, uint8_t *, size_t, void *))
{
    hclient_opts ho = {.host = e->o.url.host,
                       .port = e->o.url.port,
                       .host_header = e->o.url.host_header,
                       .tls = e->o.url.tls ? e->o.tls : NULL,
                       .proxy = e->o.use_proxy ? &e->o.proxy : NULL,
                       .connect_timeout_ms = e->o.timeout_ms,
                       .max_body = EC_MAX_MESSAGE};
    return hclient_new(e->loop, &ho, cb, e);
}

static const http_header post_type = {"Content-Type", 12, "text/plain;charset=UTF-8", 24};

static int polling_request(eio_client *e, hclient *h, const char *method, const void *body,
                           size_t len)
{
    pbuf target = {0};
    int rc = make_target(e, "polling", &target);
    http_header hdrs[EC_MAX_HEADERS + 1];
    size_t n = 0;
    for (size_t i = 0; i < e->o.nheaders; i++) hdrs[n++] = e->headers[i];
    if (body) hdrs[n++] = post_type;
    if (rc == 0) rc = hclient_request(h, method, (const char *)target.ptr, hdrs, n, body, len);
    pbuf_free(&target);
    return rc;
}

/* Handshake GET answered. */
static void on_handshake(hclient *h, int err, int status, uint8_t *body, size_t len, void *user)
{
    (void)h;
    eio_client *e = user;
    if (err) {
        finish(e, err == PARLEY_ETIMEDOUT ? "timeout" : "transport error", err, status);
        return;
    }
    if (status != 200) {
        finish(e, "handshake refused", PARLEY_EHANDSHAKE, status);
        return;
    }
    eio_payload it;
    eio_packet p;
    eio_payload_init(&it, body, len);
    if (eio_payload_next(&it, &p) != 1 || p.type != EIO_OPEN || p.binary ||
        parse_open(e, p.data, p.len) != 0) {
        finish(e, "parse error", PARLEY_EPROTO, status);
        return;
    }
    if (!opened(e, T_POLLING)) return;
    int rc;
    while ((rc = eio_payload_next(&it, &p)) == 1)
        if (!handle_packet(e, &p)) return;
    if (rc < 0) {
        finish(e, "parse error", PARLEY_EPROTO, 0);
        return;
    }
    if (e->server_upgrades && e->o.upgrade && (e->o.transports & PARLEY_TRANSPORT_WEBSOCKET))
        start_probe(e);
    if (e->state != EC_OPEN) return;
    start_poll(e);
    flush_posts(e);
}

static void on_poll(hclient *h, int err, int status, uint8_t *body, size_t len, void *user);

/* The GET connection carries the handshake, then the long-polls. */
static void on_get(hclient *h, int err, int status, uint8_t *body, size_t len, void *user)
{
    eio_client *e = user;
    if (e->state == EC_OPENING)
        on_handshake(h, err, status, body, len, user);
    else
        on_poll(h, err, status, body, len, user);
}

static void start_poll(eio_client *e)
{
    if (e->state != EC_OPEN || e->transport != T_POLLING || e->upgrading) return;
    if (!e->get && !(e->get = new_hclient(e, on_get))) {
        finish(e, "transport error", PARLEY_ENOMEM, 0);
        return;
    }
    if (hclient_busy(e->get)) return;
    int rc = polling_request(e, e->get, "GET", NULL, 0);
    if (rc) finish(e, "transport error", rc, 0);
}

static void on_poll(hclient *h, int err, int status, uint8_t *body, size_t len, void *user)
{
    (void)h;
    eio_client *e = user;
    if (err) {
        finish(e, "transport error", err, 0);
        return;
    }
    if (status != 200) {
        finish(e, "transport error", PARLEY_EPROTO, status);
        return;
    }
    eio_payload it;
    eio_packet p;
    eio_payload_init(&it, body, len);
    int rc;
    while ((rc = eio_payload_next(&it, &p)) == 1)
        if (!handle_packet(e, &p)) return;
    if (rc < 0) {
        finish(e, "parse error", PARLEY_EPROTO, 0);
        return;
    }
    if (e->upgrading) {
        maybe_upgrade(e);
        return;
    }
    start_poll(e);
}

static void on_post(hclient *h, int err, int status, uint8_t *body, size_t len, void *user)
{
    (void)h;
    (void)body;
    (void)len;
    eio_client *e = user;
    if (err) {
        finish(e, "transport error", err, 0);
        return;
    }
    if (status != 200) {
        finish(e, "transport error", status == 413 ? PARLEY_ELIMIT : PARLEY_EPROTO, status);
        return;
    }
    if (e->upgrading) {
        maybe_upgrade(e);
        return;
    }
    flush_posts(e);
}

/* Sends what is queued in POSTs of at most maxPayload bytes. */
static void flush_posts(eio_client *e)
{
    if (e->state != EC_OPEN || e->transport != T_POLLING || e->upgrading || !e->wq_head) return;
    if (!e->post && !(e->post = new_hclient(e, on_post))) {
        finish(e, "transport error", PARLEY_ENOMEM, 0);
        return;
    }
    if (hclient_busy(e->post)) return;
    pbuf *b = &e->scratch;
    b->len = 0;
    bool first = true;
    while (e->wq_head) {
        wpkt *p = e->wq_head;
        size_t add = eio_payload_size(first, p->binary, p->len);
        if (!first && (add > e->max_payload || b->len + add > e->max_payload)) break;
        if (eio_payload_append(b, first, p->type, p->binary, p->data, p->len) != 0) {
            finish(e, "transport error", PARLEY_ENOMEM, 0);
            return;
        }
        first = false;
        free(wq_pop(e));
    }
    int rc = polling_request(e, e->post, "POST", b->ptr, b->len);
    pbuf_reset(b, 64 * 1024);
    if (rc) finish(e, "transport error", rc, 0);
}

static void on_flush_defer(pdefer *d)
{
    eio_client *e = PARLEY_CONTAINER_OF(d, eio_client, flush_defer);
    flush_posts(e);
}

static void start_polling_handshake(eio_client *e)
{
    e->sid[0] = 0;
    e->get = new_hclient(e, on_get);
    if (!e->get) {
        finish(e, "transport error", PARLEY_ENOMEM, 0);
        return;
    }
    int rc = polling_request(e, e->get, "GET", NULL, 0);
    if (rc) finish(e, "transport error", rc, 0);
}

/* ---- websocket ---- */

static size_t ews_on_data(pconn *c, uint8_t *data, size_t len);
static void ews_on_connect(pconn *c, int status);
static void ews_on_eof(pconn *c);
static void ews_on_close(pconn *c, int err);
static const pconn_cbs ews_cbs = {.on_data = ews_on_data,
                                  .on_connect = ews_on_connect,
                                  .on_eof = ews_on_eof,
                                  .on_close = ews_on_close};

static void ews_message(wsconn *w, int opcode, uint8_t *data, size_t len);
static void ews_closed(wsconn *w, uint16_t code, const uint8_t *reason, size_t len, int err);
static const wsconn_cbs ews_ws_cbs = {.on_message = ews_message, .on_closed = ews_closed};

static ews *ews_start(eio_client *e, bool probe)
{
    ews *w = pcalloc(1, sizeof *w);
    if (!w) return NULL;
    w->e = e;
    w->probe = probe;
    pmd_config_init(&w->pmd);
    w->pmd.enabled = e->o.permessage_deflate;
    wsconn_opts_init(&w->wso);
    w->wso.cbs = &ews_ws_cbs;
    w->wso.max_frame = w->wso.max_message = EC_MAX_MESSAGE;
    w->wso.close_timeout_ms = EC_CLOSE_LINGER;
    w->wso.deflate_threshold = e->o.compression_threshold;
    http_parser_init(&w->parser, true, NULL);
    w->parser.limits.max_headers = EC_MAX_HEADERS;
    pconn_init(&w->c, e->loop, &ews_cbs, 0);
    int rc = pconn_connect_via(&w->c, e->o.use_proxy ? &e->o.proxy : NULL, e->o.url.host,
                               e->o.url.port, e->o.url.tls ? e->o.tls : NULL, e->o.timeout_ms);
    if (rc) {
        w->err = rc;
        pconn_close(&w->c, false, rc);
    }
    return w;
}

/* Lets go of a websocket: it closes on its own and frees itself. */
static void ews_release(ews *w, bool graceful)
{
    w->e = NULL;
    if (w->state == WS_OPEN && w->ws_live && graceful && w->ws.state == WSCONN_OPEN) {
        wsconn_close(&w->ws, 0, NULL);
        return;
    }
    pconn_close(&w->c, false, 0);
}

static void ews_on_connect(pconn *c, int status)
{
    ews *w = PARLEY_CONTAINER_OF(c, ews, c);
    if (status) {
        w->err = status;
        if (status == PARLEY_EPROXY || status == PARLEY_EPROXYAUTH)
            w->proxy_status = pconn_proxy_status(c);
        return;
    }
    w->tcp_up = true;
    eio_client *e = w->e;
    if (!e) {
        pconn_close(c, false, 0);
        return;
    }
    pbuf target = {0}, ext = {0};
    int rc = make_target(e, "websocket", &target);
    if (rc == 0) rc = ws_client_key(w->key);
    if (rc == 0 && w->pmd.enabled) rc = pmd_client_offer(&w->pmd, &ext);
    if (rc == 0 && ext.len) rc = pbuf_append(&ext, "", 1);
    pbuf *out = pconn_out(c);
    if (rc == 0 && !out) rc = PARLEY_ECLOSED;
    if (rc == 0)
        rc = ws_write_client_request(out, e->o.url.host_header, (const char *)target.ptr, w->key,
                                     NULL, 0, ext.len ? (const char *)ext.ptr : NULL, e->headers,
                                     e->o.nheaders);
    pbuf_free(&target);
    pbuf_free(&ext);
    if (rc) {
        w->err = rc;
        pconn_close(c, false, rc);
        return;
    }
    pconn_wrote(c);
    w->state = WS_HANDSHAKE;
}

/* The websocket (not yet open as a transport) failed. */
static void ews_failed(ews *w)
{
    eio_client *e = w->e;
    if (!e) return;
    w->e = NULL;
    if (w == e->probe) {
        e->probe = NULL;
        probe_failed(e);
        return;
    }
    if (w != e->ws) return;
    e->ws = NULL;
    if (e->state == EC_OPENING) {
        if (e->ws_first_try && w->tcp_up && (e->o.transports & PARLEY_TRANSPORT_POLLING)) {
            /* Refused or botched: try long-polling instead. */
            plog_info("engine.io %s: websocket failed (HTTP %d), falling back to polling",
                      e->o.url.host_header, w->http_status);
            e->ws_first_try = false;
            start_polling_handshake(e);
            return;
        }
        if (w->http_status)
            finish(e, "handshake refused", PARLEY_EHANDSHAKE, w->http_status);
        else if (w->proxy_status)
            finish(e, "transport error", w->err, w->proxy_status);
        else
            finish(e, w->err == PARLEY_ETIMEDOUT ? "timeout" : "transport error",
                   w->err ? w->err : PARLEY_ECLOSED, 0);
        return;
    }
    /* An open websocket transport that went away. */
    if (w->err && w->err != PARLEY_ECLOSED)
        finish(e, w->err == PARLEY_EPROTO ? "parse error" : "transport error", w->err, 0);
    else
        finish(e, "transport close", PARLEY_ECLOSED, 0);
}

static size_t ews_handshake(ews *w, uint8_t *data, size_t len)
{
    eio_client *e = w->e;
    http_head head;
    long r = http_parse_head(&w->parser, data, len, &head, w->hdrs, EC_MAX_HEADERS);
    if (r == 0) return 0;
    const char *why = NULL;
    ws_client_result res;
    if (r < 0) {
        w->err = PARLEY_EHANDSHAKE;
    } else if (ws_verify_response(&head, w->key, NULL, 0, &res, &why) != 0) {
        if (head.status != 101) w->http_status = head.status;
        w->err = PARLEY_EHANDSHAKE;
        plog_info("engine.io %s: websocket refused (HTTP %d): %s", e ? e->o.url.host_header : "",
                  head.status, why ? why : "");
    }
    pmd_params params;
    bool use_pmd = false;
    if (!w->err && res.extensions && res.extensions_len) {
        int rc = pmd_client_accept(&w->pmd, res.extensions, res.extensions_len, &params);
        if (rc < 0) w->err = PARLEY_EHANDSHAKE;
        use_pmd = rc == 1;
    }
    if (!w->err) {
        int rc = wsconn_init(&w->ws, &w->c, true, &w->wso, use_pmd ? &params : NULL, &w->pmd, w);
        if (rc) w->err = rc;
    }
    if (w->err) {
        pconn_close(&w->c, false, w->err);
        ews_failed(w);
        return len;
    }
    w->ws_live = true;
    w->state = WS_OPEN;
    if (w->probe && e) {
        if (wsconn_send(&w->ws, WS_OP_TEXT, "2probe", 6) != 0) {
            pconn_close(&w->c, false, PARLEY_ECLOSED);
            ews_failed(w);
            return len;
        }
    }
    return (size_t)r;
}

static size_t ews_on_data(pconn *c, uint8_t *data, size_t len)
{
    ews *w = PARLEY_CONTAINER_OF(c, ews, c);
    size_t off = 0;
    while (off < len && !(c->flags & PCONN_CLOSING)) {
        if (w->state == WS_OPEN) {
            off += wsconn_feed(&w->ws, data + off, len - off);
            break;
        }
        if (w->state != WS_HANDSHAKE || !w->e) return len;
        size_t n = ews_handshake(w, data + off, len - off);
        if (n == 0) break;
        off += n;
    }
    return off;
}

static void ews_on_eof(pconn *c)
{
    ews *w = PARLEY_CONTAINER_OF(c, ews, c);
    if (w->ws_live && w->ws.state != WSCONN_CLOSED) wsconn_lost(&w->ws, PARLEY_ECLOSED);
    pconn_close(c, true, 0);
}

static void ews_on_close(pconn *c, int err)
{
    ews *w = PARLEY_CONTAINER_OF(c, ews, c);
    if (w->ws_live) {
        wsconn_lost(&w->ws, err);
        wsconn_free(&w->ws);
        w->ws_live = false;
    }
    if (!w->err) w->err = err;
    w->state = WS_DONE;
    ews_failed(w);
    if (w->slot) *w->slot = NULL;
    free(w);
}

static void ews_closed(wsconn *ws, uint16_t code, const uint8_t *reason, size_t len, int err)
{
    (void)code;
    (void)reason;
    (void)len;
    ews *w = ws->user;
    if (err && !w->err) w->err = err;
    /* Report now rather than when TCP ends: the server may keep it open. */
    if (w->e) ews_failed(w);
}

/* The probe answered 3probe: pause polling, then switch. */
static void probe_message(eio_client *e, ews *w, int opcode, uint8_t *data, size_t len)
{
    if (opcode == WS_OP_TEXT && len == 6 && !memcmp(data, "3probe", 6) && !e->upgrading) {
        e->upgrading = true;
        maybe_upgrade(e);
        return;
    }
    /* Anything else: the probe failed; stay on polling. */
    w->e = NULL;
    e->probe = NULL;
    pconn_close(&w->c, false, PARLEY_EPROTO);
    probe_failed(e);
}

static void ews_message(wsconn *ws, int opcode, uint8_t *data, size_t len)
{
    ews *w = ws->user;
    eio_client *e = w->e;
    if (!e) return;
    if (w == e->probe) {
        probe_message(e, w, opcode, data, len);
        return;
    }
    if (w != e->ws) return;
    if (e->state == EC_OPENING) {
        eio_packet p;
        if (opcode != WS_OP_TEXT || eio_parse_text(data, len, &p) != 0 || p.type != EIO_OPEN ||
            parse_open(e, p.data, p.len) != 0) {
            finish(e, "parse error", PARLEY_EPROTO, 0);
            return;
        }
        opened(e, T_WEBSOCKET);
        return;
    }
    if (e->state != EC_OPEN) return;
    eio_packet p;
    if (opcode == WS_OP_BINARY) {
        p.type = EIO_MESSAGE;
        p.binary = true;
        p.data = data;
        p.len = len;
    } else if (eio_parse_text(data, len, &p) != 0) {
        finish(e, "parse error", PARLEY_EPROTO, 0);
        return;
    }
    handle_packet(e, &p);
}

static void start_probe(eio_client *e)
{
    e->probe = ews_start(e, true);
    /* Out of memory: no upgrade, polling goes on. */
}

static void probe_failed(eio_client *e)
{
    plog_info("engine.io %s: upgrade probe failed, staying on polling", e->o.url.host_header);
    if (e->upgrading) {
        e->upgrading = false;
        start_poll(e);
        flush_posts(e);
    }
}

/* Completes the upgrade once no request is in flight. */
static void maybe_upgrade(eio_client *e)
{
    if (!e->upgrading || !e->probe || e->state != EC_OPEN) return;
    if ((e->get && hclient_busy(e->get)) || (e->post && hclient_busy(e->post))) return;
    ews *w = e->probe;
    if (wsconn_send(&w->ws, WS_OP_TEXT, "5", 1) != 0) {
        w->e = NULL;
        e->probe = NULL;
        pconn_close(&w->c, false, PARLEY_ECLOSED);
        probe_failed(e);
        return;
    }
    e->probe = NULL;
    e->ws = w;
    e->transport = T_WEBSOCKET;
    e->upgrading = false;
    if (e->get) hclient_close(e->get, 0);
    if (e->post) hclient_close(e->post, 0);
    e->get = e->post = NULL;
    ploop_defer_cancel(e->loop, &e->flush_defer);
    wpkt *p;
    while ((p = wq_pop(e))) {
        int rc = send_packet(e, p->type, p->binary, p->data, p->len);
        free(p);
        if (rc) {
            finish(e, "transport error", rc, 0);
            return;
        }
    }
    if (e->cbs.on_upgrade) {
        enter(e);
        e->cbs.on_upgrade(e);
        leave(e);
    }
}

/* ---- sending ---- */

static int send_packet(eio_client *e, int type, bool binary, const void *data, size_t len)
{
    if (e->transport == T_WEBSOCKET && e->ws && e->ws->ws_live) {
        if (binary) return wsconn_send(&e->ws->ws, WS_OP_BINARY, data, len);
        uint8_t t = (uint8_t)('0' + type);
        return wsconn_send2(&e->ws->ws, WS_OP_TEXT, &t, 1, data, len);
    }
    int rc = wq_push(e, type, binary, data, len);
    if (rc == 0 && !e->upgrading) ploop_defer(e->loop, &e->flush_defer);
    return rc;
}

int eio_client_send(eio_client *c, bool binary, const void *data, size_t len)
{
    if (c->state != EC_OPEN) return PARLEY_ESTATE;
    if (len && !data) return PARLEY_EINVAL;
    size_t size = c->transport == T_WEBSOCKET ? (binary ? len : len + 1)
                                              : eio_payload_size(true, binary, len);
    if (size > c->max_payload) return PARLEY_ELIMIT;
    if (!binary && c->transport != T_WEBSOCKET && len && memchr(data, EIO_SEPARATOR, len))
        return PARLEY_EINVAL;
    return send_packet(c, EIO_MESSAGE, binary, data, len);
}

bool eio_client_writable(const eio_client *c)
{
    if (c->state != EC_OPEN || c->upgrading) return false;
    if (c->transport == T_WEBSOCKET)
        return c->ws && c->ws->ws_live && c->ws->ws.state == WSCONN_OPEN &&
               pconn_pending(&c->ws->c) == 0;
    return c->wq_count == 0 && !(c->post && hclient_busy(c->post));
}

/* ---- lifecycle ---- */

int eio_client_open(eio_client *c)
{
    if (c->state == EC_OPENING || c->state == EC_OPEN || c->free_pending) return PARLEY_ESTATE;
    c->state = EC_OPENING;
    c->sid[0] = 0;
    c->transport = T_NONE;
    c->upgrading = false;
    c->max_payload = EC_DEFAULT_PAYLD;
    if (c->o.timeout_ms) ploop_timer_start(c->loop, &c->open_timer, c->o.timeout_ms);
    bool ws = (c->o.transports & PARLEY_TRANSPORT_WEBSOCKET) != 0;
    bool polling = (c->o.transports & PARLEY_TRANSPORT_POLLING) != 0;
    if (ws && (!polling || c->o.websocket_first)) {
        c->ws_first_try = polling;
        c->ws = ews_start(c, false);
        if (!c->ws) finish(c, "transport error", PARLEY_ENOMEM, 0);
        return 0;
    }
    start_polling_handshake(c);
    return 0;
}

void eio_client_close(eio_client *c)
{
    if (c->state != EC_OPENING && c->state != EC_OPEN) return;
    if (c->state == EC_OPEN && c->transport == T_POLLING) {
        hclient *h = c->post;
        c->post = NULL;
        if (h && hclient_busy(h)) {
            /* A second POST would overlap (the server ends the session
             * on that): let this one finish and end the session by
             * dropping the GET instead. */
            linger_hclient(h, &c->linger_post);
            hclient_close(c->get, 0);
            c->get = NULL;
        } else {
            /* A last POST carries what is queued and the close packet;
             * the pending GET gets its answer (a noop) once the server saw
             * it. Both may finish after we are gone. */
            if (!h) h = new_hclient(c, on_post);
            if (h && wq_push(c, EIO_CLOSE, false, NULL, 0) == 0) {
                pbuf b = {0};
                bool first = true;
                wpkt *p;
                while ((p = wq_pop(c))) {
                    eio_payload_append(&b, first, p->type, p->binary, p->data, p->len);
                    first = false;
                    free(p);
                }
                polling_request(c, h, "POST", b.ptr, b.len);
                pbuf_free(&b);
                linger_hclient(h, &c->linger_post);
            } else if (h) {
                hclient_close(h, 0);
            }
            if (c->get) linger_hclient(c->get, &c->linger_get);
            c->get = NULL;
        }
    } else if (c->state == EC_OPEN && c->ws) {
        if (c->linger_ws) {
            c->linger_ws->slot = NULL;
            pconn_close(&c->linger_ws->c, false, 0);
        }
        c->linger_ws = c->ws;
        c->ws->slot = &c->linger_ws;
        ews_release(c->ws, true);
        c->ws = NULL;
    }
    finish(c, "forced close", 0, 0);
}

static void destroy(eio_client *e)
{
    abort_lingering(e);
    ploop_timer_stop(e->loop, &e->open_timer);
    ploop_timer_stop(e->loop, &e->ping_timer);
    drop_transports(e, false);
    wq_clear(e);
    pbuf_free(&e->scratch);
    free(e->path);
    free(e->extra_query);
    free(e->headers);
    free(e->hdr_text);
    free(e);
}

void eio_client_free(eio_client *c)
{
    if (!c || c->free_pending) return;
    c->free_pending = true;
    c->cbs.on_close = NULL;
    c->cbs.on_message = NULL;
    c->cbs.on_open = NULL;
    c->cbs.on_upgrade = NULL;
    ploop_timer_stop(c->loop, &c->open_timer);
    ploop_timer_stop(c->loop, &c->ping_timer);
    drop_transports(c, false);
    if (c->depth == 0) destroy(c);
}
